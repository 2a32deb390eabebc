//! Hostile input from either side gets the right answer and nothing else is disturbed:
//! oversized or garbage handshakes, malformed frames, upstreams that misbehave during the
//! handshake. (SPEC "bad input gets a clear answer".)

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn an_oversized_request_head_is_431_and_garbage_is_closed() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut survivor = connect(&proxy).await;

    let huge = format!("X-Padding: {}\r\n", "a".repeat(100 * 1024));
    let answer = raw_exchange(proxy.addr, &upgrade_request(&huge)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    // A TLS ClientHello (or any non-HTTP bytes) on the plain port: an answer or a close,
    // never a hang.
    let answer = raw_exchange(
        proxy.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // Everyone else keeps being served.
    send_text(&mut survivor, "still here").await;
    assert_eq!(
        next_message(&mut survivor).await,
        Message::text("still here")
    );
    assert!(upstream.log.lock().unwrap().handshakes.len() == 1);
}

/// Sends raw bytes on an established client connection and returns the close code it gets.
async fn close_code_after(bytes: &[u8]) -> Option<u16> {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut client = connect(&proxy).await;
    client.get_mut().write_all(bytes).await.unwrap();
    let code = expect_close(&mut client).await.0;
    // The upstream hears that the client went away (1001), never the client's fault.
    assert_eq!(upstream.first_close().await.map(|c| c.0), Some(1001));
    code
}

#[tokio::test]
async fn malformed_client_frames_get_1002() {
    let mask = [0u8; 4];
    let frame = |first: u8, len_byte: u8, payload: &[u8]| {
        let mut f = vec![first, 0x80 | len_byte];
        f.extend_from_slice(&mask);
        f.extend_from_slice(payload);
        f
    };
    let table: Vec<(&str, Vec<u8>)> = vec![
        ("reserved bit RSV1 set", frame(0xC1, 2, b"hi")),
        ("reserved bits RSV2+RSV3", frame(0xB1, 2, b"hi")),
        ("reserved opcode 3", frame(0x83, 0, b"")),
        ("reserved control opcode 11", frame(0x8B, 0, b"")),
        ("fragmented ping", frame(0x09, 1, b"p")),
        (
            "continuation with nothing to continue",
            frame(0x80, 1, b"x"),
        ),
        (
            "close code 1005 on the wire",
            frame(0x88, 2, &1005u16.to_be_bytes()),
        ),
        ("close code 999", frame(0x88, 2, &999u16.to_be_bytes())),
        ("one-byte close payload", frame(0x88, 1, b"x")),
    ];
    for (what, bytes) in table {
        assert_eq!(close_code_after(&bytes).await, Some(1002), "{what}");
    }
    // A ping longer than 125 bytes (extended length on a control frame).
    let mut long_ping = vec![0x89, 0x80 | 126, 0, 126];
    long_ping.extend_from_slice(&mask);
    long_ping.extend(std::iter::repeat_n(b'p', 126));
    assert_eq!(
        close_code_after(&long_ping).await,
        Some(1002),
        "ping of 126 bytes"
    );
}

#[tokio::test]
async fn a_declared_length_of_2_pow_63_is_1009_without_allocating_it() {
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    // Nothing close to 8 EiB is reserved: the size check comes before any allocation, so
    // the process is still here to answer.
    assert_eq!(close_code_after(&frame).await, Some(1009));
}

/// An "upstream" that accepts TCP and then does `behaviour` with the handshake request.
async fn faulty_upstream(behaviour: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                match behaviour {
                    "silent" => {
                        // Hold the connection, never answer.
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    }
                    "garbage" => {
                        let _ = tcp.write_all(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n").await;
                    }
                    "hang-up" => drop(tcp),
                    "half-response" => {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgr")
                            .await;
                    }
                    _ => unreachable!(),
                }
            });
        }
    });
    format!("ws://{addr}")
}

#[tokio::test]
async fn upstreams_that_fail_the_handshake_get_clear_statuses() {
    let cases = [
        ("silent", "HTTP/1.1 504"),
        ("garbage", "HTTP/1.1 502"),
        ("hang-up", "HTTP/1.1 502"),
        ("half-response", "HTTP/1.1 502"),
    ];
    for (behaviour, status) in cases {
        let upstream = faulty_upstream(behaviour).await;
        let proxy = Proxy::start(&[upstream], "[listen]\nhandshake_timeout = \"500ms\"\n").await;
        let answer = raw_exchange(proxy.addr, &upgrade_request("")).await;
        assert!(answer.starts_with(status), "{behaviour}: {answer}");
    }
}

#[tokio::test]
async fn an_upstream_that_never_answers_the_handshake_is_bounded_by_connect_timeout() {
    // TCP connects (the listener accepts) but no HTTP answer ever comes: connect_timeout
    // (200 ms) bounds the upstream handshake, long before handshake_timeout (the default 10 s).
    let upstream = faulty_upstream("silent").await;
    let proxy = Proxy::start(&[upstream], "[upstream]\nconnect_timeout = \"200ms\"\n").await;
    let started = std::time::Instant::now();
    let answer = raw_exchange(proxy.addr, &upgrade_request("")).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered by connect_timeout, not handshake_timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy
            .metric("holdfast_upstream_connects_total{result=\"timeout\"}")
            .await,
        1.0
    );
}
