//! WebSockets over HTTP/2 (RFC 8441) on the TLS listener, with hyper's HTTP/2 client (the
//! `h2` crate) as the browser would use it: many sessions as extended CONNECT streams of
//! one connection, each relayed to its upstream over HTTP/1.1 and held on its own; flow
//! control per stream; a GOAWAY when holdfast drains; plain requests on the same
//! connection.

mod support;

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

type H2Ws = WebSocketStream<TokioIo<Upgraded>>;

/// One TLS connection to the proxy that chose `h2`, ready for extended CONNECT (the
/// proxy's SETTINGS said so).
async fn h2_connection(proxy: &Proxy, cert: &TestCert) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = cert
        .client_connector_for(&[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, mut connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        // The client's own windows: one stream that stops reading fills its 256 KiB only.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    // Drive the connection until the server's SETTINGS allow extended CONNECT.
    within(
        "SETTINGS_ENABLE_CONNECT_PROTOCOL from the proxy",
        poll_fn(|cx| {
            if let std::task::Poll::Ready(result) = Pin::new(&mut connection).poll(cx) {
                panic!("connection ended before its settings: {result:?}");
            }
            if connection.is_extended_connect_protocol_enabled() {
                std::task::Poll::Ready(())
            } else {
                // Received settings take effect in a later poll that no I/O may wake.
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }),
    )
    .await;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// A WebSocket session on a new stream: CONNECT with `:protocol websocket`.
async fn open(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> H2Ws {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    sender.ready().await.unwrap();
    let response = within("CONNECT answered", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}: {response:?}");
    let upgraded = within("stream upgraded", hyper::upgrade::on(response))
        .await
        .unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

fn proxy_tls(cert: &TestCert) -> String {
    format!(
        "[listen.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.cert_path, cert.key_path
    )
}

#[tokio::test]
async fn twenty_sessions_share_one_connection_and_a_restart_holds_only_its_own() {
    let cert = TestCert::new();
    let (app, solo) = (
        UpstreamBuilder::new().name("app").start().await,
        UpstreamBuilder::new().name("solo").start().await,
    );
    let config = format!(
        "{}[[route]]\nname = \"solo\"\npath_prefix = \"/ws/solo\"\n[route.upstream]\nendpoints = [\"{}\"]\n",
        proxy_tls(&cert),
        solo.url()
    );
    let proxy = Proxy::start(&[app.url()], &config).await;
    let mut sender = h2_connection(&proxy, &cert).await;
    let mut streams = Vec::new();
    for i in 0..19 {
        streams.push(open(&mut sender, &format!("/ws/app/{i}")).await);
    }
    let mut held = open(&mut sender, "/ws/solo").await;

    // Every stream relays in order, all at once.
    let round = |streams: &mut Vec<H2Ws>, tag: &'static str| {
        let streams = std::mem::take(streams);
        async move {
            let tasks = streams
                .into_iter()
                .enumerate()
                .map(|(i, mut ws)| async move {
                    for j in 0..20 {
                        ws.send(Message::text(format!("{tag} {i} {j}")))
                            .await
                            .unwrap();
                    }
                    for j in 0..20 {
                        assert_eq!(
                            next_message(&mut ws).await,
                            Message::text(format!("{tag} {i} {j}"))
                        );
                    }
                    ws
                });
            futures_util::future::join_all(tasks).await
        }
    };
    streams = round(&mut streams, "before").await;
    held.send(Message::text("solo before")).await.unwrap();
    assert_eq!(next_message(&mut held).await, Message::text("solo before"));
    let active = proxy
        .metric("holdfast_sessions_active{route=\"default\",protocol=\"h2\"}")
        .await;
    assert_eq!(active, 19.0);

    // The solo route's upstream restarts: its stream is held, the others go on relaying.
    solo.go_down(Control::Close(1012, "deploying".into())).await;
    solo.wait_for("the proxy to answer the close", |log| {
        !log.closes.is_empty()
    })
    .await;
    held.send(Message::text("sent while held")).await.unwrap();
    streams = round(&mut streams, "during").await;
    solo.start_again(None).await;
    assert_eq!(
        next_message(&mut held).await,
        Message::text("sent while held")
    );
    streams = round(&mut streams, "after").await;
    assert_eq!(
        proxy
            .metric("holdfast_holds_total{outcome=\"resumed\",route=\"solo\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("holdfast_holds_total{outcome=\"resumed\",route=\"default\"}")
            .await,
        0.0
    );
    // The upstreams saw HTTP/1.1 WebSocket handshakes, one per stream (two for the
    // restarted one), with the client's host.
    assert_eq!(app.log.lock().unwrap().handshakes.len(), 19);
    let handshake = solo.handshake(1);
    assert_eq!(handshake.headers()["x-forwarded-host"], "localhost");
    drop(streams);
}

#[tokio::test]
async fn a_stream_that_stops_reading_does_not_stall_the_others() {
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[app.url()], &proxy_tls(&cert)).await;
    let mut sender = h2_connection(&proxy, &cert).await;
    let mut unread = open(&mut sender, "/unread").await;
    let mut stalled_upstream = open(&mut sender, "/stalled-upstream").await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(open(&mut sender, &format!("/other/{i}")).await);
    }
    // Towards the client: 4 MiB on a stream the client does not read, far more than its
    // window and holdfast's send buffer.
    unread.send(Message::text("flood 64")).await.unwrap();
    // Towards the upstream: this stream's upstream stops reading, and the client sends it
    // 32 MiB, more than the sockets on the way can buffer. holdfast stops reading the
    // stream; what waits is within the stream's window, and the connection's window has
    // room for every other stream's.
    stalled_upstream.send(Message::text("stall")).await.unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..512 {
            if stalled_upstream
                .send(Message::binary(vec![7u8; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
        stalled_upstream
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "the stalled upstream's stream took it all"
    );
    for round in 0..50 {
        for (i, ws) in others.iter_mut().enumerate() {
            let text = format!("{round} on {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next_message(ws).await, Message::text(text));
        }
    }
    // The unread stream then gets all of its flood, in order.
    for _ in 0..64 {
        match next_message(&mut unread).await {
            Message::Binary(b) => assert_eq!(b.len(), 64 * 1024),
            other => panic!("unread stream saw {other:?}"),
        }
    }
    writer.abort();
}

#[tokio::test]
async fn a_drain_sends_goaway_and_closes_every_stream_like_any_session() {
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[app.url()], &proxy_tls(&cert)).await;
    let mut sender = h2_connection(&proxy, &cert).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let mut ws = open(&mut sender, &format!("/{i}")).await;
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("hi"));
        streams.push(ws);
    }
    // A plain HTTP/2 request on the same connection is forwarded (the WebSocket upstream
    // answers it with its own refusal).
    let request = http::Request::get("https://localhost/health")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status();
    let _ = response.into_body().collect().await;
    assert_eq!(
        proxy
            .metric(&format!(
                "holdfast_http_requests_total{{status=\"{}\",route=\"default\",protocol=\"h2\"}}",
                status.as_u16()
            ))
            .await,
        1.0
    );

    let mut proxy = proxy;
    proxy.begin_shutdown();
    for ws in &mut streams {
        assert_eq!(expect_close(ws).await.0, Some(1012));
    }
    // GOAWAY: the connection takes no new stream.
    within("the GOAWAY", async {
        loop {
            let request = http::Request::get("https://localhost/late")
                .body(Empty::new())
                .unwrap();
            if sender.ready().await.is_err() || sender.send_request(request).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(proxy.shutdown().await, 0, "every session drained");
}

#[tokio::test]
async fn with_http2_off_a_tls_client_gets_http1() {
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    let config = format!("{}[listen.http2]\nenabled = false\n", proxy_tls(&cert));
    let proxy = Proxy::start(&[app.url()], &config).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = cert
        .client_connector_for(&[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

/// A TLS connection to the proxy that chose `h2`, for clients that speak HTTP/2 themselves.
async fn h2_tls(
    proxy: &Proxy,
    cert: &TestCert,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = cert
        .client_connector_for(&[b"h2"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

#[tokio::test]
async fn rapid_reset_gets_a_goaway_and_everyone_else_is_served() {
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[app.url()], &proxy_tls(&cert)).await;
    let mut sender = h2_connection(&proxy, &cert).await;
    let mut bystander = open(&mut sender, "/bystander").await;

    // CVE-2023-44487: open a stream and cancel it at once, again and again.
    let (mut client, connection) = h2::client::handshake(h2_tls(&proxy, &cert).await)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    while sent < 10_000 && !connection.is_finished() {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let request = http::Request::get("https://localhost/").body(()).unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent % 50 == 0 {
            // Let the connection task write them out and read what the proxy says.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let ended = within("the attacker's connection to end", connection)
        .await
        .unwrap();
    let error = ended.expect_err("closed by the proxy, not cleanly");
    assert!(
        error.is_go_away() && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "after {sent} resets: {error:?}"
    );
    assert!(sent < 10_000, "the proxy let {sent} resets through");

    // Everyone else goes on: the session on the other connection, and new connections.
    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        next_message(&mut bystander).await,
        Message::text("still here")
    );
    let mut fresh = h2_connection(&proxy, &cert).await;
    let mut ws = open(&mut fresh, "/after").await;
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("after"));
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[app.url()], &proxy_tls(&cert)).await;
    let (mut from_proxy, mut to_proxy) = tokio::io::split(h2_tls(&proxy, &cert).await);
    // Everything the proxy sends, until it closes the connection.
    let heard = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = from_proxy.read_to_end(&mut bytes).await;
        bytes
    });
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    to_proxy
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    to_proxy.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    // HEADERS without END_HEADERS (`:method GET`), then CONTINUATION frames that never end
    // the block, 16 KiB each: 64 MiB in all unless the proxy stops it. Each is a new
    // literal header `x-a` (HPACK: 0x40, name length, name) whose value's length is an
    // integer of a 7-bit prefix (0x7f) and two continuation bytes.
    to_proxy
        .write_all(&frame(0x1, 0, 1, &[0x82]))
        .await
        .unwrap();
    let len: usize = 16 * 1024 - 8;
    let rest = len - 127;
    let mut literal = vec![0x40, 0x03, b'x', b'-', b'a', 0x7f];
    literal.extend_from_slice(&[(rest & 0x7f) as u8 | 0x80, (rest >> 7) as u8]);
    literal.resize(16 * 1024, b'y');
    let flood = frame(0x9, 0, 1, &literal);
    let mut written = 0;
    within("the proxy to cut the flood off", async {
        while written < 4096 && to_proxy.write_all(&flood).await.is_ok() {
            written += 1;
        }
    })
    .await;
    assert!(
        written < 4096,
        "the proxy took all 64 MiB of one header block"
    );
    let heard = within("the proxy to close the connection", heard)
        .await
        .unwrap();
    // Its last words: a GOAWAY (type 7) with an error code, after its SETTINGS.
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= heard.len() {
        let len = u32::from_be_bytes([0, heard[at], heard[at + 1], heard[at + 2]]) as usize;
        let payload = &heard[(at + 9).min(heard.len())..(at + 9 + len).min(heard.len())];
        if heard[at + 3] == 0x7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        at += 9 + len;
    }
    let code = goaway.expect("a GOAWAY from the proxy");
    assert_ne!(code, 0, "GOAWAY with an error code, not NO_ERROR");

    // The proxy keeps serving.
    let mut sender = h2_connection(&proxy, &cert).await;
    let mut ws = open(&mut sender, "/after").await;
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("after"));
}

#[tokio::test]
async fn each_websocket_stream_counts_in_max_connections() {
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    // One connection and two sessions.
    let config = format!("{}[listen]\nmax_connections = 3\n", proxy_tls(&cert));
    let proxy = Proxy::start(&[app.url()], &config).await;
    let mut sender = h2_connection(&proxy, &cert).await;
    let mut first = open(&mut sender, "/1").await;
    let _second = open(&mut sender, "/2").await;
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://localhost/3")
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 503, "a third session is over the limit");
    // The first session's end gives its permit back.
    first.close(None).await.unwrap();
    assert!(matches!(next_message(&mut first).await, Message::Close(_)));
    within("a permit to come back", async {
        loop {
            let mut request = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri("https://localhost/3")
                .header("sec-websocket-version", "13")
                .body(Empty::new())
                .unwrap();
            request
                .extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            if sender.send_request(request).await.unwrap().status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_and_one_with_a_session_is_kept() {
    let cert = TestCert::new();
    let app = UpstreamBuilder::new().start().await;
    let config = format!(
        "{}[listen]\nhandshake_timeout = \"200ms\"\n",
        proxy_tls(&cert)
    );
    let proxy = Proxy::start(&[app.url()], &config).await;
    let mut idle = h2_connection(&proxy, &cert).await;
    let mut busy = h2_connection(&proxy, &cert).await;
    let mut ws = open(&mut busy, "/busy").await;
    within("the idle connection's GOAWAY", async {
        while idle.ready().await.is_ok() && !idle.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Several intervals later the session's connection is still there.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still here"));
}
