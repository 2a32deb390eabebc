//! The session task: one task owns the client socket and the upstream socket and runs a
//! single `select!` over both, the keepalive/idle timers and shutdown. What a close means
//! is decided by the pure functions in `close.rs`; this file only executes decisions.
//! States and transitions are described in docs/LIFECYCLE.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::close::{
    self, ClientEnd, Close, CloseRules, GOING_AWAY, NO_STATUS, UpstreamDecision, UpstreamEnd,
    WireClose,
};
use super::handshake::UpstreamTemplate;
use crate::config::Config;
use crate::upstream::UpstreamIo;

/// How long each side gets to complete its close handshake once holdfast has decided.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a peer failed, read off a tungstenite error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Vanished,
    Protocol,
    TooBig,
    InvalidUtf8,
}

fn fault(error: &WsError) -> Fault {
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

fn client_end(fault: Fault) -> ClientEnd {
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

/// Why the relay loop stopped.
#[derive(Debug)]
enum Ending {
    Client(ClientEnd),
    Upstream(UpstreamEnd),
    Idle,
    Shutdown,
}

/// Counters for the session-end log line (and, later, metrics).
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
}

pub struct Session<C> {
    pub id: String,
    pub peer: SocketAddr,
    pub client: WebSocketStream<C>,
    pub upstream: WebSocketStream<UpstreamIo>,
    pub template: UpstreamTemplate,
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
    stats: Stats,
    last_client_rx: Instant,
    last_upstream_rx: Instant,
    last_data: Instant,
}

fn payload_len(message: &Message) -> Option<usize> {
    match message {
        Message::Text(t) => Some(t.len()),
        Message::Binary(b) => Some(b.len()),
        _ => None,
    }
}

impl<C> Session<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(
        client: WebSocketStream<C>,
        upstream: WebSocketStream<UpstreamIo>,
        template: UpstreamTemplate,
        peer: SocketAddr,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        Self {
            id: template.session_id.clone(),
            peer,
            client,
            upstream,
            template,
            config,
            shutdown,
            stats: Stats::default(),
            last_client_rx: now,
            last_upstream_rx: now,
            last_data: now,
        }
    }

    /// Relays until one side ends, then closes both sides as decided. Never panics on peer input.
    pub async fn run(mut self) -> Report {
        let started = Instant::now();
        let ending = self.relay().await;
        let report = self.finish(ending).await;
        tracing::info!(
            session = %self.id,
            peer = %self.peer,
            duration_ms = started.elapsed().as_millis() as u64,
            messages_to_upstream = report.stats.messages_to_upstream,
            bytes_to_upstream = report.stats.bytes_to_upstream,
            messages_to_client = report.stats.messages_to_client,
            bytes_to_client = report.stats.bytes_to_client,
            client_close = ?report.client_close,
            upstream_close = ?report.upstream_close,
            "session ended"
        );
        report
    }

    /// The `Relaying` state: one select over both sockets, keepalive, idle and shutdown.
    async fn relay(&mut self) -> Ending {
        let ping_every = self.config.websocket.ping_interval;
        let idle_after = self.config.websocket.idle_timeout;
        let mut ping = tokio::time::interval(ping_every.unwrap_or(Duration::from_secs(3600)));
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        // One timer, re-armed lazily: resetting a timer per message would cost a timer-wheel
        // update on the hot path.
        let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(idle);
        let shutdown = self.shutdown.clone();

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ending::Shutdown,
                incoming = self.client.next() => {
                    self.last_client_rx = Instant::now();
                    match incoming {
                        Some(Ok(Message::Close(frame))) => return Ending::Client(ClientEnd::Closed(close_of(frame))),
                        Some(Ok(message)) => {
                            if let Some(len) = payload_len(&message) {
                                self.last_data = self.last_client_rx;
                                if let Err(e) = self.upstream.send(message).await {
                                    return Ending::Upstream(upstream_end(fault(&e)));
                                }
                                self.stats.messages_to_upstream += 1;
                                self.stats.bytes_to_upstream += len as u64;
                            }
                        }
                        Some(Err(e)) => return Ending::Client(client_end(fault(&e))),
                        None => return Ending::Client(ClientEnd::Vanished),
                    }
                }
                incoming = self.upstream.next() => {
                    self.last_upstream_rx = Instant::now();
                    match incoming {
                        Some(Ok(Message::Close(frame))) => return Ending::Upstream(UpstreamEnd::Closed(close_of(frame))),
                        Some(Ok(message)) => {
                            if let Some(len) = payload_len(&message) {
                                self.last_data = self.last_upstream_rx;
                                if let Err(e) = self.client.send(message).await {
                                    return Ending::Client(client_end(fault(&e)));
                                }
                                self.stats.messages_to_client += 1;
                                self.stats.bytes_to_client += len as u64;
                            }
                        }
                        Some(Err(e)) => return Ending::Upstream(upstream_end(fault(&e))),
                        None => return Ending::Upstream(UpstreamEnd::Vanished),
                    }
                }
                _ = ping.tick(), if ping_every.is_some() => {
                    let every = ping_every.unwrap_or_default();
                    // A peer that has sent nothing (not even a pong) for two intervals is gone.
                    if self.last_client_rx.elapsed() > every * 2 {
                        return Ending::Client(ClientEnd::Vanished);
                    }
                    if self.last_upstream_rx.elapsed() > every * 2 {
                        return Ending::Upstream(UpstreamEnd::Vanished);
                    }
                    if let Err(e) = self.client.send(Message::Ping(Default::default())).await {
                        return Ending::Client(client_end(fault(&e)));
                    }
                    if let Err(e) = self.upstream.send(Message::Ping(Default::default())).await {
                        return Ending::Upstream(upstream_end(fault(&e)));
                    }
                }
                _ = &mut idle, if idle_after.is_some() => {
                    let deadline = self.last_data + idle_after.unwrap_or_default();
                    if deadline <= Instant::now() {
                        return Ending::Idle;
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        }
    }

    /// The `Closing` state: send each side what the decision says and let both close
    /// handshakes complete, each bounded by `CLOSE_TIMEOUT`.
    async fn finish(&mut self, ending: Ending) -> Report {
        let config = self.config.clone();
        let mut report = Report {
            stats: self.stats.clone(),
            client_close: None,
            upstream_close: None,
        };
        let (to_client, to_upstream): (Option<Message>, Option<Message>) = match ending {
            Ending::Client(end) => {
                let decision = close::on_client_end(&end, &config.rewrites);
                report.client_close = Some((
                    decision.original,
                    decision.to_upstream.as_ref().map(|c| c.code),
                ));
                let reply = decision.to_client.map(close_message);
                (reply, Some(close_message(decision.to_upstream)))
            }
            Ending::Upstream(end) => {
                let rules = CloseRules {
                    // SPEC §3.3 (holding across restarts) is not built yet: restart codes
                    // pass to the client like any other code.
                    hold: false,
                    restart_codes: &config.restart.codes,
                    on_disconnect: config.restart.on_disconnect,
                    rewrites: &config.rewrites,
                };
                let UpstreamDecision::Forward { original, close } =
                    close::on_upstream_end(&end, &rules)
                else {
                    unreachable!("hold is off")
                };
                // SPEC §3.4: policy context for a 1008 attaches here, between rewrite and wire.
                let wire = close::to_wire(close);
                report.upstream_close = Some((original, wire.as_ref().map(|c| c.code)));
                let verdict = end
                    .verdict_for_upstream()
                    .map(|c| close_message(close::to_wire(c)));
                (Some(close_message(wire)), verdict)
            }
            Ending::Idle => {
                let idle = || {
                    Some(close_message(close::to_wire(Close::new(
                        GOING_AWAY,
                        "idle timeout",
                    ))))
                };
                (idle(), idle())
            }
            Ending::Shutdown => (
                Some(close_message(close::to_wire(
                    config.shutdown.client.clone(),
                ))),
                Some(close_message(close::to_wire(Close::new(
                    GOING_AWAY,
                    "proxy shutting down",
                )))),
            ),
        };
        tokio::join!(
            complete_close(&mut self.client, to_client),
            complete_close(&mut self.upstream, to_upstream)
        );
        report
    }
}

/// Sends `close` (if any), then reads until the peer's close reply or EOF, bounded by
/// `CLOSE_TIMEOUT`; then shuts the transport down (a TLS close_notify over TLS).
async fn complete_close<S>(socket: &mut WebSocketStream<S>, close: Option<Message>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(close) = close {
            if socket.send(close).await.is_err() {
                return;
            }
        } else {
            // A reply tungstenite queued for a close it received goes out on the next flush.
            let _ = socket.flush().await;
        }
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.get_mut().shutdown()).await;
}
