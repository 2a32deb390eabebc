//! The session task: one task owns the client socket and the upstream socket and moves
//! through the states of docs/LIFECYCLE.md: `Relaying` (`relay`, one `select!` over both
//! sockets, the keepalive and idle timers and shutdown), `Holding` (`hold`, across an
//! upstream restart) and `Closing` (`closing`, which executes the pure `plan` of what each
//! side is sent). What an end means is decided in `ws::ends` and `plan`; the I/O here only
//! carries decisions out.

pub mod attach;
pub mod closing;
pub mod held;
pub mod hold;
pub mod plan;
pub mod relay;
pub mod resumable;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::close::Direction;
use crate::codec::WsConn;
use crate::config::Config;
use crate::config::RateLimit;
use crate::metrics::{SessionEnd, SessionLabels, SessionOutcome};
use crate::policy::{self, ProxyPolicy, rate_limit::TokenBucket};
use crate::shared::Shared;
use crate::socket::ClientIo;
use crate::upstream::Member;
use crate::ws::UpstreamWs;
use crate::ws::ends::{self, ClientEnd, CloseRules, UpstreamDecision, UpstreamEnd};
use crate::ws::handshake::UpstreamTemplate;
use hold::{HoldEnd, HoldOutcome};
use resumable::{Resumable, Start};

/// How long each side gets to complete its close handshake once holdfast has decided.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Messages at least this large leave memory the allocator should give back to the system
/// once they are gone (`Shared::memory_freed`).
pub const LARGE_MESSAGE: usize = 16 * 1024;

/// A client connection a session runs on: the connection a client upgraded (`ClientIo`),
/// or anything built from one (a returning resumable client's connection is made from one).
pub trait ClientConn: AsyncRead + AsyncWrite + Unpin + Send + 'static + From<ClientIo> {}

impl<C> ClientConn for C where C: AsyncRead + AsyncWrite + Unpin + Send + 'static + From<ClientIo> {}

/// Why the relay loop (or a hold) stopped: the input of the closing `plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Client(ClientEnd),
    Upstream(UpstreamEnd),
    Idle,
    Shutdown,
    /// A hold failed; the client gets `restart.give_up_code`.
    GaveUp,
    /// One of holdfast's own policies closes the session with 1008.
    Policy(ProxyPolicy),
    /// A resumable client's connection is gone; it may come back (`Session::away`).
    ClientAway,
    /// A resumable client did not come back within `resume.client_hold`, or what it missed
    /// outgrew its buffer.
    ClientGone,
    /// This holdfast drains and its resumable client was told to move (`Session::move_client`):
    /// the upstream's close is done, the client gets 1012.
    Moved,
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
    /// How the session ended for the client.
    pub end: SessionEnd,
}

/// What `Session::new` needs from the completed first handshake.
pub struct Opened {
    pub template: Arc<UpstreamTemplate>,
    pub member: Member,
    pub protocol: Option<HeaderValue>,
    /// Time left on the handshake's token (`policy.token_expiry`).
    pub expires_in: Option<Duration>,
    /// A resumable client (`holdfast.resume.v1`) and how its session starts.
    pub resume: Option<(Box<Resumable>, Start)>,
    /// The session's route and protocol; the route's settings are read by name.
    pub labels: SessionLabels,
    /// The route's settings the session was opened with.
    pub view: Arc<Config>,
    /// The client connection's `max_connections` permits.
    pub permits: crate::shared::Permits,
}

