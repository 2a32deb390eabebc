//! holdfast-bench: direct vs nginx vs holdfast, measured side by side in one run, loopback
//! only. `bench/run.sh` builds the release binaries and runs this; see README "Performance".
//!
//! Measures, alternating targets round by round: closed-loop echo throughput and latency
//! (64 B and 64 KiB), proxy CPU per 1,000 echoes, TCP segments and proxy wake-ups per echo,
//! holdfast/nginx ratios within each round, RSS per idle proxied session, RSS after
//! every session relayed one 256 KiB message, and the resume of held sessions across an
//! upstream restart (holdfast) — or what a byte relay does then (nginx).

mod compression;
mod copy;
mod echo;
mod h2;
mod library;
mod load;
mod peers;
mod procs;
#[cfg(target_os = "linux")]
mod uring_copy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use procs::Proc;

#[derive(Parser)]
#[command(about = "Benchmarks holdfast against a direct connection and nginx on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Alternating rounds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Closed-loop connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Idle sessions for the memory and resume measurements.
    #[arg(long, default_value_t = 9000)]
    sessions: usize,
    /// Leave nginx out even if it is installed.
    #[arg(long)]
    no_nginx: bool,
    /// Message sizes for the throughput runs (a quicker look: `--sizes 64`).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 64 * 1024])]
    sizes: Vec<usize>,
    /// Another holdfast binary (an earlier build) measured in the same alternation, in a
    /// "baseline" column: how to see what one change is worth despite run-to-run noise.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
    /// Only the throughput runs: no memory or resume measurements.
    #[arg(long, conflicts_with = "resume_only")]
    throughput_only: bool,
    /// Only the resume measurement (its tail varies from run to run: repeat this).
    #[arg(long, conflicts_with = "library_only")]
    resume_only: bool,
    /// Only the library clients' table (resumable against plain sessions on holdfast).
    #[arg(long, conflicts_with = "throughput_only")]
    library_only: bool,
    /// Only the compression table (permessage-deflate on a JSON stream: bytes, CPU per
    /// echo against uncompressed and against nginx passing it through, memory per session).
    #[arg(long, conflicts_with_all = ["throughput_only", "library_only", "resume_only"])]
    compression_only: bool,
    /// Only the HTTP/2 table (WebSockets over HTTP/2 streams against HTTP/1.1, both over
    /// TLS: CPU per 64 B echo, memory per idle session).
    #[arg(long, conflicts_with_all = ["throughput_only", "library_only", "resume_only", "compression_only"])]
    h2_only: bool,
    /// Only the peers' table: holdfast, nginx and HAProxy, plain and (third-party) with
    /// TLS towards clients, then memory per idle session at 1,000, 4,000 and 9,000
    /// sessions. `third-party`: k6 drives the load, Node's `ws` echoes; `ours`: this
    /// benchmark's own load generator and echo server. With `--baseline` that binary runs
    /// in the same alternation; with `--throughput-only` the memory steps are left out.
    /// Plain TCP also runs `direct` (no proxy: the ceiling) and, with `--tokio-copy` or
    /// `--uring-copy`, those byte relays (the floor of a relay's CPU).
    #[arg(long, value_parser = ["third-party", "ours"], conflicts_with_all = ["library_only", "resume_only", "compression_only", "h2_only"])]
    peers: Option<String>,
    /// With `--peers third-party`: plain TCP only, no TLS rows.
    #[arg(long, requires = "peers")]
    plain_only: bool,
    /// Also measure a plain tokio byte relay built like holdfast (a "tokio copy" column in
    /// the throughput rows): what the event loop and the kernel cost without WebSocket work.
    #[arg(long)]
    tokio_copy: bool,
    /// Also measure a plain byte relay on io_uring, the ring as the event loop (a "uring
    /// copy" column): what a different event-loop model would save, against the tokio copy.
    #[arg(long)]
    uring_copy: bool,
}

