//! Holding clients across upstream restarts (SPEC §3.3), against real sockets: a test
//! upstream goes down (1012 or a dropped TCP connection) while a client streams numbered
//! messages, and comes back; the client must never see a close.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Short backoff so tests resume in milliseconds; max_hold long enough never to fire.
const FAST: &str =
    "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\nmax_hold = \"20s\"\n";

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Reads echoes until `marker` arrives; panics on a close. Returns the echoes before it.
async fn read_until(client: &mut Client, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match next_message(client).await {
            Message::Text(t) if t.as_str() == marker => return seen,
            Message::Text(t) => seen.push(t.to_string()),
            other => panic!("client saw {other:?} (after {} echoes)", seen.len()),
        }
    }
}

/// The next close frame, with no wall-clock bound (for paused-clock tests).
async fn next_frame(client: &mut Client) -> (Option<u16>, String) {
    use futures_util::StreamExt;
    loop {
        match client.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                return (Some(u16::from(f.code)), f.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return (None, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

/// The story shared by the 1012 and the TCP-loss cases.
async fn restart_is_invisible(how: Control) {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], FAST).await;
    let mut client = connect(&proxy).await;
    for m in numbered(0..30) {
        send_text(&mut client, &m).await;
    }
    upstream
        .wait_for("the first 30 messages", |log| log.received.len() >= 30)
        .await;
    upstream.go_down(how.clone()).await;
    for m in numbered(30..60) {
        send_text(&mut client, &m).await;
    }
    upstream.start_again(None).await;
    for m in numbered(60..100) {
        send_text(&mut client, &m).await;
    }
    send_text(&mut client, "whoami").await;
    // Replies resume from the new instance, and the client never saw a close.
    let echoes = read_until(&mut client, "app 1").await;
    assert!(echoes.iter().all(|e| e.starts_with('m')), "{echoes:?}");

    let received: Vec<String> = upstream
        .texts()
        .into_iter()
        .filter(|t| t.starts_with('m'))
        .collect();
    let numbers: Vec<usize> = received.iter().map(|m| m[1..].parse().unwrap()).collect();
    if matches!(how, Control::Close(..)) {
        // The upstreams together received every message exactly once, in order: what the
        // old one read after sending its close is its own, the rest was buffered.
        assert_eq!(received, numbered(0..100));
    } else {
        // TCP loss: a message written in the instant before the loss was noticed went into
        // the dead connection (the old upstream's, like after a close). Nothing else is
        // lost, nothing is duplicated, order holds.
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "out of order or duplicated: {numbers:?}"
        );
        let missing: Vec<usize> = (0..100).filter(|i| !numbers.contains(i)).collect();
        assert!(
            missing.iter().all(|&i| (30..60).contains(&i)) && missing.len() <= 2,
            "lost {missing:?}"
        );
    }

    // The reconnect repeated the handshake with the same session id, counting resumes.
    let (first, second) = (upstream.handshake(0), upstream.handshake(1));
    assert_eq!(
        first.headers()["x-holdfast-session"],
        second.headers()["x-holdfast-session"]
    );
    assert!(first.headers().get("x-holdfast-resume").is_none());
    assert_eq!(second.headers()["x-holdfast-resume"], "1");
    // Both connections are spans of the one trace holdfast started for the session.
    let (first, second) = (traceparent(&first), traceparent(&second));
    assert_eq!(first[..35], second[..35], "{first} {second}");
    assert_ne!(first[36..52], second[36..52], "{first} {second}");
    assert!(first.ends_with("-01"), "{first}");

    // The hold paused the client's traffic, and that pause was observed once.
    let metric = |series| proxy.metric(series);
    assert_eq!(
        metric("holdfast_client_disruption_seconds_count{cause=\"hold\"}").await,
        1.0
    );
    let paused = metric("holdfast_client_disruption_seconds_sum{cause=\"hold\"}").await;
    let held = metric("holdfast_hold_duration_seconds_sum").await;
    assert!(
        paused > 0.0 && paused == held,
        "paused {paused} s, held {held} s"
    );
}

/// The `traceparent` an upstream handshake carried (`00-<trace>-<span>-<flags>`).
fn traceparent(handshake: &http::Request<()>) -> String {
    let values: Vec<_> = handshake.headers().get_all("traceparent").iter().collect();
    assert_eq!(values.len(), 1, "one traceparent: {values:?}");
    let value = values[0].to_str().unwrap().to_owned();
    assert_eq!(value.len(), 55, "{value}");
    value
}

#[tokio::test]
async fn the_clients_trace_goes_on_through_every_upstream_connection() {
    const CLIENTS: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], FAST).await;
    let mut request = proxy.url("/").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("traceparent", CLIENTS.parse().unwrap());
    headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    let (mut client, _) = connect_request(proxy.addr, request).await.unwrap();
    upstream.go_down_and_wait(1012).await;
    upstream.start_again(None).await;
    send_text(&mut client, "whoami").await;
    read_until(&mut client, "app 1").await;
    let (first, second) = (upstream.handshake(0), upstream.handshake(1));
    for handshake in [&first, &second] {
        let traceparent = traceparent(handshake);
        // The client's trace and flags; holdfast's own span as the parent.
        assert_eq!(traceparent[..36], CLIENTS[..36], "{traceparent}");
        assert_ne!(traceparent[36..52], CLIENTS[36..52], "{traceparent}");
        assert!(traceparent.ends_with("-01"), "{traceparent}");
        assert_eq!(handshake.headers()["tracestate"], "congo=t61rcWkgMzE");
    }
    assert_ne!(traceparent(&first), traceparent(&second));
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_without_the_clients_state() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let invalid = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
    let mut request = proxy.url("/").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("traceparent", invalid.parse().unwrap());
    headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    let (_client, _) = connect_request(proxy.addr, request).await.unwrap();
    let handshake = upstream.handshake(0);
    let traceparent = traceparent(&handshake);
    assert_ne!(traceparent[3..35].to_uppercase(), invalid[3..35]);
    assert!(!handshake.headers().contains_key("tracestate"));
}

