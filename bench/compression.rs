//! permessage-deflate: for a stream of realistic JSON messages (a few hundred bytes, the
//! same keys every time), the bytes on the client hop against the raw size and against
//! zlib level 6 on the same stream; holdfast's CPU per echo compressed against
//! uncompressed, and against nginx passing the same compressed stream through; and resident
//! memory per compressed session at rest, while active and after activity.
//!
//! The clients are holdfast's own codec with its deflate context (as a client), so every
//! byte and every context is counted the same way on every path.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use holdfast::codec::{Limits, Role, WsConn};
use holdfast::deflate::{Context, Counters, Settings, negotiate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::library::Counted;
use crate::{median, procs};

const LIMITS: Limits = Limits {
    max_message: 16 << 20,
    max_frame: 16 << 20,
};

/// The keepalive interval of the holdfasts measured for memory: an idle compressor is
/// given back after one interval without use. Long enough for this process, which shares
/// the cores, to answer every session's pings while all of them start compressing at once:
/// at 2 s holdfast rightly dropped, as silent through two intervals, the thousands of
/// sessions the load generator could not poll within 4 s on a slower machine.
const PING_SECS: u64 = 5;

/// A realistic JSON message of a few hundred bytes: the same keys every time, values that
/// change.
pub fn tick(i: usize) -> String {
    let symbols = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META"];
    format!(
        concat!(
            r#"{{"type":"quote","seq":{},"symbol":"{}","bid":{}.{:02},"ask":{}.{:02},"#,
            r#""volume":{},"ts":"2026-12-01T06:{:02}:{:02}.{:03}Z","exchange":"NASDAQ","#,
            r#""currency":"USD","session":"regular","source":"feed-{}","flags":["live","delayed-0"]}}"#
        ),
        i,
        symbols[i % symbols.len()],
        100 + (i * 37) % 400,
        (i * 13) % 100,
        100 + (i * 37) % 400,
        (i * 13 + 7) % 100,
        1000 + (i * 7919) % 90_000,
        (i / 60) % 60,
        i % 60,
        (i * 101) % 1000,
        i % 8,
    )
}

/// A client of holdfast's codec over a counted TCP stream; `offer`: its
/// `Sec-WebSocket-Extensions` (none: uncompressed).
async fn connect(addr: SocketAddr, offer: Option<&str>, bytes: Arc<AtomicU64>) -> WsConn<Counted> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let extension = offer.map_or(String::new(), |o| {
        format!("Sec-WebSocket-Extensions: {o}\r\n")
    });
    let request = format!(
        "GET /bench HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let (head, rest) = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let settings = Settings::default();
    let answer = header(&head, "sec-websocket-extensions");
    let params = match offer {
        Some(_) => negotiate::check_answer(answer, &settings).expect("a valid answer"),
        None => None,
    };
    let context = params.map(|p| Context::new(p, &settings, Counters::default()));
    WsConn::new(Counted { tcp, bytes }, Role::Client, LIMITS, &rest).with_deflate(context)
}

/// An HTTP head (up to the blank line) and whatever was read past it.
async fn read_head(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
    }
}

/// The values of header `name` in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// One echo: a JSON message out, its echo back. False if the session ended.
async fn echo(client: &mut WsConn<Counted>, message: &str) -> bool {
    if let Err(e) = client.send(Message::text(message)).await {
        return ended(&format!("sending: {e}"));
    }
    loop {
        match client.next().await {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => return true,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return ended(&format!("waiting for the echo: {other:?}")),
        }
    }
}

/// A session that ended under measurement: the first one says how (the measurement then
/// stops with the count). Returns false.
fn ended(how: &str) -> bool {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("  compression: a session ended, {how}"));
    false
}

