//! The load generator: closed-loop echo clients (each sends a message, waits for its echo,
//! repeats) with per-echo latency, and helpers that open many idle sessions.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Client = WebSocketStream<TcpStream>;

pub async fn connect(addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let request = format!("ws://{addr}/bench")
        .into_client_request()
        .expect("request");
    // Small buffers: the generator holds thousands of idle sessions too.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(None)
        .max_frame_size(None);
    tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .expect("handshake")
        .0
}

/// Sends `payload` and waits for its echo; false if the session ended instead.
pub async fn echo(client: &mut Client, payload: Bytes) -> bool {
    if client.send(Message::Binary(payload)).await.is_err() {
        return false;
    }
    loop {
        match client.next().await {
            Some(Ok(Message::Binary(_) | Message::Text(_))) => return true,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return false,
        }
    }
}

pub struct LoadResult {
    pub echoes: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

/// `connections` clients echo `size`-byte messages back to back for `duration`.
pub async fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    duration: Duration,
) -> LoadResult {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(addr).await);
    }
    let payload = Bytes::from(vec![0x5a; size]);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if !echo(&mut client, payload.clone()).await {
                        break;
                    }
                    latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                let _ = client.close(None).await;
                latencies
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.expect("load task"));
    }
    LoadResult {
        echoes: latencies_us.len() as u64,
        elapsed: started.elapsed(),
        latencies_us,
    }
}

/// Opens `n` sessions, each relaying one small message; `concurrency` handshakes at a time.
pub async fn open_sessions(addr: SocketAddr, n: usize, concurrency: usize) -> Vec<Client> {
    let mut sessions = Vec::with_capacity(n);
    while sessions.len() < n {
        let batch = concurrency.min(n - sessions.len());
        let opened = futures_util::future::join_all((0..batch).map(|_| async move {
            let mut client = connect(addr).await;
            assert!(
                echo(&mut client, Bytes::from_static(b"hello")).await,
                "first echo"
            );
            client
        }))
        .await;
        sessions.extend(opened);
    }
    sessions
}

/// Every session echoes one `size`-byte message, `concurrency` at a time.
pub async fn echo_each(sessions: &mut [Client], size: usize, concurrency: usize) -> usize {
    let payload = Bytes::from(vec![0x42; size]);
    let mut ok = 0;
    for chunk in sessions.chunks_mut(concurrency) {
        let results =
            futures_util::future::join_all(chunk.iter_mut().map(|c| echo(c, payload.clone())))
                .await;
        ok += results.into_iter().filter(|r| *r).count();
    }
    ok
}

/// The p-th percentile (0-100) of `sorted`.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
