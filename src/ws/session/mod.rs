//! The session task: one task owns the client socket and the upstream socket and runs a
//! single `select!` over both, the keepalive/idle timers and shutdown; the `Holding`
//! state lives in `hold.rs`. What a close means
//! is decided by the pure functions in `close.rs`; this file only executes decisions.
//! States and transitions are described in docs/LIFECYCLE.md.

pub mod hold;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use http::HeaderValue;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::close::{self, Close, Direction, GOING_AWAY, NO_STATUS, POLICY_VIOLATION, WireClose};
use crate::codec::{Data, Incoming, Inline, SMALL_INLINE, WsConn};
use crate::config::RateLimit;
use crate::metrics::{Original, SessionOutcome};
use crate::policy::{self, ProxyPolicy, rate_limit::TokenBucket};
use crate::shared::Shared;
use crate::upstream::Member;
use crate::ws::UpstreamWs;
use crate::ws::ends::{self, ClientEnd, CloseRules, UpstreamDecision, UpstreamEnd};
use crate::ws::handshake::UpstreamTemplate;
use crate::ws::woken::{Gate, WokenOnly};
use hold::{HoldEnd, HoldOutcome};

/// How long each side gets to complete its close handshake once holdfast has decided.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Messages at least this large leave memory the allocator should give back to the system
/// once they are gone (`Shared::memory_freed`).
pub const LARGE_MESSAGE: usize = 16 * 1024;

/// How a peer failed, read off a tungstenite error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Vanished,
    Protocol,
    TooBig,
    InvalidUtf8,
}

pub(super) fn fault(error: &WsError) -> Fault {
    match error {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_)
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Fault::Vanished,
        WsError::Capacity(_) | WsError::WriteBufferFull(_) => Fault::TooBig,
        WsError::Utf8(_) => Fault::InvalidUtf8,
        _ => Fault::Protocol,
    }
}

pub(super) fn client_end(fault: Fault) -> ClientEnd {
    match fault {
        Fault::Vanished => ClientEnd::Vanished,
        Fault::Protocol => ClientEnd::ProtocolError,
        Fault::TooBig => ClientEnd::TooBig,
        Fault::InvalidUtf8 => ClientEnd::InvalidUtf8,
    }
}

fn upstream_end(fault: Fault) -> UpstreamEnd {
    match fault {
        Fault::Vanished => UpstreamEnd::Vanished,
        Fault::Protocol => UpstreamEnd::ProtocolError,
        Fault::TooBig => UpstreamEnd::TooBig,
        Fault::InvalidUtf8 => UpstreamEnd::InvalidUtf8,
    }
}

/// A received close frame as a `Close` (an empty frame is the pseudo-code 1005).
pub fn close_of(frame: Option<CloseFrame>) -> Close {
    match frame {
        Some(f) => Close::new(u16::from(f.code), f.reason.as_str()),
        None => Close::new(NO_STATUS, ""),
    }
}

/// A close that passed `close::to_wire` as a tungstenite message.
pub fn close_message(wire: WireClose) -> Message {
    Message::Close(wire.map(|c| CloseFrame {
        code: CloseCode::from(c.code),
        reason: c.reason.into(),
    }))
}

/// What the relay loop read, and from which side.
enum Read {
    Client(Option<Result<Incoming, WsError>>),
    Upstream(Option<Result<Incoming, WsError>>),
}

/// What one read means for the relay loop: a message (data to relay; a ping or pong is
/// answered already, or is an answer), or that side's end.
enum Got {
    Message(Incoming),
    Closed(Close),
    Failed(Fault),
}

fn got(read: Option<Result<Incoming, WsError>>) -> Got {
    match read {
        Some(Ok(Incoming::Message(Message::Close(frame)))) => Got::Closed(close_of(frame)),
        Some(Ok(incoming)) => Got::Message(incoming),
        Some(Err(e)) => Got::Failed(fault(&e)),
        None => Got::Failed(Fault::Vanished),
    }
}

