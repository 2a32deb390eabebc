//! The upstream side of the handshake against scripted upstreams that write their answers
//! byte for byte: what holdfast accepts as a 101 (a subprotocol may be left unchosen, frames
//! may follow the head at once) and what it refuses (a wrong accept value, a subprotocol the
//! client never offered), and how much of a refusal's body it relays.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Reads one HTTP head byte by byte (nothing past its blank line).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// How the scripted upstream answers a handshake.
#[derive(Clone, Copy)]
enum Answer {
    /// A correct 101 (with `extra` header lines), then an echo server; `first` is written in
    /// the same write as the head.
    Switch {
        extra: &'static str,
        first: Option<&'static [u8]>,
    },
    /// A 101 whose Sec-WebSocket-Accept is not the one for the key.
    WrongAccept,
    /// A 403 with a body of `n` bytes.
    Refuse(usize),
}

async fn scripted_upstream(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let request = read_head(&mut tcp).await;
                let key = header(&request, "sec-websocket-key")
                    .unwrap_or("")
                    .to_owned();
                match answer {
                    Answer::Switch { extra, first } => {
                        let mut out = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
                            derive_accept_key(key.as_bytes())
                        )
                        .into_bytes();
                        out.extend_from_slice(first.unwrap_or_default());
                        tcp.write_all(&out).await.unwrap();
                        let mut ws =
                            WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
                        while let Some(Ok(message)) = ws.next().await {
                            if message.is_text() || message.is_binary() {
                                let _ = ws.send(message).await;
                            }
                        }
                    }
                    Answer::WrongAccept => {
                        let _ = tcp
                            .write_all(
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                                  Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
                            )
                            .await;
                    }
                    Answer::Refuse(n) => {
                        let head = format!("HTTP/1.1 403 Forbidden\r\nContent-Length: {n}\r\n\r\n");
                        let _ = tcp.write_all(head.as_bytes()).await;
                        let _ = tcp.write_all(&vec![b'x'; n]).await;
                    }
                }
            });
        }
    });
    format!("ws://{addr}")
}

/// A client's raw upgrade (offering `chat, superchat`): the 101's head and the socket, ready
/// for frames.
async fn raw_client(proxy: &Proxy) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&upgrade_request(
        "Sec-WebSocket-Protocol: chat, superchat\r\n",
    ))
    .await
    .unwrap();
    let head = within("the proxy's answer", read_head(&mut tcp)).await;
    (head, tcp)
}

#[tokio::test]
async fn an_upstream_may_choose_no_subprotocol_and_the_session_relays() {
    let upstream = scripted_upstream(Answer::Switch {
        extra: "",
        first: None,
    })
    .await;
    let proxy = Proxy::start(&[upstream], "").await;
    let (head, tcp) = raw_client(&proxy).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-protocol"),
        None,
        "no subprotocol chosen, none answered: {head}"
    );
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    send_text(&mut ws, "over a session without a subprotocol").await;
    assert_eq!(
        next_message(&mut ws).await,
        Message::text("over a session without a subprotocol")
    );
}

#[tokio::test]
async fn frames_sent_right_behind_the_101_reach_the_client() {
    // "hi" as an unmasked text frame, in the same write as the 101's head.
    let upstream = scripted_upstream(Answer::Switch {
        extra: "",
        first: Some(&[0x81, 0x02, b'h', b'i']),
    })
    .await;
    let proxy = Proxy::start(&[upstream], "").await;
    let mut client = connect(&proxy).await;
    assert_eq!(next_message(&mut client).await, Message::text("hi"));
    send_text(&mut client, "and then").await;
    assert_eq!(next_message(&mut client).await, Message::text("and then"));
}

#[tokio::test]
async fn a_101_that_is_not_an_answer_to_our_handshake_is_502() {
    let cases = [
        (Answer::WrongAccept, "wrong accept"),
        (
            Answer::Switch {
                extra: "Sec-WebSocket-Protocol: other\r\n",
                first: None,
            },
            "a subprotocol the client never offered",
        ),
        (
            Answer::Switch {
                extra: "Sec-WebSocket-Extensions: permessage-deflate\r\n",
                first: None,
            },
            "an extension holdfast never offered",
        ),
    ];
    for (answer, what) in cases {
        let upstream = scripted_upstream(answer).await;
        let proxy = Proxy::start(&[upstream], "").await;
        let (head, _) = raw_client(&proxy).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{what}: {head}");
        assert_eq!(
            proxy
                .metric("holdfast_upstream_connects_total{result=\"error\"}")
                .await,
            1.0,
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_refusal_is_relayed_with_at_most_64_kib_of_its_body() {
    for (sent, relayed) in [(10, 10), (200 * 1024, 64 * 1024)] {
        let upstream = scripted_upstream(Answer::Refuse(sent)).await;
        let proxy = Proxy::start(&[upstream], "").await;
        let answer = raw_exchange(proxy.addr, &upgrade_request("")).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(body.len(), relayed, "a refusal body of {sent} bytes");
        assert!(body.bytes().all(|b| b == b'x'));
    }
}
