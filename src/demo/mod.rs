//! `holdfast demo`: a self-contained tour. It starts a demo upstream (an echo server that
//! restarts itself with 1012 and answers `forbidden` with 1008), holdfast in front of it
//! with the shipped `proxy.toml` settings, and a scripted client, and prints what the
//! client sees. `--serve` keeps the upstream and proxy running for a person to try.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config;

mod holdfasts;
pub mod network;
mod page;
mod script;
mod upstream;

use holdfasts::Holdfasts;
pub use network::Network;
use page::Stage;
use script::{resumable_scene, script};
use upstream::DemoUpstream;

/// The shipped configuration, the demo's starting point.
const SHIPPED: &str = include_str!("../../proxy.toml");

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

/// Runs the scripted demo (or, with `serve`, keeps everything up until Ctrl-C).
pub async fn run(serve_forever: bool, listen: SocketAddr) -> Result<(), DemoError> {
    let clock = Clock(Instant::now());
    let upstream = DemoUpstream::start(clock).await?;
    // holdfast listens on a port of its own; with --serve, people connect to the demo's
    // network on `listen`, which relays to whichever holdfast is current.
    let anywhere: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
    let layers = vec![SHIPPED.to_owned(), demo_layer(anywhere, "", upstream.addr)];
    let holdfasts = Arc::new(Holdfasts::start(layers, clock).await?);
    if serve_forever {
        return serve(listen, upstream, holdfasts).await;
    }

    println!(
        "holdfast demo: an echo upstream that restarts, holdfast in front of it, and two clients.\n"
    );
    clock.say(
        "upstream",
        format!("instance 1 listening on ws://{}", upstream.addr),
    );
    let proxy = holdfasts.addr().await;
    clock.say(
        "holdfast",
        format!("listening on ws://{proxy} (shipped proxy.toml settings)"),
    );
    scene("1: a plain WebSocket client");
    let outcome = script(proxy, &upstream, clock).await;
    let metrics = holdfasts.metrics().await;
    let summary = outcome?;
    scene("2: a client of the holdfast library (resumable session)");
    let (network, listener) = Network::bind(anywhere, proxy).await?;
    network.serve(
        listener,
        None::<fn(tokio::net::TcpStream) -> std::future::Ready<()>>,
    );
    let resumable = resumable_scene(&network, &holdfasts, clock).await;
    holdfasts.stop().await;
    let resumable = resumable?;
    let resumed = metric(
        &metrics,
        "holdfast_holds_total{outcome=\"resumed\",route=\"default\"}",
    );
    println!("\n── summary ─────────────────────────────────────────────────────────────");
    println!("  plain client");
    println!("    connections opened         1");
    println!("    upstream restarts          2 — the client's socket stayed open through both");
    println!(
        "    messages sent / answered   {} / {}",
        summary.sent, summary.answered
    );
    println!("    answered by instance       {}", summary.instances);
    println!(
        "    holds resumed (metrics)    {resumed}   holdfast_holds_total{{outcome=\"resumed\"}}"
    );
    println!(
        "    final close                {} {}",
        summary.close_code, summary.close_reason
    );
    println!("  library client");
    println!(
        "    survived                   a cut connection and a holdfast restart, without a close"
    );
    println!(
        "    messages sent / answered   {} / {} — each once, in order",
        resumable.sent, resumable.answered
    );
    println!("    reconnects                 {}", resumable.reconnects);
    println!("\nNext: `holdfast demo --serve` for a page with buttons that break things, or put");
    println!("holdfast in front of your own app: cargo run --release -- --config proxy.toml");
    Ok(())
}

fn scene(title: &str) {
    println!(
        "\n── scene {title} {}",
        "─".repeat(66usize.saturating_sub(title.len()))
    );
}

/// `--serve`: the page and the WebSocket relay on `listen`, until Ctrl-C.
async fn serve(
    listen: SocketAddr,
    upstream: Arc<DemoUpstream>,
    holdfasts: Arc<Holdfasts>,
) -> Result<(), DemoError> {
    let (network, listener) = Network::bind(listen, holdfasts.addr().await).await?;
    let stage = Arc::new(Stage {
        upstream: upstream.clone(),
        network: network.clone(),
        holdfasts: holdfasts.clone(),
    });
    network.serve(listener, Some(move |tcp| page::serve(tcp, stage.clone())));
    print_serve_banner(network.addr, upstream.addr);
    let restarts = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let _ = upstream.restart(Duration::from_millis(500)).await;
        }
    });
    let _ = tokio::signal::ctrl_c().await;
    restarts.abort();
    holdfasts.stop().await;
    Ok(())
}

fn metric(text: &str, series: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "0".into())
}

fn print_serve_banner(listen: SocketAddr, upstream: SocketAddr) {
    println!("holdfast demo is serving (Ctrl-C to stop):");
    println!("  page      http://{listen}/   a live feed with the client library, and buttons to");
    println!(
        "                                 restart the app, cut your connection, restart holdfast"
    );
    println!("  proxy     ws://{listen}/     holdfast (shipped proxy.toml settings)");
    println!(
        "  upstream  ws://{upstream}/   echo; restarts with 1012 every 30 s; `forbidden` → 1008"
    );
    println!("  metrics   http://{listen}/metrics");
    println!();
    println!(
        "Open the page, or connect with any WebSocket client and keep typing across the restarts:"
    );
    println!("  websocat ws://{listen}/");
    println!("A plain client is held across the app's restarts; the page's library client also");
    println!("survives a cut connection and holdfast's own restart.");
}
