//! The processes a benchmark run starts (echo upstreams, holdfast, nginx, HAProxy) and
//! what it reads of them from /proc: CPU time and resident memory, children (nginx
//! workers) included.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks per second for /proc/<pid>/stat (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process and its direct children (nginx's workers).
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            {
                // Field 4 of stat (index 1 after the command) is the parent pid.
                if stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid) {
                    pids.push(child);
                }
            }
        }
    }
    pids
}

/// CPU seconds used so far by `pid` and its children: (user, system).
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    family(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            // utime and stime are fields 14 and 15 (indexes 11 and 12 after the command).
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (
                ticks(11) as f64 / TICKS_PER_SECOND,
                ticks(12) as f64 / TICKS_PER_SECOND,
            )
        })
        .fold((0.0, 0.0), |(u, s), (du, ds)| (u + du, s + ds))
}

/// TCP segments sent so far in this network namespace (`OutSegs` in `/proc/net/snmp`): on
/// loopback both ends of every connection count, so per echo it shows how many packets,
/// data and pure ACKs, the kernel carried for it.
pub fn tcp_segments_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Context switches so far of `pid` and its threads and children (voluntary: the process
/// slept waiting for I/O and was woken).
pub fn context_switches(pid: u32) -> u64 {
    family(pid)
        .into_iter()
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| status_number(&s, "voluntary_ctxt_switches:"))
        .sum()
}

/// Resident memory in KiB of `pid` and its children.
pub fn rss_kib(pid: u32) -> u64 {
    family(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| status_number(&s, "VmRSS:"))
        .sum()
}

/// The number after `key` in a `/proc/…/status` text (`VmRSS:  1234 kB` gives 1234).
fn status_number(status: &str, key: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix(key))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the exit (what `Drop` does, by name).
    pub fn terminate(self) {
        drop(self);
    }
}

impl Drop for Proc {
    /// SIGTERM first (nginx's master then stops its workers; SIGKILL would orphan them),
    /// SIGKILL if it is still running after a few seconds.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo upstream (this binary's `echo` subcommand) on `addr`; returns once it listens.
pub fn start_echo(addr: SocketAddr) -> (Proc, Instant) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["echo", "--listen", &addr.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the echo upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("echo output");
    let listening = Instant::now();
    assert!(line.starts_with("listening"), "echo upstream said {line:?}");
    (Proc { child, addr }, listening)
}

pub fn holdfast_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target dir").join("holdfast")
}

/// `--tokio-copy`, `--uring-copy`: this binary's plain byte relay `kind` (its subcommand)
/// in front of `upstream`.
pub fn start_relay(kind: &str, upstream: SocketAddr) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(std::env::current_exe().expect("own path"))
        .args([kind, "--listen", &addr.to_string()])
        .args(["--upstream", &upstream.to_string()])
        .spawn()
        .unwrap_or_else(|e| panic!("start the {kind} relay: {e}"));
    wait_listening(addr, kind);
    Proc { child, addr }
}

/// holdfast (the release binary next to this one) in front of `upstream`, shipped defaults
/// otherwise.
pub fn start_holdfast(dir: &Path, upstream: SocketAddr) -> Proc {
    start_holdfast_binary(&holdfast_binary(), dir, upstream)
}

/// Like `start_holdfast`, with another build of holdfast (`--baseline`).
pub fn start_holdfast_binary(binary: &Path, dir: &Path, upstream: SocketAddr) -> Proc {
    start_holdfast_with(binary, dir, upstream, "")
}

/// Like `start_holdfast_binary`, with more configuration (`extra`, TOML sections; the
/// admin listener stays off unless it has an `[admin]` section).
pub fn start_holdfast_with(binary: &Path, dir: &Path, upstream: SocketAddr, extra: &str) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.join(format!("holdfast-{}.toml", addr.port()));
    let admin = if extra.contains("[admin]") {
        ""
    } else {
        "[admin]\naddress = \"\"\n"
    };
    let text = format!(
        "[listen]\naddress = \"{addr}\"\nmax_connections = 20000\n{admin}[upstream]\nendpoints = [\"ws://{upstream}\"]\n{extra}"
    );
    std::fs::write(&config, text).expect("write holdfast config");
    let child = Command::new(binary)
        .args([
            "--config",
            config.to_str().expect("utf-8 path"),
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start holdfast (run `cargo build --release` first)");
    wait_listening(addr, "holdfast");
    Proc { child, addr }
}

/// A self-signed certificate for 127.0.0.1 in `dir` (openssl), as (cert, key) paths.
pub fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("h2-cert.pem"), dir.join("h2-key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: webpki refuses a CA certificate as a server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl) makes the benchmark's certificate");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

pub fn nginx_available() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx as a WebSocket reverse proxy in front of `upstream`, as its docs configure it.
pub fn start_nginx(dir: &Path, upstream: SocketAddr) -> Proc {
    start_nginx_with(dir, upstream, None, "auto")
}

/// Like `start_nginx`, with TLS towards clients (`tls`: certificate and key) and
/// `workers` worker processes.
pub fn start_nginx_with(
    dir: &Path,
    upstream: SocketAddr,
    tls: Option<(&Path, &Path)>,
    workers: &str,
) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let d = dir.display();
    let listen = match tls {
        None => format!("listen {addr};"),
        Some((cert, key)) => format!(
            "listen {addr} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
    };
    let conf = format!(
        r#"worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    {listen}
    location / {{
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"#
    );
    let path = dir.join(format!("nginx-{}.conf", addr.port()));
    std::fs::write(&path, conf).expect("write nginx.conf");
    let child = Command::new("nginx")
        .args([
            "-c",
            path.to_str().expect("utf-8 path"),
            "-p",
            &d.to_string(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    wait_listening(addr, "nginx");
    Proc { child, addr }
}

pub fn haproxy_available() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// HAProxy in front of `upstream` (HTTP mode, which passes WebSocket upgrades through),
/// with `threads` threads and, with `tls` (a PEM of certificate and key), TLS towards
/// clients.
pub fn start_haproxy(dir: &Path, upstream: SocketAddr, tls: Option<&Path>, threads: usize) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let bind = match tls {
        None => format!("bind {addr}"),
        Some(pem) => format!("bind {addr} ssl crt {}", pem.display()),
    };
    let conf = format!(
        r#"global
  nbthread {threads}
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend websockets
  {bind}
  default_backend app
backend app
  server app {upstream}
"#
    );
    let path = dir.join(format!("haproxy-{}.cfg", addr.port()));
    std::fs::write(&path, conf).expect("write haproxy.cfg");
    let child = Command::new("haproxy")
        .args(["-db", "-f", path.to_str().expect("utf-8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    wait_listening(addr, "haproxy");
    Proc { child, addr }
}

/// Node's `ws` as the echo upstream (scripts/ws-peer.mjs; `npm ci` in clients/js first).
pub fn start_node_ws(addr: SocketAddr) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ws-peer.mjs");
    let child = Command::new("node")
        .arg(script)
        .args(["echo", &addr.port().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start node (scripts/ws-peer.mjs)");
    wait_listening(addr, "node ws");
    Proc { child, addr }
}
