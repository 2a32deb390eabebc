//! Holding across an upstream restart (SPEC §3.3): the pure parts — backoff schedule,
//! bounded buffer, hold outcomes — and the `Holding` state of the session task
//! (`Session::hold`), which keeps the client served while it reconnects upstream.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, MissedTickBehavior};

use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Session;
use super::relay::{Sent, ping_frame, within};
use crate::close::Direction;
use crate::config::Config;
use crate::http::HandshakeError;
use crate::policy::ProxyPolicy;
use crate::shared::Shared;
use crate::upstream::Member;
use crate::ws::UpstreamWs;
use crate::ws::connect;
use crate::ws::ends::ClientEnd;
use crate::ws::ends::close_of;
use crate::ws::handshake::UpstreamTemplate;

/// Reconnect delay before try `attempt` (0-based): uniform in
/// `[initial, min(max, initial · 2^(attempt+1))]` — full jitter over a doubling ceiling, so a
/// crowd of held sessions spreads out instead of arriving at the new instance together.
/// `unit` is a random number in `[0, 1]`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_add(1))
        .unwrap_or(u32::MAX);
    let ceiling = initial.saturating_mul(factor).min(max).max(initial);
    initial + (ceiling - initial).mul_f64(unit.clamp(0.0, 1.0))
}

/// How long an address that failed is tried only after every other member.
pub fn failure_window(restart: &crate::config::Restart) -> Duration {
    restart.backoff_max.max(Duration::from_secs(1))
}

/// How a hold ended; `as_str` is the `outcome` label of `holdfast_holds_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    Resumed,
    Timeout,
    Overflow,
    ClientClosed,
    Refused,
    /// The proxy itself began shutting down while the client was held.
    Shutdown,
    /// One of holdfast's own policies (rate limit, token expiry) closed the held session.
    Policy,
}

impl crate::metrics::LabelValue for HoldOutcome {
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl HoldOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldOutcome::Resumed => "resumed",
            HoldOutcome::Timeout => "timeout",
            HoldOutcome::Overflow => "overflow",
            HoldOutcome::ClientClosed => "client_closed",
            HoldOutcome::Refused => "refused",
            HoldOutcome::Shutdown => "shutdown",
            HoldOutcome::Policy => "policy",
        }
    }
}

