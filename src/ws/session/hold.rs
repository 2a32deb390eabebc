//! The `Holding` state (`Session::hold`): across an upstream restart the client stays open
//! and served while holdfast reconnects upstream with backoff, buffers what the client sends,
//! and delivers it to the new upstream — confirmed by that upstream's answer to a ping sent
//! after it, so a message leaves the buffer only once the new upstream has read it. The pure
//! parts (backoff, buffer, outcomes) are in `held.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use metrics::Gauge;

use tokio::time::{Instant, MissedTickBehavior};

use tokio_tungstenite::tungstenite::Message;

use super::ClientConn;
use super::Session;
use super::attach::AwayGauge;
use super::closing::complete_close;
pub use super::held::{HoldBuffer, HoldOutcome, backoff_delay, failure_window};
use super::relay::{Sent, ping_frame, within};
use crate::close::Direction;
use crate::close::{Close, GOING_AWAY};
use crate::codec::Data;
use crate::config::Config;
use crate::http::HandshakeError;
use crate::metrics::Disruption;
use crate::policy::ProxyPolicy;
use crate::shared::Shared;
use crate::upstream::Member;
use crate::ws::UpstreamWs;
use crate::ws::connect;
use crate::ws::ends::ClientEnd;
use crate::ws::ends::{close_message, close_of};
use crate::ws::handshake::UpstreamTemplate;

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
    let mut members = shared.pool.members(&config.route, endpoints, window).await;
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
        members = shared.pool.members(&config.route, endpoints, window).await;
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
    /// A resumable client went away during the hold and did not come back in time.
    ClientGone,
    Shutdown,
    Policy(ProxyPolicy),
}

