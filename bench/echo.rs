//! The benchmark's upstream: a small, fast WebSocket echo server in its own process
//! (`holdfast-bench echo --listen ADDR`). On SIGTERM it closes every connection with 1012,
//! waits for the close handshakes, and exits — a restarting application.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

pub fn run(listen: SocketAddr) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("echo: bind");
        // The bench waits for this line: the upstream is back.
        println!("listening {}", listener.local_addr().expect("bound"));
        let (stop_tx, stop_rx) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let accept = {
            let open = open.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let _ = tcp.set_nodelay(true);
                    let (mut stop, open) = (stop_rx.clone(), open.clone());
                    tokio::spawn(async move {
                        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
                        let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
                            return;
                        };
                        open.fetch_add(1, Ordering::SeqCst);
                        loop {
                            tokio::select! {
                                _ = stop.changed() => {
                                    let frame = CloseFrame { code: CloseCode::Restart, reason: "restarting".into() };
                                    let _ = ws.send(Message::Close(Some(frame))).await;
                                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                                        while let Some(Ok(_)) = ws.next().await {}
                                    }).await;
                                    break;
                                }
                                message = ws.next() => match message {
                                    Some(Ok(m)) if m.is_text() || m.is_binary() => {
                                        if ws.send(m).await.is_err() { break; }
                                    }
                                    Some(Ok(_)) => {}
                                    _ => break,
                                }
                            }
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        term.recv().await;
        accept.abort();
        let _ = stop_tx.send(true);
        // Exit once every connection finished its close handshake (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    });
}
