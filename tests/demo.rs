//! `holdfast demo` run the way the README says: it needs nothing else, exits 0, and its
//! output shows the plain client surviving two restarts and the 1008 with its policy
//! context, and the library client surviving a cut connection and holdfast's restart.
//! `holdfast demo --serve`: its page and library, and its buttons against a real client.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use holdfast::client::{Received, ResumableClient};
use support::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

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
        "connections opened         1",
        "holds resumed (metrics)    2",
        "network   cuts the client's connection",
        "holdfast 1 draining: tells its resumable clients to move",
        "accepted the held session (X-Holdfast-Resume: 1)",
        "← instance 3: resumable #12",
        "messages sent / answered   12 / 12 — each once, in order",
        "reconnects                 2",
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

/// One HTTP/1.1 request to the demo: the status code and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within("the response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends `text` and expects its echo (`instance N: text`) as the next message.
async fn echoes(client: &mut ResumableClient, text: &str) -> String {
    client.send(Message::text(text)).await.unwrap();
    match within("the echo", client.next()).await.unwrap() {
        Received::Message(Message::Text(echo)) if echo.ends_with(&format!(": {text}")) => {
            echo.to_string()
        }
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn the_served_demo_has_a_page_with_the_library_and_its_buttons_work() {
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["demo", "--serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let addr: SocketAddr = within("the page line", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the demo exited");
            if let Some(rest) = line.trim().strip_prefix("page      http://") {
                return rest.split('/').next().unwrap().parse().unwrap();
            }
        }
    })
    .await;
    let echo_lines = tokio::spawn(async move {
        let mut out = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            out.push_str(&line);
            out.push('\n');
        }
        out
    });

    let (status, page) = http(addr, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"import { HoldfastWebSocket } from "/holdfast.mjs""#));
    let (status, library) = http(addr, "GET", "/holdfast.mjs").await;
    assert_eq!(status, 200);
    assert_eq!(
        library,
        include_str!("../clients/js/holdfast.mjs"),
        "the library as clients/js has it"
    );
    assert_eq!(http(addr, "GET", "/control/cut").await.0, 405);
    assert_eq!(http(addr, "GET", "/nothing").await.0, 404);

    // A library client on the page's address; each button in turn, an echo after each.
    let mut client = ResumableClient::connect(addr, "/feed", &[]).await.unwrap();
    echoes(&mut client, "before").await;
    assert_eq!(http(addr, "POST", "/control/cut").await.0, 200);
    echoes(&mut client, "after the cut").await;
    assert_eq!(client.reconnects, 1, "re-attached once");
    assert_eq!(http(addr, "POST", "/control/restart-holdfast").await.0, 202);
    let mut moved = false;
    for i in 0..50 {
        echoes(&mut client, &format!("during the holdfast restart {i}")).await;
        if client.reconnects == 2 {
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(moved, "the client moved to the next holdfast");
    // Answered once the app is back: what the client sends now is held, not crossing the
    // old instance's close.
    assert_eq!(http(addr, "POST", "/control/restart-upstream").await.0, 200);
    let mut on_next_instance = false;
    for i in 0..50 {
        let echo = echoes(&mut client, &format!("during the app restart {i}")).await;
        if echo.starts_with("instance 2:") {
            on_next_instance = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(on_next_instance, "held across the app's restart");
    let (status, metrics) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("holdfast_client_resumes_total{outcome=\"moved\"} 1"),
        "the next holdfast's metrics: {metrics}"
    );

    client.close(1000, "done").await;
    let pid = demo.id().unwrap().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let exit = within("the demo to stop", demo.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
    let out = within("the demo's output", echo_lines).await.unwrap();
    assert!(
        out.contains("holdfast 1 drained (0 sessions left) and stopped"),
        "{out}"
    );
}
