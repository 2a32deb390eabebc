//! The binary's contract (SPEC §1): `check` prints the effective config with origins and
//! exits 0; a bad config names every bad key and exits 2; a busy port exits 1 naming it.

use std::process::{Command, Output};

fn holdfast(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOLDFAST_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the holdfast binary runs")
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn check_prints_every_key_with_its_origin() {
    let (_dir, path) = write_config("[listen]\naddress = \"127.0.0.1:8081\"\n");
    let out = holdfast(
        &["check", "--config", &path],
        &[("HOLDFAST_UPSTREAM__ENDPOINTS", "[\"ws://10.0.0.5:9000\"]")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing:\n{stdout}"))
            .to_owned()
    };
    assert!(
        line("listen.address").contains(&format!("# {path}:2")),
        "{}",
        line("listen.address")
    );
    assert!(
        line("upstream.endpoints").contains("# env HOLDFAST_UPSTREAM__ENDPOINTS"),
        "{}",
        line("upstream.endpoints")
    );
    assert!(line("restart.max_hold").ends_with("# default"));
}

#[test]
fn the_shipped_proxy_toml_checks_clean() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let out = holdfast(&["check", "--config", path], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_config_names_every_problem_and_exits_2() {
    let (_dir, path) = write_config(
        "[listen]\nadress = \"0.0.0.0:1\"\n[restart]\ngive_up_code = 1006\n[[rewrite]]\ndirection = \"to_client\"\nfrom = \"4099-4000\"\nto = 1000\n",
    );
    let out = holdfast(&["check", "--config", &path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "listen.adress: unknown key; did you mean `listen.address`?",
        "restart.give_up_code: 1006 may not be sent",
        "rewrite[0].from: range 4099-4000 is empty",
        &format!("({path}:2)"),
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
}

#[test]
fn stray_holdfast_variables_are_errors_but_config_and_log_are_not() {
    let (_dir, path) = write_config("");
    let out = holdfast(
        &["check"],
        &[("HOLDFAST_CONFIG", &path), ("HOLDFAST_LOG", "debug")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = holdfast(
        &["check", "--config", &path],
        &[("HOLDFAST_LISTEN__ADRESS", "x")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen.adress: unknown key")
            && stderr.contains("env HOLDFAST_LISTEN__ADRESS"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_exits_2() {
    let out = holdfast(&["check", "--config", "/nonexistent/proxy.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.toml not found"));
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let (_dir, path) = write_config(&format!(
        "[listen]\naddress = \"{addr}\"\n[admin]\naddress = \"\"\n"
    ));
    let out = holdfast(&["--config", &path], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn a_worker_count_of_zero_is_a_usage_error() {
    let out = holdfast(&["--workers", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--workers"), "{stderr}");
}

#[test]
fn check_lists_the_routes_in_match_order_and_warns_of_shadowed_ones() {
    let (_dir, path) = write_config(
        "[upstream]\nendpoints = [\"ws://127.0.0.1:9000\"]\n\
         [[route]]\nname = \"ws\"\npath_prefix = \"/ws\"\n\
         [route.upstream]\nendpoints = [\"ws://127.0.0.1:9100\"]\n\
         [[route]]\nname = \"chat\"\nhost = \"*.example.com\"\npath_prefix = \"/ws/chat\"\n\
         [route.restart]\nhold = false\n",
    );
    let out = holdfast(&["check", "--config", &path], &[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let listed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("#   ")).collect();
    assert_eq!(listed.len(), 3, "{stdout}");
    assert!(
        listed[0].contains("1. ws: any host, path /ws -> ws://127.0.0.1:9100 (hold on"),
        "{stdout}"
    );
    assert!(
        listed[1].contains(
            "2. chat: host *.example.com, path /ws/chat -> ws://127.0.0.1:9000 (hold off"
        ),
        "{stdout}"
    );
    assert!(
        listed[2].contains("3. default: any host, any path -> ws://127.0.0.1:9000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# warning: route[1]: `chat` can never match: route[0] (`ws`)"),
        "{stdout}"
    );
}
