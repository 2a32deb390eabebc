//! Test fixtures: a scripted upstream WebSocket server, a proxy builder, client helpers
//! and TLS material. Everything binds 127.0.0.1:0; nothing sleeps to wait for readiness.
//! A port a test listens on again later (an upstream's restart) or needs free stays
//! reserved for the test's whole life (`Reservation`): nothing releases a port and hopes to
//! bind it again.
//!
//! The upstream follows a script driven by message content, so each test reads as a story:
//! `close <code> [reason]`, `close-empty`, `abort`, `big <bytes>`, `bad-utf8`,
//! `raw-close <code>`; anything else is echoed back.
#![allow(dead_code)]
// tungstenite's server callback fixes the error type to a whole `Response`.
#![allow(clippy::result_large_err)]

pub mod binary;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use holdfast::App;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// Generous bound for anything a test waits on; failing tests fail, they do not hang.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// What the upstream saw, for assertions.
#[derive(Default, Debug)]
pub struct UpstreamLog {
    pub handshakes: Vec<Request>,
    /// Text and binary messages, in arrival order across all connections.
    pub received: Vec<Message>,
    /// The close frame each connection received from the proxy (None: empty close).
    pub closes: Vec<Option<CloseFrame>>,
    /// Connections accepted whose WebSocket handshake has not finished yet, and the most
    /// there were at once.
    pub handshaking: usize,
    pub max_handshaking: usize,
}

/// Sent to every live connection of a test upstream.
#[derive(Debug, Clone)]
pub enum Control {
    /// Send this close frame (as a restarting server would).
    Close(u16, String),
    /// Drop the TCP connection without a close frame.
    Abort,
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    /// Keeps `addr` this upstream's while no generation listens on it.
    _reserved: Reservation,
    pub log: Arc<Mutex<UpstreamLog>>,
    changed: Arc<Notify>,
    control: tokio::sync::broadcast::Sender<Control>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    builder: UpstreamBuilder,
    /// Incremented by `start_again`; `whoami` answers `<name> <generation>`.
    generation: Arc<std::sync::atomic::AtomicUsize>,
}

