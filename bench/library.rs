//! Library clients (`holdfast.resume.v1`) against plain ones, on the same holdfast in the
//! same run: wire bytes and holdfast CPU per echo (alternating rounds), resident memory per
//! idle session, and 1,000 resumable sessions whose connections are all cut at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use holdfast::client::{Received, ResumableClient};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::procs;
use crate::{median, size_label};

/// A client's TCP stream that counts the bytes it carries both ways.
pub(crate) struct Counted {
    pub(crate) tcp: TcpStream,
    pub(crate) bytes: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.bytes.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

type Client = WebSocketStream<Counted>;

/// A plain client, or a library client (offers `holdfast.resume.v1` and reads the hello).
async fn connect(addr: SocketAddr, resumable: bool, bytes: Arc<AtomicU64>) -> Client {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let mut request = format!("ws://{addr}/bench")
        .into_client_request()
        .expect("request");
    if resumable {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            holdfast::resume::SUBPROTOCOL
                .parse()
                .expect("a header value"),
        );
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(None)
        .max_frame_size(None);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, Counted { tcp, bytes }, Some(config))
            .await
            .expect("handshake");
    if resumable {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('h') => {}
            other => panic!("expected the hello, got {other:?}"),
        }
    }
    ws
}

/// One echo as the library does it: `d` + payload out, the `d` echo back (holdfast's
/// acknowledgements skipped), an acknowledgement of what arrived every 16 messages.
/// `received` counts the session's messages. False if the session ended.
async fn echo(client: &mut Client, payload: &Bytes, resumable: bool, received: &mut u64) -> bool {
    let out = if resumable {
        let mut framed = Vec::with_capacity(payload.len() + 1);
        framed.push(b'd');
        framed.extend_from_slice(payload);
        Bytes::from(framed)
    } else {
        payload.clone()
    };
    if client.send(Message::Binary(out)).await.is_err() {
        return false;
    }
    loop {
        match client.next().await {
            Some(Ok(Message::Binary(_))) => break,
            // holdfast's acknowledgements of what the client sent.
            Some(Ok(Message::Text(t))) if resumable && t.starts_with('a') => continue,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return false,
        }
    }
    *received += 1;
    if resumable && received.is_multiple_of(16) {
        let ack = Message::text(holdfast::resume::envelope::ack(*received));
        return client.send(ack).await.is_ok();
    }
    true
}

struct Round {
    echoes: u64,
    bytes: u64,
}

/// `connections` clients echo `size`-byte messages back to back for `duration`.
async fn closed_loop(
    addr: SocketAddr,
    resumable: bool,
    connections: usize,
    size: usize,
    duration: Duration,
) -> Round {
    let bytes = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(addr, resumable, bytes.clone()).await);
    }
    let opened = bytes.load(Ordering::Relaxed);
    let payload = Bytes::from(vec![0x5a; size]);
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut received = 0;
                while Instant::now() < deadline {
                    if !echo(&mut client, &payload, resumable, &mut received).await {
                        break;
                    }
                }
                received
            })
        })
        .collect();
    let mut echoes = 0;
    for task in tasks {
        echoes += task.await.expect("load task");
    }
    // Counted before the closes: what the echoes themselves took.
    let bytes = bytes.load(Ordering::Relaxed) - opened;
    Round { echoes, bytes }
}

#[derive(Default)]
struct Path {
    cpu_per_echo: Vec<f64>,
    bytes_per_echo: Vec<f64>,
}