/// Why the relay loop (or a hold) stopped.
#[derive(Debug)]
enum Ending {
    Client(ClientEnd),
    Upstream(UpstreamEnd),
    Idle,
    Shutdown,
    /// A hold failed; the client gets `restart.give_up_code`.
    GaveUp,
    /// One of holdfast's own policies closes the session with 1008.
    Policy(ProxyPolicy),
}

/// Counters for the session-end log line (and metrics).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub messages_to_upstream: u64,
    pub bytes_to_upstream: u64,
    pub messages_to_client: u64,
    pub bytes_to_client: u64,
}

/// What a session ended with, as logged.
#[derive(Debug, Clone)]
pub struct Report {
    pub stats: Stats,
    /// Close code as received from each side (pseudo-codes included) and as sent to the other.
    pub client_close: Option<(u16, Option<u16>)>,
    pub upstream_close: Option<(u16, Option<u16>)>,
    /// Every hold of this session, in order.
    pub holds: Vec<HoldOutcome>,
    /// The policy of a 1008 close sent to the client, and who closed.
    pub policy: Option<(String, policy::Source)>,
}

/// What `Session::new` needs from the completed first handshake.
pub struct Opened {
    pub template: Arc<UpstreamTemplate>,
    pub member: Member,
    pub protocol: Option<HeaderValue>,
    /// Time left on the handshake's token (`policy.token_expiry`).
    pub expires_in: Option<Duration>,
}

pub struct Session<C> {
    pub(super) id: String,
    pub(super) peer: SocketAddr,
    client: WsConn<C>,
    /// How to open the upstream again, the same way as the first time.
    pub(super) template: Arc<UpstreamTemplate>,
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: CancellationToken,
    /// The subprotocol the first upstream chose; every later upstream must choose the same.
    pub(super) protocol: Option<HeaderValue>,
    /// The pool member currently (or last) connected.
    pub(super) member: Member,
    /// The client's first `replay_first` messages, re-sent to every new upstream.
    pub(super) replay: Vec<Message>,
    replay_first: u64,
    /// Number of client data messages read so far (the next one's sequence number).
    client_seq: u64,
    /// A client message whose send to the upstream failed: it goes first into the hold buffer.
    pub(super) unsent: Option<(u64, Message)>,
    pub(super) resumes: u32,
    pub(super) holds: Vec<HoldOutcome>,
    pub(super) stats: Stats,
    pub(super) client_keepalive: Keepalive,
    upstream_keepalive: Keepalive,
    /// When data last went either way (kept only with `idle_timeout` on).
    last_data: Instant,
    /// `policy.rate_limit` over client data messages, and the limit it was built for.
    bucket: Option<TokenBucket>,
    bucket_limit: RateLimit,
    /// `Shared::reloads` when `bucket_limit` was last compared with the live config.
    reloads_seen: u64,
    /// When the handshake's token expires.
    pub(super) expires_at: Option<Instant>,
}

/// Keepalive bookkeeping for one peer, counted in keepalive ticks so that receiving a
/// message costs a flag store rather than a clock read.
#[derive(Debug, Clone)]
pub(super) struct Keepalive {
    heard: bool,
    silent_ticks: u8,
}

impl Keepalive {
    /// A peer just connected (or the session just started relaying): counts as heard.
    pub(super) fn new() -> Self {
        Self {
            heard: true,
            silent_ticks: 0,
        }
    }

    /// The peer sent something (data, ping, pong).
    pub(super) fn heard(&mut self) {
        self.heard = true;
    }

    /// At a keepalive tick: true when the peer has sent nothing through two whole intervals
    /// (heard at some point before tick k, silent at ticks k+1 and k+2).
    pub(super) fn tick(&mut self) -> bool {
        if std::mem::take(&mut self.heard) {
            self.silent_ticks = 0;
        } else {
            self.silent_ticks = self.silent_ticks.saturating_add(1);
        }
        self.silent_ticks >= 2
    }
}

