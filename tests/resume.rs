//! Resumable sessions (`holdfast.resume.v1`, docs/RESUME.md) against real sockets: the
//! negotiation, the hello, envelopes both ways, acknowledgements, and hostile clients.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens a WebSocket through the proxy offering `protocols`: the client and the 101.
async fn open(
    proxy: &Proxy,
    protocols: &str,
) -> (
    Client,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let mut request = proxy.url("/feed").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    connect_request(proxy.addr, request)
        .await
        .expect("handshake through the proxy")
}

/// The next text frame's text (pings and pongs skipped).
async fn next_text(client: &mut Client) -> String {
    match next_message(client).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resumable_client_gets_a_hello_and_envelopes_both_ways() {
    let upstream = UpstreamBuilder::new().protocol("chat.v2").start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let (mut client, response) = open(&proxy, "holdfast.resume.v1, chat.v2").await;
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "holdfast.resume.v1"
    );
    // The upstream saw only the application's offer.
    assert_eq!(
        upstream.handshake(0).headers()["sec-websocket-protocol"],
        "chat.v2"
    );

    let hello = next_text(&mut client).await;
    let hello: serde_json::Value =
        serde_json::from_str(hello.strip_prefix('h').expect("the hello first")).unwrap();
    assert_eq!(hello["v"], 1);
    assert_eq!(
        hello["protocol"], "chat.v2",
        "the application's subprotocol"
    );
    assert_eq!(hello["state"], "new");
    assert_eq!(hello["received"], 0);
    assert_eq!(
        hello["session"].as_str().unwrap(),
        upstream.handshake(0).headers()["x-holdfast-session"]
    );
    assert!(hello["token"].as_str().is_some_and(|t| t.len() > 40));

    // 40 messages as envelopes: the upstream gets them plain, and echoes them back, which
    // holdfast sends enveloped; it acknowledges every 16 at once, the rest after 100 ms.
    for i in 0..40 {
        client
            .send(Message::text(format!("dmessage {i}")))
            .await
            .unwrap();
    }
    let mut echoes = Vec::new();
    let mut acks = Vec::new();
    while echoes.len() < 40 || acks.last() != Some(&40) {
        let frame = next_text(&mut client).await;
        match frame.split_at(1) {
            ("d", text) => echoes.push(text.to_owned()),
            ("a", count) => acks.push(count.parse::<u64>().unwrap()),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    let expected: Vec<String> = (0..40).map(|i| format!("message {i}")).collect();
    assert_eq!(echoes, expected);
    assert_eq!(
        upstream.texts(),
        expected,
        "the upstream saw plain messages"
    );
    assert!(acks.starts_with(&[16, 32]), "{acks:?}");
    // Binary messages keep their type.
    client
        .send(Message::binary(b"d\x00\x01\xff".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::binary(b"d\x00\x01\xff".to_vec())
    );
    assert_eq!(
        upstream.log.lock().unwrap().received.last(),
        Some(&Message::binary(vec![0, 1, 0xff]))
    );
}

#[tokio::test]
async fn garbage_envelopes_are_a_protocol_error_and_nothing_is_relayed() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    for garbage in [
        "xhello",
        "hello from a plain client",
        "a-1",
        "a99",
        "pnot now",
    ] {
        let (mut client, _) = open(&proxy, "holdfast.resume.v1").await;
        assert!(next_text(&mut client).await.starts_with('h'));
        client.send(Message::text(garbage)).await.unwrap();
        assert_eq!(expect_close(&mut client).await.0, Some(1002), "{garbage}");
    }
    assert!(upstream.texts().is_empty(), "{:?}", upstream.texts());
}

#[tokio::test]
async fn with_resume_off_the_offer_is_the_applications_alone() {
    let upstream = UpstreamBuilder::new().protocol("chat.v2").start().await;
    let proxy = Proxy::start(&[upstream.url()], "[resume]\nenabled = false\n").await;
    let (mut client, response) = open(&proxy, "holdfast.resume.v1, chat.v2").await;
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    assert_eq!(
        upstream.handshake(0).headers()["sec-websocket-protocol"],
        "chat.v2"
    );
    send_text(&mut client, "plain").await;
    assert_eq!(next_message(&mut client).await, Message::text("plain"));
}

/// The client's network drops three times while both sides stream: the client keeps its
/// session (no close), both directions arrive exactly once and in order, and the upstream
/// saw one handshake.
#[tokio::test]
async fn a_client_whose_connection_is_cut_three_times_loses_nothing() {
    use holdfast::client::{Received, ResumableClient};
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let relay = CuttingRelay::start(proxy.addr).await;
    let mut client = ResumableClient::connect(relay.addr, "/feed", &[])
        .await
        .expect("a resumable session");
    // The upstream pushes 100 messages, one every 20 ms, while the client sends its own.
    client.send(Message::text("push 100 20")).await.unwrap();
    let mut pushed = Vec::new();
    let mut echoes = Vec::new();
    let mut sent = 0;
    within("both streams", async {
        while pushed.len() < 100 || echoes.len() < 100 {
            if sent < 100 {
                client
                    .send(Message::text(format!("c-{sent}")))
                    .await
                    .unwrap();
                sent += 1;
                if [25, 50, 75].contains(&sent) {
                    relay.cut();
                }
            }
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(20), client.next()).await;
            match next {
                Ok(Ok(Received::Message(Message::Text(t)))) if t.starts_with("push-") => {
                    pushed.push(t.to_string())
                }
                Ok(Ok(Received::Message(Message::Text(t)))) => echoes.push(t.to_string()),
                Ok(Ok(other)) => panic!("the client saw {other:?}"),
                Ok(Err(e)) => panic!("the client gave up: {e}"),
                Err(_) => {}
            }
        }
    })
    .await;
    let expected_push: Vec<String> = (0..100).map(|i| format!("push-{i}")).collect();
    let expected_echoes: Vec<String> = std::iter::once("push 100 20".to_owned())
        .chain((0..100).map(|i| format!("c-{i}")))
        .collect();
    assert_eq!(
        pushed, expected_push,
        "upstream → client, exactly once, in order"
    );
    assert_eq!(
        echoes,
        expected_echoes[1..],
        "echoes of what the client sent"
    );
    assert_eq!(
        upstream.texts(),
        expected_echoes,
        "client → upstream, exactly once, in order"
    );
    assert!(client.reconnects >= 3, "{} reconnects", client.reconnects);
    assert_eq!(
        upstream.log.lock().unwrap().handshakes.len(),
        1,
        "one upstream handshake"
    );
    assert_eq!(
        proxy
            .metric("holdfast_client_resumes_total{outcome=\"reattached\"}")
            .await,
        client.reconnects as f64
    );
    // Each return of a client that holdfast saw go is a pause of its traffic (a client
    // back before its loss was noticed here is not: when it began is unknown).
    let paused = proxy
        .metric("holdfast_client_disruption_seconds_count{cause=\"reattach\"}")
        .await;
    assert!(
        paused >= 1.0 && paused <= client.reconnects as f64,
        "{paused} of {} returns",
        client.reconnects
    );
    let seconds = proxy
        .metric("holdfast_client_disruption_seconds_sum{cause=\"reattach\"}")
        .await;
    assert!(seconds > 0.0 && seconds < 10.0, "{seconds} s away in all");
}

/// A proxy whose resume key the test knows (so it can mint tokens), with `extra` config.
async fn proxy_with_key(
    upstream: &TestUpstream,
    extra: &str,
) -> (Proxy, holdfast::resume::token::Key, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = [7u8; 48];
    let path = dir.path().join("resume.key");
    std::fs::write(&path, secret).unwrap();
    let config = format!(
        "[resume]\nkey_file = {:?}\n{extra}",
        path.display().to_string()
    );
    let proxy = Proxy::start(&[upstream.url()], &config).await;
    (proxy, holdfast::resume::token::Key::new(&secret), dir)
}

/// A returning client's handshake with `token`, `received` and extra header lines: the
/// first frame it gets (the hello's text, or the close).
async fn come_back(proxy: &Proxy, token: &str, received: u64, headers: &[(&str, &str)]) -> Message {
    let mut request = proxy.url("/feed").into_client_request().unwrap();
    let offer = format!("holdfast.resume.v1, holdfast.t.{token}, holdfast.r.{received}");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offer.parse().unwrap());
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (mut client, _) = connect_request(proxy.addr, request).await.expect("a 101");
    next_message(&mut client).await
}