impl TestUpstream {
    /// Stops accepting: new connections are refused (the listener is closed).
    pub fn stop_accepting(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Closes every live connection with `code`/`reason` and stops accepting: a restart.
    pub async fn go_down(&self, how: Control) {
        self.stop_accepting();
        // Let the aborted accept task drop its listener before anyone reconnects.
        tokio::task::yield_now().await;
        let _ = self.control.send(how);
    }

    /// Closes the live connections with `code` and stops accepting, then waits until the
    /// proxy has answered the close: from then on it holds, and what the client sends is
    /// buffered for the next upstream (before that, it is the old one's).
    pub async fn go_down_and_wait(&self, code: u16) {
        let before = self.log.lock().unwrap().closes.len();
        self.go_down(Control::Close(code, "restarting".into()))
            .await;
        self.wait_for("the proxy to answer the upstream's close", |log| {
            log.closes.len() > before
        })
        .await;
    }

    /// Listens again on the same address, as the next generation of the server.
    pub async fn start_again(&self, builder: Option<UpstreamBuilder>) {
        let builder = builder.unwrap_or_else(|| self.builder.clone());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let listener = listen_on(self.addr).expect("the reserved address takes a listener again");
        let task = builder.spawn_accept(
            listener,
            self.log.clone(),
            self.changed.clone(),
            self.control.clone(),
            self.generation.clone(),
        );
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Text messages received, in arrival order, across all connections.
    pub fn texts(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .received
            .iter()
            .filter_map(|m| m.to_text().ok().map(str::to_owned))
            .collect()
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Waits until `check` holds for the log.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&UpstreamLog) -> bool) {
        within(what, async {
            loop {
                let notified = self.changed.notified();
                if check(&self.log.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        })
        .await
    }

    /// Waits for the first close frame the proxy sent this upstream: (code, reason), or
    /// `None` for an empty close.
    pub async fn first_close(&self) -> Option<(u16, String)> {
        self.wait_for("a close from the proxy", |log| !log.closes.is_empty())
            .await;
        let close = self.log.lock().unwrap().closes[0].clone();
        close.map(|f| (u16::from(f.code), f.reason.to_string()))
    }

    pub fn handshake(&self, i: usize) -> Request {
        self.log.lock().unwrap().handshakes[i].clone()
    }
}

#[derive(Default, Clone)]
pub struct UpstreamBuilder {
    name: String,
    /// Where to listen; default 127.0.0.1:0.
    bind: Option<SocketAddr>,
    /// Subprotocol to choose (must be among those offered).
    protocol: Option<String>,
    refuse: Option<(u16, String)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// How long each connection waits before its handshake is read (a busy server).
    handshake_delay: Option<Duration>,
    /// What every connection does once its handshake is done (default: follow the script).
    after_handshake: AfterHandshake,
}

/// What a test upstream's connections do right after the WebSocket handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfterHandshake {
    /// Follow the script (echo and the commands).
    #[default]
    Serve,
    /// Reset the TCP connection at once (a pod that crashes right after accepting).
    Reset,
    /// Never read (nor write) again: the connection just sits there.
    StopReading,
}

impl UpstreamBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
    pub fn protocol(mut self, p: &str) -> Self {
        self.protocol = Some(p.into());
        self
    }
    pub fn refuse(mut self, status: u16, body: &str) -> Self {
        self.refuse = Some((status, body.into()));
        self
    }
    pub fn handshake_delay(mut self, delay: Duration) -> Self {
        self.handshake_delay = Some(delay);
        self
    }
    pub fn after_handshake(mut self, what: AfterHandshake) -> Self {
        self.after_handshake = what;
        self
    }
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    pub async fn start(self) -> TestUpstream {
        let reserved = match self.bind {
            Some(addr) => Reservation::of(addr).expect("the upstream's address is free"),
            None => Reservation::new(),
        };
        let addr = reserved.addr();
        let listener = listen_on(addr).expect("listening on a reserved address");
        let log = Arc::new(Mutex::new(UpstreamLog::default()));
        let changed = Arc::new(Notify::new());
        let (control, _) = tokio::sync::broadcast::channel(16);
        let generation = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = self.spawn_accept(
            listener,
            log.clone(),
            changed.clone(),
            control.clone(),
            generation.clone(),
        );
        TestUpstream {
            addr,
            _reserved: reserved,
            log,
            changed,
            control,
            accept: Mutex::new(Some(task)),
            builder: self,
            generation,
        }
    }

    fn spawn_accept(
        &self,
        listener: TcpListener,
        log: Arc<Mutex<UpstreamLog>>,
        changed: Arc<Notify>,
        control: tokio::sync::broadcast::Sender<Control>,
        generation: Arc<std::sync::atomic::AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if this.after_handshake == AfterHandshake::Reset {
                    // Closing with a zero linger sends RST instead of FIN.
                    let _ = tcp.set_zero_linger();
                }
                let whoami = format!(
                    "{} {}",
                    this.name,
                    generation.load(std::sync::atomic::Ordering::SeqCst)
                );
                let (this, log, changed, control) = (
                    this.clone(),
                    log.clone(),
                    changed.clone(),
                    control.subscribe(),
                );
                tokio::spawn(async move {
                    match this.tls.clone() {
                        Some(tls) => {
                            if let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await
                            {
                                this.serve(stream, log, changed, control, whoami).await
                            }
                        }
                        None => this.serve(tcp, log, changed, control, whoami).await,
                    }
                });
            }
        })
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        stream: S,
        log: Arc<Mutex<UpstreamLog>>,
        changed: Arc<Notify>,
        mut control: tokio::sync::broadcast::Receiver<Control>,
        whoami: String,
    ) {
        let (log_cb, changed_cb) = (log.clone(), changed.clone());
        let callback =
            move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                log_cb.lock().unwrap().handshakes.push(req.clone());
                changed_cb.notify_waiters();
                if let Some((status, body)) = &self.refuse {
                    let mut refusal = ErrorResponse::new(Some(body.clone()));
                    *refusal.status_mut() = http::StatusCode::from_u16(*status).unwrap();
                    return Err(refusal);
                }
                if let Some(p) = &self.protocol {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", p.parse().unwrap());
                }
                Ok(resp)
            };
        // No size limits: the upstream must be able to misbehave.
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        {
            let mut log = log.lock().unwrap();
            log.handshaking += 1;
            log.max_handshaking = log.max_handshaking.max(log.handshaking);
        }
        if let Some(delay) = self.handshake_delay {
            tokio::time::sleep(delay).await;
        }
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
        log.lock().unwrap().handshaking -= 1;
        let Ok(mut ws) = handshake else {
            return;
        };
        match self.after_handshake {
            AfterHandshake::Serve => {}
            AfterHandshake::Reset => return,
            AfterHandshake::StopReading => {
                let _keep = ws;
                std::future::pending::<()>().await;
                return;
            }
        }
        // `push <n> <ms>`: n messages `push-<i>`, one every ms milliseconds, while reading.
        let mut pushing: Option<(usize, usize, tokio::time::Interval)> = None;
        loop {
            let message = tokio::select! {
                _ = async { pushing.as_mut().expect("checked").2.tick().await }, if pushing.is_some() => {
                    let (next, total, _) = pushing.as_mut().expect("checked");
                    let text = format!("push-{next}");
                    *next += 1;
                    if *next == *total {
                        pushing = None;
                    }
                    if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                    continue;
                }
                control = control.recv() => match control {
                    Ok(Control::Close(code, reason)) => {
                        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                        if ws.send(Message::Close(Some(frame))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(Control::Abort) => return,
                    Err(_) => continue,
                },
                message = ws.next() => match message {
                    Some(Ok(message)) => message,
                    _ => return,
                },
            };
            let script = match &message {
                Message::Text(t) => Some(t.to_string()),
                _ => None,
            };
            match message {
                Message::Close(frame) => {
                    log.lock().unwrap().closes.push(frame);
                    changed.notify_waiters();
                    continue;
                }
                Message::Text(_) | Message::Binary(_) => {
                    log.lock().unwrap().received.push(message.clone());
                    changed.notify_waiters();
                }
                _ => continue,
            }
            let words: Vec<&str> = script.as_deref().unwrap_or("").splitn(3, ' ').collect();
            let reply = match words.as_slice() {
                ["close", code, rest @ ..] => Some(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code.parse::<u16>().unwrap()),
                    reason: rest.first().copied().unwrap_or("").into(),
                }))),
                ["close-empty"] => Some(Message::Close(None)),
                ["abort"] => return,
                ["whoami"] => Some(Message::text(whoami.clone())),
                ["stall"] => {
                    // Stop reading (and writing) for good: the connection just sits there.
                    std::future::pending::<()>().await;
                    None
                }
                ["flood", n] => {
                    for _ in 0..n.parse::<usize>().unwrap() {
                        if ws
                            .send(Message::binary(vec![0u8; 64 * 1024]))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    None
                }
                ["push", n, ms] => {
                    let every = Duration::from_millis(ms.parse().unwrap());
                    pushing = Some((0, n.parse().unwrap(), tokio::time::interval(every)));
                    None
                }
                ["big", n] => Some(Message::text("x".repeat(n.parse().unwrap()))),
                ["bad-utf8"] => {
                    let _ = ws.get_mut().write_all(&[0x81, 0x02, 0xff, 0xfe]).await;
                    None
                }
                ["raw-close", code] => {
                    let c: u16 = code.parse().unwrap();
                    let [hi, lo] = c.to_be_bytes();
                    let _ = ws.get_mut().write_all(&[0x88, 0x02, hi, lo]).await;
                    None
                }
                _ => Some(message),
            };
            if let Some(reply) = reply {
                // After this side sent a close, sends fail but reads go on until the peer's
                // close arrives: keep reading, as a real server finishing its close would.
                let _ = ws.send(reply).await;
            }
        }
    }
}

