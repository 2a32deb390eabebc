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
}
