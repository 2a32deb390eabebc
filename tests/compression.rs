//! permessage-deflate through the proxy, real sockets: holdfast's own codec as a
//! compressing client (the Node tests in clients/js use `ws`, Chromium too) against the
//! plain test upstream, and hostile compressed input: misplaced RSV1, data that is not
//! deflate, a bomb.

mod support;

use futures_util::{SinkExt, StreamExt};
use holdfast::codec::{WsConn, frame};
use holdfast::deflate::{Context, Counters, Settings, negotiate};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A masked client frame with first byte `first` (FIN, RSV bits, opcode).
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_header(&mut out, 0, payload.len(), Some([7, 7, 7, 7]));
    out[0] = first;
    let start = out.len();
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[start..], [7, 7, 7, 7]);
    out
}

/// The close the client gets next (skipping data and pings).
async fn close_code(conn: &mut WsConn<TcpStream>) -> Option<u16> {
    loop {
        match within("a close", conn.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

fn json(i: usize) -> String {
    format!(
        r#"{{"type":"quote","seq":{i},"symbol":"ABC","bid":{}.25,"exchange":"NASDAQ","flags":["live"]}}"#,
        100 + i
    )
}

#[tokio::test]
async fn a_compressing_client_talks_to_a_plain_upstream_through_holdfast() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let (mut conn, answer) = deflate_client(
        proxy.addr,
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert_eq!(answer.as_deref(), Some("permessage-deflate"));
    let sent: Vec<String> = (0..50).map(json).collect();
    for text in &sent {
        conn.send(Message::text(text.as_str())).await.unwrap();
        // The test upstream echoes; holdfast compresses the echo again for this hop.
        assert_eq!(
            within("the echo", conn.next()).await.unwrap().unwrap(),
            Message::text(text.as_str())
        );
    }
    conn.send(Message::binary(vec![3u8; 100_000]))
        .await
        .unwrap();
    assert_eq!(
        within("the binary echo", conn.next())
            .await
            .unwrap()
            .unwrap(),
        Message::binary(vec![3u8; 100_000])
    );
    // The upstream (tokio-tungstenite: no compression) read every message as sent.
    upstream
        .wait_for("51 messages", |log| log.received.len() == 51)
        .await;
    let texts = upstream.texts();
    assert!(
        texts[..50] == sent[..],
        "the upstream got the texts as sent, in order"
    );
    assert_eq!(texts[50].len(), 100_000, "and the binary message");
    assert!(
        upstream
            .handshake(0)
            .headers()
            .get("sec-websocket-extensions")
            .is_none()
    );
    let series =
        |name: &str, direction: &str| format!("{name}{{direction=\"{direction}\",hop=\"client\"}}");
    for direction in ["to_upstream", "to_client"] {
        let compressed = proxy
            .metric(&series("holdfast_compressed_bytes_total", direction))
            .await;
        let uncompressed = proxy
            .metric(&series("holdfast_uncompressed_bytes_total", direction))
            .await;
        assert!(uncompressed > 100_000.0, "{direction}: {uncompressed}");
        assert!(
            compressed > 0.0 && compressed < uncompressed / 10.0,
            "{direction}: {compressed} of {uncompressed}"
        );
    }
}

#[tokio::test]
async fn compressed_input_that_breaks_the_rules_is_closed_and_never_relayed() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let offer = Some("permessage-deflate");
    let deflated = {
        let mut c = Context::new(
            negotiate::accept(["permessage-deflate"], &Settings::default())
                .unwrap()
                .1,
            &Settings::default(),
            Counters::default(),
        );
        let mut out = Vec::new();
        c.compress([b"", b"hello hello hello"], &mut out);
        out
    };
    // (the offer, the frames sent, the close code expected)
    let cases: Vec<(Option<&str>, Vec<u8>, u16)> = vec![
        // RSV1 on a connection that negotiated nothing.
        (
            None,
            raw_frame(0x80 | frame::RSV1 | frame::TEXT, &deflated),
            1002,
        ),
        // RSV1 on a continuation frame.
        (
            offer,
            {
                let mut f = raw_frame(frame::TEXT, b"abc");
                f.extend(raw_frame(0x80 | frame::RSV1 | frame::CONTINUATION, b"def"));
                f
            },
            1002,
        ),
        // RSV1 on a ping.
        (
            offer,
            raw_frame(0x80 | frame::RSV1 | frame::PING, b""),
            1002,
        ),
        // Not deflate data.
        (
            offer,
            raw_frame(0x80 | frame::RSV1 | frame::BINARY, &[0xff; 64]),
            1002,
        ),
    ];
    for (i, (offer, frames, code)) in cases.into_iter().enumerate() {
        let (mut conn, _) = deflate_client(proxy.addr, offer).await;
        conn.get_mut().write_all(&frames).await.unwrap();
        assert_eq!(close_code(&mut conn).await, Some(code), "case {i}");
    }
    upstream
        .wait_for("every upstream connection closed", |log| {
            log.closes.len() == 4
        })
        .await;
    assert!(upstream.texts().is_empty(), "nothing was relayed");
}

#[tokio::test]
async fn a_compression_bomb_is_closed_with_1009_and_not_relayed() {
    let upstream = UpstreamBuilder::new().start().await;
    // 1 MiB messages (the default); the bomb inflates to 32 MiB from ~32 KiB.
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let (mut conn, answer) = deflate_client(proxy.addr, Some("permessage-deflate")).await;
    assert!(answer.is_some());
    conn.send(Message::binary(vec![0u8; 32 << 20]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut conn).await, Some(1009));
    upstream
        .wait_for(
            "the upstream hears the client left, having received nothing",
            |log| !log.closes.is_empty() && log.received.is_empty(),
        )
        .await;
    // The proxy serves the next session as before.
    let (mut next, _) = deflate_client(proxy.addr, Some("permessage-deflate")).await;
    next.send(Message::text(json(1))).await.unwrap();
    assert_eq!(
        within("the echo", next.next()).await.unwrap().unwrap(),
        Message::text(json(1))
    );
}