/// A running proxy; dropping it stops it.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub handle: holdfast::app::AppHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Resolves with the number of sessions left when the drain ended.
    pub done: tokio::task::JoinHandle<usize>,
}

impl Proxy {
    /// Starts holdfast on 127.0.0.1:0 in front of `endpoints`, with `extra` TOML layered on top.
    pub async fn start(endpoints: &[String], extra: &str) -> Proxy {
        Self::start_with_resolver(endpoints, extra, holdfast::upstream::Resolver::System).await
    }

    /// Like `start`, with host names resolved by `resolver`.
    pub async fn start_with_resolver(
        endpoints: &[String],
        extra: &str,
        resolver: holdfast::upstream::Resolver,
    ) -> Proxy {
        Self::start_with(endpoints, extra, resolver, None).await
    }

    /// Like `start`, serving connections on `workers` (thread per core, as the binary does).
    pub async fn start_on_workers(
        endpoints: &[String],
        extra: &str,
        workers: std::sync::Arc<holdfast::workers::Workers>,
    ) -> Proxy {
        Self::start_with(
            endpoints,
            extra,
            holdfast::upstream::Resolver::System,
            Some(workers),
        )
        .await
    }

    async fn start_with(
        endpoints: &[String],
        extra: &str,
        resolver: holdfast::upstream::Resolver,
        workers: Option<std::sync::Arc<holdfast::workers::Workers>>,
    ) -> Proxy {
        let base = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream]\nendpoints = {endpoints:?}\n"
        );
        let config =
            holdfast::config::from_toml_layers(&[&base, extra]).expect("test config is valid");
        let mut app = App::build_with_resolver(config, resolver)
            .await
            .expect("proxy binds");
        if let Some(workers) = workers {
            app = app.with_workers(workers);
        }
        let addr = app.proxy_addr();
        let admin = app.admin_addr().expect("tests run the admin listener");
        let handle = app.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            admin,
            handle,
            stop: Some(stop),
            done,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Starts the proxy's shutdown (drain) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Starts the proxy's shutdown (drain) and waits for it; returns the sessions left.
    pub async fn shutdown(mut self) -> usize {
        self.begin_shutdown();
        within("proxy shutdown", &mut self.done).await.unwrap()
    }

    /// `GET path` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// The sum of the series of a metric whose labels include the given ones, e.g.
    /// `holdfast_holds_total{outcome="resumed"}` adds up that outcome of every route
    /// (0 when there is none).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        metric_sum(&body, series)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.done.abort();
    }
}

