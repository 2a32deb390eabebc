//! `holdfast demo`: a self-contained tour. It starts a demo upstream (an echo server that
//! restarts itself with 1012 and answers `forbidden` with 1008), holdfast in front of it
//! with the shipped `proxy.toml` settings, and a scripted client, and prints what the
//! client sees. `--serve` keeps the upstream and proxy running for a person to try.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::app::App;
use crate::config;

/// The shipped configuration, the demo's starting point.
const SHIPPED: &str = include_str!("../proxy.toml");

/// What the demo changes on top of the shipped configuration.
fn demo_layer(listen: SocketAddr, admin: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
[listen]
address = "{listen}"
[admin]
address = "{admin}"
[upstream]
endpoints = ["ws://{upstream}"]
[[policy.catalog]]
id = "content-policy"
match = "(?i)forbidden"
docs = "https://example.com/policies#content"
"#
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("demo configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Build(#[from] crate::app::BuildError),
    #[error("the demo client saw something unexpected: {0}")]
    Unexpected(String),
}

/// Prints lines prefixed with the time since the demo started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        println!(
            "[{:>5.1}s] {who:<9} {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

/// The demo upstream: echoes `instance N: <message>`, closes `forbidden` with 1008, and on
/// `restart()` closes every connection with 1012, stops listening for a moment and comes
/// back as the next instance on the same address.
struct DemoUpstream {
    addr: SocketAddr,
    instance: Arc<AtomicUsize>,
    restart_tx: broadcast::Sender<()>,
    /// The newest instance that has accepted a session.
    accepted: watch::Sender<usize>,
    accept_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    clock: Clock,
}

impl DemoUpstream {
    async fn start(clock: Clock) -> Result<Arc<Self>, DemoError> {
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
    async fn restart(self: &Arc<Self>, down: Duration) -> Result<(), DemoError> {
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
                // Finish the close handshake, then drop the connection.
                while let Some(Ok(_)) = ws.next().await {}
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

/// Runs the scripted demo (or, with `serve`, keeps everything up until Ctrl-C).
pub async fn run(serve_forever: bool, listen: SocketAddr) -> Result<(), DemoError> {
    let clock = Clock(Instant::now());
    let upstream = DemoUpstream::start(clock).await?;
    let (listen, admin) = if serve_forever {
        (listen, "127.0.0.1:9901")
    } else {
        ("127.0.0.1:0".parse().expect("a socket address"), "")
    };
    let config = config::from_toml_layers(&[SHIPPED, &demo_layer(listen, admin, upstream.addr)])?;
    let app = App::build(config).await?;
    let proxy = app.proxy_addr();
    let handle = app.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));

    if serve_forever {
        print_serve_banner(proxy, upstream.addr);
        let restarts = {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    let _ = upstream.restart(Duration::from_millis(500)).await;
                }
            })
        };
        let _ = tokio::signal::ctrl_c().await;
        restarts.abort();
        let _ = stop_tx.send(());
        let _ = proxy_task.await;
        return Ok(());
    }

    println!(
        "holdfast demo: an echo upstream that restarts, holdfast in front of it, and a client.\n"
    );
    clock.say(
        "upstream",
        format!("instance 1 listening on ws://{}", upstream.addr),
    );
    clock.say(
        "holdfast",
        format!("listening on ws://{proxy} (shipped proxy.toml settings)"),
    );
    let outcome = script(proxy, &upstream, clock).await;
    let metrics = handle.render_metrics();
    let _ = stop_tx.send(());
    let _ = proxy_task.await;
    let summary = outcome?;
    let resumed = metric(&metrics, "holdfast_holds_total{outcome=\"resumed\"}");
    println!("\n── summary ─────────────────────────────────────────────────────────────");
    println!("  client connections opened    1");
    println!("  upstream restarts            2 — the client's socket stayed open through both");
    println!(
        "  messages sent / answered     {} / {}",
        summary.sent, summary.answered
    );
    println!("  answered by instance         {}", summary.instances);
    println!(
        "  holds resumed (metrics)      {resumed}   holdfast_holds_total{{outcome=\"resumed\"}}"
    );
    println!(
        "  final close                  {} {}",
        summary.close_code, summary.close_reason
    );
    println!(
        "\nNext: `holdfast demo --serve` to try it with any WebSocket client, or put holdfast"
    );
    println!("in front of your own app: cargo run --release -- --config proxy.toml");
    Ok(())
}

fn metric(text: &str, series: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "0".into())
}

struct Summary {
    sent: usize,
    answered: usize,
    instances: String,
    close_code: u16,
    close_reason: String,
}