/// A deadline that never comes, for timers that are off.
pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl<C> Session<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(
        client: WsConn<C>,
        opened: Opened,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        // Read before the config: a reload in between is seen at the first message.
        let reloads_seen = shared.reloads.load(Ordering::Acquire);
        let (replay_first, rate_limit) = {
            let config = shared.config.load();
            (config.restart.replay_first as u64, config.policy.rate_limit)
        };
        Self {
            id: opened.template.session_id.clone(),
            peer,
            client,
            template: opened.template,
            shared,
            shutdown,
            protocol: opened.protocol,
            member: opened.member,
            replay: Vec::new(),
            replay_first,
            client_seq: 0,
            unsent: None,
            resumes: 0,
            holds: Vec::new(),
            stats: Stats::default(),
            client_keepalive: Keepalive::new(),
            upstream_keepalive: Keepalive::new(),
            last_data: now,
            bucket: TokenBucket::new(rate_limit, now),
            bucket_limit: rate_limit,
            reloads_seen,
            expires_at: opened.expires_in.map(|d| now + d),
        }
    }

    /// Runs the session to its end: relaying, holding across upstream restarts, closing.
    /// Never panics on peer input.
    ///
    /// The session lives in a `Box` and the rarely used states (`hold`, `finish`) run as
    /// boxed futures: the task of an idle session holds only the relaying state, which keeps
    /// its memory small (it is measured per idle session in the benchmark).
    pub async fn run(mut self: Box<Self>, mut upstream: UpstreamWs) -> Report {
        let started = Instant::now();
        let _active = ActiveSession::new(self.shared.clone());
        let report = loop {
            let ending = self.relay(&mut upstream).await;
            if let Ending::Upstream(end) = &ending
                && self.should_hold(end)
            {
                self.shared.pool.mark_failed(self.member.addr);
                // The old upstream's close handshake completes on the side, bounded.
                self.shared.tracker.spawn(async move {
                    complete_close(&mut upstream, Vec::new()).await;
                });
                match Box::pin(self.hold()).await {
                    HoldEnd::Resumed(new) => {
                        upstream = *new;
                        self.upstream_keepalive = Keepalive::new();
                        continue;
                    }
                    HoldEnd::GaveUp(_) => break Box::pin(self.finish(Ending::GaveUp, None)).await,
                    HoldEnd::Client(end) => {
                        break Box::pin(self.finish(Ending::Client(end), None)).await;
                    }
                    HoldEnd::Shutdown => break Box::pin(self.finish(Ending::Shutdown, None)).await,
                    HoldEnd::Policy(fired) => {
                        break Box::pin(self.finish(Ending::Policy(fired), None)).await;
                    }
                }
            }
            break Box::pin(self.finish(ending, Some(upstream))).await;
        };
        tracing::info!(
            session = %self.id,
            peer = %self.peer,
            upstream = %self.member,
            duration_ms = started.elapsed().as_millis() as u64,
            messages_to_upstream = report.stats.messages_to_upstream,
            bytes_to_upstream = report.stats.bytes_to_upstream,
            messages_to_client = report.stats.messages_to_client,
            bytes_to_client = report.stats.bytes_to_client,
            client_close = ?report.client_close,
            upstream_close = ?report.upstream_close,
            holds = ?report.holds.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "session ended"
        );
        report
    }

    /// The close pipeline's step 1 (SPEC §3.2): does this upstream end mean "hold"?
    fn should_hold(&self, end: &UpstreamEnd) -> bool {
        let config = self.shared.config.load();
        let rules = CloseRules {
            hold: config.restart.hold,
            restart_codes: &config.restart.codes,
            on_disconnect: config.restart.on_disconnect,
            rewrites: &config.rewrites,
        };
        ends::on_upstream_end(end, &rules) == UpstreamDecision::Hold
    }

    /// `policy.rate_limit`: may the client send a data message now?
    pub(super) fn admit(&mut self) -> Result<(), ProxyPolicy> {
        let reloads = self.shared.reloads.load(Ordering::Acquire);
        if reloads != self.reloads_seen {
            self.reloads_seen = reloads;
            let limit = self.shared.config.load().policy.rate_limit;
            if limit != self.bucket_limit {
                // A reload changed the limit: this session follows it from now on.
                self.bucket = TokenBucket::new(limit, Instant::now());
                self.bucket_limit = limit;
            }
        }
        match &mut self.bucket {
            Some(bucket) => bucket
                .take(Instant::now())
                .map_err(|retry| ProxyPolicy::RateLimit { retry }),
            None => Ok(()),
        }
    }

    /// The client socket.
    pub(super) fn client(&mut self) -> &mut WsConn<C> {
        &mut self.client
    }

    /// Numbers a client data message and records it (`copy`) if it is among the first
    /// `replay_first`.
    pub(super) fn record_client_message(&mut self, copy: impl FnOnce() -> Message) -> u64 {
        let seq = self.client_seq;
        self.client_seq += 1;
        if seq < self.replay_first {
            self.replay.push(copy());
        }
        seq
    }

    /// Counts a data message of `len` bytes written in `direction` (stats and metrics); a
    /// large one tells the trimmer there will be memory to give back.
    pub(super) fn relayed(&mut self, direction: Direction, len: usize) {
        let (messages, bytes) = match direction {
            Direction::ToUpstream => (
                &mut self.stats.messages_to_upstream,
                &mut self.stats.bytes_to_upstream,
            ),
            Direction::ToClient => (
                &mut self.stats.messages_to_client,
                &mut self.stats.bytes_to_client,
            ),
        };
        *messages += 1;
        *bytes += len as u64;
        self.shared.metrics.message(direction, len);
        if len >= LARGE_MESSAGE {
            self.shared.memory_freed.store(true, Ordering::Relaxed);
        }
    }

    /// The `Relaying` state: one select over both sockets, keepalive, idle and shutdown.
    async fn relay(&mut self, upstream: &mut UpstreamWs) -> Ending {
        let (ping_every, idle_after) = {
            let config = self.shared.config.load();
            (
                config.websocket.ping_interval,
                config.websocket.idle_timeout,
            )
        };
        // A peer that takes no data for two keepalive intervals has stopped reading.
        let stall = ping_every.map(|every| every * 2);
        // Every branch is polled only once its own waker fired (`woken::Gate`): nearly every
        // wake of this task is one socket, and polling the other one, the timers or the
        // token would take locks or atomics each time.
        let ping = tokio::time::sleep(ping_every.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(ping);
        let mut ping = WokenOnly::new(ping);
        // One timer, re-armed lazily: resetting a timer per message would cost a timer-wheel
        // update on the hot path.
        let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(idle);
        let mut idle = WokenOnly::new(idle);
        let expiry = tokio::time::sleep_until(self.expires_at.unwrap_or_else(far_future));
        tokio::pin!(expiry);
        let mut expiry = WokenOnly::new(expiry);
        // Created once: a fresh `cancelled()` per iteration would register with the token's
        // notifier on every message.
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut cancelled = WokenOnly::new(cancelled);
        // The sockets too: the one that did not wake the task is not polled again.
        let (mut client_gate, mut upstream_gate) = (Gate::new(), Gate::new());
        // Where a small message read by either side lands (it is relayed before the next
        // read): small messages take no heap allocation.
        let mut inline: Inline = [0; SMALL_INLINE];

        loop {
            // Sockets first: when one is ready (nearly every wake) the branches after it are
            // not polled at all. Shutdown still wins within one cooperative budget (a socket
            // that stays ready starts answering pending once the task's budget is spent).
            tokio::select! {
                biased;
                read = std::future::poll_fn(|cx| {
                    let client = client_gate.poll(cx, |cx| self.client.poll_next_incoming(cx, &mut inline));
                    if let Poll::Ready(read) = client {
                        return Poll::Ready(Read::Client(read));
                    }
                    upstream_gate.poll(cx, |cx| upstream.poll_next_incoming(cx, &mut inline)).map(Read::Upstream)
                }) => match read {
                    Read::Client(read) => {
                        self.client_keepalive.heard();
                        let incoming = match got(read) {
                            Got::Message(incoming) => incoming,
                            Got::Closed(close) => return Ending::Client(ClientEnd::Closed(close)),
                            Got::Failed(fault) => return Ending::Client(client_end(fault)),
                        };
                        // Pings and pongs: nothing to relay.
                        let Some(data) = incoming.data(&inline) else { continue };
                        if let Err(fired) = self.admit() {
                            return Ending::Policy(fired);
                        }
                        if idle_after.is_some() {
                            self.last_data = Instant::now();
                        }
                        let seq = self.record_client_message(|| incoming.to_message(&inline));
                        let len = data.len();
                        match send_within(upstream, data, stall).await {
                            Ok(()) => {}
                            // Perhaps partly written: never delivered again.
                            Err(None) => return Ending::Upstream(UpstreamEnd::Stalled),
                            Err(Some(e)) => {
                                // Not written: if the session holds, it is delivered later.
                                self.unsent = Some((seq, incoming.into_message(&inline)));
                                return Ending::Upstream(upstream_end(fault(&e)));
                            }
                        }
                        self.relayed(Direction::ToUpstream, len);
                    }
                    Read::Upstream(read) => {
                        self.upstream_keepalive.heard();
                        let incoming = match got(read) {
                            Got::Message(incoming) => incoming,
                            Got::Closed(close) => return Ending::Upstream(UpstreamEnd::Closed(close)),
                            Got::Failed(fault) => return Ending::Upstream(upstream_end(fault)),
                        };
                        // Pings and pongs: nothing to relay.
                        let Some(data) = incoming.data(&inline) else { continue };
                        if idle_after.is_some() {
                            self.last_data = Instant::now();
                        }
                        match send_within(&mut self.client, data, stall).await {
                            Ok(()) => {}
                            Err(None) => return Ending::Client(ClientEnd::Stalled),
                            Err(Some(e)) => return Ending::Client(client_end(fault(&e))),
                        }
                        self.relayed(Direction::ToClient, data.len());
                    }
                },
                _ = &mut cancelled => return Ending::Shutdown,
                _ = &mut ping, if ping_every.is_some() => {
                    let every = ping_every.unwrap_or_default();
                    ping.get_mut().as_mut().reset(Instant::now() + every);
                    // A peer that has sent nothing (not even a pong) for two intervals is gone.
                    let (client_gone, upstream_gone) =
                        (self.client_keepalive.tick(), self.upstream_keepalive.tick());
                    if client_gone {
                        return Ending::Client(ClientEnd::Vanished);
                    }
                    if upstream_gone {
                        return Ending::Upstream(UpstreamEnd::Vanished);
                    }
                    if let Err(e) = self.client().send(Message::Ping(Default::default())).await {
                        return Ending::Client(client_end(fault(&e)));
                    }
                    if let Err(e) = upstream.send(Message::Ping(Default::default())).await {
                        return Ending::Upstream(upstream_end(fault(&e)));
                    }
                }
                _ = &mut expiry, if self.expires_at.is_some() => return Ending::Policy(ProxyPolicy::TokenExpired),
                _ = &mut idle, if idle_after.is_some() => {
                    let deadline = self.last_data + idle_after.unwrap_or_default();
                    if deadline <= Instant::now() {
                        return Ending::Idle;
                    }
                    idle.get_mut().as_mut().reset(deadline);
                }
            }
        }
    }

    /// The `Closing` state: send each side what the decision says and let both close
    /// handshakes complete, each bounded by `CLOSE_TIMEOUT`. `upstream` is `None` when the
    /// session ends from `Holding`.
    async fn finish(&mut self, ending: Ending, upstream: Option<UpstreamWs>) -> Report {
        let config = self.shared.config.load_full();
        let mut report = Report {
            stats: self.stats.clone(),
            client_close: None,
            upstream_close: None,
            holds: self.holds.clone(),
            policy: None,
        };
        let own =
            |code: u16, reason: &str| vec![close_message(close::to_wire(Close::new(code, reason)))];
        // Where each side's close comes from, for the `original` metric label.
        let (mut client_original, mut upstream_original) = (Original::Proxy, Original::Proxy);
        // One side broke the protocol: the other side is closed first, and what it still
        // sends (answers to messages from before the fault) is relayed before the verdict
        // reaches the faulty side — messages stay in order.
        let mut faulty = None;
        // Messages for each side, the close frame last; empty: only complete the handshake.
        let (to_client, to_upstream): (Vec<Message>, Vec<Message>) = match ending {
            Ending::Client(end) => {
                let decision = ends::on_client_end(&end, &config.rewrites);
                upstream_original = Original::Received(decision.original);
                report.client_close = Some((
                    decision.original,
                    decision.to_upstream.as_ref().map(|c| c.code),
                ));
                if decision.to_client.is_some() {
                    faulty = Some(Direction::ToClient);
                }
                let reply = decision.to_client.map(close_message).into_iter().collect();
                (reply, vec![close_message(decision.to_upstream)])
            }
            Ending::Upstream(end) => {
                let rules = CloseRules {
                    // Holding was already decided (and declined) in `run`.
                    hold: false,
                    restart_codes: &config.restart.codes,
                    on_disconnect: config.restart.on_disconnect,
                    rewrites: &config.rewrites,
                };
                let UpstreamDecision::Forward { original, close } =
                    ends::on_upstream_end(&end, &rules)
                else {
                    unreachable!("hold: false never decides Hold")
                };
                client_original = Original::Received(original);
                let mut to_client = Vec::new();
                // SPEC §3.2 step 3: a 1008 (as received or as rewritten) gets policy context.
                let close = if close.code == POLICY_VIOLATION {
                    let context = policy::upstream_context(&close.reason, &config.policy);
                    report.policy = Some((context.policy.clone(), context.source));
                    let (close, message) = policy::apply(&context, close, config.policy.context);
                    to_client.extend(message.map(Message::text));
                    close
                } else {
                    close
                };
                let wire = close::to_wire(close);
                report.upstream_close = Some((original, wire.as_ref().map(|c| c.code)));
                to_client.push(close_message(wire));
                let verdict = end
                    .verdict_for_upstream()
                    .map(|c| close_message(close::to_wire(c)));
                if verdict.is_some() {
                    faulty = Some(Direction::ToUpstream);
                }
                (to_client, verdict.into_iter().collect())
            }
            Ending::Policy(fired) => {
                let context = fired.context(&config.policy);
                report.policy = Some((context.policy.clone(), context.source));
                let (close, message) =
                    policy::apply(&context, fired.plain_close(), config.policy.context);
                let mut to_client: Vec<Message> = message.map(Message::text).into_iter().collect();
                to_client.push(close_message(close::to_wire(close)));
                let reason = format!("client closed by proxy policy {}", fired.id());
                (to_client, own(GOING_AWAY, reason.as_str()))
            }
            Ending::Idle => (
                own(GOING_AWAY, "idle timeout"),
                own(GOING_AWAY, "idle timeout"),
            ),
            Ending::Shutdown => (
                vec![close_message(close::to_wire(
                    config.shutdown.client.clone(),
                ))],
                own(GOING_AWAY, "proxy shutting down"),
            ),
            Ending::GaveUp => (
                vec![close_message(close::to_wire(
                    config.restart.give_up.clone(),
                ))],
                Vec::new(),
            ),
        };
        let metrics = &self.shared.metrics;
        if let Some((id, source)) = &report.policy {
            metrics.policy_violation(id, *source);
            tracing::info!(session = %self.id, policy = %id, source = source.as_str(), "policy close");
        }
        if let Some(code) = to_client.last().and_then(wire_code) {
            metrics.close_sent(Direction::ToClient, code, client_original);
        }
        if upstream.is_some()
            && let Some(code) = to_upstream.last().and_then(wire_code)
        {
            metrics.close_sent(Direction::ToUpstream, code, upstream_original);
        }
        let metrics = &self.shared.metrics;
        match (upstream, faulty) {
            (Some(mut upstream), Some(Direction::ToClient)) => {
                let (first, faulty) = ((&mut upstream, to_upstream), (&mut self.client, to_client));
                close_faulty_last(first, faulty, Direction::ToClient, metrics).await;
            }
            (Some(mut upstream), Some(Direction::ToUpstream)) => {
                let (first, faulty) = ((&mut self.client, to_client), (&mut upstream, to_upstream));
                close_faulty_last(first, faulty, Direction::ToUpstream, metrics).await;
            }
            (Some(mut upstream), None) => {
                tokio::join!(
                    complete_close(self.client(), to_client),
                    complete_close(&mut upstream, to_upstream)
                );
            }
            (None, _) => complete_close(self.client(), to_client).await,
        }
        report
    }
}