/// An echo upstream that accepts permessage-deflate (holdfast's codec as the server): what
/// nginx passes the compressed stream through to. In this process; its CPU is not counted.
async fn deflate_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let (head, rest) = read_head(&mut tcp).await;
                let key = header(&head, "sec-websocket-key")
                    .first()
                    .map(|k| k.to_string())
                    .unwrap_or_default();
                let settings = Settings::default();
                let accepted =
                    negotiate::accept(header(&head, "sec-websocket-extensions"), &settings);
                let extension = accepted.as_ref().map_or(String::new(), |(h, _)| {
                    format!("Sec-WebSocket-Extensions: {h}\r\n")
                });
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n{extension}\r\n",
                    derive_accept_key(key.as_bytes())
                );
                if tcp.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let context =
                    accepted.map(|(_, p)| Context::new(p, &settings, Counters::default()));
                let mut ws = WsConn::new(tcp, Role::Server, LIMITS, &rest).with_deflate(context);
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    } else if message.is_close() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The compressed size of `messages` with zlib level 6 and context takeover at window 15
/// (the yardstick): each message deflated with a sync flush, the 4-byte tail removed.
fn zlib6(messages: &[String]) -> usize {
    let mut compressor = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut total = 0;
    for message in messages {
        let mut out = Vec::with_capacity(message.len() + 64);
        compressor
            .compress_vec(message.as_bytes(), &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        total += out.len() - 4;
    }
    total
}

/// The sum of holdfast's compression counters on the client hop for one direction, from
/// its /metrics: (compressed, uncompressed).
async fn hop_bytes(admin: SocketAddr, direction: &str) -> (f64, f64) {
    let mut tcp = TcpStream::connect(admin).await.expect("admin");
    tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.expect("metrics");
    let value = |name: &str| {
        let series = format!("{name}{{direction=\"{direction}\",hop=\"client\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("holdfast_compressed_bytes_total"),
        value("holdfast_uncompressed_bytes_total"),
    )
}

/// Wire bytes per echo on the client hop and holdfast's ratio for a stream of `n` ticks on
/// one session, against zlib level 6 on the same messages.
async fn ratio(dir: &Path, echo_addr: SocketAddr, n: usize) -> String {
    let admin: SocketAddr = format!("127.0.0.1:{}", procs::free_port())
        .parse()
        .expect("addr");
    let extra = format!("[admin]\naddress = \"{admin}\"\n");
    let holdfast = procs::start_holdfast_with(&procs::holdfast_binary(), dir, echo_addr, &extra);
    let messages: Vec<String> = (0..n).map(tick).collect();
    let raw: usize = messages.iter().map(String::len).sum();
    let mut wire = Vec::new();
    for offer in [None, Some("permessage-deflate; client_max_window_bits")] {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut client = connect(holdfast.addr, offer, bytes.clone()).await;
        let opened = bytes.load(Ordering::Relaxed);
        for message in &messages {
            assert!(echo(&mut client, message).await, "echo");
        }
        wire.push((bytes.load(Ordering::Relaxed) - opened) as f64 / n as f64);
    }
    let (compressed, uncompressed) = hop_bytes(admin, "to_client").await;
    let holdfast_ratio = compressed / uncompressed.max(1.0);
    let zlib_ratio = zlib6(&messages) as f64 / raw as f64;
    drop(holdfast);
    format!(
        "| JSON stream ({n} messages, {:.0} B average): client-hop wire bytes / echo, both directions | {:.1} uncompressed | {:.1} compressed ({:.2}×) |\n\
         | holdfast's compressed / raw, to the client | {holdfast_ratio:.3} | zlib level 6 (window 15, memLevel 8, takeover): {zlib_ratio:.3}; holdfast / zlib {:.2} |",
        raw as f64 / n as f64,
        wire[0],
        wire[1],
        wire[1] / wire[0],
        holdfast_ratio / zlib_ratio,
    )
}

#[derive(Default)]
struct Cpu {
    per_echo: Vec<f64>,
    rates: Vec<f64>,
}

/// `connections` clients echo ticks back to back for `duration` through `addr`.
async fn closed_loop(
    addr: SocketAddr,
    offer: Option<&str>,
    connections: usize,
    duration: Duration,
) -> u64 {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(addr, offer, Arc::new(AtomicU64::new(0))).await);
    }
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                let mut echoes = 0u64;
                while Instant::now() < deadline {
                    if !echo(&mut client, &tick(c * 100_000 + echoes as usize)).await {
                        break;
                    }
                    echoes += 1;
                }
                echoes
            })
        })
        .collect();
    let mut echoes = 0;
    for task in tasks {
        echoes += task.await.expect("load task");
    }
    echoes
}

