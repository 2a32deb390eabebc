//! Plain HTTP passthrough (SPEC §3.1): non-upgrade requests reach the upstream with
//! bodies streamed, hop-by-hop headers removed and X-Forwarded-* added; 502 when down.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// An HTTP upstream answering with what it received: request line, headers, then the body.
async fn start_http_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut text = format!("{} {}\n", req.method(), req.uri());
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
                    }
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    text.push('\n');
                    text.push_str(&String::from_utf8_lossy(&body));
                    // Stream the answer in two chunks.
                    let (a, b) = text.split_at(text.len() / 2);
                    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from(a.to_owned()))),
                        Ok(Frame::data(Bytes::from(b.to_owned()))),
                    ];
                    let mut response =
                        Response::new(StreamBody::new(futures_util::stream::iter(chunks)));
                    response
                        .headers_mut()
                        .insert("x-upstream", "yes".parse().unwrap());
                    response
                        .headers_mut()
                        .insert("keep-alive", "timeout=99".parse().unwrap());
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

async fn send(
    proxy: std::net::SocketAddr,
    request: Request<Full<Bytes>>,
) -> (http::response::Parts, String) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = within("HTTP response", sender.send_request(request))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = within("HTTP body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_are_forwarded_with_bodies_and_forwarding_headers() {
    let upstream = start_http_echo().await;
    let proxy = Proxy::start(&[format!("ws://{upstream}")], "").await;
    let request = Request::post("/api/items?x=1")
        .header("host", "public.example")
        .header("x-app", "kept")
        .header("keep-alive", "timeout=5")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .body(Full::new(Bytes::from("payload ".repeat(10_000))))
        .unwrap();
    let (parts, body) = send(proxy.addr, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-upstream"], "yes");
    assert!(
        parts.headers.get("keep-alive").is_none(),
        "hop-by-hop header returned to client"
    );

    let (head, echoed_body) = body.split_once("\n\n").unwrap();
    assert!(head.starts_with("POST /api/items?x=1\n"), "{head}");
    let has = |line: &str| head.lines().any(|l| l == line);
    assert!(has("x-app: kept"), "{head}");
    assert!(has("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(has("x-forwarded-proto: http"), "{head}");
    assert!(has("x-forwarded-host: public.example"), "{head}");
    assert!(has(&format!("host: {upstream}")), "{head}");
    for hop in ["keep-alive", "x-hop", "te", "proxy-authorization"] {
        assert!(
            !head.lines().any(|l| l.starts_with(&format!("{hop}:"))),
            "{hop} forwarded: {head}"
        );
    }
    assert_eq!(echoed_body, "payload ".repeat(10_000));
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    // Reserved and never listening: connections are refused for as long as the test runs.
    let reserved = Reservation::new();
    let port = reserved.port();
    let proxy = Proxy::start(&[format!("ws://127.0.0.1:{port}")], "").await;
    let request = Request::get("/health")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = send(proxy.addr, request).await;
    assert_eq!(parts.status, 502, "{body}");
}