impl Cli {
    /// The byte relays asked for (`--tokio-copy`, `--uring-copy`): this binary's
    /// subcommand for each, and its column's name.
    fn relays(&self) -> Vec<(&'static str, &'static str)> {
        [
            (self.tokio_copy, ("tokio-copy", "tokio copy")),
            (self.uring_copy, ("uring-copy", "uring copy")),
        ]
        .into_iter()
        .filter_map(|(on, relay)| on.then_some(relay))
        .collect()
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// (scripts/autobahn.sh) a conformant client for Autobahn's fuzzingserver: runs every
    /// case, echoing what the server sends, then asks it to write its reports.
    AutobahnClient {
        /// ws://host:port of the fuzzingserver, or of holdfast in front of it.
        #[arg(long)]
        server: String,
        #[arg(long)]
        agent: String,
    },
    /// (internal) the echo upstream.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal, `--tokio-copy`) a plain tokio byte relay to `upstream`.
    TokioCopy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// (internal, `--uring-copy`) a plain io_uring byte relay to `upstream`.
    UringCopy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
}

#[derive(Default)]
struct Throughput {
    /// Per round: echoes per second, proxy CPU µs per echo, of which user space (the rest
    /// is the kernel's TCP work and scheduling). The table shows each one's median over the
    /// rounds: one round disturbed by the rest of a shared machine does not move it.
    rates: Vec<f64>,
    cpu_per_echo: Vec<f64>,
    user_per_echo: Vec<f64>,
    /// Per round: TCP segments sent per echo (every end on loopback), and the proxy's
    /// voluntary context switches per echo (times it slept and was woken).
    segments_per_echo: Vec<f64>,
    switches_per_echo: Vec<f64>,
    /// Every round's latencies, pooled for the percentiles.
    latencies: Vec<u32>,
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Echo { listen }) => return echo::run(listen),
        Some(Cmd::TokioCopy { listen, upstream }) => return copy::run(listen, upstream),
        #[cfg(target_os = "linux")]
        Some(Cmd::UringCopy { listen, upstream }) => return uring_copy::run(listen, upstream),
        #[cfg(not(target_os = "linux"))]
        Some(Cmd::UringCopy { .. }) => panic!("io_uring is Linux only"),
        Some(Cmd::AutobahnClient { server, agent }) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            return runtime.block_on(autobahn_client(&server, &agent));
        }
        None => {}
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(cli));
}

