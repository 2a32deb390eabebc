//! `holdfast demo`: a self-contained tour. It starts a demo upstream (an echo server that
//! restarts itself with 1012 and answers `forbidden` with 1008), holdfast in front of it
//! with the shipped `proxy.toml` settings, and a scripted client, and prints what the
//! client sees. `--serve` keeps the upstream and proxy running for a person to try.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::app::App;
use crate::config;

mod script;
mod upstream;

use script::script;
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