/// The scripted client: messages flow while the upstream restarts twice, then `forbidden`.
async fn script(
    proxy: SocketAddr,
    upstream: &Arc<DemoUpstream>,
    clock: Clock,
) -> Result<Summary, DemoError> {
    let tcp = TcpStream::connect(proxy).await?;
    let request = format!("ws://{proxy}/demo")
        .into_client_request()
        .map_err(|e| DemoError::Unexpected(e.to_string()))?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| DemoError::Unexpected(format!("handshake: {e}")))?;
    clock.say("client", format!("connected to ws://{proxy}/demo"));

    // The restarts run on their own schedule: each one once the previous instance has the
    // session and a few messages have flowed.
    let restarts = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let mut accepted = upstream.accepted.subscribe();
            for next in 2..=3 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                upstream.restart(Duration::from_millis(700)).await?;
                // Wait until the held session is on the new instance before the next restart.
                let _ = accepted.wait_for(|newest| *newest >= next).await;
            }
            Ok::<(), DemoError>(())
        })
    };
    let (mut sent, mut answered) = (0usize, 0usize);
    let mut instances = Vec::<String>::new();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut restarts_done = false;
    let mut ticks_since_restarts = 0;
    let mut forbidden_sent = false;
    let mut restarts = Some(restarts);
    loop {
        tokio::select! {
            _ = tick.tick(), if !forbidden_sent => {
                if restarts_done {
                    ticks_since_restarts += 1;
                }
                // Once both restarts are behind us and every message has been answered (or
                // a few more ticks have passed), try the word the upstream forbids.
                if restarts_done && (answered >= sent || ticks_since_restarts > 5) {
                    clock.say("client", "→ forbidden   (the upstream's policy does not allow this word)");
                    ws.send(Message::text("forbidden")).await.map_err(|e| DemoError::Unexpected(e.to_string()))?;
                    forbidden_sent = true;
                } else {
                    sent += 1;
                    let text = format!("hello #{sent}");
                    clock.say("client", format!("→ {text}"));
                    ws.send(Message::text(text)).await.map_err(|e| DemoError::Unexpected(e.to_string()))?;
                }
            }
            done = async { restarts.as_mut().expect("polled only while running").await }, if restarts.is_some() => {
                restarts = None;
                done.map_err(|e| DemoError::Unexpected(e.to_string()))??;
                restarts_done = true;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    answered += 1;
                    if let Some((instance, _)) = text.split_once(':')
                        && instances.last().map(String::as_str) != Some(instance)
                    {
                        instances.push(instance.to_owned());
                    }
                    clock.say("client", format!("← {text}"));
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    let code = u16::from(frame.code);
                    let reason = frame.reason.to_string();
                    clock.say("client", format!("← close {code}"));
                    clock.say("", format!("  reason: {reason}"));
                    if code != 1008 || !forbidden_sent {
                        return Err(DemoError::Unexpected(format!("close {code} {reason}")));
                    }
                    if let Ok(context) = serde_json::from_str::<serde_json::Value>(&reason) {
                        for key in ["policy", "retry_ms", "ref", "detail"] {
                            if let Some(value) = context.get(key) {
                                clock.say("", format!("  {key:<8} {value}"));
                            }
                        }
                    }
                    return Ok(Summary { sent, answered, instances: instances.join(" → "), close_code: code, close_reason: reason });
                }
                Some(Ok(_)) => {}
                other => return Err(DemoError::Unexpected(format!("the connection ended: {other:?}"))),
            }
        }
    }
}

fn print_serve_banner(proxy: SocketAddr, upstream: SocketAddr) {
    println!("holdfast demo is serving (Ctrl-C to stop):");
    println!("  proxy     ws://{proxy}/     holdfast, shipped proxy.toml settings");
    println!(
        "  upstream  ws://{upstream}/   echo; restarts with 1012 every 15 s; `forbidden` → 1008"
    );
    println!("  metrics   http://127.0.0.1:9901/metrics");
    println!();
    println!("Connect with any WebSocket client and keep typing across the restarts:");
    println!("  websocat ws://{proxy}/");
    println!("or in a browser console:");
    println!("  ws = new WebSocket(\"ws://{proxy}/\");");
    println!("  ws.onmessage = (e) => console.log(e.data);");
    println!("  ws.onclose = (e) => console.log(\"closed\", e.code, e.reason);");
    println!("  ws.send(\"hello\");   // answered by the current instance, even across restarts");
    println!("  ws.send(\"forbidden\");  // closed with 1008 and its policy context");
}