#[tokio::test]
async fn a_1012_restart_is_invisible_to_the_client() {
    restart_is_invisible(Control::Close(1012, "deploying".into())).await;
}

#[tokio::test]
async fn a_dropped_upstream_connection_is_invisible_to_the_client() {
    restart_is_invisible(Control::Abort).await;
}

/// Many servers close with 1001 Going Away when they shut down (Python `websockets`'
/// `server.close()` does): held by default, like 1012.
#[tokio::test]
async fn a_1001_going_away_is_invisible_by_default() {
    restart_is_invisible(Control::Close(1001, "server shutting down".into())).await;
}

#[tokio::test]
async fn with_only_1012_configured_a_1001_reaches_the_client() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}codes = [1012]\n")).await;
    let mut client = connect(&proxy).await;
    upstream
        .go_down(Control::Close(1001, "server shutting down".into()))
        .await;
    assert_eq!(
        expect_close(&mut client).await,
        (Some(1001), "server shutting down".into())
    );
}

#[tokio::test]
async fn configured_restart_codes_hold_too() {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}codes = [1012, 4503]\n")).await;
    let mut client = connect(&proxy).await;
    upstream.go_down_and_wait(4503).await;
    upstream.start_again(None).await;
    send_text(&mut client, "whoami").await;
    assert!(read_until(&mut client, "app 1").await.is_empty());
}

#[tokio::test]
async fn a_second_restart_counts_resumes() {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], FAST).await;
    let mut client = connect(&proxy).await;
    for generation in 1..=2 {
        upstream.go_down_and_wait(1012).await;
        upstream.start_again(None).await;
        send_text(&mut client, "whoami").await;
        read_until(&mut client, &format!("app {generation}")).await;
    }
    assert_eq!(upstream.handshake(2).headers()["x-holdfast-resume"], "2");
}

#[tokio::test(start_paused = true)]
async fn the_client_is_told_give_up_code_after_max_hold() {
    // Paused clock: the default 30 s max_hold passes without a 30 s test.
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    let started = tokio::time::Instant::now();
    upstream.go_down(Control::Close(1012, String::new())).await;
    // `within` would time out first on the paused clock; bound the wait in virtual time.
    let close = tokio::time::timeout(std::time::Duration::from_secs(120), next_frame(&mut client));
    let (code, reason) = close.await.expect("a close within max_hold + backoff");
    assert_eq!(code, Some(1012));
    assert_eq!(reason, "upstream restarting; reconnect in 1-5s");
    let held = started.elapsed();
    assert!(
        held >= std::time::Duration::from_secs(30),
        "gave up after {held:?}"
    );
}

#[tokio::test]
async fn give_up_code_and_reason_are_configurable() {
    let upstream = UpstreamBuilder::new().start().await;
    let extra = "[restart]\nmax_hold = \"300ms\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\ngive_up_code = 4000\ngive_up_reason = \"try later\"\n";
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let mut client = connect(&proxy).await;
    upstream.go_down(Control::Close(1012, String::new())).await;
    assert_eq!(
        expect_close(&mut client).await,
        (Some(4000), "try later".into())
    );
}

