//! The codec against in-memory and real sockets: frames split anywhere, inline small
//! messages, protocol faults of the right kind, closes, masking, direct writes.

use super::*;
use crate::close::PROTOCOL_ERROR;
use crate::codec::frame::{self, BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
use futures_util::SinkExt;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

const LIMITS: Limits = Limits {
    max_message: 1 << 20,
    max_frame: 1 << 20,
};

/// A masked client frame.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_header(&mut out, opcode, payload.len(), Some([9, 8, 7, 6]));
    if !fin {
        out[0] &= 0x7f;
    }
    let start = out.len();
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[start..], [9, 8, 7, 6]);
    out
}

#[tokio::test]
async fn frames_split_anywhere_arrive_as_the_same_messages() {
    let mut wire = client_frame(true, TEXT, b"hello");
    wire.extend(client_frame(false, BINARY, &[1; 3000]));
    wire.extend(client_frame(true, PING, b"p"));
    wire.extend(client_frame(true, CONTINUATION, &[2; 7000]));
    wire.extend(client_frame(true, BINARY, &[3; 100_000]));
    for chunk in [1, 7, 4096, wire.len()] {
        let (mut peer, ours) = duplex(1 << 20);
        let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
        let wire = wire.clone();
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(chunk) {
                peer.write_all(piece).await.unwrap();
            }
            peer
        });
        assert_eq!(conn.next().await.unwrap().unwrap(), Message::text("hello"));
        assert!(matches!(conn.next().await, Some(Ok(Message::Ping(_)))));
        let Some(Ok(Message::Binary(joined))) = conn.next().await else {
            panic!("the fragmented message");
        };
        assert_eq!(joined.len(), 10_000);
        assert!(joined[..3000].iter().all(|b| *b == 1) && joined[3000..].iter().all(|b| *b == 2));
        let Some(Ok(Message::Binary(big))) = conn.next().await else {
            panic!("the large message");
        };
        assert!(big.len() == 100_000 && big.iter().all(|b| *b == 3));
        // Nothing is buffered between messages.
        assert!(conn.rbuf.capacity() == 0 && conn.partial.is_none());
        let mut peer = writer.await.unwrap();
        // The ping was answered with an unmasked pong.
        let mut pong = [0u8; 3];
        peer.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x80 | PONG, 1, b'p']);
    }
}

/// The relay's read: whole small data frames land in the caller's inline buffer, larger
/// ones, control frames and fragmented messages come as `Message`s; the payloads and
/// the UTF-8 check are the same either way.
#[tokio::test]
async fn small_whole_data_messages_are_read_inline() {
    let mut wire = Vec::new();
    let cases: Vec<(u8, Vec<u8>, bool)> = vec![
        (BINARY, vec![], true),
        (TEXT, b"x".to_vec(), true),
        (BINARY, vec![7; SMALL_INLINE], true),
        (BINARY, vec![8; SMALL_INLINE + 1], false),
        (TEXT, "é".repeat(SMALL_INLINE / 2).into_bytes(), true),
        (PING, b"p".to_vec(), false),
    ];
    for (opcode, payload, _) in &cases {
        wire.extend(client_frame(true, *opcode, payload));
    }
    // A fragmented small message is assembled on the heap.
    wire.extend(client_frame(false, TEXT, b"ab"));
    wire.extend(client_frame(true, CONTINUATION, b"c"));
    let (mut peer, ours) = duplex(1 << 16);
    peer.write_all(&wire).await.unwrap();
    let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
    let mut inline = [0; SMALL_INLINE];
    for (opcode, payload, small) in cases {
        let incoming = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            matches!(incoming, Incoming::Small { .. }),
            small,
            "{opcode} {}",
            payload.len()
        );
        let message = incoming.into_message(&inline);
        let expected = match opcode {
            TEXT => Message::text(String::from_utf8(payload).unwrap()),
            BINARY => Message::binary(payload),
            _ => Message::Ping(payload.into()),
        };
        assert_eq!(message, expected);
    }
    let joined = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(joined, Incoming::Message(_)));
    assert_eq!(joined.into_message(&inline), Message::text("abc"));

    // A small text frame that is not UTF-8 is refused like a large one.
    let (mut peer, ours) = duplex(1024);
    peer.write_all(&client_frame(true, TEXT, &[b'a', 0xff]))
        .await
        .unwrap();
    let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
    let got = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline)).await;
    assert!(matches!(got, Some(Err(WsError::Utf8(_)))), "{got:?}");
}

#[tokio::test]
async fn protocol_faults_are_errors_of_the_right_kind() {
    type Expect = fn(&WsError) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (client_frame(true, TEXT, &[0xff, 0xfe]), |e| {
            matches!(e, WsError::Utf8(_))
        }),
        (client_frame(true, CONTINUATION, b"x"), |e| {
            matches!(e, WsError::Protocol(_))
        }),
        (client_frame(true, CLOSE, &[3]), |e| {
            matches!(e, WsError::Protocol(_))
        }),
        (vec![0x81, 0x01, b'x'], |e| {
            matches!(e, WsError::Protocol(_))
        }),
        (client_frame(true, BINARY, &[0; 2 << 20]), |e| {
            matches!(e, WsError::Capacity(_))
        }),
    ];
    for (wire, expected) in cases {
        let (mut peer, ours) = duplex(4 << 20);
        peer.write_all(&wire).await.unwrap();
        let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
        let got = conn.next().await.unwrap().unwrap_err();
        assert!(expected(&got), "{got:?}");
        assert!(conn.next().await.is_none(), "an error ends the stream");
    }
}

