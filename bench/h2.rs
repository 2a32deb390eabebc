//! WebSockets over HTTP/2 (RFC 8441) against HTTP/1.1, both over TLS to one holdfast: CPU
//! per 64 B echo in closed loop, alternating round by round, and resident memory per idle
//! session. HTTP/2 is measured in two shapes: one stream per connection (a client with one
//! session) and many streams on one connection (one client with many sessions, as a
//! browser's tabs share one connection).
//!
//! The clients are hyper's HTTP/2 client (extended CONNECT) and tokio-tungstenite over
//! rustls; the upstream is the bench's echo server, reached over HTTP/1.1 in every case.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::{median, procs};

/// Streams per connection in the many-streams shape (holdfast allows 128 by default).
const STREAMS_PER_CONNECTION: usize = 100;

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

fn connector(cert: &Path, alpn: &[u8]) -> TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).expect("the certificate") {
        roots.add(der.expect("a PEM certificate")).expect("a root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn tls(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect to holdfast");
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
    connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with holdfast")
}

/// `n` sessions, each on a TLS connection of its own, HTTP/1.1 upgrades.
async fn http1_sessions(addr: SocketAddr, cert: &Path, n: usize) -> Vec<Ws> {
    let connector = connector(cert, b"http/1.1");
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let io: Box<dyn Io> = Box::new(tls(addr, &connector).await);
        let url = format!("wss://127.0.0.1:{}/", addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, io)
            .await
            .expect("HTTP/1.1 WebSocket handshake");
        sessions.push(ws);
    }
    sessions
}

/// `n` sessions as HTTP/2 extended CONNECT streams, `per_connection` on each connection.
async fn h2_sessions(addr: SocketAddr, cert: &Path, n: usize, per_connection: usize) -> Vec<Ws> {
    let connector = connector(cert, b"h2");
    let mut sessions = Vec::with_capacity(n);
    while sessions.len() < n {
        let (mut sender, mut connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Empty<Bytes>>(TokioIo::new(tls(addr, &connector).await))
                .await
                .expect("HTTP/2 handshake");
        // Received settings take effect in a poll no I/O may wake: poll until they have.
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(&mut connection).poll(cx) {
                panic!("the HTTP/2 connection ended: {result:?}");
            }
            if connection.is_extended_connect_protocol_enabled() {
                std::task::Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
        tokio::spawn(connection);
        for _ in 0..per_connection.min(n - sessions.len()) {
            let mut request = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(format!("https://127.0.0.1:{}/", addr.port()))
                .header("sec-websocket-version", "13")
                .body(Empty::new())
                .expect("a request");
            request
                .extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            sender.ready().await.expect("the connection takes a stream");
            let response = sender.send_request(request).await.expect("CONNECT");
            assert_eq!(response.status(), 200, "extended CONNECT accepted");
            let upgraded = hyper::upgrade::on(response).await.expect("the stream");
            let io: Box<dyn Io> = Box::new(TokioIo::new(upgraded));
            sessions.push(WebSocketStream::from_raw_socket(io, Role::Client, None).await);
        }
    }
    sessions
}

/// Every session echoes 64 B messages back to back for `duration`; the echoes done.
async fn closed_loop(sessions: Vec<Ws>, duration: Duration) -> (u64, Vec<Ws>) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let payload = Bytes::from(vec![b'x'; 64]);
                let mut echoes = 0u64;
                while Instant::now() < deadline {
                    if ws.send(Message::Binary(payload.clone())).await.is_err() {
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(Message::Binary(_))) => echoes += 1,
                        _ => break,
                    }
                }
                (echoes, ws)
            })
        })
        .collect();
    let mut total = 0;
    let mut sessions = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (echoes, ws) = task.await.expect("load task");
        total += echoes;
        sessions.push(ws);
    }
    (total, sessions)
}

