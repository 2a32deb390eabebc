//! `holdfast demo` run the way the README says: it needs nothing else, exits 0, and its
//! output shows the client surviving two restarts and the 1008 with its policy context.

use std::process::Command;

#[test]
fn the_demo_shows_restarts_survived_and_the_policy_context() {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .arg("demo")
        .output()
        .expect("the holdfast binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "instance 1 restarting: closes its connections with 1012",
        "instance 2 accepted the held session (X-Holdfast-Resume: 1)",
        "instance 3 accepted the held session (X-Holdfast-Resume: 2)",
        "← instance 3: hello #",
        "← close 1008",
        r#"reason: {"policy":"content-policy","ref":"https://example.com/policies#content","detail":"forbidden"#,
        "client connections opened    1",
        "holds resumed (metrics)      2",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("← close 1012"),
        "the client never sees the restarts:\n{stdout}"
    );
}