fn hello_of(message: &Message) -> serde_json::Value {
    match message {
        Message::Text(t) if t.starts_with('h') => serde_json::from_str(&t[1..]).unwrap(),
        other => panic!("expected a hello, got {other:?}"),
    }
}

fn refused_because(message: &Message) -> String {
    let Message::Close(Some(frame)) = message else {
        panic!("expected a close, got {message:?}");
    };
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    let context: serde_json::Value = serde_json::from_str(&frame.reason).unwrap();
    assert_eq!(context["policy"], "resume-rejected");
    context["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn forged_altered_expired_and_foreign_tokens_are_refused() {
    use holdfast::resume::token::{Claims, Key, credentials};
    let upstream = UpstreamBuilder::new().start().await;
    let (proxy, key, _dir) = proxy_with_key(&upstream, "").await;
    let (mut owner, _) = open(&proxy, "holdfast.resume.v1").await;
    let hello = hello_of(&next_message(&mut owner).await);
    let token = hello["token"].as_str().unwrap().to_owned();
    let session = u64::from_str_radix(hello["session"].as_str().unwrap(), 16).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let claims = Claims {
        session,
        issued_ms: now,
        expires_ms: now + 60_000,
        resumes: 0,
        credentials: credentials(None, None),
        client_received: 0,
        protocol: None,
        moving: false,
        trace: None,
    };
    let other_key = Key::new(&[9u8; 48]).issue(&claims);
    let mut altered = token.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let expired = key.issue(&Claims {
        expires_ms: now - 1,
        ..claims.clone()
    });
    // (what, the token, extra headers, what the refusal says)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("another deployment's key", other_key, vec![], "not issued"),
        ("one character changed", altered, vec![], ""),
        ("expired", expired, vec![], "expired"),
        ("garbage", "!!!".into(), vec![], "malformed"),
        (
            "the right token, other credentials",
            token.clone(),
            vec![("authorization", "Bearer someone-else")],
            "credentials",
        ),
    ];
    for (what, token, headers, because) in cases {
        let why = refused_because(&come_back(&proxy, &token, 0, &headers).await);
        assert!(why.contains(because), "{what}: {why}");
    }
    assert_eq!(
        proxy
            .metric("holdfast_client_resumes_total{outcome=\"rejected\"}")
            .await,
        5.0
    );
    // The owner's session is untouched by all of that.
    owner.send(Message::text("dstill here")).await.unwrap();
    assert_eq!(next_message(&mut owner).await, Message::text("dstill here"));
}