/// Resident bytes per session for `sessions` sessions whose clients offer `offer` (none:
/// plain sessions) on a fresh holdfast with `extra` configuration: at rest (opened, one
/// short message each), active (right after 20 ticks each: both contexts live) and after
/// activity (past two keepalive intervals: the compressors given back). Each client reads
/// all along in a task of its own, so it answers holdfast's keepalive pings as a live
/// client does.
async fn memory(
    dir: &Path,
    echo_addr: SocketAddr,
    sessions: usize,
    offer: Option<&'static str>,
    extra: &str,
) -> [f64; 3] {
    let extra = format!("[websocket]\nping_interval = \"{PING_SECS}s\"\n{extra}");
    let holdfast = procs::start_holdfast_with(&procs::holdfast_binary(), dir, echo_addr, &extra);
    let addr = holdfast.addr;
    let mut warm = connect(addr, offer, Arc::new(AtomicU64::new(0))).await;
    assert!(echo(&mut warm, "hello").await);
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = procs::rss_kib(holdfast.pid());
    // Phases: 0 at rest, 1 active, 2 done. Each session reports when it is open and when
    // its activity is done, reading all the while; 64 open at a time.
    let (phase, _) = tokio::sync::watch::channel(0u8);
    let (done, mut reports) = tokio::sync::mpsc::unbounded_channel::<()>();
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let (mut phase, done, opening) = (phase.subscribe(), done.clone(), opening.clone());
            tokio::spawn(async move {
                let permit = opening.acquire_owned().await.expect("semaphore");
                let mut client = connect(addr, offer, Arc::new(AtomicU64::new(0))).await;
                let mut alive = echo(&mut client, "hello").await;
                drop(permit);
                let _ = done.send(());
                alive = alive && wait_for_phase(&mut client, &mut phase, 1).await;
                for n in 0..20 {
                    alive = alive && echo(&mut client, &tick(i * 20 + n)).await;
                }
                let _ = done.send(());
                alive && wait_for_phase(&mut client, &mut phase, 2).await
            })
        })
        .collect();
    drop(done);
    all_report(&mut reports, sessions).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_rest = procs::rss_kib(holdfast.pid());
    phase.send_replace(1);
    all_report(&mut reports, sessions).await;
    let active = procs::rss_kib(holdfast.pid());
    // Two intervals and a margin: every compressor unused for a whole interval is gone,
    // and holdfast's trimmer has run (a second after the last one went).
    let mut decay = Vec::new();
    for _ in 0..2 * PING_SECS + 5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        decay.push(procs::rss_kib(holdfast.pid()));
    }
    eprintln!("  RSS each second after the activity: {decay:?} KiB");
    let after = procs::rss_kib(holdfast.pid());
    phase.send_replace(2);
    let mut alive = 0;
    for task in tasks {
        alive += usize::from(task.await.expect("session task"));
    }
    eprintln!(
        "  compression memory ({extra:?}): base {base} KiB, at rest {at_rest}, active {active}, after {after}; {alive} of {sessions} sessions lived through it"
    );
    assert_eq!(
        alive, sessions,
        "every session stays open through the measurement"
    );
    [at_rest, active, after].map(|kib| kib.saturating_sub(base) as f64 * 1024.0 / sessions as f64)
}

/// Waits for a report from each of `sessions` sessions.
async fn all_report(reports: &mut tokio::sync::mpsc::UnboundedReceiver<()>, sessions: usize) {
    for _ in 0..sessions {
        reports.recv().await.expect("every session reports");
    }
}

/// Reads (answering pings) until `phase` reaches `until`; false if the session ended.
async fn wait_for_phase(
    client: &mut WsConn<Counted>,
    phase: &mut tokio::sync::watch::Receiver<u8>,
    until: u8,
) -> bool {
    loop {
        if *phase.borrow_and_update() >= until {
            return true;
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return false },
            message = client.next() => match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => return ended(&format!("waiting for phase {until}: {other:?}")),
            },
        }
    }
}

