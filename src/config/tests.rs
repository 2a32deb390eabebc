//! Config loading and validation, table-driven: each bad value must be named by its key.

use std::io::Write;

use super::*;
use crate::close::Direction;

fn problems(toml: &str) -> Vec<Problem> {
    match from_toml_str(toml) {
        Ok(_) => panic!("config should have been rejected:\n{toml}"),
        Err(e) => e.problems,
    }
}

fn keys(toml: &str) -> Vec<String> {
    problems(toml).into_iter().map(|p| p.key).collect()
}

#[test]
fn defaults_are_valid_and_match_the_spec() {
    let c = from_toml_str("").expect("defaults validate");
    assert_eq!(c.listen.address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.listen.max_connections, 10_000);
    assert_eq!(c.listen.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.admin.address, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.upstream.endpoints[0].to_string(), "ws://127.0.0.1:9000");
    assert_eq!(c.websocket.max_message_size, 1 << 20);
    assert_eq!(c.websocket.ping_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.websocket.idle_timeout, None);
    let compression = c.websocket.compression;
    assert!(compression.client && !compression.upstream);
    assert_eq!(compression.settings, crate::deflate::Settings::default());
    assert_eq!(
        (compression.settings.level, compression.settings.min_size),
        (6, 64)
    );
    assert!(c.restart.hold && c.restart.on_disconnect);
    assert_eq!(c.restart.codes, vec![1012, 1001]);
    assert_eq!(
        c.restart.max_reconnecting, 128,
        "holdfast's addition to SPEC"
    );
    assert_eq!(
        c.restart.give_up,
        Close::new(1012, "upstream restarting; reconnect in 1-5s")
    );
    assert_eq!(c.policy.context, ContextMode::Reason);
    assert!(c.rewrites.is_empty());
    assert_eq!(c.shutdown.client.code, 1012);
}

#[test]
fn the_shipped_proxy_toml_is_the_default_config() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let c = from_toml_str(&text).expect("proxy.toml validates");
    assert_eq!(c.listen.address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.restart.max_hold, Duration::from_secs(30));
}

#[test]
fn rewrite_shapes_parse() {
    let c = from_toml_str(
        r#"
        [[rewrite]]
        direction = "to_client"
        from = "4000-4099"
        to = 1008
        reason = "application policy"
        [[rewrite]]
        direction = "to_upstream"
        from = 4100
        to = 1000
        [[rewrite]]
        direction = "to_client"
        from = "1006"
        to = 1001
        "#,
    )
    .unwrap();
    assert_eq!(c.rewrites.len(), 3);
    assert_eq!(c.rewrites[0].from, 4000..=4099);
    assert_eq!(c.rewrites[0].reason.as_deref(), Some("application policy"));
    assert_eq!(c.rewrites[1].from, 4100..=4100);
    assert_eq!(c.rewrites[1].direction, Direction::ToUpstream);
    assert_eq!(c.rewrites[2].from, 1006..=1006);
}

#[test]
fn every_bad_value_is_named_by_its_key() {
    let table: &[(&str, &str)] = &[
        ("[listen]\naddress = \"nowhere\"", "listen.address"),
        ("[listen]\nmax_connections = 0", "listen.max_connections"),
        (
            "[listen]\nhandshake_timeout = \"10\"",
            "listen.handshake_timeout",
        ),
        (
            "[upstream]\nendpoints = [\"http://x:1\"]",
            "upstream.endpoints[0]",
        ),
        ("[upstream]\nendpoints = []", "upstream.endpoints"),
        (
            "[websocket]\nmax_message_size = \"huge\"",
            "websocket.max_message_size",
        ),
        ("[restart]\ngive_up_code = 1006", "restart.give_up_code"),
        ("[restart]\ncodes = [99]", "restart.codes[0]"),
        ("[restart]\ncodes = [1012, 1008]", "restart.codes[1]"),
        (
            "[restart]\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\"",
            "restart.backoff_initial",
        ),
        (
            "[restart]\nmax_reconnecting = -1",
            "restart.max_reconnecting",
        ),
        (
            "[restart]\nmax_reconnecting = 1000001",
            "restart.max_reconnecting",
        ),
        ("[policy]\ncontext = \"header\"", "policy.context"),
        (
            "[[policy.catalog]]\nid = \"x\"\nmatch = \"(unclosed\"",
            "policy.catalog[0].match",
        ),
        (
            "[policy.token_expiry]\nsource = \"header:x-token\"",
            "policy.token_expiry.source",
        ),
        ("[shutdown]\nclient_code = 2000", "shutdown.client_code"),
        ("[shutdown]\nclient_reason = \"", ""),
    ];
    for (toml, key) in table.iter().filter(|(_, k)| !k.is_empty()) {
        assert_eq!(keys(toml), vec![key.to_string()], "for {toml:?}");
    }
}