#[tokio::test]
async fn a_buffer_overflow_gives_up_instead_of_growing() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}buffer_messages = 3\n")).await;
    let mut client = connect(&proxy).await;
    upstream.go_down(Control::Close(1012, String::new())).await;
    upstream
        .wait_for("the old connection to close", |log| !log.closes.is_empty())
        .await;
    for m in numbered(0..4) {
        // The fourth message overflows; the send itself may race the close.
        let _ = client.send(Message::text(m)).await;
    }
    assert_eq!(expect_close(&mut client).await.0, Some(1012));
}

#[tokio::test]
async fn a_byte_bound_overflow_gives_up_too() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}buffer_bytes = 100\n")).await;
    let mut client = connect(&proxy).await;
    upstream.go_down(Control::Close(1012, String::new())).await;
    upstream
        .wait_for("the old connection to close", |log| !log.closes.is_empty())
        .await;
    let _ = client.send(Message::text("x".repeat(101))).await;
    assert_eq!(expect_close(&mut client).await.0, Some(1012));
}

/// A crash-looping instance: it accepts the handshake and resets the connection at once.
/// Nothing held is lost on it — a message leaves the hold buffer only once it was written —
/// and the next healthy instance gets every held message once, in order, after the replayed
/// opening message.
#[tokio::test]
async fn messages_held_for_an_upstream_that_dies_after_its_handshake_go_to_the_next() {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}replay_first = 1\n")).await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "hello").await;
    upstream
        .wait_for("the opening message", |log| log.received.len() == 1)
        .await;
    upstream.go_down_and_wait(1012).await;
    for m in numbered(0..50) {
        send_text(&mut client, &m).await;
    }
    let crashing = UpstreamBuilder::new()
        .name("app")
        .after_handshake(AfterHandshake::Reset);
    upstream.start_again(Some(crashing)).await;
    // Two tries reach the crashing instance and fail while delivering.
    upstream
        .wait_for("two handshakes with the crashing instance", |log| {
            log.handshakes.len() >= 3
        })
        .await;
    upstream.go_down(Control::Abort).await;
    upstream.start_again(None).await;
    send_text(&mut client, "whoami").await;
    let echoes = read_until(&mut client, "app 2").await;
    let mut expected = vec!["hello".to_owned()];
    expected.extend(numbered(0..50));
    // The first instance's echo of "hello", then the healthy one's echoes.
    assert_eq!(
        echoes[1..],
        expected,
        "replayed, then every held message once"
    );
    assert_eq!(
        upstream.texts(),
        [
            vec!["hello".to_owned()],
            expected,
            vec!["whoami".to_owned()]
        ]
        .concat(),
        "the crashing instance read nothing; the healthy one got everything once"
    );
}

#[tokio::test]
async fn replay_first_resends_the_opening_messages_to_every_new_upstream() {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}replay_first = 2\n")).await;
    let mut client = connect(&proxy).await;
    for m in ["auth token", "subscribe prices", "m0"] {
        send_text(&mut client, m).await;
    }
    upstream
        .wait_for("3 messages", |log| log.received.len() >= 3)
        .await;
    upstream.go_down_and_wait(1012).await;
    send_text(&mut client, "m1").await;
    upstream.start_again(None).await;
    send_text(&mut client, "whoami").await;
    read_until(&mut client, "app 1").await;
    assert_eq!(
        upstream.texts(),
        [
            "auth token",
            "subscribe prices",
            "m0",
            "auth token",
            "subscribe prices",
            "m1",
            "whoami"
        ]
    );
}

#[tokio::test]
async fn replayed_messages_read_during_a_hold_are_delivered_once() {
    // The upstream restarts before the client has sent its opening messages.
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{FAST}replay_first = 2\n")).await;
    let mut client = connect(&proxy).await;
    upstream.go_down(Control::Close(1012, String::new())).await;
    upstream
        .wait_for("the old connection to close", |log| !log.closes.is_empty())
        .await;
    send_text(&mut client, "auth token").await;
    send_text(&mut client, "m0").await;
    upstream.start_again(None).await;
    send_text(&mut client, "whoami").await;
    read_until(&mut client, "app 1").await;
    assert_eq!(upstream.texts(), ["auth token", "m0", "whoami"]);
}