/// One side broke the protocol: closes the other side (`first`, its messages with the close
/// last) and, until its close reply (at most `CLOSE_TIMEOUT`), relays the data it still
/// sends to the faulty side (`direction`), so answers to messages sent before the fault
/// arrive before the verdict; then closes the faulty side.
async fn close_faulty_last<A, B>(
    (first, first_messages): (&mut WsConn<A>, Vec<Message>),
    (faulty, faulty_messages): (&mut WsConn<B>, Vec<Message>),
    direction: Direction,
    metrics: &crate::metrics::Metrics,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if send_all(first, first_messages).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = first.next().await {
            if let Some(len) = Data::of(&message).map(|d| d.len()) {
                if faulty.send(message).await.is_err() {
                    return;
                }
                metrics.message(direction, len);
            }
        }
    })
    .await;
    shut_down(first).await;
    complete_close(faulty, faulty_messages).await;
}

/// Writes `messages` and flushes them.
async fn send_all<S>(socket: &mut WsConn<S>, messages: Vec<Message>) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for message in messages {
        socket.feed(message).await?;
    }
    socket.flush().await
}

/// Shuts the transport down once the close handshake is over (a TLS close_notify over TLS),
/// bounded.
async fn shut_down<S>(socket: &mut WsConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.get_mut().shutdown()).await;
}

