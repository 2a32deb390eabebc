//! The `Relaying` state: one `select!` over both sockets, the keepalive, idle and token
//! expiry timers and shutdown. Every branch sits behind a gate (`ws::woken`), so a wake by
//! one socket polls only that socket; every send that has to wait is bounded (`within`).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::SinkExt;

use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::ClientConn;
use super::resumable::{Event, Resumable, Start};
use super::{Ending, Session};
use crate::close::{Close, Direction};
use crate::codec::{Incoming, Inline, SMALL_INLINE};
use crate::policy::ProxyPolicy;
use crate::resume::envelope;
use crate::ws::UpstreamWs;
use crate::ws::ends::{ClientEnd, Fault, UpstreamEnd, close_of};
use crate::ws::woken::{Gate, WokenOnly};
use tokio_util::either::Either;

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
        Some(Err(e)) => Got::Failed(Fault::of(&e)),
        None => Got::Failed(Fault::Vanished),
    }
}

impl<C> Session<C>
where
    C: ClientConn,
{
    /// The `Relaying` state: one select over both sockets, keepalive, idle and shutdown.
    pub(crate) async fn relay(&mut self, upstream: &mut UpstreamWs) -> Ending {
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
        let mut idle = optional_timer(idle_after.map(|after| Instant::now() + after));
        let mut expiry = optional_timer(self.expires_at);
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
        // A resumable client's acknowledgement and token timers (a branch plain sessions skip).
        let mut resumable = self.resume.is_some();

        loop {
            // A resumable client that has not acknowledged a full buffer gets nothing more
            // from the upstream until it does (the upstream is not read meanwhile).
            let upstream_paused = self.resume.as_ref().is_some_and(|r| r.is_full());
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
                    if upstream_paused {
                        return Poll::Pending;
                    }
                    upstream_gate.poll(cx, |cx| upstream.poll_next_incoming(cx, &mut inline)).map(Read::Upstream)
                }) => match read {
                    Read::Client(read) => {
                        self.client_keepalive.heard();
                        let incoming = match got(read) {
                            Got::Message(incoming) => incoming,
                            Got::Closed(close) => return Ending::Client(ClientEnd::Closed(close)),
                            Got::Failed(fault) => return self.client_lost(fault.into()),
                        };
                        // Pings and pongs: nothing to relay.
                        let Some(data) = incoming.data(&inline) else { continue };
                        // A resumable client's frame is an envelope: its message, or an
                        // acknowledgement that is handled here.
                        let data = match self.resume.as_deref_mut() {
                            None => data,
                            Some(resume) => match resume.unwrap_client(data) {
                                Ok(Some(message)) => message,
                                Ok(None) => continue,
                                Err(end) => return Ending::Client(end),
                            },
                        };
                        if let Err(fired) = self.admit() {
                            return Ending::Policy(fired);
                        }
                        if idle_after.is_some() {
                            self.last_data = Instant::now();
                        }
                        let seq = self.record_client_message(|| data.to_message());
                        let len = data.len();
                        match within(upstream.send_data(data), stall, &mut cancelled).await {
                            Sent::Done => {}
                            // Perhaps partly written: never delivered again.
                            Sent::Stalled => return Ending::Upstream(UpstreamEnd::Stalled),
                            Sent::Failed(e) => {
                                // Not written: if the session holds, it is delivered later.
                                self.unsent = Some(Box::new((seq, data.to_message())));
                                return Ending::Upstream(UpstreamEnd::failed(&e));
                            }
                            Sent::Shutdown => return Ending::Shutdown,
                        }
                        self.relayed(Direction::ToUpstream, len);
                        if let Some(ack) = self.resume.as_deref_mut().and_then(Resumable::ack_if_due) {
                            match within(self.client.send(ack), stall, &mut cancelled).await {
                                Sent::Done => {}
                                Sent::Stalled => return self.client_lost(ClientEnd::Stalled),
                                Sent::Failed(e) => return self.client_lost(ClientEnd::failed(&e)),
                                Sent::Shutdown => return Ending::Shutdown,
                            }
                        }
                    }
                    Read::Upstream(read) => {
                        self.upstream_keepalive.heard();
                        let incoming = match got(read) {
                            Got::Message(incoming) => incoming,
                            Got::Closed(close) => return Ending::Upstream(UpstreamEnd::Closed(close)),
                            Got::Failed(fault) => return Ending::Upstream(fault.into()),
                        };
                        // Pings and pongs: nothing to relay.
                        let Some(data) = incoming.data(&inline) else { continue };
                        if idle_after.is_some() {
                            self.last_data = Instant::now();
                        }
                        let send = match self.resume.as_deref_mut() {
                            None => Either::Left(self.client.send_data(data)),
                            Some(resume) => {
                                // Kept until the client acknowledges it. The buffer has room:
                                // the upstream is not read while it is full.
                                if resume.record_sent(data.to_message()).is_err() {
                                    return Ending::Client(ClientEnd::Stalled);
                                }
                                Either::Right(self.client.send_enveloped(envelope::DATA, data))
                            }
                        };
                        match within(send, stall, &mut cancelled).await {
                            Sent::Done => {}
                            Sent::Stalled => return self.client_lost(ClientEnd::Stalled),
                            Sent::Failed(e) => return self.client_lost(ClientEnd::failed(&e)),
                            Sent::Shutdown => return Ending::Shutdown,
                        }
                        self.relayed(Direction::ToClient, data.len());
                    }
                },
                _ = &mut cancelled => return Ending::Shutdown,
                _ = &mut ping, if ping_every.is_some() => {
                    let every = ping_every.unwrap_or_default();
                    ping.get_mut().as_mut().reset(Instant::now() + every);
                    // A compressor unused for a keepalive interval goes back (and the
                    // trimmer hears there is memory to return to the system).
                    let released = self.client.release_idle_compression()
                        | upstream.release_idle_compression();
                    if released {
                        self.shared.memory_freed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    // A peer that has sent nothing (not even a pong) for two intervals is gone.
                    let (client_gone, upstream_gone) =
                        (self.client_keepalive.tick(), self.upstream_keepalive.tick());
                    if client_gone {
                        return self.client_lost(ClientEnd::Vanished);
                    }
                    if upstream_gone {
                        return Ending::Upstream(UpstreamEnd::Vanished);
                    }
                    // A keepalive to a peer that stopped reading waits at most `stall`, and
                    // gives way to a drain.
                    match within(self.client.send(ping_frame()), stall, &mut cancelled).await {
                        Sent::Done => {}
                        Sent::Stalled => return self.client_lost(ClientEnd::Stalled),
                        Sent::Failed(e) => return self.client_lost(ClientEnd::failed(&e)),
                        Sent::Shutdown => return Ending::Shutdown,
                    }
                    match within(upstream.send(ping_frame()), stall, &mut cancelled).await {
                        Sent::Done => {}
                        Sent::Stalled => return Ending::Upstream(UpstreamEnd::Stalled),
                        Sent::Failed(e) => return Ending::Upstream(UpstreamEnd::failed(&e)),
                        Sent::Shutdown => return Ending::Shutdown,
                    }
                }
                event = std::future::poll_fn(|cx| match self.resume.as_deref_mut() {
                    Some(resume) => resume.poll_event(cx),
                    None => Poll::Pending,
                }), if resumable => match event {
                    Event::Due(due) => {
                        let Some(frame) = self.resume.as_deref_mut().map(|r| r.frame_for(due)) else { continue };
                        match within(self.client.send(frame), stall, &mut cancelled).await {
                            Sent::Done => {}
                            Sent::Stalled => return self.client_lost(ClientEnd::Stalled),
                            Sent::Failed(e) => return self.client_lost(ClientEnd::failed(&e)),
                            Sent::Shutdown => return Ending::Shutdown,
                        }
                    }
                    // Last attach wins: the new connection replaces this one.
                    Event::Attach(Some(attach)) => {
                        // Boxed: a rare path, and its future would otherwise be part of every session's task.
                        if Box::pin(self.reattach(attach, Start::Attached)).await {
                            client_gate = Gate::new();
                        }
                    }
                    Event::Attach(None) => resumable = false,
                },
                _ = fired(&mut expiry), if expiry.is_some() => return Ending::Policy(ProxyPolicy::TokenExpired),
                _ = fired(&mut idle), if idle.is_some() => {
                    let deadline = self.last_data + idle_after.unwrap_or_default();
                    if deadline <= Instant::now() {
                        return Ending::Idle;
                    }
                    if let Some(idle) = idle.as_mut() {
                        idle.get_mut().as_mut().reset(deadline);
                    }
                }
            }
        }
    }

    /// The client's connection ended without a close frame (or it stopped reading): the end
    /// of the session, unless the client can come back (a resumable client is away).
    fn client_lost(&self, end: ClientEnd) -> Ending {
        if self.resume.is_some() && matches!(end, ClientEnd::Vanished | ClientEnd::Stalled) {
            Ending::ClientAway
        } else {
            Ending::Client(end)
        }
    }
}