#[test]
fn close_codes_that_may_not_be_sent_are_rejected_as_targets() {
    for code in [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let toml = format!("[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = {code}");
        let p = problems(&toml);
        assert_eq!(p.len(), 1, "{code}");
        assert_eq!(p[0].key, "rewrite[0].to");
        assert!(p[0].message.contains("may not be sent"), "{}", p[0].message);
    }
}

#[test]
fn bad_ranges_are_rejected() {
    for from in [
        "\"4099-4000\"",
        "\"40x0\"",
        "\"1-2-3\"",
        "\"999-1000\"",
        "5000",
    ] {
        let toml = format!("[[rewrite]]\ndirection = \"to_client\"\nfrom = {from}\nto = 1000");
        assert_eq!(
            keys(&toml),
            vec!["rewrite[0].from".to_string()],
            "from = {from}"
        );
    }
    let p = problems("[[rewrite]]\ndirection = \"sideways\"\nfrom = 4000\nto = 1000");
    assert_eq!(p[0].key, "rewrite[0].direction");
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let p = problems(
        "[listen]\nadress = \"0.0.0.0:1\"\n[nope]\nx = 1\n[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = 1000\ncolor = 1",
    );
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"listen.adress"), "{keys:?}");
    assert!(keys.contains(&"nope"), "{keys:?}");
    assert!(keys.contains(&"rewrite[0].color"), "{keys:?}");
    let adress = p.iter().find(|p| p.key == "listen.adress").unwrap();
    assert!(
        adress.message.contains("did you mean `listen.address`"),
        "{}",
        adress.message
    );
}

#[test]
fn all_problems_are_reported_together() {
    let p = problems(
        "[listen]\nmax_connections = \"many\"\n[restart]\ngive_up_code = 1005\n[shutdown]\ndrain_timeout = \"forever\"\n[websocket]\nping_interval = 3",
    );
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "listen.max_connections",
        "restart.give_up_code",
        "shutdown.drain_timeout",
        "websocket.ping_interval",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
}

#[test]
fn missing_tls_files_are_named() {
    let p =
        problems("[listen.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"");
    assert_eq!(p[0].key, "listen.tls.cert");
    assert!(
        p[0].message.contains("/nonexistent/cert.pem"),
        "{}",
        p[0].message
    );

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not pem at all\n").unwrap();
    let p = problems(&format!(
        "[listen.tls]\ncert = {:?}\nkey = {:?}",
        empty.display().to_string(),
        empty.display().to_string()
    ));
    assert!(
        p[0].message.contains("holds no PEM certificate"),
        "{}",
        p[0].message
    );

    let p = problems("[upstream.tls]\nca = \"/nonexistent/ca.pem\"");
    assert_eq!(p[0].key, "upstream.tls.ca");
}

#[test]
fn file_problems_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(f, "[listen]\naddress = \"0.0.0.0:1\"\n\n[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = 1006\n").unwrap();
    drop(f);
    let err = load_file(&path).err().expect("rejected");
    let p = &err.problems[0];
    assert_eq!(p.key, "rewrite[0].to");
    assert_eq!(
        p.origin.as_deref(),
        Some(format!("{}:7", path.display()).as_str())
    );
    assert!(
        err.to_string()
            .contains("rewrite[0].to: 1006 may not be sent"),
        "{err}"
    );
}

#[test]
fn effective_config_names_origins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "[listen]\naddress = \"127.0.0.1:1\"\n").unwrap();
    let loaded = load_file(&path).unwrap();
    let entry = |key: &str| {
        loaded
            .effective
            .iter()
            .find(|e| e.key == key)
            .unwrap()
            .clone()
    };
    assert_eq!(
        entry("listen.address").origin,
        format!("{}:2", path.display())
    );
    assert_eq!(entry("listen.address").value, "\"127.0.0.1:1\"");
    assert_eq!(entry("listen.max_connections").origin, "default");
    assert!(loaded.effective.len() > 30);
}

#[test]
fn message_limits_are_bounded_by_what_memory_holds() {
    let p =
        problems("[websocket]\nmax_frame_size = 9223372036854775807\nmax_message_size = \"2GiB\"");
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["websocket.max_message_size", "websocket.max_frame_size"]
    );
    assert!(p[0].message.contains("at most 1GiB"), "{}", p[0].message);
    assert!(from_toml_str("[websocket]\nmax_message_size = \"1GiB\"").is_ok());
}

