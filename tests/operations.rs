//! Operating holdfast (SPEC §3.5, §4): metrics counted where outcomes happen, readiness
//! during a drain, draining live clients, live reloads (rules, invalid files, certificates).

mod support;

use futures_util::SinkExt;
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Polls `proxy`'s metrics until `series` has `value` (counters are updated as sessions
/// close, a moment after the client has seen the close).
async fn expect_metric(proxy: &Proxy, series: &str, value: f64) {
    within(&format!("{series} == {value}"), async {
        loop {
            if proxy.metric(series).await == value {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn metrics_count_holds_rewrites_policy_closes_and_rejections() {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let extra = "[restart]\nbackoff_initial = \"10ms\"\nbackoff_max = \"50ms\"\n\
                 [[rewrite]]\ndirection = \"to_client\"\nfrom = \"4000-4099\"\nto = 1008\n";
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let (status, body) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# HELP holdfast_holds_total"), "{body}");

    // A session held across a restart and resumed, then closed by the upstream with a code
    // the rewrite table turns into 1008.
    let mut client = connect(&proxy).await;
    send_text(&mut client, "hello").await;
    assert_eq!(next_message(&mut client).await, Message::text("hello"));
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    upstream
        .wait_for("the proxy's close reply", |log| !log.closes.is_empty())
        .await;
    upstream.start_again(None).await;
    send_text(&mut client, "whoami").await;
    assert_eq!(next_message(&mut client).await, Message::text("app 1"));
    expect_metric(&proxy, "holdfast_sessions_active", 1.0).await;
    send_text(&mut client, "close 4001 quota exceeded").await;
    assert_eq!(expect_close(&mut client).await.0, Some(1008));

    // A handshake with the wrong version.
    let bad_version = String::from_utf8(upgrade_request(""))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    let answer = raw_exchange(proxy.addr, bad_version.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");

    expect_metric(
        &proxy,
        "holdfast_sessions_total{outcome=\"closed\",route=\"default\",protocol=\"http1\"}",
        1.0,
    )
    .await;
    expect_metric(&proxy, "holdfast_sessions_active", 0.0).await;
    for (series, value) in [
        (
            "holdfast_holds_total{outcome=\"resumed\",route=\"default\"}",
            1.0,
        ),
        ("holdfast_hold_duration_seconds_count", 1.0),
        ("holdfast_upstream_connects_total{result=\"ok\"}", 2.0),
        (
            "holdfast_close_codes_total{direction=\"to_client\",code=\"1008\",original=\"4001\"}",
            1.0,
        ),
        (
            "holdfast_policy_violations_total{policy=\"unspecified\",source=\"upstream\"}",
            1.0,
        ),
        (
            "holdfast_handshakes_rejected_total{status=\"426\",route=\"default\"}",
            1.0,
        ),
        ("holdfast_sessions_total{outcome=\"rejected\"}", 1.0),
        ("holdfast_messages_total{direction=\"to_upstream\"}", 3.0),
        ("holdfast_messages_total{direction=\"to_client\"}", 2.0),
        ("holdfast_bytes_total{direction=\"to_client\"}", 10.0),
        ("holdfast_held_messages", 0.0),
    ] {
        assert_eq!(proxy.metric(series).await, value, "{series}");
    }
    assert_eq!(proxy.admin_get("/healthz").await.0, 200);
    assert_eq!(proxy.admin_get("/nothing").await.0, 404);
}

#[tokio::test]
async fn session_durations_say_how_each_client_saw_its_end() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    // The client closes first (1000), the upstream closes (4001), a client vanishes.
    let mut closing = connect(&proxy).await;
    let mut closed = connect(&proxy).await;
    let vanishing = connect(&proxy).await;
    closing
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "done".into(),
        })))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut closing).await.0, Some(1000));
    send_text(&mut closed, "close 4001 quota exceeded").await;
    assert_eq!(expect_close(&mut closed).await.0, Some(4001));
    drop(vanishing);
    expect_metric(
        &proxy,
        "holdfast_sessions_total{outcome=\"closed\",route=\"default\"}",
        3.0,
    )
    .await;
    for end in ["1000", "4xxx", "1006"] {
        let count =
            format!("holdfast_session_duration_seconds_count{{end=\"{end}\",route=\"default\"}}");
        assert_eq!(proxy.metric(&count).await, 1.0, "{count}");
        // Sessions of seconds (a close handshake's bound included): in the minute's bucket
        // and every one above it.
        for le in ["60", "86400", "+Inf"] {
            let bucket =
                format!("holdfast_session_duration_seconds_bucket{{end=\"{end}\",le=\"{le}\"}}");
            assert_eq!(proxy.metric(&bucket).await, 1.0, "{bucket}");
        }
    }
    assert_eq!(
        proxy
            .metric("holdfast_session_duration_seconds_count")
            .await,
        3.0
    );
    // No hold, no resume: nothing paused a client.
    assert_eq!(
        proxy
            .metric("holdfast_client_disruption_seconds_count")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_drain_flips_readiness_tells_clients_and_waits_for_them() {
    let upstream = UpstreamBuilder::new().start().await;
    let mut proxy = Proxy::start(&[upstream.url()], "").await;
    assert_eq!(proxy.admin_get("/readyz").await, (200, "ready\n".into()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&proxy).await);
    }
    // A client that upgrades and then never reads: its close handshake cannot complete, so
    // the drain lasts long enough (CLOSE_TIMEOUT) to watch readiness.
    let mut stubborn = TcpStream::connect(proxy.addr).await.unwrap();
    stubborn.write_all(&upgrade_request("")).await.unwrap();
    expect_metric(&proxy, "holdfast_sessions_active", 4.0).await;

    proxy.begin_shutdown();
    within("readiness to turn false", async {
        while proxy.admin_get("/readyz").await.0 != 503 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for client in &mut clients {
        assert_eq!(
            expect_close(client).await,
            (Some(1012), "proxy restarting; reconnect in 1-5s".into())
        );
    }
    upstream
        .wait_for("1001 to every upstream", |log| log.closes.len() >= 3)
        .await;
    let closes = upstream.log.lock().unwrap().closes.clone();
    assert!(
        closes
            .iter()
            .all(|c| c.as_ref().map(|f| u16::from(f.code)) == Some(1001))
    );
    // New connections are refused while draining.
    let left = within("the drain to end", &mut proxy.done).await.unwrap();
    assert_eq!(left, 0, "every session closed within drain_timeout");
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "the listener is closed"
    );
    drop(stubborn);
}

#[tokio::test]
async fn a_drain_that_outlasts_drain_timeout_reports_the_sessions_left() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[shutdown]\ndrain_timeout = \"200ms\"\n").await;
    let mut stubborn = TcpStream::connect(proxy.addr).await.unwrap();
    stubborn.write_all(&upgrade_request("")).await.unwrap();
    expect_metric(&proxy, "holdfast_sessions_active", 1.0).await;
    let left = proxy.shutdown().await;
    assert!(left >= 1, "the stubborn session was still open: {left}");
}