/// Sends `data`, giving up after `stall` (`Err(None)`): a peer that takes no data for
/// that long has stopped reading. Without keepalive (`None`) a send waits as long as the
/// peer does — backpressure, memory stays bounded either way.
async fn send_within<S>(
    socket: &mut WsConn<S>,
    data: Data<'_>,
    stall: Option<Duration>,
) -> Result<(), Option<WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut send = std::pin::pin!(socket.send_data(data));
    // Almost every send completes at once: only a send that has to wait arms the timer (a
    // timer per message would cost a timer-wheel update on the hot path).
    if let std::task::Poll::Ready(result) = futures_util::poll!(send.as_mut()) {
        return result.map_err(Some);
    }
    match stall {
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        },
        None => send.await.map_err(Some),
    }
}

/// The code of a close message as sent (`Some(None)`: an empty close frame).
fn wire_code(message: &Message) -> Option<Option<u16>> {
    match message {
        Message::Close(frame) => Some(frame.as_ref().map(|f| u16::from(f.code))),
        _ => None,
    }
}

/// Counts a session in `holdfast_sessions_active` for as long as it lives.
struct ActiveSession(Arc<Shared>);

impl ActiveSession {
    fn new(shared: Arc<Shared>) -> Self {
        shared.metrics.sessions_active.increment(1.0);
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.metrics.sessions_active.decrement(1.0);
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.session_ended(SessionOutcome::Closed);
    }
}

