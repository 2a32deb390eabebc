//! Handshake behaviour (SPEC §3.1) against real sockets: what is forwarded, subprotocols,
//! upstream refusals, and the status each bad handshake gets.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn the_upstream_chooses_the_subprotocol_and_the_client_gets_it() {
    let upstream = UpstreamBuilder::new().protocol("superchat").start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut request = proxy.url("/chat").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let (mut client, response) = connect_request(proxy.addr, request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
    assert_eq!(
        upstream.handshake(0).headers()["sec-websocket-protocol"],
        "chat, superchat"
    );
    send_text(&mut client, "hi").await;
    assert_eq!(next_message(&mut client).await, Message::text("hi"));
}

#[tokio::test]
async fn path_query_and_end_to_end_headers_are_forwarded_the_clients_extensions_are_not() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let mut request = proxy.url("/room/7?user=ann").into_client_request().unwrap();
    let h = request.headers_mut();
    h.insert("cookie", "session=abc".parse().unwrap());
    h.insert("authorization", "Bearer token".parse().unwrap());
    h.insert(
        "sec-websocket-extensions",
        "permessage-deflate".parse().unwrap(),
    );
    h.insert("x-holdfast-session", "spoofed".parse().unwrap());
    let (_client, response) = connect_request(proxy.addr, request).await.unwrap();
    // Each hop negotiates compression on its own: holdfast answers the client's offer, and
    // offers the upstream nothing (`[websocket.compression] upstream` is off by default).
    assert_eq!(
        response.headers()["sec-websocket-extensions"],
        "permessage-deflate"
    );

    let seen = upstream.handshake(0);
    assert_eq!(seen.uri().path(), "/room/7");
    assert_eq!(seen.uri().query(), Some("user=ann"));
    let h = seen.headers();
    assert_eq!(h["cookie"], "session=abc");
    assert_eq!(h["authorization"], "Bearer token");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "ws");
    assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
    // The client's Host never selects or reaches the upstream as Host.
    assert_eq!(h["host"], upstream.addr.to_string());
    assert!(h.get("sec-websocket-extensions").is_none());
    let session = h["x-holdfast-session"].to_str().unwrap();
    assert_eq!(
        session.len(),
        16,
        "a fresh session id, not the client's: {session}"
    );
    assert!(h.get("x-holdfast-resume").is_none());
}

#[tokio::test]
async fn an_upstream_refusal_is_relayed_with_its_status_and_body() {
    let upstream = UpstreamBuilder::new()
        .refuse(401, "who are you?")
        .start()
        .await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let request = proxy.url("/").into_client_request().unwrap();
    match connect_request(proxy.addr, request).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert_eq!(response.body().as_deref(), Some(&b"who are you?"[..]));
        }
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    // Reserved and never listening: connections are refused for as long as the test runs.
    let reserved = Reservation::new();
    let port = reserved.port();
    let proxy = Proxy::start(&[format!("ws://127.0.0.1:{port}")], "").await;
    let answer = raw_exchange(proxy.addr, &upgrade_request("")).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

#[tokio::test]
async fn bad_handshakes_get_a_status() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "").await;
    let cases: &[(&str, &str)] = &[
        (
            "POST /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            "HTTP/1.1 426",
        ),
    ];
    for (request, status) in cases {
        let answer = raw_exchange(proxy.addr, request.as_bytes()).await;
        assert!(answer.starts_with(status), "{request:?} -> {answer}");
    }
    let answer = raw_exchange(
        proxy.addr,
        b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(answer.contains("sec-websocket-version: 13"), "{answer}");
    assert!(
        upstream.log.lock().unwrap().handshakes.is_empty(),
        "bad handshakes never reach the upstream"
    );
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_403() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(
        &[upstream.url()],
        "[websocket]\nallowed_origins = [\"https://app.example\"]",
    )
    .await;
    let bad = raw_exchange(
        proxy.addr,
        &upgrade_request("Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 403"), "{bad}");
    let missing = raw_exchange(proxy.addr, &upgrade_request("")).await;
    assert!(missing.starts_with("HTTP/1.1 403"), "{missing}");

    let mut request = proxy.url("/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    assert!(connect_request(proxy.addr, request).await.is_ok());
}

#[tokio::test]
async fn connections_over_max_connections_get_503_and_existing_sessions_keep_relaying() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[listen]\nmax_connections = 1").await;
    let mut first = connect(&proxy).await;
    let answer = raw_exchange(proxy.addr, &upgrade_request("")).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    send_text(&mut first, "still relaying").await;
    assert_eq!(
        next_message(&mut first).await,
        Message::text("still relaying")
    );
}

#[tokio::test]
async fn headers_not_complete_within_handshake_timeout_close_the_socket() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], "[listen]\nhandshake_timeout = \"300ms\"").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The proxy closes the socket (hyper may first write a 408); it must not hang.
    within(
        "the proxy to close a slow handshake",
        tcp.read_to_end(&mut buf),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}