#[test]
fn resume_defaults_and_its_key_file() {
    let c = from_toml_str("").expect("defaults");
    assert!(c.resume.enabled);
    assert_eq!(c.resume.client_hold, Duration::from_secs(30));
    assert_eq!(
        (c.resume.buffer_messages, c.resume.buffer_bytes),
        (1024, 1 << 20)
    );
    assert!(c.resume.key.is_none(), "no key file: a key of this process");

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "too short\n").unwrap();
    let p = problems(&format!(
        "[resume]\nkey_file = {:?}",
        short.display().to_string()
    ));
    assert_eq!(p[0].key, "resume.key_file");
    assert!(p[0].message.contains("at least 32"), "{}", p[0].message);
    let p = problems("[resume]\nkey_file = \"/nonexistent/key\"\nclient_hold = \"0s\"");
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["resume.client_hold", "resume.key_file"]);

    let good = dir.path().join("key");
    std::fs::write(&good, format!("{}\n", "k".repeat(48))).unwrap();
    let c = from_toml_str(&format!(
        "[resume]\nkey_file = {:?}",
        good.display().to_string()
    ))
    .expect("a 48-byte key");
    assert!(c.resume.key.is_some());
}

#[test]
fn compression_settings_are_checked_by_key() {
    assert_eq!(
        keys(
            "[websocket.compression]\nlevel = 10\nmin_size = -1\nserver_max_window_bits = 8\nclient_max_window_bits = 16"
        ),
        [
            "websocket.compression.server_max_window_bits",
            "websocket.compression.client_max_window_bits",
            "websocket.compression.level",
            "websocket.compression.min_size",
        ]
    );
    let c = from_toml_str(
        "[websocket.compression]\nupstream = true\nlevel = 1\nmin_size = 0\nserver_max_window_bits = 9\nclient_no_context_takeover = true",
    )
    .unwrap();
    let s = c.websocket.compression.settings;
    assert!(c.websocket.compression.upstream);
    assert_eq!((s.level, s.min_size, s.server_max_window_bits), (1, 0, 9));
    assert!(s.client_no_context_takeover && !s.server_no_context_takeover);
}

const TWO_ROUTES: &str = r#"
[upstream]
endpoints = ["ws://127.0.0.1:9000"]
[restart]
max_hold = "20s"
codes = [1012]
[[rewrite]]
direction = "to_client"
from = 4000
to = 1008

[[route]]
name = "chat"
host = "chat.example.com"
path_prefix = "/ws/chat/"
[route.upstream]
endpoints = ["ws://127.0.0.1:9100", "ws://127.0.0.1:9101"]
[route.restart]
hold = false
[route.policy.rate_limit]
messages_per_second = 5
burst = 10
[[route.rewrite]]
direction = "to_client"
from = "4100-4199"
to = 1011

[[route]]
name = "feed"
path_prefix = "/ws/feed"
[route.upstream]
endpoints = ["ws://127.0.0.1:9200"]
"#;

#[test]
fn routes_override_their_sections_key_by_key_and_the_top_level_is_the_default() {
    let c = from_toml_str(TWO_ROUTES).expect("valid");
    let names: Vec<&str> = c.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["chat", "feed", "default"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let chat = c.route_view("chat").unwrap();
    assert_eq!(&*chat.route, "chat");
    assert_eq!(chat.upstream.endpoints.len(), 2);
    // Overridden keys change; the rest are the top-level ones.
    assert!(!chat.restart.hold);
    assert_eq!(chat.restart.max_hold, Duration::from_secs(20));
    assert_eq!(chat.restart.codes, [1012]);
    assert_eq!(chat.policy.rate_limit.messages_per_second, 5);
    assert_eq!(chat.policy.rate_limit.burst, 10);
    // Its rewrite list replaces the top-level one.
    assert_eq!(chat.rewrites.len(), 1);
    assert_eq!(chat.rewrites[0].to, 1011);

    let feed = c.route_view("feed").unwrap();
    assert_eq!(
        feed.upstream.endpoints[0].to_string(),
        "ws://127.0.0.1:9200"
    );
    assert!(feed.restart.hold);
    assert_eq!(
        feed.rewrites[0].to, 1008,
        "no list of its own: the top-level one"
    );
    assert_eq!(
        c.route_view("default").unwrap().upstream.endpoints[0].port,
        9000
    );

    let picked = |host: Option<&str>, path: &str| c.pick(host, path).map(|r| &*r.name);
    assert_eq!(picked(Some("chat.example.com"), "/ws/chat"), Some("chat"));
    assert_eq!(
        picked(Some("chat.example.com"), "/ws/chatx"),
        Some("default")
    );
    assert_eq!(picked(Some("other"), "/ws/chat"), Some("default"));
    assert_eq!(picked(None, "/ws/feed/x"), Some("feed"));
}

#[test]
fn without_top_level_endpoints_there_is_no_default_route() {
    let c = from_toml_str(&format!(
        "{}\n",
        TWO_ROUTES.replace("endpoints = [\"ws://127.0.0.1:9000\"]", "endpoints = []")
    ))
    .expect("valid");
    let names: Vec<&str> = c.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["chat", "feed"]);
    assert!(c.pick(Some("other"), "/").is_none());
    // Without routes, an empty list is still a problem.
    assert_eq!(keys("[upstream]\nendpoints = []"), ["upstream.endpoints"]);
    // A top-level problem is reported once, under its own key, not again for each route.
    assert_eq!(
        keys(
            "[restart]\nmax_hold = \"x\"\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\npath_prefix = \"/b\""
        ),
        ["restart.max_hold"]
    );
    // A route without endpoints of its own needs a default pool to share.
    assert_eq!(
        keys("[upstream]\nendpoints = []\n[[route]]\nname = \"a\"\npath_prefix = \"/a\""),
        ["route[0].upstream.endpoints"]
    );
}