async fn run(mut cli: Cli) {
    let library_sizes = cli.sizes.clone();
    if cli.resume_only || cli.library_only {
        cli.sizes.clear();
    }
    let dir = tempfile_dir();
    let with_nginx = !cli.no_nginx && procs::nginx_available();
    if let Some(set) = &cli.peers {
        let set = match set.as_str() {
            "ours" => peers::PeerSet::Ours,
            _ => peers::PeerSet::ThirdParty,
        };
        let relays = cli.relays();
        peers::run(
            &dir,
            set,
            cli.rounds,
            cli.seconds,
            cli.connections,
            &cli.sizes,
            peers::Options {
                baseline: cli.baseline.as_deref(),
                throughput_only: cli.throughput_only,
                plain_only: cli.plain_only,
                relays: &relays,
            },
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if cli.h2_only {
        h2::run(&dir, cli.rounds, cli.seconds, cli.connections, cli.sessions).await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if cli.compression_only {
        let (rounds, seconds) = (cli.rounds, cli.seconds);
        compression::run(
            &dir,
            rounds,
            seconds,
            cli.connections,
            cli.sessions,
            with_nginx,
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", procs::free_port()).parse().unwrap();
    let (echo, _) = procs::start_echo(echo_addr);
    println!(
        "holdfast-bench: {} cores, loopback, one run; nginx {}",
        cores(),
        if with_nginx {
            "included"
        } else {
            "not installed (skipped)"
        }
    );

    // Throughput and latency, alternating targets each round.
    let mut results: BTreeMap<(usize, String), Throughput> = BTreeMap::new();
    {
        let holdfast = procs::start_holdfast(&dir, echo_addr);
        let nginx = with_nginx.then(|| procs::start_nginx(&dir, echo_addr));
        let mut targets: Vec<(&str, SocketAddr, Option<&Proc>)> = vec![("direct", echo_addr, None)];
        if let Some(n) = &nginx {
            targets.push(("nginx", n.addr, Some(n)));
        }
        let baseline = cli
            .baseline
            .as_deref()
            .map(|b| procs::start_holdfast_binary(b, &dir, echo_addr));
        if let Some(b) = &baseline {
            targets.push(("baseline", b.addr, Some(b)));
        }
        let relays: Vec<(&str, Proc)> = cli
            .relays()
            .into_iter()
            .map(|(kind, name)| (name, procs::start_relay(kind, echo_addr)))
            .collect();
        for (name, relay) in &relays {
            targets.push((name, relay.addr, Some(relay)));
        }
        targets.push(("holdfast", holdfast.addr, Some(&holdfast)));
        for &size in &cli.sizes {
            for round in 0..cli.rounds {
                for (name, addr, proc_) in &targets {
                    let cpu_before = proc_
                        .map(|p| procs::cpu_seconds(p.pid()))
                        .unwrap_or_default();
                    let switches_before = proc_.map_or(0, |p| procs::context_switches(p.pid()));
                    let segments_before = procs::tcp_segments_sent();
                    let r = load::closed_loop(
                        *addr,
                        cli.connections,
                        size,
                        Duration::from_secs_f64(cli.seconds),
                    )
                    .await;
                    let segments = procs::tcp_segments_sent().saturating_sub(segments_before);
                    // Saturating: a thread that exited during the run takes its count along.
                    let switches = proc_
                        .map_or(0, |p| procs::context_switches(p.pid()))
                        .saturating_sub(switches_before);
                    let (user, system) = proc_
                        .map(|p| procs::cpu_seconds(p.pid()))
                        .unwrap_or_default();
                    eprintln!(
                        "  {size:>6} B round {} {name:<8} {:>8.0} echoes/s",
                        round + 1,
                        r.echoes as f64 / r.elapsed.as_secs_f64()
                    );
                    let t = results.entry((size, name.to_string())).or_default();
                    let echoes = r.echoes.max(1) as f64;
                    t.rates.push(r.echoes as f64 / r.elapsed.as_secs_f64());
                    t.cpu_per_echo
                        .push((user + system - cpu_before.0 - cpu_before.1) * 1e6 / echoes);
                    t.user_per_echo.push((user - cpu_before.0) * 1e6 / echoes);
                    t.segments_per_echo.push(segments as f64 / echoes);
                    t.switches_per_echo.push(switches as f64 / echoes);
                    t.latencies.extend(r.latencies_us);
                }
            }
        }
    }

    // Memory per idle session, then after one 256 KiB message each; fresh processes.
    let mut memory: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut proxies: Vec<&str> = Vec::new();
    if with_nginx {
        proxies.push("nginx");
    }
    proxies.push("holdfast");
    if cli.throughput_only || cli.library_only {
        proxies.clear();
    }
    if !cli.resume_only {
        for name in &proxies {
            let proxy = start(name, &dir, echo_addr);
            memory.insert(name, measure_memory(&proxy, cli.sessions).await);
            drop(proxy);
        }
    }

    // Resume across an upstream restart.
    let mut resume: BTreeMap<&str, String> = BTreeMap::new();
    let mut echo = echo;
    for name in &proxies {
        let proxy = start(name, &dir, echo_addr);
        let (line, next_echo) = measure_resume(&proxy, echo, echo_addr, cli.sessions).await;
        echo = next_echo;
        resume.insert(name, line);
        drop(proxy);
    }
    drop(echo);

    if !cli.library_only {
        print_table(&cli, &results, &memory, &resume, with_nginx);
    }
    if with_nginx && !results.is_empty() {
        print_paired(&cli, &results);
    }
    if !cli.throughput_only && !cli.resume_only {
        library::run(
            &dir,
            &library_sizes,
            cli.rounds,
            cli.seconds,
            cli.connections,
            cli.sessions,
        )
        .await;
    }
    if !cli.throughput_only && !cli.resume_only && !cli.library_only {
        compression::run(
            &dir,
            cli.rounds,
            cli.seconds,
            cli.connections,
            cli.sessions,
            with_nginx,
        )
        .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn start(name: &str, dir: &std::path::Path, upstream: SocketAddr) -> Proc {
    match name {
        "nginx" => procs::start_nginx(dir, upstream),
        _ => procs::start_holdfast(dir, upstream),
    }
}

/// (idle bytes per session, bytes per session after a 256 KiB message each)
async fn measure_memory(proxy: &Proc, sessions: usize) -> (f64, f64) {
    // One session first so one-time allocations are in the baseline.
    let warm = load::open_sessions(proxy.addr, 1, 1).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = procs::rss_kib(proxy.pid());
    let mut clients = load::open_sessions(proxy.addr, sessions, 64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procs::rss_kib(proxy.pid());
    let ok = load::echo_each(&mut clients, 256 * 1024, 64).await;
    assert_eq!(ok, sessions, "every 256 KiB echo came back");
    // Idle again: long enough for a proxy to give back what the message grew.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = procs::rss_kib(proxy.pid());
    let per = |kib: u64| kib.saturating_sub(base) as f64 * 1024.0 / sessions as f64;
    eprintln!(
        "  memory: base {base} KiB, {sessions} idle {idle} KiB, after 256 KiB each {after} KiB"
    );
    (per(idle), per(after))
}

/// Holds `sessions` across a restart of the echo upstream: time from the upstream being
/// back to every session relaying again, and messages lost. Returns the restarted echo.
async fn measure_resume(
    proxy: &Proc,
    echo: Proc,
    echo_addr: SocketAddr,
    sessions: usize,
) -> (String, Proc) {
    let mut clients = load::open_sessions(proxy.addr, sessions, 64).await;
    // The upstream restarts: 1012 to every connection, close handshakes, exit.
    echo.terminate();
    // Every session sends one numbered message while the upstream is down.
    for (i, client) in clients.iter_mut().enumerate() {
        let _ = futures_util::SinkExt::send(client, Message::text(format!("held {i}"))).await;
    }
    let (echo, back) = procs::start_echo(echo_addr);
    let waits = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| async move {
            let want = format!("held {i}");
            let answer = tokio::time::timeout(Duration::from_secs(40), async {
                loop {
                    match client.next().await {
                        Some(Ok(Message::Text(t))) => return t.as_str() == want,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => return false,
                    }
                }
            })
            .await;
            (matches!(answer, Ok(true)), Instant::now())
        });
    let outcomes = futures_util::future::join_all(waits).await;
    let resumed = outcomes.iter().filter(|(ok, _)| *ok).count();
    let last = outcomes.iter().filter(|(ok, _)| *ok).map(|(_, t)| *t).max();
    let line = match last {
        Some(t) if resumed == sessions => format!(
            "all {sessions} resumed {:.2} s after the upstream was back, 0 lost",
            t.duration_since(back).as_secs_f64()
        ),
        _ => format!(
            "{} of {sessions} sessions lost (closed or no answer)",
            sessions - resumed
        ),
    };
    eprintln!("  resume: {line}");
    (line, echo)
}

fn print_table(
    cli: &Cli,
    results: &BTreeMap<(usize, String), Throughput>,
    memory: &BTreeMap<&str, (f64, f64)>,
    resume: &BTreeMap<&str, String>,
    with_nginx: bool,
) {
    let mut names: Vec<&str> = if with_nginx {
        vec!["direct", "nginx", "holdfast"]
    } else {
        vec!["direct", "holdfast"]
    };
    if cli.baseline.is_some() {
        names.insert(names.len() - 1, "baseline");
    }
    for (_, name) in cli.relays() {
        names.insert(names.len() - 1, name);
    }
    println!();
    println!(
        "| {} conns closed loop, median of {} alternating rounds × {:.0} s | {} | holdfast/nginx | holdfast/direct |",
        cli.connections,
        cli.rounds,
        cli.seconds,
        names.join(" | ")
    );
    println!("|---|{}---|---|", "---|".repeat(names.len()));
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "—".into()
        }
    };
    for &size in &cli.sizes {
        let label = size_label(size);
        let label = label.as_str();
        let get = |n: &str| results.get(&(size, n.to_owned()));
        let rate = |n: &str| get(n).map_or(0.0, |t| median(&t.rates));
        let pct = |n: &str, p: f64| {
            get(n).map_or(0, |t| {
                let mut l = t.latencies.clone();
                l.sort_unstable();
                load::percentile(&l, p)
            })
        };
        let cpu = |n: &str| get(n).map_or(0.0, |t| median(&t.cpu_per_echo));
        let user = |n: &str| get(n).map_or(0.0, |t| median(&t.user_per_echo));
        let nginx_or = |f: &dyn Fn(&str) -> f64| if with_nginx { f("nginx") } else { 0.0 };
        let row = |what: &str, cells: Vec<String>, vs_nginx: String, vs_direct: String| {
            println!(
                "| {label} {what} | {} | {vs_nginx} | {vs_direct} |",
                cells.join(" | ")
            );
        };
        // Measured for every target, compared with nginx and with a direct connection.
        let measured_row = |what: &str, f: &dyn Fn(&str) -> f64, digits: usize| {
            row(
                what,
                names.iter().map(|n| format!("{:.digits$}", f(n))).collect(),
                ratio(f("holdfast"), nginx_or(f)),
                ratio(f("holdfast"), f("direct")),
            );
        };
        // A proxy's own CPU: nothing to show for a direct connection.
        let proxy_row = |what: &str, f: &dyn Fn(&str) -> f64, digits: usize| {
            let cells = names
                .iter()
                .map(|n| {
                    if *n == "direct" {
                        "—".into()
                    } else {
                        format!("{:.digits$}", f(n))
                    }
                })
                .collect();
            row(what, cells, ratio(f("holdfast"), nginx_or(f)), "—".into());
        };
        measured_row("echoes/s", &rate, 0);
        measured_row("p50 µs", &|n| pct(n, 50.0) as f64, 0);
        measured_row("p99 µs", &|n| pct(n, 99.0) as f64, 0);
        proxy_row("proxy CPU ms / 1,000 echoes", &cpu, 1);
        proxy_row("… of which user space", &user, 1);
        let segments = |n: &str| get(n).map_or(0.0, |t| median(&t.segments_per_echo));
        let switches = |n: &str| get(n).map_or(0.0, |t| median(&t.switches_per_echo));
        // Kernel work that CPU time only shows through noise: packets and wake-ups.
        measured_row("TCP segments / echo", &segments, 2);
        proxy_row("proxy wake-ups / echo", &switches, 2);
    }
    let mem = |n: &str, i: usize| {
        memory
            .get(n)
            .map_or(0.0, |m| if i == 0 { m.0 } else { m.1 })
    };
    let memory_rows: &[(usize, &str)] = if memory.is_empty() {
        &[]
    } else {
        &[
            (0, "RSS / idle session"),
            (1, "RSS / session after a 256 KiB echo"),
        ]
    };
    for &(i, what) in memory_rows {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                if memory.contains_key(n) {
                    format!("{:.1} KiB", mem(n, i) / 1024.0)
                } else {
                    "—".into()
                }
            })
            .collect();
        let vs = if with_nginx {
            ratio(mem("holdfast", i), mem("nginx", i))
        } else {
            "—".into()
        };
        println!(
            "| {what} ({} sessions) | {} | {vs} | — |",
            cli.sessions,
            cells.join(" | ")
        );
    }
    if resume.is_empty() {
        return;
    }
    let cells: Vec<String> = names
        .iter()
        .map(|n| resume.get(n).cloned().unwrap_or_else(|| "—".into()))
        .collect();
    println!(
        "| upstream restart under {} sessions | {} | | |",
        cli.sessions,
        cells.join(" | ")
    );
}

fn size_label(size: usize) -> String {
    match size {
        64 => "64 B".to_owned(),
        65536 => "64 KiB".to_owned(),
        n => format!("{n} B"),
    }
}

/// Holdfast against nginx round by round: the two runs of one round are seconds apart, so
/// a disturbance of the shared machine that moves a whole round moves both. The spread of
/// these ratios says how far one run's verdict can be trusted.
fn print_paired(cli: &Cli, results: &BTreeMap<(usize, String), Throughput>) {
    println!();
    println!(
        "| holdfast / nginx within each round | median | range | rounds where holdfast is at least as good |"
    );
    println!("|---|---|---|---|");
    for &size in &cli.sizes {
        let (Some(h), Some(n)) = (
            results.get(&(size, "holdfast".to_owned())),
            results.get(&(size, "nginx".to_owned())),
        ) else {
            continue;
        };
        let rows = [
            ("echoes/s", &h.rates, &n.rates, true),
            ("proxy CPU / echo", &h.cpu_per_echo, &n.cpu_per_echo, false),
        ];
        for (what, holdfast, nginx, higher_is_better) in rows {
            let ratios: Vec<f64> = holdfast
                .iter()
                .zip(nginx)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect();
            let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let high = ratios.iter().copied().fold(0.0, f64::max);
            let good = ratios
                .iter()
                .filter(|r| {
                    if higher_is_better {
                        **r >= 1.0
                    } else {
                        **r <= 1.0
                    }
                })
                .count();
            println!(
                "| {} {what} | {:.2} | {low:.2}–{high:.2} | {good} of {} |",
                size_label(size),
                median(&ratios),
                ratios.len()
            );
        }
    }
}

async fn ws_connect(url: &str) -> Option<load::Client> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().ok()?;
    let authority = request.uri().authority()?.as_str().to_owned();
    let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    Some(
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .ok()?
            .0,
    )
}

async fn autobahn_client(server: &str, agent: &str) {
    use futures_util::SinkExt;
    let mut counter = ws_connect(&format!("{server}/getCaseCount"))
        .await
        .expect("getCaseCount");
    let count: usize = match counter.next().await {
        Some(Ok(Message::Text(t))) => t.parse().expect("a case count"),
        other => panic!("getCaseCount answered {other:?}"),
    };
    drop(counter);
    for case in 1..=count {
        let Some(mut ws) = ws_connect(&format!("{server}/runCase?case={case}&agent={agent}")).await
        else {
            continue;
        };
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    }
    if let Some(mut ws) = ws_connect(&format!("{server}/updateReports?agent={agent}")).await {
        while let Some(Ok(_)) = ws.next().await {}
    }
    eprintln!("autobahn client: {count} cases run as {agent}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("holdfast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