/// Client messages read while holding, each with its sequence number (its index among all
/// the client's data messages), bounded by `buffer_messages` and `buffer_bytes`.
#[derive(Debug)]
pub struct HoldBuffer {
    messages: VecDeque<(u64, Message)>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

/// The buffer would exceed a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl HoldBuffer {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    pub fn push(&mut self, seq: u64, message: Message) -> Result<(), Overflow> {
        let len = message.len();
        if self.messages.len() >= self.max_messages || self.bytes + len > self.max_bytes {
            return Err(Overflow);
        }
        self.bytes += len;
        self.messages.push_back((seq, message));
        Ok(())
    }

    pub fn front(&self) -> Option<&(u64, Message)> {
        self.messages.front()
    }

    /// Removes the front message once it has been delivered.
    pub fn pop_delivered(&mut self) {
        if let Some((_, m)) = self.messages.pop_front() {
            self.bytes -= m.len();
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The result of one reconnect try.
enum Try {
    Connected {
        socket: Box<UpstreamWs>,
        member: Member,
    },
    /// This try failed; back off and try the next member.
    Retry(String),
    /// The upstream answered the handshake with a 4xx: it will not take this session.
    Refused(http::StatusCode),
}

/// One reconnect try: wait (unless this is the first try and a healthy member exists), then
/// dial the first member in pool order and repeat the original handshake.
async fn try_resume(
    shared: Arc<Shared>,
    template: Arc<UpstreamTemplate>,
    config: Arc<Config>,
    protocol: Option<HeaderValue>,
    attempt: u32,
    resume: u32,
) -> Try {
    let restart = &config.restart;
    let window = failure_window(restart);
    let endpoints = &config.upstream.endpoints;
    let mut members = shared.pool.members(endpoints, window).await;
    let first_is_healthy = members
        .first()
        .is_some_and(|m| !shared.pool.is_recently_failed(m.addr, window));
    if attempt > 0 || !first_is_healthy {
        let delay = backoff_delay(
            attempt,
            restart.backoff_initial,
            restart.backoff_max,
            rand::random(),
        );
        tokio::time::sleep(delay).await;
        members = shared.pool.members(endpoints, window).await;
    }
    let Some(member) = members.into_iter().next() else {
        return Try::Retry("no upstream address resolved".into());
    };
    // Held for the dial and the handshake: `restart.max_reconnecting` per address.
    let _turn = {
        let _waiting = Waiting::new(&shared.metrics.reconnects_waiting);
        shared
            .pool
            .reconnect_turn(member.addr, restart.max_reconnecting)
            .await
    };
    let connecting = connect::connect(
        &template,
        &member,
        resume,
        &config,
        &shared.pool,
        &shared.metrics,
    );
    match connecting.await {
        Ok(mut upstream) => {
            if upstream.protocol() != protocol.as_ref() {
                let _ = upstream.socket.close(None).await;
                shared.pool.mark_failed(member.addr);
                return Try::Retry(format!(
                    "{member} chose subprotocol {:?}, the session uses {:?}",
                    upstream.protocol(),
                    protocol
                ));
            }
            Try::Connected {
                socket: Box::new(upstream.socket),
                member,
            }
        }
        Err(HandshakeError::Refused(response)) if response.status().is_client_error() => {
            Try::Refused(response.status())
        }
        Err(e) => Try::Retry(format!("{member}: {e}")),
    }
}

/// Counts one try in `holdfast_reconnects_waiting` while it waits for its turn; dropping it
/// (the turn came, or the hold ended first) counts it out.
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// How the `Holding` state ended.
pub enum HoldEnd {
    Resumed(Box<UpstreamWs>),
    GaveUp(HoldOutcome),
    Client(ClientEnd),
    Shutdown,
    Policy(ProxyPolicy),
}

impl<C> Session<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// The `Holding` state: the client stays open and served (pings answered and sent), its
    /// messages are buffered, and the upstream is retried with backoff until a try connects
    /// and the buffer is delivered, or the hold fails.
    pub(super) async fn hold(&mut self) -> HoldEnd {
        let config = self.shared.config.load_full();
        let restart = &config.restart;
        let since = Instant::now();
        let deadline = since + restart.max_hold;
        let mut buffer = HoldBuffer::new(restart.buffer_messages, restart.buffer_bytes);
        if let Some((seq, message)) = self.unsent.take() {
            if buffer.push(seq, message).is_err() {
                return self.hold_ended(since, 0, &buffer, HoldEnd::GaveUp(HoldOutcome::Overflow));
            }
            self.shared.metrics.held_messages.increment(1.0);
        }
        let mut attempt = 0u32;
        let (shared, template, protocol) = (
            self.shared.clone(),
            self.template.clone(),
            self.protocol.clone(),
        );
        let resume = self.resumes + 1;
        let start_try = |attempt| {
            Box::pin(try_resume(
                shared.clone(),
                template.clone(),
                config.clone(),
                protocol.clone(),
                attempt,
                resume,
            ))
        };
        let mut current_try = start_try(attempt);
        let ping_every = config.websocket.ping_interval;
        // A peer that takes nothing for two keepalive intervals has stopped reading.
        let stall = ping_every.map(|every| every * 2);
        let mut ping = tokio::time::interval(ping_every.unwrap_or(Duration::from_secs(3600)));
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let expires_at = self.expires_at.unwrap_or_else(super::far_future);
        tracing::info!(session = %self.id, upstream = %self.member, "upstream restarting: holding the client");

        let end = loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break HoldEnd::Shutdown,
                _ = tokio::time::sleep_until(deadline) => break HoldEnd::GaveUp(HoldOutcome::Timeout),
                _ = tokio::time::sleep_until(expires_at), if self.expires_at.is_some() => {
                    break HoldEnd::Policy(ProxyPolicy::TokenExpired);
                }
                incoming = self.client().next() => {
                    self.client_keepalive.heard();
                    match incoming {
                        Some(Ok(Message::Close(frame))) => break HoldEnd::Client(ClientEnd::Closed(close_of(frame))),
                        Some(Ok(message)) if message.is_text() || message.is_binary() => {
                            if let Err(fired) = self.admit() {
                                break HoldEnd::Policy(fired);
                            }
                            let seq = self.record_client_message(|| message.clone());
                            if buffer.push(seq, message).is_err() {
                                break HoldEnd::GaveUp(HoldOutcome::Overflow);
                            }
                            self.shared.metrics.held_messages.increment(1.0);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break HoldEnd::Client(ClientEnd::failed(&e)),
                        None => break HoldEnd::Client(ClientEnd::Vanished),
                    }
                }
                result = &mut current_try => match result {
                    Try::Connected { mut socket, member } => {
                        // Bounded like every send: by `stall` per message, by the hold's end
                        // and by a drain.
                        let delivered = tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(deadline) => break HoldEnd::GaveUp(HoldOutcome::Timeout),
                            delivered = self.deliver(&mut socket, &mut buffer, stall, &mut cancelled) => delivered,
                        };
                        let why = match delivered {
                            Sent::Done => {
                                self.member = member;
                                break HoldEnd::Resumed(socket);
                            }
                            Sent::Shutdown => break HoldEnd::Shutdown,
                            Sent::Stalled => "it stopped reading".to_owned(),
                            Sent::Failed(e) => e.to_string(),
                        };
                        tracing::info!(session = %self.id, upstream = %member, error = %why, undelivered = buffer.len(), "new upstream failed during delivery; still holding");
                        self.shared.pool.mark_failed(member.addr);
                        attempt += 1;
                        current_try = start_try(attempt);
                    }
                    Try::Retry(why) => {
                        tracing::debug!(session = %self.id, attempt, reason = %why, "reconnect try failed");
                        attempt += 1;
                        current_try = start_try(attempt);
                    }
                    Try::Refused(status) => {
                        tracing::info!(session = %self.id, status = status.as_u16(), "upstream refused the resumed session");
                        break HoldEnd::GaveUp(HoldOutcome::Refused);
                    }
                },
                _ = ping.tick(), if ping_every.is_some() => {
                    if self.client_keepalive.tick() {
                        break HoldEnd::Client(ClientEnd::Vanished);
                    }
                    // A client that stopped reading holds the ping up for `stall` at most,
                    // and never past the hold's end or a drain.
                    let pinged = tokio::select! {
                        biased;
                        _ = tokio::time::sleep_until(deadline) => break HoldEnd::GaveUp(HoldOutcome::Timeout),
                        sent = within(self.client().send(ping_frame()), stall, &mut cancelled) => sent,
                    };
                    match pinged {
                        Sent::Done => {}
                        Sent::Stalled => break HoldEnd::Client(ClientEnd::Stalled),
                        Sent::Failed(e) => break HoldEnd::Client(ClientEnd::failed(&e)),
                        Sent::Shutdown => break HoldEnd::Shutdown,
                    }
                }
            }
        };
        self.hold_ended(since, attempt, &buffer, end)
    }

    /// Logs the hold's outcome (every outcome gets a line) and passes the end on.
    fn hold_ended(
        &mut self,
        since: Instant,
        attempts: u32,
        buffer: &HoldBuffer,
        end: HoldEnd,
    ) -> HoldEnd {
        let outcome = match &end {
            HoldEnd::Resumed(_) => {
                self.resumes += 1;
                HoldOutcome::Resumed
            }
            HoldEnd::GaveUp(outcome) => *outcome,
            HoldEnd::Client(_) => HoldOutcome::ClientClosed,
            HoldEnd::Shutdown => HoldOutcome::Shutdown,
            HoldEnd::Policy(_) => HoldOutcome::Policy,
        };
        self.holds.push(outcome);
        let metrics = &self.shared.metrics;
        metrics.hold_ended(outcome, since.elapsed());
        // Whatever is still buffered is no longer held (delivered ones were counted down).
        metrics.held_messages.decrement(buffer.len() as f64);
        tracing::info!(
            session = %self.id,
            outcome = outcome.as_str(),
            held_ms = since.elapsed().as_millis() as u64,
            tries = attempts + 1,
            undelivered = buffer.len(),
            upstream = %self.member,
            "hold ended"
        );
        end
    }

    /// Sends the `replay_first` recorded messages, then the buffer, in order, to a new
    /// upstream. A buffered message leaves the buffer only once it is written (its send,
    /// flush included, completed): a connection that fails midway, or stops reading for
    /// `stall`, leaves that message and every one after it for the next try.
    async fn deliver<S: Future + Unpin>(
        &mut self,
        socket: &mut UpstreamWs,
        buffer: &mut HoldBuffer,
        stall: Option<Duration>,
        mut shutdown: S,
    ) -> Sent {
        // The replayed messages stay recorded whatever happens: they are queued, and written
        // with the first buffered message (or the final flush).
        for message in &self.replay {
            match within(socket.feed_ref(message), stall, &mut shutdown).await {
                Sent::Done => {}
                other => return other,
            }
        }
        let replayed = self.replay.len() as u64;
        while let Some((seq, message)) = buffer.front() {
            // Messages among the first `replay_first` were just replayed: exactly once.
            if *seq >= replayed {
                // Written means with the kernel: a ring socket's write only copies.
                let send = async {
                    socket.send_ref(message).await?;
                    crate::socket::written(socket.get_mut())
                        .await
                        .map_err(WsError::Io)
                };
                match within(send, stall, &mut shutdown).await {
                    Sent::Done => {}
                    other => return other,
                }
                self.relayed(Direction::ToUpstream, message.len());
            }
            buffer.pop_delivered();
            self.shared.metrics.held_messages.decrement(1.0);
        }
        within(socket.flush(), stall, &mut shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(5));
        let table = [
            (0, 0.0, 1000),
            (0, 1.0, 2000),
            (0, 0.5, 1500),
            (1, 1.0, 4000),
            (2, 1.0, 5000),
            (2, 0.0, 1000),
            (40, 1.0, 5000),
            (u32::MAX, 1.0, 5000),
        ];
        for (attempt, unit, want_ms) in table {
            assert_eq!(
                backoff_delay(attempt, initial, max, unit),
                Duration::from_millis(want_ms),
                "attempt {attempt}, unit {unit}"
            );
        }
        // Equal bounds: no jitter range, never below initial.
        let d = Duration::from_millis(250);
        assert_eq!(backoff_delay(3, d, d, 0.7), d);
    }

    #[test]
    fn buffer_bounds_are_enforced_on_count_and_bytes() {
        let mut b = HoldBuffer::new(2, 10);
        assert_eq!(b.push(0, Message::text("12345")), Ok(()));
        assert_eq!(b.push(1, Message::text("123456")), Err(Overflow), "bytes");
        assert_eq!(b.push(1, Message::text("12345")), Ok(()));
        assert_eq!(b.push(2, Message::text("")), Err(Overflow), "count");
        b.pop_delivered();
        assert_eq!(b.len(), 1);
        assert_eq!(b.push(2, Message::text("1")), Ok(()));
        assert_eq!(b.front().map(|(seq, _)| *seq), Some(1));
        let mut none = HoldBuffer::new(0, 10);
        assert_eq!(none.push(0, Message::text("x")), Err(Overflow));
    }

    #[test]
    fn outcome_labels_are_the_specs() {
        let labels: Vec<_> = [
            HoldOutcome::Resumed,
            HoldOutcome::Timeout,
            HoldOutcome::Overflow,
            HoldOutcome::ClientClosed,
            HoldOutcome::Refused,
        ]
        .iter()
        .map(|o| o.as_str())
        .collect();
        assert_eq!(
            labels,
            ["resumed", "timeout", "overflow", "client_closed", "refused"]
        );
    }
}
