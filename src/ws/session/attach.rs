//! A resumable client's comings and goings (docs/RESUME.md): the `Away` state, in which the
//! session keeps its upstream and what the upstream sends while the client's connection is
//! gone, and re-attaching a returning client's connection — the hello, then what it missed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::closing::complete_close;
use super::relay::{ping_frame, within};
use super::resumable::Start;
use super::{CLOSE_TIMEOUT, ClientConn, Ending, Keepalive, Session};
use crate::close::{Close, POLICY_VIOLATION};
use crate::codec::{Data, Role, WsConn};
use crate::metrics::Disruption;
use crate::resume::envelope;
use crate::shared::Attach;
use crate::ws::UpstreamWs;
use crate::ws::ends::{UpstreamEnd, close_message, close_of};

/// How long a returning client gets to take its hello and what it missed.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Counts a session in `holdfast_clients_away` while its client is away.
pub(crate) struct AwayGauge<'a>(&'a metrics::Gauge);

impl<'a> AwayGauge<'a> {
    pub(crate) fn new(gauge: &'a metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for AwayGauge<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The close a client is sent when its resume is refused: 1008 with the policy context.
pub fn resume_refused(detail: &str) -> Message {
    let reason = serde_json::json!({"policy": "resume-rejected", "detail": detail}).to_string();
    close_message(crate::close::to_wire(Close::new(POLICY_VIOLATION, reason)))
}

impl<C> Session<C>
where
    C: ClientConn,
{
    /// A resumable client's first frame on a connection: the hello (then, for a returning
    /// client, what it missed). Nothing for a plain client.
    pub(crate) async fn say_hello(&mut self) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let Some(resume) = &self.resume else {
            return Ok(());
        };
        let hello = crate::resume::envelope::control(
            crate::resume::envelope::HELLO,
            &resume.hello(self.start),
        );
        self.client.send(Message::text(hello)).await
    }

    /// Acknowledges everything a resumable client sent that an upstream has (a message whose
    /// write failed, `unsent`, is not one), best effort: a client that does not take it is
    /// dealt with by the state that follows.
    pub(crate) async fn acknowledge_client(&mut self) {
        let held = u64::from(self.unsent.is_some());
        let Some(ack) = self.resume.as_deref_mut().and_then(|r| r.ack_now(held)) else {
            return;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.send(ack)).await;
    }

    /// The `Away` state: the client's connection is gone. The upstream is kept, what it
    /// sends is kept for the client (within `resume.buffer_*`), and the session waits up to
    /// `resume.client_hold` for the client to come back. `Ok`: it came back and relaying
    /// resumes; `Err`: how the session ends.
    pub(crate) async fn away(&mut self, upstream: &mut UpstreamWs) -> Result<(), Ending> {
        let config = self.shared.config.load_full();
        let since = Instant::now();
        let deadline = since + config.resume.client_hold;
        let shared = self.shared.clone();
        let _away = AwayGauge::new(&shared.metrics.clients_away);
        self.client_away = true;
        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), peer = %self.peer, "client away: keeping its session");
        let ping_every = config.websocket.ping_interval;
        let stall = ping_every.map(|every| every * 2);
        let mut ping = tokio::time::interval(ping_every.unwrap_or(Duration::from_secs(3600)));
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let resume = self
                .resume
                .as_deref_mut()
                .expect("only a resumable client is away");
            tokio::select! {
                biased;
                _ = &mut cancelled => return Err(Ending::Shutdown),
                _ = tokio::time::sleep_until(deadline) => {
                    shared.metrics.client_resume("expired");
                    tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), away_ms = since.elapsed().as_millis() as u64, "client did not come back");
                    return Err(Ending::ClientGone);
                }
                attach = resume.attach.recv() => {
                    let Some(attach) = attach else { return Err(Ending::ClientGone) };
                    if self.reattach(attach, Start::Attached).await {
                        self.client_away = false;
                        let away = since.elapsed();
                        shared.metrics.client_disruption(Disruption::Reattach, away, &self.labels.route);
                        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), away_ms = away.as_millis() as u64, "client back");
                        return Ok(());
                    }
                }
                read = upstream.next() => {
                    self.upstream_keepalive.heard();
                    match read {
                        Some(Ok(message)) if message.is_text() || message.is_binary() => {
                            let len = message.len();
                            if resume.record_sent(message).is_err() {
                                shared.metrics.client_resume("overflow");
                                tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), kept = resume.kept(), "client away too long for what the upstream sent: buffer full");
                                return Err(Ending::ClientGone);
                            }
                            self.relayed(crate::close::Direction::ToClient, len);
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return Err(Ending::Upstream(UpstreamEnd::Closed(close_of(frame))));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(Ending::Upstream(UpstreamEnd::failed(&e))),
                        None => return Err(Ending::Upstream(UpstreamEnd::Vanished)),
                    }
                }
                _ = ping.tick(), if ping_every.is_some() => {
                    if self.upstream_keepalive.tick() {
                        return Err(Ending::Upstream(UpstreamEnd::Vanished));
                    }
                    let pinged = within(upstream.send(ping_frame()), stall, &mut cancelled).await;
                    if let super::relay::Sent::Failed(e) = pinged {
                        return Err(Ending::Upstream(UpstreamEnd::failed(&e)));
                    }
                }
            }
        }
    }

    /// Takes a returning client's connection: the hello, then every message it missed, in
    /// order. The connection it replaces (if the client was still attached: last attach
    /// wins) is closed with 1008 `resume-replaced`. False when the client cannot be caught
    /// up (it asks for messages no longer kept, or its connection fails): it is refused and
    /// the session goes on as it was.
    pub(crate) async fn reattach(&mut self, attach: Box<Attach>, start: Start) -> bool {
        let limits = crate::ws::limits(&self.shared.config.load().websocket);
        let io = match crate::socket::adopt(attach.io) {
            Ok(io) => io,
            Err(e) => {
                tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), error = %e, "returning client's connection failed");
                return false;
            }
        };
        let mut client = WsConn::new(C::from(io), Role::Server, limits, &attach.already_read)
            .with_deflate(attach.deflate);
        let resume = self
            .resume
            .as_deref_mut()
            .expect("only a resumable client attaches");
        let missing: Vec<Message> = match resume.resend_from(attach.received) {
            Ok(missing) => missing.cloned().collect(),
            Err(untrue) => {
                tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), ?untrue, "returning client refused: what it missed is no longer kept");
                self.shared.metrics.client_resume("rejected");
                let refused = resume_refused("what it missed is no longer kept");
                self.shared.tracker.spawn(async move {
                    complete_close(&mut client, vec![refused]).await;
                });
                return false;
            }
        };
        let hello = envelope::control(envelope::HELLO, &resume.hello(start));
        let caught_up = tokio::time::timeout(CATCH_UP, async {
            client.feed(Message::text(hello)).await?;
            for message in &missing {
                if let Some(data) = Data::of(message) {
                    client.send_enveloped(envelope::DATA, data).await?;
                }
            }
            client.flush().await
        })
        .await;
        if !matches!(caught_up, Ok(Ok(()))) {
            tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), "returning client failed while catching up");
            return false;
        }
        let replaced = std::mem::replace(&mut self.client, client);
        let goodbye = close_message(crate::close::to_wire(Close::new(
            POLICY_VIOLATION,
            r#"{"policy":"resume-replaced"}"#,
        )));
        let mut replaced = replaced;
        self.shared.tracker.spawn(async move {
            complete_close(&mut replaced, vec![goodbye]).await;
        });
        self.peer = attach.peer;
        // The returning connection counts in `max_connections` now, the lost one no more.
        self.client_permits = attach.permits;
        self.client_keepalive = Keepalive::new();
        self.shared.metrics.client_resume(match start {
            Start::Moved => "moved",
            _ => "reattached",
        });
        tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), peer = %self.peer, resent = missing.len(), "client re-attached");
        true
    }

    /// This holdfast drains and the client is attached: the session moves to whichever
    /// holdfast the client reaches next. The upstream is closed first (1001) and read to its
    /// close reply, everything it sent goes to the client, everything the client sent is
    /// acknowledged, and once the client has acknowledged all it was sent (within
    /// `shutdown.drain_timeout`) it is told to move (`m`, with a moving token) and the
    /// session ends `Moved`. If that cannot be done, the session ends as a plain one does
    /// on shutdown.
    pub(crate) async fn move_client(&mut self, upstream: &mut UpstreamWs) -> Ending {
        let config = self.shared.config.load_full();
        let deadline = Instant::now() + config.shutdown.drain_timeout;
        let bounded = tokio::time::timeout_at(deadline, async {
            let going_away = close_message(crate::close::to_wire(Close::new(
                crate::close::GOING_AWAY,
                "proxy shutting down",
            )));
            // A failed close: the upstream is gone already; what it sent is all there is.
            if upstream.send(going_away).await.is_ok() {
                while let Some(Ok(message)) = upstream.next().await {
                    let Some(data) = Data::of(&message) else {
                        continue;
                    };
                    let resume = self
                        .resume
                        .as_deref_mut()
                        .expect("a resumable client moves");
                    if resume.record_sent(message.clone()).is_err() {
                        return Err("what the upstream sent while closing outgrew the buffer");
                    }
                    let len = data.len();
                    if self
                        .client
                        .send_enveloped(envelope::DATA, data)
                        .await
                        .is_err()
                    {
                        return Err("the client went away during the move");
                    }
                    self.relayed(crate::close::Direction::ToClient, len);
                }
            }
            let resume = self
                .resume
                .as_deref_mut()
                .expect("a resumable client moves");
            let ack = Message::text(envelope::ack(resume.take_ack()));
            if self.client.send(ack).await.is_err() {
                return Err("the client went away during the move");
            }
            // The client's acknowledgement of everything it was sent. Its own messages
            // from now on are not taken: it sends them again where it moves.
            while self.resume.as_deref().is_some_and(|r| r.kept() > 0) {
                let Some(Ok(message)) = self.client.next().await else {
                    return Err("the client went away during the move");
                };
                let Some(data) = Data::of(&message) else {
                    continue;
                };
                let resume = self
                    .resume
                    .as_deref_mut()
                    .expect("a resumable client moves");
                if let Ok(crate::resume::envelope::Envelope::Ack(count)) =
                    envelope::parse(data.payload(), data.is_text())
                    && resume.on_ack(count).is_err()
                {
                    return Err("the client acknowledged what it was not sent");
                }
            }
            let resume = self.resume.as_deref().expect("a resumable client moves");
            let body = serde_json::json!({ "token": resume.moving_token() }).to_string();
            let moving = Message::text(envelope::control(envelope::MOVE, &body));
            self.client
                .send(moving)
                .await
                .map_err(|_| "the client went away during the move")
        })
        .await;
        match bounded {
            Ok(Ok(())) => {
                tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), peer = %self.peer, "client told to move: this holdfast drains");
                Ending::Moved
            }
            Ok(Err(why)) => {
                tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), reason = why, "client not moved");
                Ending::Shutdown
            }
            Err(_) => {
                tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), "client not moved: it did not acknowledge within drain_timeout");
                Ending::Shutdown
            }
        }
    }

    /// This holdfast drains while the session is held (no upstream): the client is told to
    /// move once it has acknowledged everything it was sent. The messages it sent while
    /// held were not acknowledged: it sends them again to the holdfast it moves to.
    pub(crate) async fn move_held_client(&mut self) -> Ending {
        let drain = self.shared.config.load().shutdown.drain_timeout;
        let moved = tokio::time::timeout(drain, async {
            while self.resume.as_deref().is_some_and(|r| r.kept() > 0) {
                let Some(Ok(message)) = self.client.next().await else {
                    return false;
                };
                let Some(data) = Data::of(&message) else {
                    continue;
                };
                let resume = self
                    .resume
                    .as_deref_mut()
                    .expect("a resumable client moves");
                if let Ok(crate::resume::envelope::Envelope::Ack(count)) =
                    envelope::parse(data.payload(), data.is_text())
                    && resume.on_ack(count).is_err()
                {
                    return false;
                }
            }
            let resume = self.resume.as_deref().expect("a resumable client moves");
            let body = serde_json::json!({ "token": resume.moving_token() }).to_string();
            let moving = Message::text(envelope::control(envelope::MOVE, &body));
            self.client.send(moving).await.is_ok()
        })
        .await;
        if moved == Ok(true) {
            tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), "held client told to move: this holdfast drains");
            Ending::Moved
        } else {
            Ending::Shutdown
        }
    }
}