/// Measures everything and prints the compression table.
pub async fn run(
    dir: &Path,
    rounds: usize,
    seconds: f64,
    connections: usize,
    sessions: usize,
    with_nginx: bool,
) {
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", procs::free_port())
        .parse()
        .expect("addr");
    let (_echo, _) = procs::start_echo(echo_addr);
    let ratio_line = ratio(dir, echo_addr, 2000).await;

    // CPU per echo, alternating: holdfast uncompressed, compressed on the client hop, and
    // nginx passing the client's compressed stream through to an upstream that inflates it.
    let deflate_upstream = deflate_echo().await;
    let holdfast = procs::start_holdfast(dir, echo_addr);
    let nginx = with_nginx.then(|| procs::start_nginx(dir, deflate_upstream));
    let offer = Some("permessage-deflate; client_max_window_bits");
    let mut targets: Vec<(&str, SocketAddr, u32, Option<&str>)> = vec![
        (
            "holdfast, uncompressed",
            holdfast.addr,
            holdfast.pid(),
            None,
        ),
        (
            "holdfast, compressed client hop",
            holdfast.addr,
            holdfast.pid(),
            offer,
        ),
    ];
    if let Some(n) = &nginx {
        targets.push(("nginx passing it through", n.addr, n.pid(), offer));
    }
    let mut cpu: Vec<Cpu> = targets.iter().map(|_| Cpu::default()).collect();
    for round in 0..rounds {
        for ((name, addr, pid, offer), cpu) in targets.iter().zip(&mut cpu) {
            let (user, system) = procs::cpu_seconds(*pid);
            let started = Instant::now();
            let echoes =
                closed_loop(*addr, *offer, connections, Duration::from_secs_f64(seconds)).await;
            let elapsed = started.elapsed().as_secs_f64();
            let (user2, system2) = procs::cpu_seconds(*pid);
            let per_echo = (user2 + system2 - user - system) * 1e6 / echoes.max(1) as f64;
            cpu.per_echo.push(per_echo);
            cpu.rates.push(echoes as f64 / elapsed);
            eprintln!(
                "  compression round {} {name:<32} {:>8.0} echoes/s, {per_echo:.1} µs CPU/echo",
                round + 1,
                echoes as f64 / elapsed
            );
        }
    }
    drop(nginx);
    drop(holdfast);

    // Memory per session: plain sessions for reference, then compressed ones at the
    // defaults and at the small settings.
    let plain = memory(dir, echo_addr, sessions, None, "").await;
    let offer = Some("permessage-deflate; client_max_window_bits");
    let defaults = memory(dir, echo_addr, sessions, offer, "").await;
    let small = "[websocket.compression]\nserver_max_window_bits = 9\nclient_max_window_bits = 9\n";
    let small_windows = memory(dir, echo_addr, sessions, offer, small).await;
    let no_takeover = "[websocket.compression]\nclient_no_context_takeover = true\n";
    let no_takeover = memory(dir, echo_addr, sessions, offer, no_takeover).await;
    let neither = "[websocket.compression]\nclient_no_context_takeover = true\nserver_no_context_takeover = true\n";
    let neither = memory(dir, echo_addr, sessions, offer, neither).await;

    println!();
    println!(
        "| permessage-deflate, realistic JSON messages, {connections} conns closed loop, median of {rounds} alternating rounds | | |"
    );
    println!("|---|---|---|");
    println!("{ratio_line}");
    let base = median(&cpu[0].per_echo);
    for ((name, ..), cpu) in targets.iter().zip(&cpu) {
        let per_echo = median(&cpu.per_echo);
        println!(
            "| {name}: CPU µs / echo | {per_echo:.1} ({:.0} echoes/s) | {:.2}× holdfast uncompressed |",
            median(&cpu.rates),
            per_echo / base.max(f64::MIN_POSITIVE)
        );
    }
    let kib = |b: f64| b / 1024.0;
    println!(
        "| RSS / session, {sessions} sessions, plain (no compression): at rest / active / after activity | {:.1} / {:.1} / {:.1} KiB | |",
        kib(plain[0]),
        kib(plain[1]),
        kib(plain[2])
    );
    for (label, [at_rest, active, after]) in [
        ("defaults (windows 15, takeover)", defaults),
        ("server_ and client_max_window_bits = 9", small_windows),
        ("client_no_context_takeover = true", no_takeover),
        ("both *_no_context_takeover = true", neither),
    ] {
        println!(
            "| RSS / compressed session, {label}: at rest / active / after activity | {:.1} / {:.1} / {:.1} KiB | compression's share after activity: {:.1} KiB |",
            kib(at_rest),
            kib(active),
            kib(after),
            kib(after - plain[2])
        );
    }
}