pub type Client = WebSocketStream<TcpStream>;

/// Opens a WebSocket through `url` (a request can carry extra headers).
pub async fn connect_request(
    addr: SocketAddr,
    request: http::Request<()>,
) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    within(
        "client handshake",
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config)),
    )
    .await
}

pub async fn connect(proxy: &Proxy) -> Client {
    use tungstenite::client::IntoClientRequest;
    let request = proxy.url("/").into_client_request().unwrap();
    connect_request(proxy.addr, request)
        .await
        .expect("handshake through the proxy")
        .0
}

/// The upstream restarts under `clients` (1012 to every connection, no more accepting):
/// waits until the proxy has answered every close, so every session is held, then each
/// client sends `message`, which the proxy buffers for the next instance.
pub async fn restart_under(upstream: &TestUpstream, clients: &mut [Client], message: &str) {
    let before = upstream.log.lock().unwrap().closes.len();
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    upstream
        .wait_for("the proxy to answer every close", |log| {
            log.closes.len() >= before + clients.len()
        })
        .await;
    for client in clients.iter_mut() {
        send_text(client, message).await;
    }
}

/// `n` clients through the proxy, each of which has had one message ("hello {i}") echoed:
/// every session is relaying.
pub async fn connect_relaying(proxy: &Proxy, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = connect(proxy).await;
        send_text(&mut client, &format!("hello {i}")).await;
        assert_eq!(
            next_message(&mut client).await,
            Message::text(format!("hello {i}"))
        );
        clients.push(client);
    }
    clients
}

/// The next text/binary/close message (pings and pongs skipped).
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Message {
    within("a message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("client read error: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
}

pub async fn send_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

pub async fn send_binary<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    data: Vec<u8>,
) {
    ws.send(Message::binary(data)).await.expect("send");
}

