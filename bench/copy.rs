//! `--tokio-copy`: a plain TCP byte relay on tokio, run the way holdfast runs (one
//! current-thread runtime per core, each accepted connection handed to the next one, one
//! task per connection polling both sockets), in its own process
//! (`holdfast-bench tokio-copy --listen ADDR --upstream ADDR`).
//!
//! It does no WebSocket work at all: after the handshake passes through it as bytes, it
//! copies what it reads. Its CPU per echo is what tokio's event loop and the kernel cost a
//! proxy built like holdfast, so the difference to holdfast is holdfast's own work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn run(listen: SocketAddr, upstream: SocketAddr) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<tokio::runtime::Handle> = (0..cores)
        .map(|_| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let handle = runtime.handle().clone();
            std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
            handle
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let next = AtomicUsize::new(0);
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("tokio-copy: bind");
        while let Ok((client, _)) = listener.accept().await {
            let Ok(client) = client.into_std() else {
                continue;
            };
            let worker = &workers[next.fetch_add(1, Ordering::Relaxed) % workers.len()];
            worker.spawn(async move {
                let Ok(client) = TcpStream::from_std(client) else {
                    return;
                };
                if let Ok(upstream) = TcpStream::connect(upstream).await {
                    relay(client, upstream).await;
                }
            });
        }
    });
}

/// Copies both ways until either side ends.
async fn relay(mut client: TcpStream, mut upstream: TcpStream) {
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let (mut from_client, mut from_upstream) = ([0u8; 4096], [0u8; 4096]);
    loop {
        let done = tokio::select! {
            biased;
            read = client.read(&mut from_client) => match read {
                Ok(n) if n > 0 => upstream.write_all(&from_client[..n]).await.is_err(),
                _ => true,
            },
            read = upstream.read(&mut from_upstream) => match read {
                Ok(n) if n > 0 => client.write_all(&from_upstream[..n]).await.is_err(),
                _ => true,
            },
        };
        if done {
            return;
        }
    }
}