impl<C> Session<C>
where
    C: ClientConn,
{
    /// The `Holding` state: the client stays open and served (pings answered and sent), its
    /// messages are buffered, and the upstream is retried with backoff until a try connects
    /// and the buffer is delivered, or the hold fails.
    pub(super) async fn hold(&mut self) -> HoldEnd {
        let config = self.view();
        let restart = &config.restart;
        let since = Instant::now();
        let deadline = since + restart.max_hold;
        let mut buffer = HoldBuffer::new(restart.buffer_messages, restart.buffer_bytes);
        if let Some((seq, message)) = self.unsent.take().map(|unsent| *unsent) {
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
        // A resumable client may go away during the hold (and come back): until when it is
        // waited for, and the gauge that counts it away.
        let resumable = self.resume.is_some();
        let gauges = self.shared.clone();
        let mut away: Option<(Instant, AwayGauge)> = None;
        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), upstream = %self.member, "upstream restarting: holding the client");

        let end = loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break HoldEnd::Shutdown,
                _ = tokio::time::sleep_until(deadline) => break HoldEnd::GaveUp(HoldOutcome::Timeout),
                _ = tokio::time::sleep_until(expires_at), if self.expires_at.is_some() => {
                    break HoldEnd::Policy(ProxyPolicy::TokenExpired);
                }
                _ = async { tokio::time::sleep_until(away.as_ref().expect("checked").0).await }, if away.is_some() => {
                    self.shared.metrics.client_resume("expired");
                    break HoldEnd::ClientGone;
                }
                attach = std::future::poll_fn(|cx| match self.resume.as_deref_mut() {
                    Some(resume) => resume.attach.poll_recv(cx),
                    None => std::task::Poll::Pending,
                }), if resumable => {
                    if let Some(attach) = attach
                        && self.reattach(attach, super::resumable::Start::Attached).await
                    {
                        away = None;
                        self.client_away = false;
                    }
                }
                incoming = self.client.next(), if away.is_none() => {
                    self.client_keepalive.heard();
                    // A resumable client's connection that drops leaves it away, not gone.
                    let lost = match &incoming {
                        Some(Err(e)) => Some(ClientEnd::failed(e)),
                        None => Some(ClientEnd::Vanished),
                        _ => None,
                    };
                    if resumable && lost == Some(ClientEnd::Vanished) {
                        let client_hold = self.shared.config.load().resume.client_hold;
                        away = Some((Instant::now() + client_hold, AwayGauge::new(&gauges.metrics.clients_away)));
                        self.client_away = true;
                        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), "client away during the hold: keeping its session");
                        continue;
                    }
                    match incoming {
                        Some(Ok(Message::Close(frame))) => break HoldEnd::Client(ClientEnd::Closed(close_of(frame))),
                        Some(Ok(message)) if message.is_text() || message.is_binary() => {
                            // A resumable client's frame is an envelope: its message, or an
                            // acknowledgement taken here.
                            let message = match self.resume.as_deref_mut() {
                                None => message,
                                Some(resume) => {
                                    let data = Data::of(&message).expect("text or binary");
                                    match resume.unwrap_client(data) {
                                        Ok(Some(data)) => data.to_message(),
                                        Ok(None) => continue,
                                        Err(end) => break HoldEnd::Client(end),
                                    }
                                }
                            };
                            if let Err(fired) = self.admit() {
                                break HoldEnd::Policy(fired);
                            }
                            let seq = self.record_client_message(|| message.clone());
                            if buffer.push(seq, message).is_err() {
                                break HoldEnd::GaveUp(HoldOutcome::Overflow);
                            }
                            self.shared.metrics.held_messages.increment(1.0);
                            // A resumable client's held messages are not acknowledged until a
                            // new upstream has them: should this holdfast drain meanwhile, the
                            // client sends them again wherever it moves.
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break HoldEnd::Client(ClientEnd::failed(&e)),
                        None => break HoldEnd::Client(ClientEnd::Vanished),
                    }
                }
                result = &mut current_try => match result {
                    Try::Connected { mut socket, member } => {
                        // Bounded like every send: by `stall` per message (the pong by `stall`,
                        // else `connect_timeout`), by the hold's end and by a drain.
                        let bounds = (stall, stall.unwrap_or(config.upstream.connect_timeout));
                        let delivered = tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(deadline) => None,
                            delivered = self.deliver(&mut socket, &mut buffer, bounds, &mut cancelled) => Some(delivered),
                        };
                        let (end, why) = match delivered {
                            Some(Delivery::Confirmed) => {
                                self.member = member;
                                break HoldEnd::Resumed(socket);
                            }
                            None => (Some(HoldEnd::GaveUp(HoldOutcome::Timeout)), "max_hold passed during delivery".to_owned()),
                            Some(Delivery::Shutdown) => (Some(HoldEnd::Shutdown), "proxy shutting down".to_owned()),
                            Some(Delivery::Client(end)) => (Some(HoldEnd::Client(end)), "the client went away".to_owned()),
                            Some(Delivery::Failed(why)) => (None, why),
                        };
                        // The new upstream is let go with a close of its own, completed on the
                        // side and bounded (one that failed just ends sooner).
                        let goodbye = close_message(Some(Close::new(GOING_AWAY, "session not resumed here")));
                        self.shared.tracker.spawn(async move {
                            complete_close(&mut socket, vec![goodbye]).await;
                        });
                        if let Some(end) = end {
                            break end;
                        }
                        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), upstream = %member, error = %why, undelivered = buffer.len(), "new upstream failed during delivery; still holding");
                        self.shared.pool.mark_failed(member.addr);
                        attempt += 1;
                        current_try = start_try(attempt);
                    }
                    Try::Retry(why) => {
                        tracing::debug!(session = %self.id, trace_id = %self.template.trace.id(), attempt, reason = %why, "reconnect try failed");
                        attempt += 1;
                        current_try = start_try(attempt);
                    }
                    Try::Refused(status) => {
                        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), status = status.as_u16(), "upstream refused the resumed session");
                        break HoldEnd::GaveUp(HoldOutcome::Refused);
                    }
                },
                _ = ping.tick(), if ping_every.is_some() && away.is_none() => {
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
                if let Some(resume) = self.resume.as_deref_mut() {
                    resume.upstream_reopened(self.resumes);
                }
                HoldOutcome::Resumed
            }
            HoldEnd::GaveUp(outcome) => *outcome,
            HoldEnd::Client(_) | HoldEnd::ClientGone => HoldOutcome::ClientClosed,
            HoldEnd::Shutdown => HoldOutcome::Shutdown,
            HoldEnd::Policy(_) => HoldOutcome::Policy,
        };
        self.holds.push(outcome);
        let metrics = &self.shared.metrics;
        let held = since.elapsed();
        metrics.hold_ended(outcome, held, &self.labels.route);
        // The client's traffic was paused for the whole hold, whatever its outcome.
        metrics.client_disruption(Disruption::Hold, held, &self.labels.route);
        // Whatever is still buffered is no longer held (delivered ones were counted down).
        metrics.held_messages.decrement(buffer.len() as f64);
        tracing::info!(
            session = %self.id,
            trace_id = %self.template.trace.id(),
            outcome = outcome.as_str(),
            held_ms = held.as_millis() as u64,
            tries = attempts + 1,
            undelivered = buffer.len(),
            upstream = %self.member,
            "hold ended"
        );
        end
    }

    /// Sends the `replay_first` recorded messages, then the buffer, in order, to a new
    /// upstream, then a ping. The upstream's pong says its WebSocket layer has read every
    /// message before it: only then do the buffered messages leave the buffer. A connection
    /// that fails, closes or stalls before that leaves them all for the next try (an
    /// upstream that accepts the handshake and dies at once loses none). What the upstream
    /// sends meanwhile is relayed to the client. Every wait is bounded by `stall` (or
    /// `confirm` for the pong) and gives way to a drain.
    async fn deliver<S: Future + Unpin>(
        &mut self,
        socket: &mut UpstreamWs,
        buffer: &mut HoldBuffer,
        (stall, confirm): (Option<Duration>, Duration),
        mut shutdown: S,
    ) -> Delivery {
        if self.replay.is_empty() && buffer.is_empty() {
            // Nothing to confirm.
            return Delivery::Confirmed;
        }
        let replayed = self.replay.len() as u64;
        let messages = self.replay.iter().chain(
            buffer
                .iter()
                .filter(|(seq, _)| *seq >= replayed)
                .map(|(_, m)| m),
        );
        let ping = Message::Ping(DELIVERED.into());
        for message in messages.chain(std::iter::once(&ping)) {
            let sent = within(socket.feed_ref(message), stall, &mut shutdown).await;
            if let Some(failed) = Delivery::unless_sent(sent) {
                return failed;
            }
        }
        if let Some(failed) =
            Delivery::unless_sent(within(socket.flush(), stall, &mut shutdown).await)
        {
            return failed;
        }
        // Only the upstream's answer is bounded by `confirm`; relaying what it sends
        // meanwhile is bounded like every send to the client.
        let answer_by = Instant::now() + confirm;
        loop {
            let message = match tokio::time::timeout_at(answer_by, socket.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Delivery::Failed(e.to_string()),
                Ok(None) => return Delivery::Failed("the connection ended".into()),
                Err(_) => return Delivery::Failed("it did not answer the delivery ping".into()),
            };
            match message {
                Message::Pong(payload) if payload.as_ref() == DELIVERED => break,
                Message::Text(_) | Message::Binary(_) => {
                    let len = message.len();
                    match within(self.send_to_client(message), stall, &mut shutdown).await {
                        Sent::Done => self.relayed(Direction::ToClient, len),
                        Sent::Shutdown => return Delivery::Shutdown,
                        // A resumable client's message is kept whatever its connection does:
                        // an away client gets it when it comes back.
                        _ if self.resume.is_some() => self.relayed(Direction::ToClient, len),
                        Sent::Stalled => return Delivery::Client(ClientEnd::Stalled),
                        Sent::Failed(e) => return Delivery::Client(ClientEnd::failed(&e)),
                    }
                }
                Message::Close(frame) => {
                    let close = close_of(frame);
                    return Delivery::Failed(format!("it closed with {}", close.code));
                }
                // Its pings are answered by the connection; other pongs are not ours.
                _ => {}
            }
        }
        // Confirmed: every held message was delivered, through the replay or after it.
        while let Some((_, message)) = buffer.front() {
            self.relayed(Direction::ToUpstream, message.len());
            buffer.pop_delivered();
            self.shared.metrics.held_messages.decrement(1.0);
        }
        Delivery::Confirmed
    }
}

/// The payload of the ping that confirms a delivery.
const DELIVERED: &[u8] = b"holdfast: delivered";

/// How a delivery to a new upstream ended.
#[derive(Debug)]
enum Delivery {
    /// The new upstream answered the ping sent after every held message: it read them.
    Confirmed,
    /// This upstream did not take them (it failed, closed, stalled or did not answer):
    /// they stay held for the next try.
    Failed(String),
    Shutdown,
    /// The client failed while the upstream's messages were relayed to it.
    Client(ClientEnd),
}

impl Delivery {
    /// How a delivery ends when a send to the new upstream did not complete (`None`: it
    /// did).
    fn unless_sent(sent: Sent) -> Option<Delivery> {
        match sent {
            Sent::Done => None,
            Sent::Shutdown => Some(Delivery::Shutdown),
            Sent::Stalled => Some(Delivery::Failed("it stopped reading".into())),
            Sent::Failed(e) => Some(Delivery::Failed(e.to_string())),
        }
    }
}