fn config_file(
    dir: &tempfile::TempDir,
    upstream: &TestUpstream,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("proxy.toml");
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream]\nendpoints = [\"{}\"]\n{extra}",
        upstream.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_reload_changes_the_rules_of_a_live_session() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "hello").await;
    assert_eq!(next_message(&mut client).await, Message::text("hello"));

    let dir = tempfile::tempdir().unwrap();
    let rule = "[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = 4999\nreason = \"rewritten live\"\n";
    let path = config_file(&dir, &upstream, rule);
    proxy.handle.reload_file(&path).expect("valid config");
    assert_eq!(
        proxy
            .metric("holdfast_config_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );

    // The session that was open before the reload follows the new rule.
    send_text(&mut client, "close 4000 original").await;
    assert_eq!(
        expect_close(&mut client).await,
        (Some(4999), "rewritten live".into())
    );
}

#[tokio::test]
async fn a_reload_turns_the_rate_limit_on_for_a_live_session() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    // No limit yet: the session has admitted messages before the reload.
    for i in 0..5 {
        send_text(&mut client, &format!("before {i}")).await;
        assert_eq!(
            next_message(&mut client).await,
            Message::text(format!("before {i}"))
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let limit = "[policy.rate_limit]\nmessages_per_second = 1\nburst = 2\n";
    proxy
        .handle
        .reload_file(&config_file(&dir, &upstream, limit))
        .expect("valid config");

    for i in 0..3 {
        // The third message is over the new limit; the proxy may close before it is written.
        let _ = client.send(Message::text(format!("after {i}"))).await;
    }
    let (code, reason) = loop {
        match next_message(&mut client).await {
            Message::Close(f) => {
                let f = f.expect("a close with a code");
                break (u16::from(f.code), f.reason.to_string());
            }
            _ => continue, // echoes of the two admitted
        }
    };
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate-limit"), "{reason}");
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_running_config() {
    let upstream = UpstreamBuilder::new().start().await;
    let rule = "[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = 4999\n";
    let proxy = Proxy::start(&[upstream.url()], rule).await;
    let mut client = connect(&proxy).await;

    let last_ok = "holdfast_config_last_reload_successful";
    assert_eq!(proxy.metric(last_ok).await, 1.0, "the start's file runs");
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        &dir,
        &upstream,
        "[[rewrite]]\ndirection = \"to_client\"\nfrom = 4000\nto = 1006\n",
    );
    let error = proxy
        .handle
        .reload_file(&path)
        .expect_err("1006 may not be sent");
    assert_eq!(error.problems[0].key, "rewrite[0].to");
    assert_eq!(
        proxy
            .metric("holdfast_config_reloads_total{result=\"error\"}")
            .await,
        1.0
    );
    assert!(proxy.handle.is_ready());
    assert_eq!(
        proxy.metric(last_ok).await,
        0.0,
        "the file is not what runs"
    );

    send_text(&mut client, "close 4000 original").await;
    assert_eq!(
        expect_close(&mut client).await,
        (Some(4999), "original".into())
    );
    // Mended, the file runs again.
    let path = config_file(&dir, &upstream, rule);
    proxy.handle.reload_file(&path).expect("a valid file");
    assert_eq!(proxy.metric(last_ok).await, 1.0);
}

#[tokio::test]
async fn a_certificate_reload_applies_to_new_connections() {
    let (first, second) = (TestCert::new(), TestCert::new());
    let upstream = UpstreamBuilder::new().start().await;
    let tls = |cert: &TestCert| {
        format!(
            "[listen.tls]\ncert = {:?}\nkey = {:?}\n",
            cert.cert_path.display().to_string(),
            cert.key_path.display().to_string()
        )
    };
    let proxy = Proxy::start(&[upstream.url()], &tls(&first)).await;

    let connect_tls = |cert: &TestCert| {
        let connector = cert.client_connector();
        let addr = proxy.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
        }
    };
    let old_session_tls = connect_tls(&first)
        .await
        .expect("the first certificate is served");
    let request = format!("wss://localhost:{}/", proxy.addr.port())
        .into_client_request()
        .unwrap();
    let (mut old_session, _) = tokio_tungstenite::client_async(request, old_session_tls)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, &upstream, &tls(&second));
    proxy.handle.reload_file(&path).unwrap();

    assert!(
        connect_tls(&first).await.is_err(),
        "the old certificate is no longer served"
    );
    assert!(
        connect_tls(&second).await.is_ok(),
        "new connections get the new certificate"
    );
    // The session opened before the reload is untouched.
    old_session.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        next_message(&mut old_session).await,
        Message::text("still here")
    );
}
