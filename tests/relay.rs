//! Relay through holdfast against real sockets: order, sizes, UTF-8, pings, idle, client close.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn text_and_binary_are_relayed_in_order() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    for i in 0..200u32 {
        let message = if i % 2 == 0 {
            Message::text(format!("message {i}"))
        } else {
            Message::binary(i.to_be_bytes().to_vec())
        };
        client.send(message).await.unwrap();
    }
    for i in 0..200u32 {
        let got = next_message(&mut client).await;
        let want = if i % 2 == 0 {
            Message::text(format!("message {i}"))
        } else {
            Message::binary(i.to_be_bytes().to_vec())
        };
        assert_eq!(got, want, "message {i}");
    }
    assert_eq!(upstream.log.lock().unwrap().received.len(), 200);
}

#[tokio::test]
async fn a_message_just_under_the_limit_passes_and_one_over_is_1009() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(
        &[upstream.url()],
        "[websocket]\nmax_message_size = \"64KiB\"\nmax_frame_size = \"64KiB\"",
    )
    .await;
    let mut client = connect(&proxy).await;
    let near = vec![7u8; 64 * 1024 - 1];
    client.send(Message::binary(near.clone())).await.unwrap();
    assert_eq!(next_message(&mut client).await, Message::binary(near));

    client
        .send(Message::binary(vec![1u8; 64 * 1024 + 1]))
        .await
        .unwrap();
    let (code, _) = expect_close(&mut client).await;
    assert_eq!(code, Some(1009));
    // The upstream hears that the client went away, not a protocol error.
    assert_eq!(upstream.first_close().await.map(|c| c.0), Some(1001));
}

#[tokio::test]
async fn an_upstream_message_over_the_limit_closes_the_upstream_1009_and_the_client_1011() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(
        &[upstream.url()],
        "[websocket]\nmax_message_size = \"1KiB\"",
    )
    .await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "big 5000").await;
    let (code, reason) = expect_close(&mut client).await;
    assert_eq!(code, Some(1011), "{reason}");
    assert_eq!(upstream.first_close().await.map(|c| c.0), Some(1009));
}

#[tokio::test]
async fn invalid_utf8_from_the_client_is_1007() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    // A masked text frame whose payload (0xff 0xfe) is not UTF-8; the mask is zero.
    client
        .get_mut()
        .write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe])
        .await
        .unwrap();
    let (code, _) = expect_close(&mut client).await;
    assert_eq!(code, Some(1007));
}

#[tokio::test]
async fn invalid_utf8_from_the_upstream_is_1011_to_the_client() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "bad-utf8").await;
    let (code, _) = expect_close(&mut client).await;
    assert_eq!(code, Some(1011));
    assert_eq!(upstream.first_close().await.map(|c| c.0), Some(1007));
}

#[tokio::test]
async fn a_protocol_error_from_the_client_is_1002() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    // Unmasked frame from a client: RFC 6455 §5.1 says the server must close.
    client
        .get_mut()
        .write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .unwrap();
    let (code, _) = expect_close(&mut client).await;
    assert_eq!(code, Some(1002));
}

#[tokio::test]
async fn pings_are_answered_by_the_proxy_and_keepalive_pings_are_sent() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[websocket]\nping_interval = \"200ms\"").await;
    let mut client = connect(&proxy).await;
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let mut got_pong = false;
    let mut got_ping = false;
    within("pong and keepalive ping", async {
        while !(got_pong && got_ping) {
            match client.next().await {
                Some(Ok(Message::Pong(p))) => {
                    assert_eq!(&p[..], b"are you there");
                    got_pong = true;
                }
                Some(Ok(Message::Ping(_))) => got_ping = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    // The session is still healthy: the client answered the pings (tungstenite does).
    send_text(&mut client, "still here").await;
    assert_eq!(next_message(&mut client).await, Message::text("still here"));
}

#[tokio::test]
async fn idle_sessions_are_closed_with_1001_on_both_sides() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[websocket]\nidle_timeout = \"300ms\"").await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "hello").await;
    assert_eq!(next_message(&mut client).await, Message::text("hello"));
    let (code, reason) = expect_close(&mut client).await;
    assert_eq!((code, reason.as_str()), (Some(1001), "idle timeout"));
    assert_eq!(upstream.first_close().await.map(|c| c.0), Some(1001));
}

#[tokio::test]
async fn a_client_close_is_carried_to_the_upstream_and_both_handshakes_complete() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    client
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    // The client's close handshake completes: the echo arrives, then the stream ends.
    let (code, _) = expect_close(&mut client).await;
    assert_eq!(code, Some(4001));
    within("client stream end", async {
        while client.next().await.is_some() {}
    })
    .await;
    assert_eq!(upstream.first_close().await, Some((4001, "bye".into())));
}

/// A masked client frame (zero mask) with the given first byte.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn large_small_and_fragmented_messages_interleave_without_losing_a_byte() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    let big = vec![9u8; 200 * 1024];
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::binary(big.clone())
    );
    for i in 0..20 {
        send_text(&mut client, &format!("after {i}")).await;
    }
    for i in 0..20 {
        assert_eq!(
            next_message(&mut client).await,
            Message::text(format!("after {i}"))
        );
    }
    client
        .send(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();

    // Another large message, then a fragmented one sent in two writes with an echo round
    // trip in between: the proxy holds the first part until the message is complete.
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut client).await, Message::binary(big));
    client
        .get_mut()
        .write_all(&raw_frame(0x01, b"frag"))
        .await
        .unwrap(); // FIN clear
    // A ping in the middle of a fragmented message is answered at once.
    client
        .get_mut()
        .write_all(&raw_frame(0x89, b"mid"))
        .await
        .unwrap();
    within("the pong", async {
        loop {
            if let Some(Ok(Message::Pong(p))) = client.next().await
                && &p[..] == b"mid"
            {
                return;
            }
        }
    })
    .await;
    client
        .get_mut()
        .write_all(&raw_frame(0x80, b"mented"))
        .await
        .unwrap(); // final continuation
    assert_eq!(next_message(&mut client).await, Message::text("fragmented"));
    send_text(&mut client, "still in step").await;
    assert_eq!(
        next_message(&mut client).await,
        Message::text("still in step")
    );
}
