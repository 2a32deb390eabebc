//! The demo upstream: an echo server that restarts itself with 1012 and answers
//! `forbidden` with 1008.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Clock, DemoError};

/// The demo upstream: echoes `instance N: <message>`, closes `forbidden` with 1008, and on
/// `restart()` closes every connection with 1012, stops listening for a moment and comes
/// back as the next instance on the same address.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    instance: Arc<AtomicUsize>,
    restart_tx: broadcast::Sender<()>,
    /// The newest instance that has accepted a session.
    pub accepted: watch::Sender<usize>,
    accept_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    clock: Clock,
}

impl DemoUpstream {
    pub async fn start(clock: Clock) -> Result<Arc<Self>, DemoError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = Arc::new(Self {
            addr: listener.local_addr()?,
            instance: Arc::new(AtomicUsize::new(1)),
            restart_tx: broadcast::channel(4).0,
            accepted: watch::channel(0).0,
            accept_task: std::sync::Mutex::new(None),
            clock,
        });
        upstream.listen(listener);
        Ok(upstream)
    }

    fn listen(self: &Arc<Self>, listener: TcpListener) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let instance = this.instance.load(Ordering::SeqCst);
                let restart = this.restart_tx.subscribe();
                let this = this.clone();
                tokio::spawn(async move { serve(tcp, instance, restart, &this).await });
            }
        });
        *self.accept_task.lock().expect("demo lock") = Some(task);
    }

    /// Closes every connection with 1012, is down for `down`, then listens again.
    pub async fn restart(self: &Arc<Self>, down: Duration) -> Result<(), DemoError> {
        let instance = self.instance.load(Ordering::SeqCst);
        self.clock.say(
            "upstream",
            format!(
                "instance {instance} restarting: closes its connections with 1012 Service Restart"
            ),
        );
        if let Some(task) = self.accept_task.lock().expect("demo lock").take() {
            task.abort();
        }
        let _ = self.restart_tx.send(());
        self.clock.say(
            "holdfast",
            "holds the client: its socket stays open, its messages are buffered, reconnecting",
        );
        tokio::time::sleep(down).await;
        self.instance.fetch_add(1, Ordering::SeqCst);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.clock
            .say("upstream", format!("instance {} listening", instance + 1));
        self.listen(listener);
        Ok(())
    }
}

// tungstenite's server callback fixes the error type to a whole `Response`.
#[allow(clippy::result_large_err)]
async fn serve(
    tcp: TcpStream,
    instance: usize,
    mut restart: broadcast::Receiver<()>,
    upstream: &DemoUpstream,
) {
    let clock = upstream.clock;
    let mut resume = None;
    let callback =
        |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
         resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
            resume = req
                .headers()
                .get("x-holdfast-resume")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(resp)
        };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    match resume {
        Some(n) => clock.say(
            "upstream",
            format!("instance {instance} accepted the held session (X-Holdfast-Resume: {n})"),
        ),
        None => clock.say(
            "upstream",
            format!("instance {instance} accepted a new session"),
        ),
    }
    upstream
        .accepted
        .send_modify(|newest| *newest = (*newest).max(instance));
    loop {
        tokio::select! {
            _ = restart.recv() => {
                let frame = CloseFrame { code: CloseCode::Restart, reason: "demo upstream restarting".into() };
                let _ = ws.send(Message::Close(Some(frame))).await;
                // Finish the close handshake, then drop the connection. A message that
                // crossed the close is this instance's to handle, not holdfast's to hold;
                // after its close an echo server can no longer answer it.
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        clock.say("upstream", format!("instance {instance} read {:?} while closing: too late to answer", text.as_str()));
                    }
                }
                return;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) if text.as_str() == "forbidden" => {
                    let frame = CloseFrame { code: CloseCode::Policy, reason: "forbidden: that word is not allowed here".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                }
                Some(Ok(Message::Text(text))) => {
                    let _ = ws.send(Message::text(format!("instance {instance}: {text}"))).await;
                }
                Some(Ok(Message::Binary(data))) => {
                    let _ = ws.send(Message::Binary(data)).await;
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}