/// `max_message` applies to every message, the small ones read inline included.
#[tokio::test]
async fn a_limit_below_the_inline_size_is_enforced_on_small_messages() {
    let tight = Limits {
        max_message: 1,
        max_frame: 1 << 20,
    };
    for (opcode, payload) in [(BINARY, &[0u8, 0][..]), (TEXT, b"ab")] {
        let (mut peer, ours) = duplex(1024);
        peer.write_all(&client_frame(true, opcode, payload))
            .await
            .unwrap();
        let mut conn = WsConn::new(ours, Role::Server, tight, &[]);
        let mut inline = [0; SMALL_INLINE];
        let got = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline)).await;
        assert!(matches!(got, Some(Err(WsError::Capacity(_)))), "{got:?}");
    }
}

#[tokio::test]
async fn a_close_is_answered_and_ends_the_stream() {
    let (mut peer, ours) = duplex(1024);
    let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
    let mut close = vec![0x03, 0xE8];
    close.extend_from_slice(b"bye");
    peer.write_all(&client_frame(true, CLOSE, &close))
        .await
        .unwrap();
    let Some(Ok(Message::Close(Some(frame)))) = conn.next().await else {
        panic!("a close");
    };
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "bye")
    );
    assert!(conn.next().await.is_none());
    let mut reply = [0u8; 7];
    peer.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
    // 1005 may not be on the wire: it is answered (and reported) as 1002.
    let (mut peer, ours) = duplex(1024);
    let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
    peer.write_all(&client_frame(true, CLOSE, &[0x03, 0xED]))
        .await
        .unwrap();
    let Some(Ok(Message::Close(Some(frame)))) = conn.next().await else {
        panic!("a close");
    };
    assert_eq!(u16::from(frame.code), PROTOCOL_ERROR);
}

#[tokio::test]
async fn a_client_masks_what_it_sends() {
    let (mut peer, ours) = duplex(1024);
    let mut conn = WsConn::new(ours, Role::Client, LIMITS, &[]);
    conn.send(Message::text("abc")).await.unwrap();
    let mut wire = [0u8; 9];
    peer.read_exact(&mut wire).await.unwrap();
    let h = frame::parse_header(&wire, Role::Server, 1024)
        .unwrap()
        .unwrap();
    let mut payload = wire[h.header_len..].to_vec();
    frame::apply_mask(&mut payload, h.mask.unwrap());
    assert_eq!(payload, b"abc");
}

/// Messages of every size through `send_ref` over a real TCP connection, which takes
/// vectored writes (the direct path). Large ones fill the socket: the direct write is
/// partial and the rest is queued and flushed. The peer sees every message intact.
async fn direct_sends_arrive_intact(sender: Role) {
    use tokio::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (ours, theirs) = (connected.unwrap(), accepted.unwrap().0);
    // Text payloads grow up to 3× (invalid bytes become U+FFFD).
    let limits = Limits {
        max_message: 1 << 24,
        max_frame: 1 << 24,
    };
    let mut conn = WsConn::new(ours, sender, limits, &[]);
    assert!(conn.get_ref().is_write_vectored());
    let receiver = match sender {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut peer = WsConn::new(theirs, receiver, limits, &[]);
    let sizes = [
        0usize,
        1,
        125,
        126,
        2047,
        2048,
        2049,
        65_535,
        65_536,
        3 << 20,
        7,
        300_000,
    ];
    let messages: Vec<Message> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let payload: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
            if i % 2 == 0 {
                Message::binary(payload)
            } else {
                Message::text(String::from_utf8_lossy(&payload).into_owned())
            }
        })
        .collect();
    let expected = messages.clone();
    let send = async move {
        for m in &messages {
            conn.send_ref(m).await.unwrap();
        }
        conn
    };
    let receive = async move {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            got.push(peer.next().await.unwrap().unwrap());
        }
        assert_eq!(got, expected);
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("all messages within 30 s");
}

#[tokio::test]
async fn a_server_writes_frames_straight_from_the_message() {
    direct_sends_arrive_intact(Role::Server).await;
}

#[tokio::test]
async fn a_client_masks_on_the_stack_and_writes_directly() {
    direct_sends_arrive_intact(Role::Client).await;
}

/// An envelope's kind byte goes with the frame's header: the peer sees it as the payload's
/// first byte, for every size and path (small on the stack, vectored, queued), either role.
#[tokio::test]
async fn enveloped_sends_put_the_kind_first() {
    use tokio::net::{TcpListener, TcpStream};
    for sender in [Role::Server, Role::Client] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let limits = Limits {
            max_message: 1 << 24,
            max_frame: 1 << 24,
        };
        let mut ours = WsConn::new(connected.unwrap(), sender, limits, &[]);
        let receiver = match sender {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let mut peer = WsConn::new(accepted.unwrap().0, receiver, limits, &[]);
        let sizes = [0usize, 1, 254, 255, 256, 2046, 2047, 2048, 70_000, 3 << 20];
        let send = async {
            for (i, &n) in sizes.iter().enumerate() {
                let payload: Vec<u8> = (0..n).map(|b| (b + i) as u8).collect();
                let message = Message::binary(payload);
                let data = Data::of(&message).unwrap();
                ours.send_enveloped(b'd', data).await.unwrap();
            }
        };
        let receive = async {
            for (i, &n) in sizes.iter().enumerate() {
                let Some(Ok(Message::Binary(got))) = peer.next().await else {
                    panic!("message {i}");
                };
                assert_eq!(got.len(), n + 1, "{sender:?} {n}");
                assert_eq!(got[0], b'd');
                assert!(
                    got[1..]
                        .iter()
                        .enumerate()
                        .all(|(b, v)| *v == (b + i) as u8)
                );
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            tokio::join!(send, receive)
        })
        .await
        .expect("within 30 s");
    }
}
