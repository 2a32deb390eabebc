//! A resumable client's side of a session (docs/RESUME.md): the counts each way, the
//! messages sent to the client and not yet acknowledged (what a returning client is sent
//! again), when acknowledgements are due, and the hello and tokens holdfast sends. Its
//! bookkeeping is pure; the session loop does the I/O.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::codec::Data;
use crate::resume::envelope::{self, Envelope};
use crate::resume::token::{Claims, Key};
use crate::shared::Attach;
use crate::trace::Trace;
use crate::ws::ends::ClientEnd;

/// An acknowledgement is sent after this many unacknowledged client messages at the latest.
pub const ACK_EVERY: u64 = 16;
/// … or this long after the first of them.
pub const ACK_AFTER: Duration = Duration::from_millis(100);

/// How a resumable session continues on this connection (the hello's `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    New,
    Attached,
    Moved,
}

impl Start {
    fn as_str(self) -> &'static str {
        match self {
            Start::New => "new",
            Start::Attached => "attached",
            Start::Moved => "moved",
        }
    }
}

/// The unacknowledged buffer would exceed `resume.buffer_messages` / `buffer_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// An acknowledgement or a resend request the client could not truthfully make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrue {
    /// It acknowledges messages holdfast never sent (or fewer than before).
    Ack { acked: u64, sent: u64, got: u64 },
    /// It asks for messages from a point holdfast no longer keeps (or never sent).
    Gap {
        kept_from: u64,
        sent: u64,
        asked: u64,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Resumable {
    pub id: u64,
    key: Key,
    credentials: [u8; 16],
    /// The upstream re-openings so far (holds and moves): `X-Holdfast-Resume` of the last.
    resumes: u32,
    /// The application's subprotocol as the upstream chose it.
    protocol: Option<String>,
    replay_first: u64,
    client_hold: Duration,
    /// Client messages received in the session, and how many of them were acknowledged.
    received: u64,
    acked_to_client: u64,
    /// Messages sent to the client in the session; the last `unacked.len()` of them are kept.
    sent: u64,
    unacked: VecDeque<Message>,
    unacked_bytes: usize,
    max_messages: usize,
    trace: Trace,
    max_bytes: usize,
    /// Where returning clients of this session arrive.
    pub attach: mpsc::Receiver<Box<Attach>>,
    /// A moved session's start: the client's replayed opening messages (`p`) may come.
    replaying: bool,
    /// When the pending acknowledgement is due (armed by the first unacknowledged message).
    ack_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the client is sent a fresh token (half its validity); set at the first poll.
    token_at: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What a resumable session's branch of the relay loop has to do.
pub enum Event {
    /// A timer fired.
    Due(Due),
    /// A returning client (`None`: no client can come back any more).
    Attach(Option<Box<Attach>>),
}

/// A timer of a resumable session that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send the pending acknowledgement.
    Ack,
    /// Send a fresh token.
    Token,
}

/// What a resumable session is made with.
pub struct Settings {
    pub key: Key,
    pub credentials: [u8; 16],
    /// `X-Holdfast-Resume` of the upstream this session was opened with (0: a new one).
    pub resumes: u32,
    pub protocol: Option<String>,
    pub replay_first: u64,
    pub client_hold: Duration,
    pub max_messages: usize,
    pub max_bytes: usize,
    /// The session's trace, which its tokens carry to wherever it moves.
    pub trace: Trace,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Resumable {
    /// A session whose client has received `sent` of its messages and whose `received`
    /// client messages reached holdfast so far (both 0 for a new session; a moved one
    /// continues its counts).
    pub fn new(
        id: u64,
        settings: Settings,
        (received, sent): (u64, u64),
        attach: mpsc::Receiver<Box<Attach>>,
    ) -> Self {
        Self {
            id,
            key: settings.key,
            credentials: settings.credentials,
            resumes: settings.resumes,
            protocol: settings.protocol,
            replay_first: settings.replay_first,
            client_hold: settings.client_hold,
            received,
            acked_to_client: received,
            sent,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            max_messages: settings.max_messages,
            max_bytes: settings.max_bytes,
            trace: settings.trace,
            attach,
            replaying: false,
            ack_at: None,
            token_at: None,
        }
    }

    /// Arms the acknowledgement timer unless it is running.
    pub fn arm_ack(&mut self) {
        if self.ack_at.is_none() {
            self.ack_at = Some(Box::pin(tokio::time::sleep(ACK_AFTER)));
        }
    }

    /// A returning client, or the next timer that fired.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Poll::Ready(attach) = self.attach.poll_recv(cx) {
            return Poll::Ready(Event::Attach(attach));
        }
        self.poll_due(cx).map(Event::Due)
    }

    /// The next timer that fired: the pending acknowledgement, or a fresh token (whose timer
    /// is re-armed here).
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        if let Some(at) = &mut self.ack_at
            && at.as_mut().poll(cx).is_ready()
        {
            self.ack_at = None;
            return Poll::Ready(Due::Ack);
        }
        let half = self.client_hold / 2;
        let token_at = self
            .token_at
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(half)));
        if token_at.as_mut().poll(cx).is_ready() {
            token_at.as_mut().reset(tokio::time::Instant::now() + half);
            return Poll::Ready(Due::Token);
        }
        Poll::Pending
    }

    /// The session was moved here: the client replays its opening messages first.
    pub fn expect_replay(&mut self) {
        self.replaying = true;
    }

    /// `X-Holdfast-Resume` of the session's current upstream (0: its first).
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// A hold opened the upstream again, with `X-Holdfast-Resume: resumes`.
    pub fn upstream_reopened(&mut self, resumes: u32) {
        self.resumes = resumes;
    }

    pub fn credentials(&self) -> [u8; 16] {
        self.credentials
    }

    /// A token for this session, valid for `client_hold` from now.
    pub fn token(&self) -> String {
        self.token_for(false)
    }

    /// The token given with a move: it opens the session on another holdfast, continuing
    /// from what this one received.
    pub fn moving_token(&self) -> String {
        self.token_for(true)
    }

    fn token_for(&self, moving: bool) -> String {
        let issued_ms = now_ms();
        self.key.issue(&Claims {
            session: self.id,
            issued_ms,
            expires_ms: issued_ms + self.client_hold.as_millis() as u64,
            resumes: self.resumes,
            credentials: self.credentials,
            // What was acknowledged: everything the client sent that an upstream has (held
            // messages are not acknowledged, so a moved client sends them again).
            client_received: self.acked_to_client,
            protocol: self.protocol.clone(),
            moving,
            trace: Some(self.trace),
        })
    }

    /// The hello's JSON (after its `h`).
    pub fn hello(&self, start: Start) -> String {
        serde_json::json!({
            "v": 1,
            "session": format!("{:016x}", self.id),
            "token": self.token(),
            "protocol": self.protocol,
            "received": self.received,
            "replay": self.replay_first,
            "state": start.as_str(),
        })
        .to_string()
    }

    /// Opens a client's frame: its message (`d`), or `None` for an acknowledgement, which is
    /// taken here. Anything else ends the client's side with a protocol error (1002).
    pub fn unwrap_client<'a>(&mut self, data: Data<'a>) -> Result<Option<Data<'a>>, ClientEnd> {
        match envelope::parse(data.payload(), data.is_text()) {
            Ok(Envelope::Data(_)) => {
                self.replaying = false;
                self.on_client_message();
                Ok(Some(data.from(1)))
            }
            // A replayed opening message goes to the new upstream, uncounted.
            Ok(Envelope::Replay(_)) if self.replaying => Ok(Some(data.from(1))),
            Ok(Envelope::Ack(count)) => {
                self.replaying = false;
                match self.on_ack(count) {
                    Ok(()) => Ok(None),
                    Err(untrue) => {
                        tracing::info!(session = %format!("{:016x}", self.id), trace_id = %self.trace.id(), ?untrue, "client acknowledged what it cannot have received");
                        Err(ClientEnd::ProtocolError)
                    }
                }
            }
            Ok(Envelope::Replay(_)) => {
                tracing::info!(session = %format!("{:016x}", self.id), trace_id = %self.trace.id(), "client replayed an opening message outside a move");
                Err(ClientEnd::ProtocolError)
            }
            Err(e) => {
                tracing::info!(session = %format!("{:016x}", self.id), trace_id = %self.trace.id(), error = %e, "client frame is not an envelope");
                Err(ClientEnd::ProtocolError)
            }
        }
    }

    /// The acknowledgement to send now, if one is due (`ACK_EVERY` messages unacknowledged);
    /// otherwise the timer is armed for what is pending.
    pub fn ack_if_due(&mut self) -> Option<Message> {
        if self.unacknowledged() >= ACK_EVERY {
            return Some(Message::text(envelope::ack(self.take_ack())));
        }
        if self.unacknowledged() > 0 {
            self.arm_ack();
        }
        None
    }

    /// The frame a fired timer sends.
    pub fn frame_for(&mut self, due: Due) -> Message {
        match due {
            Due::Ack => Message::text(envelope::ack(self.take_ack())),
            Due::Token => Message::text(envelope::control(envelope::TOKEN, &self.token())),
        }
    }

    /// A client `d` message arrived: true when an acknowledgement is due at once.
    pub fn on_client_message(&mut self) -> bool {
        self.received += 1;
        self.received - self.acked_to_client >= ACK_EVERY
    }

    /// An acknowledgement of everything received so far but the last `held` messages (which
    /// no upstream has yet), if that acknowledges anything new.
    pub fn ack_now(&mut self, held: u64) -> Option<Message> {
        let count = self.received.saturating_sub(held);
        if count <= self.acked_to_client {
            return None;
        }
        self.acked_to_client = count;
        self.ack_at = None;
        Some(Message::text(envelope::ack(count)))
    }

    /// Client messages not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        self.received - self.acked_to_client
    }

    /// The acknowledgement to send now (`a<count>`), and it is recorded as sent.
    pub fn take_ack(&mut self) -> u64 {
        self.acked_to_client = self.received;
        self.ack_at = None;
        self.received
    }

    /// The client has received `count` messages: those are dropped from the buffer.
    pub fn on_ack(&mut self, count: u64) -> Result<(), Untrue> {
        let kept_from = self.sent - self.unacked.len() as u64;
        if count < kept_from || count > self.sent {
            return Err(Untrue::Ack {
                acked: kept_from,
                sent: self.sent,
                got: count,
            });
        }
        for _ in kept_from..count {
            if let Some(m) = self.unacked.pop_front() {
                self.unacked_bytes -= m.len();
            }
        }
        Ok(())
    }

    /// A message is sent to the client (or, while it is away, only kept for it).
    pub fn record_sent(&mut self, message: Message) -> Result<(), Overflow> {
        let len = message.len();
        if self.unacked.len() >= self.max_messages || self.unacked_bytes + len > self.max_bytes {
            return Err(Overflow);
        }
        self.unacked_bytes += len;
        self.unacked.push_back(message);
        self.sent += 1;
        Ok(())
    }

    /// The buffer is full: reading more from the upstream waits for an acknowledgement.
    pub fn is_full(&self) -> bool {
        self.unacked.len() >= self.max_messages || self.unacked_bytes >= self.max_bytes
    }

    /// The messages a client that has received `count` of them is missing, in order.
    pub fn resend_from(&self, count: u64) -> Result<impl Iterator<Item = &Message>, Untrue> {
        let kept_from = self.sent - self.unacked.len() as u64;
        if count < kept_from || count > self.sent {
            return Err(Untrue::Gap {
                kept_from,
                sent: self.sent,
                asked: count,
            });
        }
        Ok(self.unacked.iter().skip((count - kept_from) as usize))
    }

    /// Messages kept for the client.
    pub fn kept(&self) -> usize {
        self.unacked.len()
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(max_messages: usize, max_bytes: usize) -> Resumable {
        let (_tx, rx) = mpsc::channel(1);
        Resumable::new(
            7,
            Settings {
                key: Key::new(&[1; 32]),
                credentials: [2; 16],
                resumes: 0,
                protocol: Some("chat".into()),
                replay_first: 2,
                client_hold: Duration::from_secs(30),
                max_messages,
                max_bytes,
                trace: Trace::start([3; 16]),
            },
            (0, 0),
            rx,
        )
    }

    #[test]
    fn acknowledgements_free_the_buffer_and_resends_start_where_the_client_is() {
        let mut r = session(4, 100);
        for text in ["a", "b", "c"] {
            r.record_sent(Message::text(text)).unwrap();
        }
        assert_eq!(r.on_ack(1), Ok(()));
        assert_eq!(r.kept(), 2);
        let missing: Vec<_> = r.resend_from(2).unwrap().cloned().collect();
        assert_eq!(missing, [Message::text("c")]);
        assert_eq!(r.resend_from(3).unwrap().count(), 0);
        // Acknowledged messages are gone; messages never sent cannot be asked for.
        assert!(matches!(
            r.resend_from(0),
            Err(Untrue::Gap { kept_from: 1, .. })
        ));
        assert!(matches!(r.resend_from(4), Err(Untrue::Gap { sent: 3, .. })));
        // An acknowledgement going backwards or beyond what was sent is untrue.
        assert!(matches!(r.on_ack(0), Err(Untrue::Ack { .. })));
        assert!(matches!(r.on_ack(4), Err(Untrue::Ack { .. })));
        assert_eq!(r.on_ack(3), Ok(()));
        assert_eq!(r.kept(), 0);
    }

    #[test]
    fn the_buffer_is_bounded_by_count_and_bytes() {
        let mut r = session(2, 10);
        assert_eq!(r.record_sent(Message::text("12345")), Ok(()));
        assert_eq!(
            r.record_sent(Message::text("123456")),
            Err(Overflow),
            "bytes"
        );
        assert_eq!(r.record_sent(Message::text("12345")), Ok(()));
        assert!(r.is_full());
        assert_eq!(r.record_sent(Message::text("")), Err(Overflow), "count");
        assert_eq!(r.sent(), 2, "an overflowing message is not counted as sent");
    }

    #[test]
    fn an_acknowledgement_is_due_every_16_client_messages() {
        let mut r = session(4, 100);
        let due: Vec<bool> = (0..33).map(|_| r.on_client_message()).collect();
        assert!(due[..15].iter().all(|d| !d));
        assert!(due[15], "the 16th");
        assert_eq!(r.unacknowledged(), 33);
        assert_eq!(r.take_ack(), 33);
        assert_eq!(r.unacknowledged(), 0);
    }

    #[test]
    fn the_hello_and_its_token_describe_the_session() {
        let r = session(4, 100);
        let hello: serde_json::Value = serde_json::from_str(&r.hello(Start::New)).unwrap();
        assert_eq!(hello["v"], 1);
        assert_eq!(hello["session"], "0000000000000007");
        assert_eq!(hello["protocol"], "chat");
        assert_eq!(hello["received"], 0);
        assert_eq!(hello["replay"], 2);
        assert_eq!(hello["state"], "new");
        let claims = Key::new(&[1; 32])
            .verify(hello["token"].as_str().unwrap(), now_ms())
            .unwrap();
        assert_eq!((claims.session, claims.credentials), (7, [2; 16]));
        assert_eq!(claims.protocol.as_deref(), Some("chat"));
    }
}
