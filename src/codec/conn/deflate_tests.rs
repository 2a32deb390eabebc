//! The codec with permessage-deflate: two ends over an in-memory pipe, compressed frames
//! built by hand (fragmented, misplaced RSV1, a bomb, garbage).

use super::*;
use crate::codec::frame::{self, BINARY, CONTINUATION, PING, TEXT};
use crate::deflate::{Context, Counters, Params, Settings};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

const LIMITS: Limits = Limits {
    max_message: 1 << 20,
    max_frame: 1 << 20,
};

const PARAMS: Params = Params {
    send_window: 15,
    send_takeover: true,
    recv_window: 15,
    recv_takeover: true,
};

fn context() -> Context {
    Context::new(PARAMS, &Settings::default(), Counters::default())
}

/// A masked client frame; `first` is its first byte (FIN, RSV1, opcode).
fn frame_with(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_header(&mut out, 0, payload.len(), Some([1, 2, 3, 4]));
    out[0] = first;
    let start = out.len();
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[start..], [1, 2, 3, 4]);
    out
}

fn compressed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    context().compress([&[], message], &mut out);
    out
}

/// The first `n` things a server connection with deflate reads from `wire` (fewer if one
/// is an error).
async fn read_all(wire: Vec<u8>, limits: Limits, n: usize) -> Vec<Result<Message, String>> {
    let (mut peer, ours) = duplex(1 << 20);
    let mut conn = WsConn::new(ours, Role::Server, limits, &[]).with_deflate(Some(context()));
    tokio::spawn(async move {
        peer.write_all(&wire).await.unwrap();
        // Keep the pipe open until the reader is done.
        let mut sink = Vec::new();
        let _ = peer.read_to_end(&mut sink).await;
    });
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), conn.next())
            .await
            .expect("the codec answers")
            .expect("the stream goes on");
        let failed = next.is_err();
        got.push(next.map_err(|e| e.to_string()));
        if failed {
            break;
        }
    }
    got
}

#[tokio::test]
async fn both_ends_compress_above_min_size_and_read_each_other() {
    let (a, b) = duplex(1 << 20);
    let mut client = WsConn::new(a, Role::Client, LIMITS, &[]).with_deflate(Some(context()));
    let mut server = WsConn::new(b, Role::Server, LIMITS, &[]).with_deflate(Some(context()));
    let json = r#"{"type":"tick","symbol":"ABC","price":101.25,"exchange":"NASDAQ"}"#;
    let messages = vec![
        Message::text("short"),
        Message::text(json),
        Message::text(json),
        Message::binary(vec![7u8; 100_000]),
        Message::binary(vec![]),
        Message::text("é".repeat(5000)),
    ];
    for message in &messages {
        client.send(message.clone()).await.unwrap();
        assert_eq!(server.next().await.unwrap().unwrap(), *message);
        server.send(message.clone()).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), *message);
    }
    // The enveloped send (a resumable client's) compresses kind and payload together.
    let data = Data::of(&messages[1]).unwrap();
    server.send_enveloped(b'd', data).await.unwrap();
    let Message::Text(got) = client.next().await.unwrap().unwrap() else {
        panic!("text");
    };
    assert_eq!(got.as_str(), format!("d{json}"));
}

#[tokio::test]
async fn the_wire_has_rsv1_only_on_compressed_messages() {
    let (mut peer, ours) = duplex(1 << 20);
    let mut server = WsConn::new(ours, Role::Server, LIMITS, &[]).with_deflate(Some(context()));
    server.send(Message::text("tiny")).await.unwrap();
    server.send(Message::text("x".repeat(1000))).await.unwrap();
    server
        .send(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    drop(server);
    let mut wire = Vec::new();
    peer.read_to_end(&mut wire).await.unwrap();
    assert_eq!(&wire[..6], &[0x81, 4, b't', b'i', b'n', b'y']);
    let h = frame::parse_with(&wire[6..], Role::Client, 1 << 20, true)
        .unwrap()
        .unwrap();
    assert!(h.rsv1 && h.opcode == TEXT && h.len < 100, "{h:?}");
    let ping = &wire[6 + h.frame_len()..];
    assert_eq!(ping[0], 0x80 | PING, "control frames are never compressed");
}

#[tokio::test]
async fn a_fragmented_compressed_message_is_inflated_whole() {
    let text = "fragmented and compressed ".repeat(200);
    let deflated = compressed(text.as_bytes());
    let (a, rest) = deflated.split_at(deflated.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut wire = frame_with(frame::RSV1 | TEXT, a);
    wire.extend(frame_with(CONTINUATION, b));
    wire.extend(frame_with(0x80 | PING, b"in between"));
    wire.extend(frame_with(0x80 | CONTINUATION, c));
    let got = read_all(wire, LIMITS, 2).await;
    assert!(matches!(&got[0], Ok(Message::Ping(_))));
    assert_eq!(got[1], Ok(Message::text(text)));
}

#[tokio::test]
async fn misplaced_rsv1_and_garbage_are_protocol_errors() {
    let is_protocol = |got: &[Result<Message, String>]| matches!(got.last(), Some(Err(e)) if e.to_lowercase().contains("reserved bits"));
    // RSV1 on a continuation frame.
    let mut wire = frame_with(TEXT, b"a");
    wire.extend(frame_with(0x80 | frame::RSV1 | CONTINUATION, b"b"));
    assert!(is_protocol(&read_all(wire, LIMITS, 1).await));
    // RSV1 on a control frame.
    assert!(is_protocol(
        &read_all(frame_with(0xC9, b""), LIMITS, 1).await
    ));
    // Not deflate data at all.
    let garbage = frame_with(0x80 | frame::RSV1 | BINARY, &[0xff; 40]);
    assert!(is_protocol(&read_all(garbage, LIMITS, 1).await));
    // RSV1 on a connection that negotiated nothing.
    let (mut peer, ours) = duplex(1 << 20);
    let mut plain = WsConn::new(ours, Role::Server, LIMITS, &[]);
    peer.write_all(&frame_with(
        0x80 | frame::RSV1 | TEXT,
        &compressed(b"hello"),
    ))
    .await
    .unwrap();
    assert!(matches!(
        plain.next().await,
        Some(Err(WsError::Protocol(_)))
    ));
}

#[tokio::test]
async fn a_compression_bomb_is_refused_at_the_inflated_limit() {
    // 64 MiB of zeros deflate to ~64 KiB: within the frame limit, far over the message's.
    let bomb = compressed(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < LIMITS.max_frame, "{}", bomb.len());
    let got = read_all(frame_with(0x80 | frame::RSV1 | BINARY, &bomb), LIMITS, 1).await;
    assert!(
        matches!(got.last(), Some(Err(e)) if e.contains("Message too long")),
        "{got:?}"
    );
}
