//! The binary under signals: SIGTERM drains (clients get 1012, exit 0), SIGHUP reloads the
//! file into live sessions. The proxy binds 127.0.0.1:0 and logs its addresses as JSON.

mod support;

use std::net::SocketAddr;

use support::binary::{signal, start, start_capturing, write_config};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A config file for `upstream` in a fresh directory, which lives as long as the guard.
fn config_file(upstream: &TestUpstream) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    write_config(&path, upstream, "");
    (dir, path)
}

async fn client(addr: SocketAddr) -> Client {
    let request = format!("ws://{addr}/").into_client_request().unwrap();
    connect_request(addr, request).await.unwrap().0
}

#[tokio::test]
async fn sigterm_drains_clients_with_1012_and_exits_0() {
    let upstream = UpstreamBuilder::new().start().await;
    let (_dir, path) = config_file(&upstream);
    let mut running = start(&path).await;
    let mut ws = client(running.proxy).await;
    send_text(&mut ws, "hi").await;
    assert_eq!(next_message(&mut ws).await.to_text().unwrap(), "hi");

    signal(&running.child, "TERM");
    assert_eq!(
        expect_close(&mut ws).await,
        (Some(1012), "proxy restarting; reconnect in 1-5s".into())
    );
    drop(ws); // gone without answering: the drain does not wait on it
    let status = within("exit", running.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sighup_reloads_the_file_into_live_sessions() {
    let upstream = UpstreamBuilder::new().start().await;
    let (_dir, path) = config_file(&upstream);
    let running = start(&path).await;
    let mut ws = client(running.proxy).await;

    // An invalid file first: counted, and the proxy keeps serving.
    std::fs::write(&path, "[listen]\naddress = 42\n").unwrap();
    signal(&running.child, "HUP");
    let metric = |result: &'static str| {
        let admin = running.admin;
        async move {
            let (_, body) = http_get(admin, "/metrics").await;
            let series = format!("holdfast_config_reloads_total{{result=\"{result}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.trim().to_owned())
        }
    };
    within("the failed reload to be counted", async {
        while metric("error").await.as_deref() != Some("1") {
            tokio::task::yield_now().await;
        }
    })
    .await;

    write_config(
        &path,
        &upstream,
        "[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = 4100\n",
    );
    signal(&running.child, "HUP");
    within("the reload to be counted", async {
        while metric("ok").await.as_deref() != Some("1") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    send_text(&mut ws, "close 4000 bye").await;
    assert_eq!(expect_close(&mut ws).await, (Some(4100), "bye".into()));
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let upstream = UpstreamBuilder::new().start().await;
    let (_dir, path) = config_file(&upstream);
    // Debug level: the most holdfast ever says.
    let mut running = start_capturing(&path, "debug").await;
    let proxy = running.proxy;
    let mut request = format!("ws://{proxy}/?access_token=QUERYSECRET")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer HEADERSECRET".parse().unwrap());
    request
        .headers_mut()
        .insert("cookie", "session=COOKIESECRET".parse().unwrap());
    let (mut ws, _) = connect_request(proxy, request).await.unwrap();
    send_text(&mut ws, "hello").await;
    assert_eq!(next_message(&mut ws).await.to_text().unwrap(), "hello");
    drop(ws);
    signal(&running.child, "TERM");
    let _ = within("exit", running.child.wait()).await;
    let rest = running.logs().await;
    for secret in ["QUERYSECRET", "HEADERSECRET", "COOKIESECRET"] {
        assert!(
            !rest.contains(secret),
            "{secret} appeared in the logs:\n{rest}"
        );
    }
    assert!(
        rest.contains("session ended"),
        "the session was logged:\n{rest}"
    );
}

#[tokio::test]
async fn a_sessions_log_lines_name_its_trace() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let (_dir, path) = config_file(&upstream);
    let fast = "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n";
    write_config(&path, &upstream, fast);
    let mut running = start_capturing(&path, "info").await;
    let proxy = running.proxy;
    let mut request = format!("ws://{proxy}/").into_client_request().unwrap();
    let traceparent = format!("00-{TRACE}-b7ad6b7169203331-01");
    request
        .headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let (mut ws, _) = connect_request(proxy, request).await.unwrap();
    // A hold, so that there is more than one line to follow.
    upstream.go_down_and_wait(1012).await;
    upstream.start_again(None).await;
    send_text(&mut ws, "whoami").await;
    assert_eq!(next_message(&mut ws).await.to_text().unwrap(), "app 1");
    drop(ws);
    signal(&running.child, "TERM");
    let _ = within("exit", running.child.wait()).await;
    let logs = running.logs().await;
    for message in [
        "upstream restarting: holding the client",
        "hold ended",
        "session ended",
    ] {
        let line = logs
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} line in\n{logs}"));
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["trace_id"], TRACE, "{line}");
    }
}

#[tokio::test]
async fn a_storm_of_bad_connections_logs_nothing_at_warn_or_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = UpstreamBuilder::new().start().await;
    let (_dir, path) = config_file(&upstream);
    let mut running = start_capturing(&path, "info").await;
    // Garbage, truncated requests, bad upgrades and plain hang-ups, 50 of each.
    for i in 0..200 {
        let mut tcp = tokio::net::TcpStream::connect(running.proxy).await.unwrap();
        let bytes: &[u8] = match i % 4 {
            0 => b"\x16\x03\x01\x00\xffgarbage\r\n\r\n",
            1 => b"GET / HTTP/1.1\r\nHost: x\r\n",
            2 => b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            _ => b"",
        };
        let _ = tcp.write_all(bytes).await;
        if i % 2 == 0 {
            // Garbage and bad upgrades get an answer (or a close); truncated heads and
            // silent connections are simply abandoned.
            let mut sink = Vec::new();
            let _ = within("an answer or a close", tcp.read_to_end(&mut sink)).await;
        }
    }
    let mut ws = client(running.proxy).await;
    send_text(&mut ws, "still serving").await;
    assert_eq!(
        next_message(&mut ws).await.to_text().unwrap(),
        "still serving"
    );
    drop(ws);
    signal(&running.child, "TERM");
    let _ = within("exit", running.child.wait()).await;
    let logs = running.logs().await;
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        loud.is_empty(),
        "warnings or errors for bad connections:\n{}",
        loud.join("\n")
    );
}
