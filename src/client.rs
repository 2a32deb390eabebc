//! A resumable client in Rust (docs/RESUME.md): the client side of `holdfast.resume.v1`
//! that holdfast's demo and tests use (the browser's is `clients/js/holdfast.mjs`). It
//! sends and receives application messages; when its connection drops, or holdfast tells
//! it to move, it reconnects with its token and both sides resend what the other missed —
//! the caller sees every message once, in order, and no close.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::resume::{self, envelope};

/// What the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Message(Message),
    /// The session ended: the close code (`None`: without one) and reason.
    Closed(Option<u16>, String),
}

/// Why the client gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach holdfast: {0}")]
    Connect(String),
    #[error("holdfast did not select holdfast.resume.v1")]
    NotResumable,
    #[error("protocol: {0}")]
    Protocol(String),
}

/// See the module documentation.
pub struct ResumableClient {
    addr: SocketAddr,
    path: String,
    protocols: Vec<String>,
    ws: Option<WebSocketStream<TcpStream>>,
    /// From the last hello (or token frame).
    pub token: Option<String>,
    pub session: Option<String>,
    pub protocol: Option<String>,
    /// Application messages received in the session, and the count last acknowledged.
    received: u64,
    acked: u64,
    /// Messages sent in the session; the last `unacked.len()` of them are kept.
    sent: u64,
    unacked: VecDeque<Message>,
    /// The first `replay` messages, kept to replay after a move.
    replay_first: u64,
    replay: Vec<Message>,
    /// Connections made after the first (re-attaches and moves).
    pub reconnects: u32,
    /// holdfast said to move: its close that follows is not the session's end.
    moving: bool,
}