pub struct Session<C> {
    pub(crate) id: String,
    /// The route (its settings are looked up by this name) and the protocol.
    pub(crate) labels: SessionLabels,
    /// The route's settings at the start: what the session keeps if its route is ever
    /// found nowhere (removed by a reload and since forgotten).
    start_view: Arc<Config>,
    /// The `max_connections` permits of the client's current connection.
    client_permits: crate::shared::Permits,
    pub(crate) peer: SocketAddr,
    client: WsConn<C>,
    /// How to open the upstream again, the same way as the first time.
    pub(crate) template: Arc<UpstreamTemplate>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: CancellationToken,
    /// The subprotocol the first upstream chose; every later upstream must choose the same.
    pub(crate) protocol: Option<HeaderValue>,
    /// The pool member currently (or last) connected.
    pub(crate) member: Member,
    /// Whether the current (or last) upstream connection negotiated permessage-deflate.
    upstream_deflate: bool,
    /// The client's first `replay_first` messages, re-sent to every new upstream.
    pub(crate) replay: Vec<Message>,
    replay_first: u64,
    /// Number of client data messages read so far (the next one's sequence number).
    client_seq: u64,
    /// A client message whose send to the upstream failed: it goes first into the hold buffer.
    /// (Boxed: a failed write is rare, and every idle session would carry the message's room.)
    pub(crate) unsent: Option<Box<(u64, Message)>>,
    pub(crate) resumes: u32,
    pub(crate) holds: Vec<HoldOutcome>,
    pub(crate) stats: Stats,
    pub(crate) client_keepalive: Keepalive,
    upstream_keepalive: Keepalive,
    /// When data last went either way (kept only with `idle_timeout` on).
    last_data: Instant,
    /// `policy.rate_limit` over client data messages, and the limit it was built for.
    bucket: Option<TokenBucket>,
    bucket_limit: RateLimit,
    /// `Shared::reloads` when `bucket_limit` was last compared with the live config.
    reloads_seen: u64,
    /// When the handshake's token expires.
    pub(crate) expires_at: Option<Instant>,
    /// A resumable client's side of the session (boxed: plain sessions carry a pointer).
    pub(crate) resume: Option<Box<Resumable>>,
    /// How a resumable session starts on this connection (its hello's `state`).
    start: Start,
    /// A resumable client's connection is gone and the session waits for it (`away`, or
    /// away during a hold): a close sent now would reach nobody.
    pub(crate) client_away: bool,
}

/// Keepalive bookkeeping for one peer, counted in keepalive ticks so that receiving a
/// message costs a flag store rather than a clock read.
#[derive(Debug, Clone)]
pub(crate) struct Keepalive {
    heard: bool,
    silent_ticks: u8,
}

impl Keepalive {
    /// A peer just connected (or the session just started relaying): counts as heard.
    pub(crate) fn new() -> Self {
        Self {
            heard: true,
            silent_ticks: 0,
        }
    }

    /// The peer sent something (data, ping, pong).
    pub(crate) fn heard(&mut self) {
        self.heard = true;
    }

    /// At a keepalive tick: true when the peer has sent nothing through two whole intervals
    /// (heard at some point before tick k, silent at ticks k+1 and k+2).
    pub(crate) fn tick(&mut self) -> bool {
        if std::mem::take(&mut self.heard) {
            self.silent_ticks = 0;
        } else {
            self.silent_ticks = self.silent_ticks.saturating_add(1);
        }
        self.silent_ticks >= 2
    }
}