#[tokio::test]
async fn a_healthy_second_endpoint_takes_over_without_waiting_for_backoff() {
    let a = UpstreamBuilder::new().name("a").start().await;
    let b = UpstreamBuilder::new().name("b").start().await;
    // A backoff this long would time the test out: failover must not wait for it.
    let extra = "[restart]\nbackoff_initial = \"30s\"\nbackoff_max = \"60s\"\nmax_hold = \"2m\"\n";
    let proxy = Proxy::start(&[a.url(), b.url()], extra).await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "whoami").await;
    let first = match next_message(&mut client).await {
        Message::Text(t) => t.to_string(),
        other => panic!("{other:?}"),
    };
    let (down, other_name) = if first == "a 0" {
        (&a, "b 0")
    } else {
        (&b, "a 0")
    };
    down.go_down_and_wait(1012).await;
    send_text(&mut client, "whoami").await;
    read_until(&mut client, other_name).await;
}

#[tokio::test]
async fn a_new_upstream_with_another_subprotocol_is_not_accepted() {
    let upstream = UpstreamBuilder::new()
        .name("app")
        .protocol("v1")
        .start()
        .await;
    let extra =
        "[restart]\nmax_hold = \"500ms\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\n";
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let mut request = proxy.url("/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "v1, v2".parse().unwrap());
    let (mut client, _) = connect_request(proxy.addr, request).await.unwrap();
    upstream.go_down(Control::Close(1012, String::new())).await;
    upstream
        .start_again(Some(UpstreamBuilder::new().name("app").protocol("v2")))
        .await;
    // Every try reaches the new instance and is rejected for its subprotocol; the hold
    // runs out and the client is told.
    assert_eq!(expect_close(&mut client).await.0, Some(1012));
    let handshakes = upstream.log.lock().unwrap().handshakes.len();
    assert!(
        handshakes >= 2,
        "the new instance was tried ({handshakes} handshakes)"
    );
}

#[tokio::test]
async fn an_upstream_refusing_the_resumed_session_ends_the_hold_at_once() {
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(&[upstream.url()], FAST).await;
    let mut client = connect(&proxy).await;
    upstream.go_down(Control::Close(1012, String::new())).await;
    upstream
        .start_again(Some(UpstreamBuilder::new().refuse(403, "session revoked")))
        .await;
    // max_hold is 20 s: a close well before DEADLINE shows the refusal ended the hold.
    assert_eq!(expect_close(&mut client).await.0, Some(1012));
}

#[tokio::test]
async fn a_client_closing_while_held_gets_its_close_handshake() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], FAST).await;
    let mut client = connect(&proxy).await;
    upstream.go_down(Control::Close(1012, String::new())).await;
    upstream
        .wait_for("the old connection to close", |log| !log.closes.is_empty())
        .await;
    client.send(Message::Close(None)).await.unwrap();
    assert_eq!(expect_close(&mut client).await, (None, String::new()));
}

#[tokio::test]
async fn with_hold_off_a_restart_reaches_the_client() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[restart]\nhold = false\n").await;
    let mut client = connect(&proxy).await;
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    assert_eq!(
        expect_close(&mut client).await,
        (Some(1012), "deploying".into())
    );
}

#[tokio::test]
async fn reconnects_to_one_address_are_paced() {
    const SESSIONS: usize = 12;
    const TURNS: usize = 3;
    let upstream = UpstreamBuilder::new().name("app").start().await;
    // No jitter (initial = max): every held session retries at the same instant.
    let extra = format!(
        "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"20ms\"\nmax_hold = \"20s\"\nmax_reconnecting = {TURNS}\n"
    );
    let proxy = Proxy::start(&[upstream.url()], &extra).await;
    let mut clients = connect_relaying(&proxy, SESSIONS).await;

    restart_under(&upstream, &mut clients, "whoami").await;
    // The new instance is slow to handshake: without pacing all twelve would be inside
    // its handshake at once.
    upstream.log.lock().unwrap().max_handshaking = 0;
    let slow = UpstreamBuilder::new()
        .name("app")
        .handshake_delay(std::time::Duration::from_millis(100));
    upstream.start_again(Some(slow)).await;
    within("a try waiting for its turn", async {
        while proxy.metric("holdfast_reconnects_waiting").await < 1.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for client in &mut clients {
        assert_eq!(next_message(client).await, Message::text("app 1"));
    }
    let most = upstream.log.lock().unwrap().max_handshaking;
    assert!(
        (1..=TURNS).contains(&most),
        "{most} reconnects in the upstream's handshake at once (max_reconnecting = {TURNS})"
    );
    assert_eq!(proxy.metric("holdfast_reconnects_waiting").await, 0.0);
    // A hold ends when the new upstream confirms the delivery (its pong), which can come a
    // moment after the reply the client already has.
    within("every hold to end resumed", async {
        while proxy
            .metric("holdfast_holds_total{outcome=\"resumed\"}")
            .await
            < SESSIONS as f64
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        proxy
            .metric("holdfast_holds_total{outcome=\"resumed\"}")
            .await,
        SESSIONS as f64
    );
}