/// Measures everything and prints the library table.
pub async fn run(
    dir: &std::path::Path,
    sizes: &[usize],
    rounds: usize,
    seconds: f64,
    connections: usize,
    sessions: usize,
) {
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", procs::free_port())
        .parse()
        .expect("addr");
    let (_echo, _) = procs::start_echo(echo_addr);
    let holdfast = procs::start_holdfast(dir, echo_addr);
    let mut paths: Vec<(usize, Path, Path)> = Vec::new();
    for &size in sizes {
        let (mut plain, mut library) = (Path::default(), Path::default());
        for round in 0..rounds {
            for (resumable, path) in [(false, &mut plain), (true, &mut library)] {
                let (user, system) = procs::cpu_seconds(holdfast.pid());
                let r = closed_loop(
                    holdfast.addr,
                    resumable,
                    connections,
                    size,
                    Duration::from_secs_f64(seconds),
                )
                .await;
                let (user2, system2) = procs::cpu_seconds(holdfast.pid());
                let echoes = r.echoes.max(1) as f64;
                path.cpu_per_echo
                    .push((user2 + system2 - user - system) * 1e6 / echoes);
                path.bytes_per_echo.push(r.bytes as f64 / echoes);
                eprintln!(
                    "  library {:>6} B round {} {:<9} {:>8.0} echoes, {:.1} µs CPU/echo",
                    size,
                    round + 1,
                    if resumable { "resumable" } else { "plain" },
                    r.echoes,
                    path.cpu_per_echo.last().unwrap_or(&0.0)
                );
            }
        }
        paths.push((size, plain, library));
    }
    drop(holdfast);

    let plain_memory = idle_memory(dir, echo_addr, sessions, false).await;
    let library_memory = idle_memory(dir, echo_addr, sessions, true).await;
    let cut = cut_all(dir, echo_addr, 1000).await;

    println!();
    println!(
        "| library clients (holdfast.resume.v1) on the same holdfast, {connections} conns closed loop, median of {rounds} alternating rounds | plain | library | library / plain |"
    );
    println!("|---|---|---|---|");
    for (size, plain, library) in &paths {
        let label = size_label(*size);
        let (pb, lb) = (
            median(&plain.bytes_per_echo),
            median(&library.bytes_per_echo),
        );
        println!(
            "| {label} wire bytes / echo (both directions, frame headers and acknowledgements included) | {pb:.1} | {lb:.1} | envelope: {:.2} bytes / message |",
            (lb - pb) / 2.0
        );
        let (pc, lc) = (median(&plain.cpu_per_echo), median(&library.cpu_per_echo));
        println!(
            "| {label} holdfast CPU µs / echo | {pc:.1} | {lc:.1} | {:.2} |",
            lc / pc.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "| RSS / idle session ({sessions} sessions) | {:.1} KiB | {:.1} KiB | {:.2} |",
        plain_memory / 1024.0,
        library_memory / 1024.0,
        library_memory / plain_memory.max(f64::MIN_POSITIVE)
    );
    println!("| 1,000 resumable sessions cut at once | — | {cut} | |");
}

/// Resident bytes per idle session on a fresh holdfast.
async fn idle_memory(
    dir: &std::path::Path,
    echo_addr: SocketAddr,
    sessions: usize,
    resumable: bool,
) -> f64 {
    let holdfast = procs::start_holdfast(dir, echo_addr);
    let bytes = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from_static(b"hello");
    let open = |bytes: Arc<AtomicU64>| {
        let payload = payload.clone();
        async move {
            let mut client = connect(holdfast.addr, resumable, bytes).await;
            assert!(echo(&mut client, &payload, resumable, &mut 0).await);
            client
        }
    };
    drop(open(bytes.clone()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = procs::rss_kib(holdfast.pid());
    let mut clients = Vec::with_capacity(sessions);
    while clients.len() < sessions {
        let batch = 64.min(sessions - clients.len());
        clients
            .extend(futures_util::future::join_all((0..batch).map(|_| open(bytes.clone()))).await);
    }
    // Past holdfast's 100 ms acknowledgement of each session's one message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procs::rss_kib(holdfast.pid());
    eprintln!(
        "  library memory ({}): base {base} KiB, {sessions} idle {idle} KiB",
        if resumable { "resumable" } else { "plain" }
    );
    drop(clients);
    idle.saturating_sub(base) as f64 * 1024.0 / sessions as f64
}

/// `n` resumable sessions (the Rust client, which reconnects as the library does: at once,
/// then with growing pauses) through a relay that resets them all at once. Each sends one
/// message right before the cut and one right after; the line says how long until every
/// session was re-attached and had both echoes, and how many were lost or duplicated.
async fn cut_all(dir: &std::path::Path, echo_addr: SocketAddr, n: usize) -> String {
    let holdfast = procs::start_holdfast(dir, echo_addr);
    // The demo's network: a load balancer's stand-in that can reset every connection.
    let network = holdfast::demo::Network::start(holdfast.addr).await;
    let relay = network.addr;
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = 64.min(n - clients.len());
        clients.extend(
            futures_util::future::join_all(
                (0..batch).map(|_| ResumableClient::connect(relay, "/bench", &[])),
            )
            .await
            .into_iter()
            .map(|c| c.expect("a resumable session")),
        );
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .send(Message::text(format!("before {i}")))
            .await
            .expect("send");
    }
    let cut_at = Instant::now();
    network.cut();
    let waits = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| async move {
            let sent = client
                .send(Message::text(format!("after {i}")))
                .await
                .is_ok();
            let mut got = Vec::new();
            let finished = tokio::time::timeout(Duration::from_secs(30), async {
                while sent && got.len() < 2 {
                    match client.next().await {
                        Ok(Received::Message(Message::Text(t))) => got.push(t.to_string()),
                        Ok(_) | Err(_) => break,
                    }
                }
            })
            .await;
            let done = Instant::now();
            // Anything more that is already on its way would be a duplicate.
            if finished.is_ok()
                && let Ok(Ok(Received::Message(Message::Text(t)))) =
                    tokio::time::timeout(Duration::from_millis(300), client.next()).await
            {
                got.push(t.to_string());
            }
            let expected = [format!("before {i}"), format!("after {i}")];
            let lost = expected.iter().filter(|e| !got.contains(e)).count();
            let duplicated = got.len() - (2 - lost);
            (client.reconnects >= 1, lost, duplicated, done)
        });
    let outcomes = futures_util::future::join_all(waits).await;
    let attached = outcomes.iter().filter(|o| o.0).count();
    let lost: usize = outcomes.iter().map(|o| o.1).sum();
    let duplicated: usize = outcomes.iter().map(|o| o.2).sum();
    let last = outcomes.iter().map(|o| o.3).max().unwrap_or(cut_at);
    let took = last.duration_since(cut_at);
    let line = format!(
        "{attached} of {n} re-attached, both echoes of each within {:.2} s of the cut; {lost} lost, {duplicated} duplicated",
        took.as_secs_f64()
    );
    eprintln!("  library cut: {line}");
    drop(holdfast);
    line
}