/// Reads until the close frame; returns (code, reason), with code `None` for an empty close.
pub async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> (Option<u16>, String) {
    match next_message(ws).await {
        Message::Close(Some(f)) => (Some(u16::from(f.code)), f.reason.to_string()),
        Message::Close(None) => (None, String::new()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Sends raw bytes and returns everything the server answers until it closes (or 10 s).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A loopback address held for a test: bound with `SO_REUSEPORT` and never listening, so
/// connections to it are refused, other processes cannot take it (a bind without the option
/// conflicts, and an outgoing connection never picks a bound port), and this test's own
/// listeners can join it (`listen_on`) and leave it again without giving it up.
pub struct Reservation {
    socket: tokio::net::TcpSocket,
}

impl Reservation {
    /// A fresh port on 127.0.0.1.
    pub fn new() -> Reservation {
        Self::of("127.0.0.1:0".parse().unwrap()).expect("a loopback port")
    }

    /// `addr` (port 0: any free port on its address).
    pub fn of(addr: SocketAddr) -> std::io::Result<Reservation> {
        Ok(Reservation {
            socket: bound_with_reuseport(addr)?,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }
}

/// A listener on a reserved address (it joins the reservation's `SO_REUSEPORT` group).
pub fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bound_with_reuseport(addr)?.listen(1024)
}

fn bound_with_reuseport(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// One port reserved on both 127.0.0.1 and ::1 (two pods behind one name), or `None` where
/// this machine has no IPv6 loopback.
pub fn reserve_on_both_loopbacks() -> Option<(Reservation, Reservation)> {
    for _ in 0..100 {
        let v4 = Reservation::new();
        let v6 = SocketAddr::new("::1".parse().unwrap(), v4.port());
        match Reservation::of(v6) {
            Ok(v6) => return Some((v4, v6)),
            // That port is taken on ::1: try another.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Whether a test can run here: `available`, or it says why it skips. CI sets
/// `TEST_REQUIRE_ALL=1`, and there a missing capability fails the test instead.
pub fn require(capability: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("TEST_REQUIRE_ALL").is_some() {
        panic!("{capability} is required (TEST_REQUIRE_ALL) but not available here");
    }
    eprintln!("skipped: {capability} is not available on this machine");
    false
}

/// Message and frame limits of `deflate_client` connections.
pub const CLIENT_LIMITS: holdfast::codec::Limits = holdfast::codec::Limits {
    max_message: 64 << 20,
    max_frame: 64 << 20,
};

/// A client of holdfast's own codec that offers `offer` as its `Sec-WebSocket-Extensions`
/// (none: no header); returns its connection, compressing with what holdfast answered,
/// and the answer.
pub async fn deflate_client(
    proxy: SocketAddr,
    offer: Option<&str>,
) -> (holdfast::codec::WsConn<TcpStream>, Option<String>) {
    use holdfast::codec::{Role, WsConn};
    use holdfast::deflate::{Context, Counters, Settings, negotiate};
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let extra = offer.map_or(String::new(), |o| {
        format!("Sec-WebSocket-Extensions: {o}\r\n")
    });
    tcp.write_all(&upgrade_request(&extra)).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(within("the 101", tcp.read(&mut byte)).await.unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let answer = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, v)| v.trim().to_owned());
    let settings = Settings::default();
    let params = negotiate::check_answer(answer.as_deref(), &settings).unwrap();
    let context = params.map(|p| Context::new(p, &settings, Counters::default()));
    (
        WsConn::new(tcp, Role::Client, CLIENT_LIMITS, &[]).with_deflate(context),
        answer,
    )
}

/// A plain `GET` over a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    status_and_body(&raw_exchange(addr, request.as_bytes()).await)
}

/// An HTTP answer's status (0 when there is none) and body.
pub fn status_and_body(answer: &str) -> (u16, String) {
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A raw upgrade request with the given extra header lines.
pub fn upgrade_request(extra: &str) -> Vec<u8> {
    format!(
        "GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to a temp dir.
pub struct TestCert {
    pub dir: tempfile::TempDir,
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> TestCert {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
        TestCert {
            cert_der: certified.cert.der().clone(),
            dir,
            cert_path,
            key_path,
        }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        holdfast::tls::server_config(&self.cert_path, &self.key_path, false).unwrap()
    }

    pub fn client_connector(&self) -> tokio_rustls::TlsConnector {
        self.client_connector_for(&[b"http/1.1"])
    }

    /// A connector that offers these ALPN protocols (`h2` for HTTP/2).
    pub fn client_connector_for(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A TCP relay in front of an address that cuts every connection through it on command (a
/// reset both ways, as a lost network does; `cut_and_wait` returns once they are closed),
/// keeps relaying new ones, and sends them elsewhere when told (`point_at`: a load
/// balancer's choice). The demo's network, whose page is not used here.
#[allow(unused_imports)] // some test files use no relay
pub use holdfast::demo::Network as CuttingRelay;

/// The sum of the series in Prometheus text `body` named as `series` (`name` or
/// `name{label="value",...}`) whose labels include every label `series` names.
pub fn metric_sum(body: &str, series: &str) -> f64 {
    let (name, wanted) = split_series(series);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| {
            let (n, labels) = split_series(s);
            n == name && wanted.iter().all(|w| labels.contains(w))
        })
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (series, Vec::new()),
    }
}