/// A deadline that never comes, for timers that are off.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl<C> Session<C>
where
    C: ClientConn,
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
        let (replay_first, rate_limit) = (
            opened.view.restart.replay_first as u64,
            opened.view.policy.rate_limit,
        );
        Self {
            id: opened.template.session_id.clone(),
            labels: opened.labels,
            start_view: opened.view,
            client_permits: opened.permits,
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
            // A moved session goes on counting from the header its upstream was opened with.
            resumes: opened.resume.as_ref().map_or(0, |(r, _)| r.resumes()),
            holds: Vec::new(),
            stats: Stats::default(),
            client_keepalive: Keepalive::new(),
            upstream_keepalive: Keepalive::new(),
            last_data: now,
            bucket: TokenBucket::new(rate_limit, now),
            bucket_limit: rate_limit,
            reloads_seen,
            upstream_deflate: false,
            expires_at: opened.expires_in.map(|d| now + d),
            start: opened
                .resume
                .as_ref()
                .map_or(Start::New, |(_, start)| *start),
            resume: opened.resume.map(|(resumable, _)| resumable),
            client_away: false,
        }
    }

    /// Runs the session to its end: relaying, holding across upstream restarts, closing.
    /// Never panics on peer input.
    ///
    /// The session lives in a `Box` and the rarely used states (`hold`, `finish`) run as
    /// boxed futures: the task of an idle session holds only the relaying state, which keeps
    /// its memory small (it is measured per idle session in the benchmark).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future (captured, and moved \
                  into the body), in every session's task; the async move block keeps them once"
    )]
    pub fn run(mut self: Box<Self>, mut upstream: UpstreamWs) -> impl Future<Output = Report> {
        async move {
            let started = Instant::now();
            self.upstream_deflate = upstream.deflate().is_some();
            let _active = ActiveSession::new(self.shared.clone(), self.labels.clone());
            let _registered = self
                .resume
                .as_ref()
                .map(|r| Registered(self.shared.clone(), r.id));
            // A labelled block, not `if let … else`: the hello's result would stay in the
            // task's future for the whole session.
            let report = 'report: {
                if let Err(e) = self.say_hello().await {
                    let end = Ending::Client(ClientEnd::failed(&e));
                    break 'report Box::pin(self.finish(end, Some(upstream))).await;
                }
                loop {
                    let mut ending = self.relay(&mut upstream).await;
                    if let Ending::ClientAway = ending {
                        match Box::pin(self.away(&mut upstream)).await {
                            Ok(()) => continue,
                            Err(gone) => ending = gone,
                        }
                    }
                    // A drain moves an attached resumable client instead of closing it.
                    if let Ending::Shutdown = ending
                        && self.resume.is_some()
                    {
                        ending = Box::pin(self.move_client(&mut upstream)).await;
                    }
                    if let Ending::Upstream(end) = &ending
                        && self.should_hold(end)
                    {
                        self.shared.pool.mark_failed(self.member.addr);
                        // A resumable client hears now that everything it sent so far has reached an
                        // upstream; what it sends while held is acknowledged once delivered.
                        self.acknowledge_client().await;
                        // The old upstream's close handshake completes on the side, bounded.
                        self.shared.tracker.spawn(async move {
                            closing::complete_close(&mut upstream, Vec::new()).await;
                        });
                        match Box::pin(self.hold()).await {
                            HoldEnd::Resumed(new) => {
                                upstream = *new;
                                self.upstream_deflate = upstream.deflate().is_some();
                                self.upstream_keepalive = Keepalive::new();
                                // The held messages are delivered: acknowledged now.
                                self.acknowledge_client().await;
                                continue;
                            }
                            HoldEnd::GaveUp(_) => {
                                break Box::pin(self.finish(Ending::GaveUp, None)).await;
                            }
                            HoldEnd::Client(end) => {
                                break Box::pin(self.finish(Ending::Client(end), None)).await;
                            }
                            // A drain during a hold moves a resumable client all the same: what it
                            // sent while held is unacknowledged, so it sends it again where it moves.
                            HoldEnd::Shutdown if self.resume.is_some() => {
                                let ending = Box::pin(self.move_held_client()).await;
                                break Box::pin(self.finish(ending, None)).await;
                            }
                            HoldEnd::Shutdown => {
                                break Box::pin(self.finish(Ending::Shutdown, None)).await;
                            }
                            HoldEnd::ClientGone => {
                                break Box::pin(self.finish(Ending::ClientGone, None)).await;
                            }
                            HoldEnd::Policy(fired) => {
                                break Box::pin(self.finish(Ending::Policy(fired), None)).await;
                            }
                        }
                    }
                    break Box::pin(self.finish(ending, Some(upstream))).await;
                }
            };
            let lasted = started.elapsed();
            self.shared
                .metrics
                .session_duration(report.end, lasted, &self.labels.route);
            tracing::info!(
                session = %self.id,
                trace_id = %self.template.trace.id(),
                peer = %self.peer,
                route = %self.labels.route,
                protocol = self.labels.protocol,
                upstream = %self.member,
                duration_ms = lasted.as_millis() as u64,
                messages_to_upstream = report.stats.messages_to_upstream,
                bytes_to_upstream = report.stats.bytes_to_upstream,
                messages_to_client = report.stats.messages_to_client,
                bytes_to_client = report.stats.bytes_to_client,
                end = %report.end,
                client_close = ?report.client_close,
                upstream_close = ?report.upstream_close,
                holds = ?report.holds.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                compression = compression_label(self.client.deflate().is_some(), self.upstream_deflate),
                "session ended"
            );
            report
        }
    }

    /// Sends an upstream data message to the client: as it is, or to a resumable client
    /// enveloped and kept until it acknowledges it (a full buffer is a stalled client).
    pub(crate) async fn send_to_client(
        &mut self,
        message: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        use futures_util::SinkExt;
        let Some(resume) = self.resume.as_deref_mut() else {
            return self.client.send(message).await;
        };
        if resume.record_sent(message.clone()).is_err() {
            return Err(tokio_tungstenite::tungstenite::Error::WriteBufferFull(
                Box::new(message),
            ));
        }
        match crate::codec::Data::of(&message) {
            Some(data) => {
                self.client
                    .send_enveloped(crate::resume::envelope::DATA, data)
                    .await
            }
            None => self.client.send(message).await,
        }
    }

    /// The close pipeline's first step: does this upstream end mean "hold"?
    fn should_hold(&self, end: &UpstreamEnd) -> bool {
        let config = self.view();
        let rules = CloseRules {
            hold: config.restart.hold,
            restart_codes: &config.restart.codes,
            on_disconnect: config.restart.on_disconnect,
            rewrites: &config.rewrites,
        };
        ends::on_upstream_end(end, &rules) == UpstreamDecision::Hold
    }

    /// `policy.rate_limit`: may the client send a data message now?
    pub(crate) fn admit(&mut self) -> Result<(), ProxyPolicy> {
        let reloads = self.shared.reloads.load(Ordering::Acquire);
        if reloads != self.reloads_seen {
            self.reloads_seen = reloads;
            let limit = self.view().policy.rate_limit;
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

    /// The settings of this session's route now: its route in the live configuration (a
    /// reload's changes reach the session), or its last settings if a reload removed it.
    pub(crate) fn view(&self) -> Arc<Config> {
        self.shared
            .route_view(&self.labels.route)
            .unwrap_or_else(|| self.start_view.clone())
    }

    /// The client socket.
    pub(crate) fn client(&mut self) -> &mut WsConn<C> {
        &mut self.client
    }

    /// Numbers a client data message and records it (`copy`) if it is among the first
    /// `replay_first`.
    pub(crate) fn record_client_message(&mut self, copy: impl FnOnce() -> Message) -> u64 {
        let seq = self.client_seq;
        self.client_seq += 1;
        if seq < self.replay_first {
            self.replay.push(copy());
        }
        seq
    }

    /// Counts a data message of `len` bytes written in `direction` (stats and metrics); a
    /// large one tells the trimmer there will be memory to give back.
    pub(crate) fn relayed(&mut self, direction: Direction, len: usize) {
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
}

/// Which hops of a session compress (permessage-deflate), for its log line: the last
/// client connection's and the last upstream connection's.
fn compression_label(client: bool, upstream: bool) -> &'static str {
    match (client, upstream) {
        (true, true) => "both",
        (true, false) => "client",
        (false, true) => "upstream",
        (false, false) => "none",
    }
}

/// Keeps a resumable session findable by returning clients for as long as it lives.
struct Registered(Arc<Shared>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.resumables.remove(self.1);
    }
}

/// Counts a session in `holdfast_sessions_active` for as long as it lives.
struct ActiveSession {
    shared: Arc<Shared>,
    labels: SessionLabels,
    gauge: metrics::Gauge,
}

impl ActiveSession {
    fn new(shared: Arc<Shared>, labels: SessionLabels) -> Self {
        let gauge = shared.metrics.sessions_active(&labels);
        gauge.increment(1.0);
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            labels,
            gauge,
        }
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        self.shared
            .metrics
            .session_ended(SessionOutcome::Closed, &self.labels);
    }
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