#[test]
fn every_bad_route_value_is_named_by_its_key() {
    let table = [
        ("[[route]]\nname = \"\"", "route[0].name"),
        ("[[route]]\nname = \"a b\"", "route[0].name"),
        ("[[route]]\nname = \"default\"", "route[0].name"),
        (
            "[[route]]\nname = \"a\"\npath_prefix = \"/a\"\n[[route]]\nname = \"a\"\npath_prefix = \"/b\"",
            "route[1].name",
        ),
        (
            "[[route]]\nname = \"a\"\nhost = \"a.example.com:443\"",
            "route[0].host",
        ),
        (
            "[[route]]\nname = \"a\"\npath_prefix = \"ws\"",
            "route[0].path_prefix",
        ),
        (
            "[[route]]\nname = \"a\"\n[route.upstream]\nendpoints = [\"http://x:1\"]",
            "route[0].upstream.endpoints[0]",
        ),
        (
            "[[route]]\nname = \"a\"\n[route.restart]\nmax_hold = \"soon\"",
            "route[0].restart.max_hold",
        ),
        (
            "[[route]]\nname = \"a\"\n[route.restart]\nhold = \"yes\"",
            "route[0].restart.hold",
        ),
        (
            "[[route]]\nname = \"a\"\n[route.restart]\ngive_up_code = 1006",
            "route[0].restart.give_up_code",
        ),
        (
            "[[route]]\nname = \"a\"\n[route.policy]\ncontext = \"everywhere\"",
            "route[0].policy.context",
        ),
        (
            "[[route]]\nname = \"a\"\n[[route.policy.catalog]]\nid = \"x\"\nmatch = \"(\"",
            "route[0].policy.catalog[0].match",
        ),
        (
            "[[route]]\nname = \"a\"\n[[route.rewrite]]\ndirection = \"up\"\nfrom = 4000\nto = 1008",
            "route[0].rewrite[0].direction",
        ),
        ("[[route]]\nname = \"a\"\nport = 1", "route[0].port"),
        (
            "[[route]]\nname = \"a\"\n[route.restart]\nholdd = true",
            "route[0].restart.holdd",
        ),
    ];
    for (toml, key) in table {
        assert_eq!(keys(toml), [key], "{toml}");
    }
}

#[test]
fn a_route_an_earlier_one_shadows_is_a_warning() {
    let c = from_toml_str(
        "[[route]]\nname = \"ws\"\npath_prefix = \"/ws\"\n\
         [[route]]\nname = \"chat\"\npath_prefix = \"/ws/chat\"\n\
         [[route]]\nname = \"wsx\"\npath_prefix = \"/wsx\"",
    )
    .expect("a warning does not stop loading");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].key, "route[1]");
    assert!(c.warnings[0].message.contains("`ws`"), "{}", c.warnings[0]);
}

#[test]
fn http2_settings_are_checked_by_key() {
    let c = from_toml_str("").unwrap();
    assert_eq!(
        c.listen.http2,
        Http2 {
            enabled: true,
            max_concurrent_streams: 128,
            stream_window: 256 * 1024,
        }
    );
    assert_eq!(c.listen.http2.connection_window(), 32 << 20);
    let wide =
        from_toml_str("[listen.http2]\nmax_concurrent_streams = 10000\nstream_window = \"1GiB\"")
            .unwrap();
    assert_eq!(wide.listen.http2.connection_window(), MAX_H2_WINDOW);
    for (toml, key) in [
        (
            "[listen.http2]\nmax_concurrent_streams = 0",
            "listen.http2.max_concurrent_streams",
        ),
        (
            "[listen.http2]\nstream_window = \"1KiB\"",
            "listen.http2.stream_window",
        ),
        (
            "[listen.http2]\nstream_window = \"4GiB\"",
            "listen.http2.stream_window",
        ),
        ("[listen.http2]\nenabled = \"yes\"", "listen.http2.enabled"),
    ] {
        assert_eq!(keys(toml), [key], "{toml}");
    }
}