/// Sends `messages` (the close frame last; none: only flush a close reply tungstenite
/// queued), then reads until the peer's close reply or EOF, bounded by `CLOSE_TIMEOUT`;
/// then shuts the transport down (a TLS close_notify over TLS).
pub(super) async fn complete_close<S>(socket: &mut WsConn<S>, messages: Vec<Message>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if send_all(socket, messages).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
    shut_down(socket).await;
}

#[cfg(test)]
mod tests {
    use super::Keepalive;

    #[test]
    fn a_peer_is_gone_after_two_whole_silent_keepalive_intervals() {
        // Never heard after the start: the start counts, so gone at the third tick.
        let mut k = Keepalive::new();
        assert_eq!([k.tick(), k.tick(), k.tick()], [false, false, true]);

        // Heard between ticks 1 and 2: silent through 2-3 and 3-4, gone at tick 4.
        let mut k = Keepalive::new();
        assert!(!k.tick());
        k.heard();
        assert_eq!([k.tick(), k.tick(), k.tick()], [false, false, true]);

        // A peer that answers every keepalive is never gone.
        let mut k = Keepalive::new();
        for _ in 0..1000 {
            k.heard();
            assert!(!k.tick());
        }
        // And stays gone once gone (the counter saturates instead of wrapping).
        for _ in 0..300 {
            k.tick();
        }
        assert!(k.tick());
    }
}