/// Resident KiB per idle session: `open` opens them on a fresh holdfast, each echoes one
/// message, and the RSS is read a second later.
async fn memory_per_session<F, Fut>(
    dir: &Path,
    echo_addr: SocketAddr,
    extra: &str,
    sessions: usize,
    open: F,
) -> f64
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Vec<Ws>>,
{
    let holdfast = procs::start_holdfast_with(&procs::holdfast_binary(), dir, echo_addr, extra);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = procs::rss_kib(holdfast.pid());
    let mut open = open(holdfast.addr).await;
    for ws in &mut open {
        ws.send(Message::Binary(Bytes::from_static(b"hello")))
            .await
            .expect("a live session");
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = procs::rss_kib(holdfast.pid());
    drop(open);
    rss.saturating_sub(base) as f64 / sessions as f64
}

/// Measures and prints the HTTP/2 table.
pub async fn run(dir: &Path, rounds: usize, seconds: f64, connections: usize, sessions: usize) {
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", procs::free_port())
        .parse()
        .expect("addr");
    let (_echo, _) = procs::start_echo(echo_addr);
    let (cert, key) = procs::certificate(dir);
    let extra = format!("[listen.tls]\ncert = {cert:?}\nkey = {key:?}\n");

    let holdfast = procs::start_holdfast_with(&procs::holdfast_binary(), dir, echo_addr, &extra);
    let addr = holdfast.addr;
    let mut shapes: Vec<(String, Vec<Ws>)> = vec![
        (
            format!("HTTP/1.1, {connections} TLS connections"),
            http1_sessions(addr, &cert, connections).await,
        ),
        (
            format!("HTTP/2, {connections} connections of 1 stream"),
            h2_sessions(addr, &cert, connections, 1).await,
        ),
        (
            format!("HTTP/2, {connections} streams on 1 connection"),
            h2_sessions(addr, &cert, connections, connections).await,
        ),
    ];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    for round in 0..rounds {
        for (i, (name, sessions)) in shapes.iter_mut().enumerate() {
            let (user, system) = procs::cpu_seconds(holdfast.pid());
            let started = Instant::now();
            let (echoes, back) =
                closed_loop(std::mem::take(sessions), Duration::from_secs_f64(seconds)).await;
            *sessions = back;
            let elapsed = started.elapsed().as_secs_f64();
            let (user2, system2) = procs::cpu_seconds(holdfast.pid());
            let per_echo = (user2 + system2 - user - system) * 1e6 / echoes.max(1) as f64;
            cpu[i].push(per_echo);
            rates[i].push(echoes as f64 / elapsed);
            eprintln!(
                "  h2 round {} {name:<40} {:>8.0} echoes/s, {per_echo:.1} µs CPU/echo",
                round + 1,
                echoes as f64 / elapsed
            );
        }
    }
    drop(shapes);
    drop(holdfast);

    let h1 = memory_per_session(dir, echo_addr, &extra, sessions, |addr| {
        let cert = cert.clone();
        async move { http1_sessions(addr, &cert, sessions).await }
    })
    .await;
    let h2 = memory_per_session(dir, echo_addr, &extra, sessions, |addr| {
        let cert = cert.clone();
        async move { h2_sessions(addr, &cert, sessions, STREAMS_PER_CONNECTION).await }
    })
    .await;

    println!();
    println!(
        "| WebSockets over HTTP/2 against HTTP/1.1, TLS, 64 B closed loop, median of {rounds} alternating rounds | | |"
    );
    println!("|---|---|---|");
    let base = median(&cpu[0]);
    let names = [
        format!("HTTP/1.1, {connections} TLS connections"),
        format!("HTTP/2, {connections} connections of 1 stream"),
        format!("HTTP/2, {connections} streams on 1 connection"),
    ];
    for (i, name) in names.iter().enumerate() {
        let per_echo = median(&cpu[i]);
        println!(
            "| {name}: CPU µs / echo | {per_echo:.1} ({:.0} echoes/s) | {:.2}× HTTP/1.1 |",
            median(&rates[i]),
            per_echo / base.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "| RSS / idle session, {sessions} sessions: HTTP/1.1 (a TLS connection each) | {h1:.1} KiB | |"
    );
    println!(
        "| RSS / idle session, {sessions} sessions: HTTP/2 ({STREAMS_PER_CONNECTION} streams per TLS connection) | {h2:.1} KiB | {:.2}× HTTP/1.1 |",
        h2 / h1.max(f64::MIN_POSITIVE)
    );
}