#[tokio::test]
async fn the_last_attach_wins() {
    let upstream = UpstreamBuilder::new().start().await;
    let (proxy, _key, _dir) = proxy_with_key(&upstream, "").await;
    let (mut first, _) = open(&proxy, "holdfast.resume.v1").await;
    let token = hello_of(&next_message(&mut first).await)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A second client presents the same token while the first is still attached.
    let hello = hello_of(&come_back(&proxy, &token, 0, &[]).await);
    assert_eq!(hello["state"], "attached");
    let (code, reason) = expect_close(&mut first).await;
    assert_eq!(code, Some(1008));
    assert!(reason.contains("resume-replaced"), "{reason}");
}

/// Waits until `proxy` counts a client away.
async fn until_away(proxy: &Proxy) {
    within("the away gauge", async {
        while proxy.metric("holdfast_clients_away").await < 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_comes_back_ends_its_session_after_client_hold() {
    let upstream = UpstreamBuilder::new().start().await;
    let (proxy, _key, _dir) = proxy_with_key(&upstream, "client_hold = \"300ms\"\n").await;
    let relay = CuttingRelay::start(proxy.addr).await;
    let _client = holdfast::client::ResumableClient::connect(relay.addr, "/", &[])
        .await
        .unwrap();
    relay.cut();
    until_away(&proxy).await;
    assert_eq!(
        upstream.first_close().await,
        Some((1001, "client did not come back".into()))
    );
    assert_eq!(
        proxy
            .metric("holdfast_client_resumes_total{outcome=\"expired\"}")
            .await,
        1.0
    );
    assert_eq!(proxy.metric("holdfast_clients_away").await, 0.0);
}

#[tokio::test]
async fn a_session_that_ends_while_its_client_is_away_ends_client_gone() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let relay = CuttingRelay::start(proxy.addr).await;
    let _client = holdfast::client::ResumableClient::connect(relay.addr, "/", &[])
        .await
        .unwrap();
    relay.cut();
    until_away(&proxy).await;
    // The upstream ends the session (1000, not a restart code): the close it would have
    // been sent reaches nobody.
    upstream.go_down(Control::Close(1000, "done".into())).await;
    let ended = "holdfast_session_duration_seconds_count";
    within("the session's end", async {
        while proxy.metric(ended).await < 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        proxy
            .metric("holdfast_session_duration_seconds_count{end=\"client_gone\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_client_away_while_the_upstream_floods_gets_the_give_up_close() {
    let upstream = UpstreamBuilder::new().start().await;
    let (proxy, _key, _dir) =
        proxy_with_key(&upstream, "buffer_messages = 10\nclient_hold = \"30s\"\n").await;
    let relay = CuttingRelay::start(proxy.addr).await;
    let mut client = holdfast::client::ResumableClient::connect(relay.addr, "/", &[])
        .await
        .unwrap();
    client.send(Message::text("push 50 1")).await.unwrap();
    upstream
        .wait_for("the push to start", |log| !log.received.is_empty())
        .await;
    relay.cut();
    // Over the buffer's 10 messages while away: the session ends; the upstream is told.
    assert_eq!(
        upstream.first_close().await,
        Some((1001, "client did not come back".into()))
    );
    assert_eq!(
        proxy
            .metric("holdfast_client_resumes_total{outcome=\"overflow\"}")
            .await,
        1.0
    );
    // The client comes back to a session that is gone: the give-up close.
    let token = client.token.clone().unwrap();
    let Message::Close(Some(frame)) = come_back(&proxy, &token, 0, &[]).await else {
        panic!("a close");
    };
    assert_eq!(u16::from(frame.code), 1012);
}

/// Two holdfasts behind a load balancer (the relay), sharing a resume key. The first one
/// drains mid-stream: its client is told to move, reconnects through the balancer to the
/// second, which opens the upstream again with the same session id and X-Holdfast-Resume.
/// No close reaches the client; nothing is lost or duplicated either way; the first
/// holdfast drains to zero sessions. Then the upstream restarts: the moved session is held
/// like any other, and its next upstream gets X-Holdfast-Resume 2.
#[tokio::test]
async fn a_draining_holdfast_moves_its_client_to_another_without_a_close() {
    use holdfast::client::{Received, ResumableClient};
    let upstream = UpstreamBuilder::new().start().await;
    let (first, _key, dir) = proxy_with_key(&upstream, "").await;
    let key_file = dir.path().join("resume.key");
    let second = Proxy::start(
        &[upstream.url()],
        &format!(
            "[resume]\nkey_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .await;
    let balancer = CuttingRelay::start(first.addr).await;
    let mut client = ResumableClient::connect(balancer.addr, "/feed", &[])
        .await
        .expect("a resumable session");
    let mut first = Some(first);
    let mut echoes = Vec::new();
    within("the stream across the move", async {
        for i in 0..60 {
            client.send(Message::text(format!("c-{i}"))).await.unwrap();
            if i == 30 {
                // The rollout: new connections go to the second; the first drains.
                balancer.point_at(second.addr);
                first.as_mut().unwrap().begin_shutdown();
            }
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(20), client.next()).await;
            match next {
                Ok(Ok(Received::Message(Message::Text(t)))) => echoes.push(t.to_string()),
                Ok(Ok(other)) => panic!("the client saw {other:?}"),
                Ok(Err(e)) => panic!("the client gave up: {e}"),
                Err(_) => {}
            }
        }
        while echoes.len() < 60 {
            match client.next().await {
                Ok(Received::Message(Message::Text(t))) => echoes.push(t.to_string()),
                other => panic!("the client saw {other:?}"),
            }
        }
    })
    .await;
    let expected: Vec<String> = (0..60).map(|i| format!("c-{i}")).collect();
    assert_eq!(echoes, expected, "every echo once, in order, no close");
    assert_eq!(
        upstream.texts(),
        expected,
        "the upstreams got every message once, in order"
    );
    let (old, new) = (upstream.handshake(0), upstream.handshake(1));
    assert_eq!(
        old.headers()["x-holdfast-session"],
        new.headers()["x-holdfast-session"]
    );
    assert_eq!(new.headers()["x-holdfast-resume"], "1");
    let first = first.take().unwrap();
    let drained = first.handle.clone();
    assert_eq!(first.shutdown().await, 0, "the first holdfast drained");
    assert_eq!(
        second
            .metric("holdfast_client_resumes_total{outcome=\"moved\"}")
            .await,
        1.0
    );
    // The session ended on the first holdfast as moved, and the move paused the client
    // for a moment (from the first holdfast's `m` to the second's upstream connection).
    assert_eq!(
        metric_sum(
            &drained.render_metrics(),
            "holdfast_session_duration_seconds_count{end=\"moved\"}"
        ),
        1.0
    );
    assert_eq!(
        second
            .metric("holdfast_client_disruption_seconds_count{cause=\"move\"}")
            .await,
        1.0
    );
    let paused = second
        .metric("holdfast_client_disruption_seconds_sum{cause=\"move\"}")
        .await;
    assert!(paused > 0.0 && paused < 5.0, "paused {paused} s");
    // The moved session is held across an upstream restart like any other.
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    client
        .send(Message::text("held after the move"))
        .await
        .unwrap();
    upstream.start_again(None).await;
    let echo = within("the held message's echo", client.next()).await;
    assert_eq!(
        echo.unwrap(),
        Received::Message(Message::text("held after the move"))
    );
    // X-Holdfast-Resume goes on counting the session's upstream openings across the move.
    let third = upstream.handshake(2);
    assert_eq!(
        third.headers()["x-holdfast-session"],
        old.headers()["x-holdfast-session"]
    );
    assert_eq!(third.headers()["x-holdfast-resume"], "2");
    // One trace through all three upstream connections, across the move (the token
    // carried it), each connection a span of its own.
    let traceparents: Vec<String> = [&old, &new, &third]
        .iter()
        .map(|h| h.headers()["traceparent"].to_str().unwrap().to_owned())
        .collect();
    for t in &traceparents {
        assert_eq!(t[..35], traceparents[0][..35], "{traceparents:?}");
    }
    let spans: std::collections::HashSet<&str> = traceparents.iter().map(|t| &t[36..52]).collect();
    assert_eq!(spans.len(), 3, "{traceparents:?}");
}

/// Part 1's hold composes with a resumable client: the upstream restarts (1012) while the
/// client streams; its envelopes are opened in the hold too, and every message reaches the
/// next upstream once, in order.
#[tokio::test]
async fn a_resumable_client_is_held_across_an_upstream_restart() {
    use holdfast::client::{Received, ResumableClient};
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(
        &[upstream.url()],
        "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n",
    )
    .await;
    let mut client = ResumableClient::connect(proxy.addr, "/", &[])
        .await
        .unwrap();
    for i in 0..20 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    upstream
        .wait_for("the first 20", |log| log.received.len() >= 20)
        .await;
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    upstream
        .wait_for("the proxy's close reply", |log| !log.closes.is_empty())
        .await;
    for i in 20..40 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    upstream.start_again(None).await;
    client.send(Message::text("whoami")).await.unwrap();
    let mut echoes = Vec::new();
    within("the echoes and the new instance", async {
        loop {
            match client.next().await {
                Ok(Received::Message(Message::Text(t))) if t == "app 1" => break,
                Ok(Received::Message(Message::Text(t))) => echoes.push(t.to_string()),
                other => panic!("the client saw {other:?}"),
            }
        }
    })
    .await;
    let expected: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(echoes, expected);
    let received: Vec<String> = upstream
        .texts()
        .into_iter()
        .filter(|t| t.starts_with('m'))
        .collect();
    assert_eq!(received, expected, "plain messages, each once, in order");
}

/// What holdfast itself says to a resumable client at the end travels as an envelope too:
/// a policy close's context message arrives as the application's last message.
#[tokio::test]
async fn a_policy_close_reaches_a_resumable_client_with_its_context_message() {
    use holdfast::client::{Received, ResumableClient};
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[policy]\ncontext = \"both\"\n").await;
    let mut client = ResumableClient::connect(proxy.addr, "/", &[])
        .await
        .unwrap();
    client
        .send(Message::text("close 1008 quota exceeded"))
        .await
        .unwrap();
    let Ok(Received::Message(Message::Text(context))) = client.next().await else {
        panic!("the context message first");
    };
    assert!(context.contains(r#""type":"close_context""#), "{context}");
    let Ok(Received::Closed(code, reason)) = client.next().await else {
        panic!("then the close");
    };
    assert_eq!(code, Some(1008));
    assert!(reason.contains("unspecified"), "{reason}");
}

/// Held and away at once: the upstream restarts, and while the session is held the client's
/// connection drops too. The client comes back during the hold, the upstream comes back, and
/// every message both ways arrives once, in order.
#[tokio::test]
async fn a_client_that_drops_while_its_session_is_held_resumes_both_ways() {
    use holdfast::client::{Received, ResumableClient};
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start(
        &[upstream.url()],
        "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n",
    )
    .await;
    let relay = CuttingRelay::start(proxy.addr).await;
    let mut client = ResumableClient::connect(relay.addr, "/", &[])
        .await
        .unwrap();
    let mut echoes = Vec::new();
    for i in 0..10 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    upstream
        .wait_for("the first 10", |log| log.received.len() >= 10)
        .await;
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    upstream
        .wait_for("the proxy's close reply", |log| !log.closes.is_empty())
        .await;
    for i in 10..15 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    relay.cut();
    for i in 15..20 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    // The client notices the cut and comes back while the session is still held.
    within("the client back during the hold", async {
        while client.reconnects == 0 {
            if let Ok(Ok(Received::Message(Message::Text(t)))) =
                tokio::time::timeout(std::time::Duration::from_millis(50), client.next()).await
            {
                echoes.push(t.to_string());
            }
        }
    })
    .await;
    upstream.start_again(None).await;
    client.send(Message::text("whoami")).await.unwrap();
    within("the echoes and the new instance", async {
        loop {
            match client.next().await {
                Ok(Received::Message(Message::Text(t))) if t == "app 1" => break,
                Ok(Received::Message(Message::Text(t))) => echoes.push(t.to_string()),
                other => panic!("the client saw {other:?}"),
            }
        }
    })
    .await;
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(echoes, expected);
    let received: Vec<String> = upstream
        .texts()
        .into_iter()
        .filter(|t| t.starts_with('m'))
        .collect();
    assert_eq!(
        received, expected,
        "each once, in order, across both instances"
    );
}

/// A sidecar rolling update as Kubernetes runs it with a native sidecar: pod A's app stops
/// first (holdfast A holds its client), then holdfast A drains. The held client is moved all
/// the same; it reaches pod B (the next version) through the balancer and sends its held
/// messages there: each message once, in order, split between the two versions; no close.
#[tokio::test]
async fn a_sidecar_rolling_update_moves_the_client_to_the_next_pod() {
    use holdfast::client::{Received, ResumableClient};
    let app_a = UpstreamBuilder::new().name("v1").start().await;
    let app_b = UpstreamBuilder::new().name("v2").start().await;
    let (pod_a, _key, dir) = proxy_with_key(&app_a, "").await;
    let key_file = dir.path().join("resume.key");
    let pod_b = Proxy::start(
        &[app_b.url()],
        &format!(
            "[resume]\nkey_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .await;
    let balancer = CuttingRelay::start(pod_a.addr).await;
    let mut client = ResumableClient::connect(balancer.addr, "/", &[])
        .await
        .unwrap();
    for i in 0..10 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    app_a
        .wait_for("the first 10", |log| log.received.len() >= 10)
        .await;
    // The pod is replaced: its app stops first, closing with 1001 as it goes away.
    app_a
        .go_down(Control::Close(1001, "shutting down".into()))
        .await;
    app_a
        .wait_for("holdfast A's close reply", |log| !log.closes.is_empty())
        .await;
    for i in 10..15 {
        client.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    // Then its holdfast drains; new connections reach pod B.
    balancer.point_at(pod_b.addr);
    let mut pod_a = pod_a;
    pod_a.begin_shutdown();
    client.send(Message::text("whoami")).await.unwrap();
    let mut echoes = Vec::new();
    within("the session on pod B", async {
        loop {
            match client.next().await {
                Ok(Received::Message(Message::Text(t))) if t == "v2 0" => break,
                Ok(Received::Message(Message::Text(t))) => echoes.push(t.to_string()),
                other => panic!("the client saw {other:?}"),
            }
        }
    })
    .await;
    let expected: Vec<String> = (0..15).map(|i| format!("m{i}")).collect();
    assert_eq!(echoes, expected, "every echo once, in order");
    let on_a: Vec<String> = app_a.texts();
    let on_b: Vec<String> = app_b
        .texts()
        .into_iter()
        .filter(|t| t.starts_with('m'))
        .collect();
    assert_eq!(
        [on_a, on_b].concat(),
        expected,
        "each message once, in order, across the versions"
    );
    assert_eq!(app_b.handshake(0).headers()["x-holdfast-resume"], "1");
    assert_eq!(pod_a.shutdown().await, 0, "pod A's holdfast drained");
}