/// A timer the relay loop has only when its setting is on (`idle_timeout`, a token's
/// expiry): a session without it carries neither the timer nor its gate.
type OptionalTimer = Option<WokenOnly<Pin<Box<Sleep>>>>;

fn optional_timer(deadline: Option<Instant>) -> OptionalTimer {
    deadline.map(|at| WokenOnly::new(Box::pin(tokio::time::sleep_until(at))))
}

/// Fires when `timer` does; never without one.
fn fired(timer: &mut OptionalTimer) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match timer.as_mut() {
        Some(timer) => Pin::new(timer).poll(cx),
        None => Poll::Pending,
    })
}

/// How a bounded send ended.
#[derive(Debug)]
pub enum Sent {
    Done,
    Failed(WsError),
    /// The peer took nothing for `stall`: it has stopped reading.
    Stalled,
    /// The proxy began draining while the send waited.
    Shutdown,
}

/// Waits for `send`, giving up after `stall` (`Sent::Stalled`: a peer that takes nothing
/// for that long has stopped reading) or when `shutdown` fires. Without keepalive (`None`)
/// a send waits as long as the peer does — backpressure; memory stays bounded either way.
/// A send given up is safe to drop: a frame it started is queued whole in the connection.
pub async fn within<F, S>(send: F, stall: Option<Duration>, shutdown: S) -> Sent
where
    F: Future<Output = Result<(), WsError>>,
    S: Future + Unpin,
{
    let mut send = std::pin::pin!(send);
    // Almost every send completes at once: only a send that has to wait arms the timer (a
    // timer per message would cost a timer-wheel update on the hot path).
    if let Poll::Ready(result) = futures_util::poll!(send.as_mut()) {
        return sent(result);
    }
    // The waiting part is boxed: its timer and select would otherwise be part of every
    // session's task, idle ones included.
    Box::pin(wait(send, stall, shutdown)).await
}

/// `within`'s send that has to wait.
async fn wait<F, S>(send: std::pin::Pin<&mut F>, stall: Option<Duration>, shutdown: S) -> Sent
where
    F: Future<Output = Result<(), WsError>>,
    S: Future + Unpin,
{
    let bounded = async {
        match stall {
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(result) => sent(result),
                Err(_) => Sent::Stalled,
            },
            None => sent(send.await),
        }
    };
    tokio::select! {
        biased;
        _ = shutdown => Sent::Shutdown,
        sent = bounded => sent,
    }
}

fn sent(result: Result<(), WsError>) -> Sent {
    match result {
        Ok(()) => Sent::Done,
        Err(e) => Sent::Failed(e),
    }
}

/// A keepalive ping (empty).
pub fn ping_frame() -> Message {
    Message::Ping(Default::default())
}
