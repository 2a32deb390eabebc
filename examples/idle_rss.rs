//! Measures holdfast's resident memory per idle proxied session.
//!
//! `cargo build --release && cargo run --release --example idle_rss -- [sessions]`
//!
//! Starts an echo upstream (in this process), the release `holdfast` binary (its own
//! process, so its RSS is only the proxy's), opens `sessions` WebSockets through it (each
//! relays one message, so every buffer has been touched), lets them go idle and reads
//! VmRSS from /proc before and after. Loopback only.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let sessions: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3000);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let upstream = echo_upstream().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("holdfast-idle-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"{proxy}\"\n[admin]\naddress = \"\"\n[upstream]\nendpoints = [\"ws://{upstream}\"]\n[websocket]\nping_interval = \"0s\"\n"
        ),
    )
    .unwrap();
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("holdfast");
    let mut child = Command::new(&binary)
        .args(["--config", config.to_str().unwrap(), "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (run `cargo build --release` first): {e}",
                binary.display()
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(proxy).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "holdfast did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let connect = || async {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let request = format!("ws://{proxy}/").into_client_request().unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws
    };
    // One session first, so the baseline includes the runtime's and TLS/HTTP machinery's
    // one-time allocations.
    let warm = connect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(child.id());
    let started = Instant::now();
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(connect().await);
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(child.id());
    let per_session = (after.saturating_sub(before)) as f64 * 1024.0 / sessions as f64;
    println!("sessions            {sessions}");
    println!("opened in           {:.2} s", opened.as_secs_f64());
    println!("holdfast RSS before {before} KiB");
    println!("holdfast RSS after  {after} KiB");
    println!(
        "per idle session    {:.0} bytes ({:.1} KiB)",
        per_session,
        per_session / 1024.0
    );
    drop(clients);
    drop(warm);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