/// How many times in a row a reconnect is tried before giving up, and the longest pause.
const TRIES: u32 = 50;
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// How long one connection attempt (handshake and hello) may take, as the library's
/// `connectTimeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ResumableClient {
    /// Connects to holdfast at `addr` for `path`, offering `protocols` after
    /// `holdfast.resume.v1`, and reads the hello.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        protocols: &[&str],
    ) -> Result<Self, ClientError> {
        let mut client = Self {
            addr,
            path: path.to_owned(),
            protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
            ws: None,
            token: None,
            session: None,
            protocol: None,
            received: 0,
            acked: 0,
            sent: 0,
            unacked: VecDeque::new(),
            replay_first: 0,
            replay: Vec::new(),
            reconnects: 0,
            moving: false,
        };
        client.open().await?;
        Ok(client)
    }

    /// One connection within `CONNECT_TIMEOUT` (else it counts as a failed try).
    async fn open(&mut self) -> Result<(), ClientError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.open_now())
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connect(format!(
                    "no hello within {CONNECT_TIMEOUT:?}"
                )))
            })
    }

    /// One connection: the handshake (with the token and count once there is a session),
    /// the hello, and what holdfast has not received resent.
    async fn open_now(&mut self) -> Result<(), ClientError> {
        let mut offer = vec![resume::SUBPROTOCOL.to_owned()];
        if let Some(token) = &self.token {
            offer.push(format!("{}{token}", resume::TOKEN_ENTRY));
            offer.push(format!("{}{}", resume::RECEIVED_ENTRY, self.received));
        }
        offer.extend(self.protocols.iter().cloned());
        let url = format!("ws://{}{}", self.addr, self.path);
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let value = HeaderValue::from_str(&offer.join(", "))
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        if response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes())
            != Some(resume::SUBPROTOCOL.as_bytes())
        {
            return Err(ClientError::NotResumable);
        }
        let hello = match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('h') => t[1..].to_owned(),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((None, String::new()), |f| {
                    (Some(u16::from(f.code)), f.reason.to_string())
                });
                return Err(ClientError::Protocol(format!(
                    "closed instead of a hello: {code:?} {reason}"
                )));
            }
            other => return Err(ClientError::Protocol(format!("no hello: {other:?}"))),
        };
        let hello: serde_json::Value =
            serde_json::from_str(&hello).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.token = hello["token"].as_str().map(str::to_owned);
        self.session = hello["session"].as_str().map(str::to_owned);
        self.protocol = hello["protocol"].as_str().map(str::to_owned);
        self.replay_first = hello["replay"].as_u64().unwrap_or(0);
        let theirs = hello["received"].as_u64().unwrap_or(0);
        // A moved session's new upstream needs the opening messages again.
        if hello["state"] == "moved" {
            for message in &self.replay {
                ws.feed(with_kind(envelope::REPLAY, message))
                    .await
                    .map_err(proto)?;
            }
        }
        self.forget_acknowledged(theirs);
        for message in &self.unacked {
            ws.feed(with_kind(envelope::DATA, message))
                .await
                .map_err(proto)?;
        }
        ws.flush().await.map_err(proto)?;
        self.ws = Some(ws);
        Ok(())
    }

    /// Reconnects at once, then with growing pauses, until a connection takes.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.ws = None;
        let mut pause = Duration::ZERO;
        let mut last = None;
        for _ in 0..TRIES {
            tokio::time::sleep(pause).await;
            match self.open().await {
                Ok(()) => {
                    self.reconnects += 1;
                    return Ok(());
                }
                // A refusal is final: the session is gone.
                Err(e @ ClientError::Protocol(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
            pause = (pause * 2).max(Duration::from_millis(20)).min(MAX_PAUSE);
        }
        Err(last.unwrap_or(ClientError::NotResumable))
    }

    /// holdfast has received `count` of this client's messages.
    fn forget_acknowledged(&mut self, count: u64) {
        let kept_from = self.sent - self.unacked.len() as u64;
        for _ in kept_from..count.min(self.sent) {
            self.unacked.pop_front();
        }
    }

    /// Sends an application message (kept until holdfast acknowledges it).
    pub async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        if self.sent < self.replay_first {
            self.replay.push(message.clone());
        }
        self.sent += 1;
        self.unacked.push_back(message.clone());
        let sent = match &mut self.ws {
            Some(ws) => ws.send(with_kind(envelope::DATA, &message)).await.is_ok(),
            None => false,
        };
        if !sent {
            // Resent by the reconnect with everything unacknowledged.
            self.reconnect().await?;
        }
        Ok(())
    }

    /// The next application message, or the session's end. Reconnects as needed.
    pub async fn next(&mut self) -> Result<Received, ClientError> {
        loop {
            let Some(ws) = &mut self.ws else {
                self.reconnect().await?;
                continue;
            };
            // What was received is acknowledged after 100 ms without another message.
            let idle = if self.received > self.acked {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(3600)
            };
            let frame = match tokio::time::timeout(idle, ws.next()).await {
                Err(_) => {
                    self.acknowledge().await;
                    continue;
                }
                Ok(Some(Ok(frame))) => frame,
                // The connection dropped: come back.
                Ok(Some(Err(_)) | None) => {
                    self.reconnect().await?;
                    continue;
                }
            };
            match frame {
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    });
                    // 1012 after a move: reconnect; anything else is the session's end.
                    if code == Some(1012) && self.ws_moved(&reason) {
                        self.reconnect().await?;
                        continue;
                    }
                    self.ws = None;
                    return Ok(Received::Closed(code, reason));
                }
                Message::Text(t) => match t.as_bytes().first() {
                    Some(&envelope::DATA) => {
                        self.received += 1;
                        self.ack_if_due().await;
                        return Ok(Received::Message(Message::text(&t[1..])));
                    }
                    Some(&envelope::ACK) => {
                        let count = t[1..].parse().map_err(|_| {
                            ClientError::Protocol(format!("bad acknowledgement {t}"))
                        })?;
                        self.forget_acknowledged(count);
                    }
                    Some(&envelope::TOKEN) => self.token = Some(t[1..].to_owned()),
                    Some(&envelope::MOVE) => {
                        let body: serde_json::Value = serde_json::from_str(&t[1..])
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        if let Some(token) = body["token"].as_str() {
                            self.token = Some(token.to_owned());
                        }
                        self.moving = true;
                    }
                    _ => return Err(ClientError::Protocol(format!("unexpected frame {t}"))),
                },
                Message::Binary(b) if b.first() == Some(&envelope::DATA) => {
                    self.received += 1;
                    self.ack_if_due().await;
                    return Ok(Received::Message(Message::Binary(b.slice(1..))));
                }
                Message::Binary(_) => {
                    return Err(ClientError::Protocol("unexpected binary frame".into()));
                }
                _ => {}
            }
        }
    }

    fn ws_moved(&mut self, _reason: &str) -> bool {
        std::mem::take(&mut self.moving)
    }

    /// Acknowledges every 16 messages (a real client also does after 100 ms).
    async fn ack_if_due(&mut self) {
        if self.received - self.acked >= 16 {
            self.acknowledge().await;
        }
    }

    /// Sends an acknowledgement of everything received so far.
    pub async fn acknowledge(&mut self) {
        if let Some(ws) = &mut self.ws
            && ws
                .send(Message::text(envelope::ack(self.received)))
                .await
                .is_ok()
        {
            self.acked = self.received;
        }
    }

    /// Application messages received in the session.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Closes the session (the application's close).
    pub async fn close(&mut self, code: u16, reason: &str) {
        if let Some(ws) = &mut self.ws {
            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            let _ = ws.close(Some(frame)).await;
        }
    }
}

fn proto(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    ClientError::Connect(e.to_string())
}

/// `message` as an envelope of `kind`.
fn with_kind(kind: u8, message: &Message) -> Message {
    match message {
        Message::Text(t) => Message::text(format!("{}{}", kind as char, t.as_str())),
        Message::Binary(b) => {
            let mut out = Vec::with_capacity(b.len() + 1);
            out.push(kind);
            out.extend_from_slice(b);
            Message::Binary(Bytes::from(out))
        }
        other => other.clone(),
    }
}
