//! `WsConn`: one WebSocket connection (either side of a session) after its handshake — a
//! `Stream` of messages and a `Sink` for them, with the close-handshake semantics the
//! session is written against (those of tungstenite, whose `Message` and `Error` types it
//! keeps) and three properties a proxy of many idle sessions needs:
//!
//! * **nothing buffered between messages**: a read lands in a buffer on the stack, and the
//!   heap holds bytes only while a frame is incomplete or a write is pending — an idle
//!   connection owns no buffer at all, and a large message's memory goes with it;
//! * **one copy per message**: a frame is unmasked in place and its payload copied once
//!   into the message (a frame that arrived in pieces is not even copied: its buffer becomes
//!   the message). For the relay (`poll_next_incoming`), a small data message that arrived
//!   whole is copied inline (`Incoming::Small`) instead of onto the heap;
//! * **replies never block reading** until they pile up: pongs and close replies are
//!   written as the socket takes them; past `OUT_HIGH_WATER` bytes, reading waits.
//!
//! The frame format and every receiver check live in `frame.rs` (pure).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::close::{PROTOCOL_ERROR, is_sendable};
use crate::codec::frame::{self, BINARY, CLOSE, CONTINUATION, Header, PING, PONG, Role, TEXT};

/// A read with nothing buffered lands in a stack buffer of this size.
const READ_CHUNK: usize = 4096;
/// Past this many bytes of unwritten replies, reading waits for the peer to take them.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// A client's data frame up to this size is masked on the stack and written at once; a
/// server's is written straight from the message whatever its size.
const DIRECT_MASKED: usize = 2048;
/// A data frame up to this size is assembled on the stack and written with a plain write
/// (a vectored write costs the kernel more than the copy of a small payload does).
const DIRECT_SMALL: usize = 256;
/// A data message up to this size that arrived in one read is handed to the relay inline,
/// without a heap allocation (`Incoming::Small`).
pub const SMALL_INLINE: usize = 256;
/// The most a partly read frame's buffer grows by at a time (it grows as bytes arrive, not
/// by what a header claims).
const RESERVE_STEP: usize = 64 * 1024;

/// Size limits for what a peer sends (`websocket.max_message_size`, `max_frame_size`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message: usize,
    pub max_frame: usize,
}

/// Where the close handshake is (RFC 6455 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// We sent a close frame; the peer may still send data until it replies.
    ClosedByUs,
    /// The peer sent a close frame; our reply is queued.
    ClosedByPeer,
    /// Both close frames have crossed.
    CloseAcknowledged,
    Terminated,
}

impl State {
    fn can_read(self) -> bool {
        matches!(self, State::Active | State::ClosedByUs)
    }
}

/// A fragmented data message being assembled.
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// `data[..valid]` is checked UTF-8 (text only).
    valid: usize,
}

/// A frame's payload, unmasked: borrowed from the stack buffer, or already owned.
enum Payload<'a> {
    Slice(&'a [u8]),
    Owned(Bytes),
}

impl Payload<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Slice(s) => s,
            Payload::Owned(b) => b,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Payload::Slice(s) => Bytes::copy_from_slice(s),
            Payload::Owned(b) => b,
        }
    }
}

/// A data message's kind and payload, borrowed. A text payload is valid UTF-8 (it comes
/// from a `Message::Text` or was checked on receipt).
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    text: bool,
    payload: &'a [u8],
}

impl<'a> Data<'a> {
    /// The data of a text or binary message.
    pub fn of(message: &'a Message) -> Option<Self> {
        match message {
            Message::Text(t) => Some(Self {
                text: true,
                payload: t.as_bytes(),
            }),
            Message::Binary(b) => Some(Self {
                text: false,
                payload: b,
            }),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    fn opcode(&self) -> u8 {
        if self.text { TEXT } else { BINARY }
    }

    /// An owned message with a copy of the payload.
    pub fn to_message(self) -> Message {
        let bytes = Bytes::copy_from_slice(self.payload);
        if self.text {
            Message::Text(checked_text(bytes))
        } else {
            Message::Binary(bytes)
        }
    }
}

/// The caller's buffer that `poll_next_incoming` copies a small data message into.
pub type Inline = [u8; SMALL_INLINE];

/// A message as the relay reads it (`poll_next_incoming`): a small data message is in the
/// caller's `Inline` buffer, anything else is a `Message`. (Holding the bytes outside keeps
/// this value small: it is moved through every layer of polling.)
#[derive(Debug)]
pub enum Incoming {
    /// The first `len` bytes of the `Inline` buffer it was read with.
    Small {
        text: bool,
        len: usize,
    },
    Message(Message),
}

impl Incoming {
    /// The data of a data message (`None`: a control message); `inline` is the buffer it
    /// was read with.
    pub fn data<'a>(&'a self, inline: &'a Inline) -> Option<Data<'a>> {
        match self {
            Incoming::Small { text, len } => Some(Data {
                text: *text,
                payload: &inline[..*len],
            }),
            Incoming::Message(message) => Data::of(message),
        }
    }

    /// An owned message (a copy of a small one's payload, a reference to a `Message`'s).
    pub fn to_message(&self, inline: &Inline) -> Message {
        match self {
            Incoming::Message(message) => message.clone(),
            Incoming::Small { .. } => self.data(inline).expect("small is data").to_message(),
        }
    }

    pub fn into_message(self, inline: &Inline) -> Message {
        match self {
            Incoming::Message(message) => message,
            small => small.to_message(inline),
        }
    }
}

/// One buffered frame, or why there is none.
enum Step {
    Message(Incoming),
    /// A frame that is not a message by itself (a fragment).
    Consumed,
    NeedMore,
}

/// See the module documentation.
pub struct WsConn<S> {
    io: S,
    role: Role,
    state: State,
    /// The stream has ended (returned `None` or an error): it stays ended.
    ended: bool,
    limits: Limits,
    /// Bytes read but not yet parsed: part of a frame (usually empty).
    rbuf: BytesMut,
    /// Encoded frames not yet written, from `written` on.
    out: Vec<u8>,
    written: usize,
    partial: Option<Box<Partial>>,
}

impl<S> WsConn<S> {
    /// A connection whose handshake is done; `already_read` are bytes read past it.
    pub fn new(io: S, role: Role, limits: Limits, already_read: &[u8]) -> Self {
        Self {
            io,
            role,
            state: State::Active,
            ended: false,
            limits,
            rbuf: BytesMut::from(already_read),
            out: Vec::new(),
            written: 0,
            partial: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.written
    }

    /// A fresh masking key for a frame we send: clients mask, servers do not.
    fn mask_key(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(rand::random::<[u8; 4]>)
    }

    /// The write queue to append to; what is already written is dropped from it first.
    fn out_tail(&mut self) -> &mut Vec<u8> {
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        &mut self.out
    }

    /// Encodes a final frame into the write queue (masked with a fresh key as a client).
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.mask_key();
        let out = self.out_tail();
        out.reserve(frame::MAX_HEADER + payload.len());
        frame::encode_header(out, opcode, payload.len(), mask);
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = mask {
            frame::apply_mask(&mut out[start..], key);
        }
    }

    /// Queues what a direct write left over: `parts` from byte `taken` on.
    fn queue_rest(&mut self, parts: [&[u8]; 2], taken: usize) {
        let out = self.out_tail();
        let mut skip = taken;
        for part in parts {
            let from = skip.min(part.len());
            skip -= from;
            out.extend_from_slice(&part[from..]);
        }
    }

    fn queue_close(&mut self, frame: Option<&CloseFrame>) {
        match frame {
            None => self.queue(CLOSE, &[]),
            Some(f) => {
                let mut payload = Vec::with_capacity(2 + f.reason.len());
                payload.extend_from_slice(&u16::from(f.code).to_be_bytes());
                payload.extend_from_slice(f.reason.as_bytes());
                self.queue(CLOSE, &payload);
            }
        }
    }

    /// Anything but a close may be sent only before either close frame (with tungstenite's
    /// errors otherwise).
    fn can_send(&self) -> Result<(), WsError> {
        match self.state {
            State::Active => Ok(()),
            State::Terminated => Err(WsError::AlreadyClosed),
            _ => Err(WsError::Protocol(ProtocolError::SendAfterClosing)),
        }
    }

    /// Queues `message` (tungstenite's rules: nothing after our close frame; a second close
    /// is a no-op). The frame is encoded from the reference: the caller keeps the message.
    fn send_message(&mut self, message: &Message) -> Result<(), WsError> {
        if self.state == State::Terminated {
            return Err(WsError::AlreadyClosed);
        }
        if let Message::Close(frame) = message {
            if self.state == State::Active {
                self.state = State::ClosedByUs;
                self.queue_close(frame.as_ref());
            }
            return Ok(());
        }
        self.can_send()?;
        match message {
            Message::Text(t) => self.queue(TEXT, t.as_bytes()),
            Message::Binary(b) => self.queue(BINARY, b),
            Message::Ping(b) => self.queue(PING, b),
            Message::Pong(b) => self.queue(PONG, b),
            Message::Close(_) => unreachable!("handled above"),
            Message::Frame(_) => return Err(WsError::Protocol(ProtocolError::InvalidOpcode(0))),
        }
        Ok(())
    }

    /// A complete frame the relay takes inline: a final data frame of up to `SMALL_INLINE`
    /// bytes, outside a fragmented message, while the peer may still send.
    fn takes_inline(&self, h: &Header) -> bool {
        matches!(h.opcode, TEXT | BINARY)
            && h.fin
            && h.len <= SMALL_INLINE
            && self.partial.is_none()
            && self.state.can_read()
    }

    /// A complete frame, unmasked. Returns the message it completes, if any.
    fn on_frame(&mut self, h: Header, payload: Payload<'_>) -> Result<Option<Message>, WsError> {
        if !self.state.can_read() {
            return Err(WsError::Protocol(ProtocolError::ReceivedAfterClosing));
        }
        let max = self.limits.max_message;
        match h.opcode {
            PING => {
                let data = payload.into_bytes();
                if self.state == State::Active {
                    self.queue(PONG, &data);
                }
                Ok(Some(Message::Ping(data)))
            }
            PONG => Ok(Some(Message::Pong(payload.into_bytes()))),
            CLOSE => self.on_close(payload.as_slice()).map(Some),
            TEXT | BINARY if self.partial.is_some() => Err(frame::out_of_sequence(h.opcode)),
            CONTINUATION if self.partial.is_none() => Err(frame::out_of_sequence(h.opcode)),
            TEXT | BINARY => {
                if h.len > max {
                    return Err(frame::too_big(h.len as u64, max));
                }
                let text = h.opcode == TEXT;
                if !h.fin {
                    let data = payload.as_slice().to_vec();
                    let valid = if text {
                        frame::validate_utf8(&data, 0, false)?
                    } else {
                        0
                    };
                    self.partial = Some(Box::new(Partial { text, data, valid }));
                    return Ok(None);
                }
                if text {
                    frame::validate_utf8(payload.as_slice(), 0, true)?;
                    Ok(Some(Message::Text(checked_text(payload.into_bytes()))))
                } else {
                    Ok(Some(Message::Binary(payload.into_bytes())))
                }
            }
            _ => {
                let partial = self.partial.as_mut().expect("checked above");
                let size = partial.data.len() + h.len;
                if size > max {
                    return Err(frame::too_big(size as u64, max));
                }
                partial.data.extend_from_slice(payload.as_slice());
                if partial.text {
                    partial.valid = frame::validate_utf8(&partial.data, partial.valid, h.fin)?;
                }
                if !h.fin {
                    return Ok(None);
                }
                let Partial { text, data, .. } = *self.partial.take().expect("checked above");
                let data = Bytes::from(data);
                Ok(Some(if text {
                    Message::Text(checked_text(data))
                } else {
                    Message::Binary(data)
                }))
            }
        }
    }

    /// A close frame from the peer: the first one is answered (with the same code and
    /// reason; a code that may not be sent becomes 1002), a reply to ours completes the
    /// handshake.
    fn on_close(&mut self, payload: &[u8]) -> Result<Message, WsError> {
        let frame = match payload {
            [] => None,
            [_] => return Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
            [hi, lo, reason @ ..] => {
                let reason =
                    std::str::from_utf8(reason).map_err(|e| WsError::Utf8(e.to_string()))?;
                Some(CloseFrame {
                    code: CloseCode::from(u16::from_be_bytes([*hi, *lo])),
                    reason: reason.into(),
                })
            }
        };
        if self.state == State::ClosedByUs {
            self.state = State::CloseAcknowledged;
            return Ok(Message::Close(frame));
        }
        self.state = State::ClosedByPeer;
        let frame = frame.map(|f| {
            if is_sendable(u16::from(f.code)) {
                f
            } else {
                CloseFrame {
                    code: CloseCode::from(PROTOCOL_ERROR),
                    reason: "Protocol violation".into(),
                }
            }
        });
        self.queue_close(frame.as_ref());
        Ok(Message::Close(frame))
    }

    /// Processes frames read into the stack buffer `data`; bytes past the first message
    /// (or an incomplete frame) move to `rbuf`.
    fn frames_from(
        &mut self,
        data: &mut [u8],
        inline: &mut Inline,
    ) -> Result<Option<Incoming>, WsError> {
        let mut at = 0;
        while at < data.len() {
            let rest = &mut data[at..];
            let header = frame::parse_header(rest, self.role, self.limits.max_frame)?;
            let Some(h) = header.filter(|h| rest.len() >= h.frame_len()) else {
                if let Some(h) = header {
                    self.rbuf.reserve(h.frame_len().min(RESERVE_STEP));
                }
                self.rbuf.extend_from_slice(rest);
                return Ok(None);
            };
            let payload = &mut rest[h.header_len..h.frame_len()];
            if let Some(key) = h.mask {
                frame::apply_mask(payload, key);
            }
            at += h.frame_len();
            let message = if self.takes_inline(&h) {
                Some(read_inline(&h, payload, inline)?)
            } else {
                self.on_frame(h, Payload::Slice(payload))?
                    .map(Incoming::Message)
            };
            if let Some(message) = message {
                self.rbuf.extend_from_slice(&data[at..]);
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// Processes the first frame in `rbuf` if it is complete.
    fn frame_from_buffer(&mut self, inline: &mut Inline) -> Result<Step, WsError> {
        let Some(h) = frame::parse_header(&self.rbuf, self.role, self.limits.max_frame)? else {
            return Ok(Step::NeedMore);
        };
        let total = h.frame_len();
        if self.rbuf.len() < total {
            return Ok(Step::NeedMore);
        }
        if let Some(key) = h.mask {
            frame::apply_mask(&mut self.rbuf[h.header_len..total], key);
        }
        if self.takes_inline(&h) {
            let message = read_inline(&h, &self.rbuf[h.header_len..total], inline);
            self.rbuf.advance(total);
            self.release_empty_rbuf();
            return message.map(Step::Message);
        }
        // A frame that fills most of the buffer becomes the message's memory; a small one
        // is copied, so a message kept for replay never pins a large buffer.
        let payload = if total * 2 >= self.rbuf.capacity() {
            self.rbuf.split_to(total).freeze().slice(h.header_len..)
        } else {
            let payload = Bytes::copy_from_slice(&self.rbuf[h.header_len..total]);
            self.rbuf.advance(total);
            payload
        };
        self.release_empty_rbuf();
        Ok(match self.on_frame(h, Payload::Owned(payload))? {
            Some(message) => Step::Message(Incoming::Message(message)),
            None => Step::Consumed,
        })
    }

    /// Gives the read buffer back once it is empty: an idle connection holds none.
    fn release_empty_rbuf(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    /// The peer's end of stream: clean after its close frame, a reset otherwise.
    fn on_eof(&mut self) -> WsError {
        match std::mem::replace(&mut self.state, State::Terminated) {
            State::ClosedByPeer | State::CloseAcknowledged => WsError::ConnectionClosed,
            _ => WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
        }
    }
}

/// A frame `takes_inline` accepted, unmasked: its payload UTF-8-checked (text) and copied
/// into `inline`.
fn read_inline(h: &Header, payload: &[u8], inline: &mut Inline) -> Result<Incoming, WsError> {
    let text = h.opcode == TEXT;
    if text {
        frame::validate_utf8(payload, 0, true)?;
    }
    inline[..payload.len()].copy_from_slice(payload);
    Ok(Incoming::Small {
        text,
        len: payload.len(),
    })
}

/// A text message from bytes `frame::validate_utf8` accepted.
fn checked_text(bytes: Bytes) -> Utf8Bytes {
    debug_assert!(std::str::from_utf8(&bytes).is_ok());
    // SAFETY: every caller validated `bytes` as UTF-8 (complete) just before.
    unsafe { Utf8Bytes::from_bytes_unchecked(bytes) }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// `Stream::poll_next` for the relay: a small data message that arrived whole is copied
    /// into `inline` (`Incoming::Small`), not onto the heap.
    pub fn poll_next_incoming(
        &mut self,
        cx: &mut Context<'_>,
        inline: &mut Inline,
    ) -> Poll<Option<Result<Incoming, WsError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.poll_message(cx, inline)) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(e) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    /// Writes queued frames and flushes the transport (a TLS record goes out).
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
            self.written = 0;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// The next message, answering pings and close frames on the way.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
        inline: &mut Inline,
    ) -> Poll<Result<Incoming, WsError>> {
        if self.state == State::Terminated {
            return Poll::Ready(Err(WsError::AlreadyClosed));
        }
        loop {
            if self.pending_out() > 0 {
                match self.poll_send_out(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
                    Poll::Pending if self.pending_out() > OUT_HIGH_WATER => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            if self.role == Role::Server && !self.state.can_read() && self.pending_out() == 0 {
                // The server closes the TCP connection first (RFC 6455 §7.1.1).
                self.state = State::Terminated;
                return Poll::Ready(Err(WsError::ConnectionClosed));
            }
            if !self.rbuf.is_empty() {
                match self.frame_from_buffer(inline)? {
                    Step::Message(message) => return Poll::Ready(Ok(message)),
                    Step::Consumed => continue,
                    Step::NeedMore => {}
                }
            }
            let eof = if self.rbuf.is_empty() {
                let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut buf = ReadBuf::uninit(&mut scratch);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)).map_err(WsError::Io)?;
                if buf.filled().is_empty() {
                    true
                } else {
                    if let Some(message) = self.frames_from(buf.filled_mut(), inline)? {
                        return Poll::Ready(Ok(message));
                    }
                    continue;
                }
            } else {
                let need = match frame::parse_header(&self.rbuf, self.role, self.limits.max_frame) {
                    Ok(Some(h)) => h.frame_len().saturating_sub(self.rbuf.len()),
                    _ => frame::MAX_HEADER,
                };
                self.rbuf.reserve(need.clamp(READ_CHUNK, RESERVE_STEP));
                let read =
                    tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf);
                ready!(read).map_err(WsError::Io)? == 0
            };
            if eof {
                return Poll::Ready(Err(self.on_eof()));
            }
        }
    }

    /// Sends a close frame (`None`: without a status code) and flushes it.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        self.send(Message::Close(frame)).await
    }

    /// `SinkExt::feed` for a message the caller keeps (to deliver again after a failure):
    /// queues it, first writing what is queued if over `OUT_HIGH_WATER`.
    pub async fn feed_ref(&mut self, message: &Message) -> Result<(), WsError> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_ready(cx)).await?;
        self.send_message(message)
    }

    /// `SinkExt::send` for a message the caller keeps.
    pub async fn send_ref(&mut self, message: &Message) -> Result<(), WsError> {
        match Data::of(message) {
            Some(data) => self.send_data(data).await,
            None => {
                self.feed_ref(message).await?;
                self.flush().await
            }
        }
    }

    /// Sends a data message from a borrowed payload, and flushes.
    pub async fn send_data(&mut self, data: Data<'_>) -> Result<(), WsError> {
        let mut started = false;
        std::future::poll_fn(|cx| {
            if !started {
                ready!(self.poll_start_send_data(cx, data))?;
                started = true;
            }
            Pin::new(&mut *self).poll_flush(cx)
        })
        .await
    }

    /// `send_data`'s first step. With nothing queued, the frame is written at once with one
    /// write: its header from the stack and its payload from `data` (a client's payload
    /// masked on the stack first). No heap buffer is involved unless the socket takes only
    /// part of it; the rest is queued. Otherwise it is queued as usual.
    fn poll_start_send_data(
        &mut self,
        cx: &mut Context<'_>,
        data: Data<'_>,
    ) -> Poll<Result<(), WsError>> {
        ready!(Pin::new(&mut *self).poll_ready(cx))?;
        self.can_send()?;
        let (opcode, payload) = (data.opcode(), data.payload);
        let direct = self.pending_out() == 0
            && (payload.len() <= DIRECT_SMALL
                || (self.io.is_write_vectored()
                    && (self.role == Role::Server || payload.len() <= DIRECT_MASKED)));
        if !direct {
            self.queue(opcode, payload);
            return Poll::Ready(Ok(()));
        }
        let mask = self.mask_key();
        let (head, head_len) = frame::header_bytes(opcode, payload.len(), mask);
        let total = head_len + payload.len();
        let mut small = [MaybeUninit::<u8>::uninit(); frame::MAX_HEADER + DIRECT_SMALL];
        let mut scratch = [MaybeUninit::<u8>::uninit(); DIRECT_MASKED];
        let (parts, written) = if payload.len() <= DIRECT_SMALL {
            small[..head_len].write_copy_of_slice(&head[..head_len]);
            let body = small[head_len..total].write_copy_of_slice(payload);
            if let Some(key) = mask {
                frame::apply_mask(body, key);
            }
            // SAFETY: `small[..total]` was written just above (header, then payload).
            let frame: &[u8] = unsafe { small[..total].assume_init_ref() };
            (
                [frame, &[][..]],
                Pin::new(&mut self.io).poll_write(cx, frame),
            )
        } else {
            let body: &[u8] = match mask {
                None => payload,
                Some(key) => {
                    let masked = scratch[..payload.len()].write_copy_of_slice(payload);
                    frame::apply_mask(masked, key);
                    masked
                }
            };
            let parts = [&head[..head_len], body];
            let slices = [io::IoSlice::new(parts[0]), io::IoSlice::new(parts[1])];
            (
                parts,
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices),
            )
        };
        match written {
            Poll::Ready(Ok(n)) if n == total => {}
            // Partly taken (or not at all): the flush that follows writes the rest.
            Poll::Ready(Ok(n)) => self.queue_rest(parts, n),
            Poll::Pending => self.queue_rest(parts, 0),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsConn<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inline = [0; SMALL_INLINE];
        let next = ready!(self.get_mut().poll_next_incoming(cx, &mut inline));
        Poll::Ready(next.map(|item| item.map(|incoming| incoming.into_message(&inline))))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsConn<S> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.pending_out() > OUT_HIGH_WATER {
            ready!(this.poll_send_out(cx)).map_err(WsError::Io)?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        self.get_mut().send_message(&message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_send_out(cx)).map_err(WsError::Io)?;
        if this.role == Role::Server && !this.state.can_read() {
            // Our reply to the peer's close is out: the connection is done.
            this.state = State::Terminated;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.state == State::Active {
            this.state = State::ClosedByUs;
            this.queue_close(None);
        }
        Pin::new(this).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const LIMITS: Limits = Limits {
        max_message: 1 << 20,
        max_frame: 1 << 20,
    };

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_header(&mut out, opcode, payload.len(), Some([9, 8, 7, 6]));
        if !fin {
            out[0] &= 0x7f;
        }
        let start = out.len();
        out.extend_from_slice(payload);
        frame::apply_mask(&mut out[start..], [9, 8, 7, 6]);
        out
    }

    #[tokio::test]
    async fn frames_split_anywhere_arrive_as_the_same_messages() {
        let mut wire = client_frame(true, TEXT, b"hello");
        wire.extend(client_frame(false, BINARY, &[1; 3000]));
        wire.extend(client_frame(true, PING, b"p"));
        wire.extend(client_frame(true, CONTINUATION, &[2; 7000]));
        wire.extend(client_frame(true, BINARY, &[3; 100_000]));
        for chunk in [1, 7, 4096, wire.len()] {
            let (mut peer, ours) = duplex(1 << 20);
            let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
            let wire = wire.clone();
            let writer = tokio::spawn(async move {
                for piece in wire.chunks(chunk) {
                    peer.write_all(piece).await.unwrap();
                }
                peer
            });
            assert_eq!(conn.next().await.unwrap().unwrap(), Message::text("hello"));
            assert!(matches!(conn.next().await, Some(Ok(Message::Ping(_)))));
            let Some(Ok(Message::Binary(joined))) = conn.next().await else {
                panic!("the fragmented message");
            };
            assert_eq!(joined.len(), 10_000);
            assert!(
                joined[..3000].iter().all(|b| *b == 1) && joined[3000..].iter().all(|b| *b == 2)
            );
            let Some(Ok(Message::Binary(big))) = conn.next().await else {
                panic!("the large message");
            };
            assert!(big.len() == 100_000 && big.iter().all(|b| *b == 3));
            // Nothing is buffered between messages.
            assert!(conn.rbuf.capacity() == 0 && conn.partial.is_none());
            let mut peer = writer.await.unwrap();
            // The ping was answered with an unmasked pong.
            let mut pong = [0u8; 3];
            peer.read_exact(&mut pong).await.unwrap();
            assert_eq!(pong, [0x80 | PONG, 1, b'p']);
        }
    }

    /// The relay's read: whole small data frames land in the caller's inline buffer, larger
    /// ones, control frames and fragmented messages come as `Message`s; the payloads and
    /// the UTF-8 check are the same either way.
    #[tokio::test]
    async fn small_whole_data_messages_are_read_inline() {
        let mut wire = Vec::new();
        let cases: Vec<(u8, Vec<u8>, bool)> = vec![
            (BINARY, vec![], true),
            (TEXT, b"x".to_vec(), true),
            (BINARY, vec![7; SMALL_INLINE], true),
            (BINARY, vec![8; SMALL_INLINE + 1], false),
            (TEXT, "é".repeat(SMALL_INLINE / 2).into_bytes(), true),
            (PING, b"p".to_vec(), false),
        ];
        for (opcode, payload, _) in &cases {
            wire.extend(client_frame(true, *opcode, payload));
        }
        // A fragmented small message is assembled on the heap.
        wire.extend(client_frame(false, TEXT, b"ab"));
        wire.extend(client_frame(true, CONTINUATION, b"c"));
        let (mut peer, ours) = duplex(1 << 16);
        peer.write_all(&wire).await.unwrap();
        let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
        let mut inline = [0; SMALL_INLINE];
        for (opcode, payload, small) in cases {
            let incoming = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                matches!(incoming, Incoming::Small { .. }),
                small,
                "{opcode} {}",
                payload.len()
            );
            let message = incoming.into_message(&inline);
            let expected = match opcode {
                TEXT => Message::text(String::from_utf8(payload).unwrap()),
                BINARY => Message::binary(payload),
                _ => Message::Ping(payload.into()),
            };
            assert_eq!(message, expected);
        }
        let joined = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(joined, Incoming::Message(_)));
        assert_eq!(joined.into_message(&inline), Message::text("abc"));

        // A small text frame that is not UTF-8 is refused like a large one.
        let (mut peer, ours) = duplex(1024);
        peer.write_all(&client_frame(true, TEXT, &[b'a', 0xff]))
            .await
            .unwrap();
        let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
        let got = std::future::poll_fn(|cx| conn.poll_next_incoming(cx, &mut inline)).await;
        assert!(matches!(got, Some(Err(WsError::Utf8(_)))), "{got:?}");
    }

    #[tokio::test]
    async fn protocol_faults_are_errors_of_the_right_kind() {
        type Expect = fn(&WsError) -> bool;
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (client_frame(true, TEXT, &[0xff, 0xfe]), |e| {
                matches!(e, WsError::Utf8(_))
            }),
            (client_frame(true, CONTINUATION, b"x"), |e| {
                matches!(e, WsError::Protocol(_))
            }),
            (client_frame(true, CLOSE, &[3]), |e| {
                matches!(e, WsError::Protocol(_))
            }),
            (vec![0x81, 0x01, b'x'], |e| {
                matches!(e, WsError::Protocol(_))
            }),
            (client_frame(true, BINARY, &[0; 2 << 20]), |e| {
                matches!(e, WsError::Capacity(_))
            }),
        ];
        for (wire, expected) in cases {
            let (mut peer, ours) = duplex(4 << 20);
            peer.write_all(&wire).await.unwrap();
            let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
            let got = conn.next().await.unwrap().unwrap_err();
            assert!(expected(&got), "{got:?}");
            assert!(conn.next().await.is_none(), "an error ends the stream");
        }
    }

    #[tokio::test]
    async fn a_close_is_answered_and_ends_the_stream() {
        let (mut peer, ours) = duplex(1024);
        let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
        let mut close = vec![0x03, 0xE8];
        close.extend_from_slice(b"bye");
        peer.write_all(&client_frame(true, CLOSE, &close))
            .await
            .unwrap();
        let Some(Ok(Message::Close(Some(frame)))) = conn.next().await else {
            panic!("a close");
        };
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (1000, "bye")
        );
        assert!(conn.next().await.is_none());
        let mut reply = [0u8; 7];
        peer.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
        // 1005 may not be on the wire: it is answered (and reported) as 1002.
        let (mut peer, ours) = duplex(1024);
        let mut conn = WsConn::new(ours, Role::Server, LIMITS, &[]);
        peer.write_all(&client_frame(true, CLOSE, &[0x03, 0xED]))
            .await
            .unwrap();
        let Some(Ok(Message::Close(Some(frame)))) = conn.next().await else {
            panic!("a close");
        };
        assert_eq!(u16::from(frame.code), PROTOCOL_ERROR);
    }

    #[tokio::test]
    async fn a_client_masks_what_it_sends() {
        let (mut peer, ours) = duplex(1024);
        let mut conn = WsConn::new(ours, Role::Client, LIMITS, &[]);
        conn.send(Message::text("abc")).await.unwrap();
        let mut wire = [0u8; 9];
        peer.read_exact(&mut wire).await.unwrap();
        let h = frame::parse_header(&wire, Role::Server, 1024)
            .unwrap()
            .unwrap();
        let mut payload = wire[h.header_len..].to_vec();
        frame::apply_mask(&mut payload, h.mask.unwrap());
        assert_eq!(payload, b"abc");
    }

    /// Messages of every size through `send_ref` over a real TCP connection, which takes
    /// vectored writes (the direct path). Large ones fill the socket: the direct write is
    /// partial and the rest is queued and flushed. The peer sees every message intact.
    async fn direct_sends_arrive_intact(sender: Role) {
        use tokio::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (ours, theirs) = (connected.unwrap(), accepted.unwrap().0);
        // Text payloads grow up to 3× (invalid bytes become U+FFFD).
        let limits = Limits {
            max_message: 1 << 24,
            max_frame: 1 << 24,
        };
        let mut conn = WsConn::new(ours, sender, limits, &[]);
        assert!(conn.get_ref().is_write_vectored());
        let receiver = match sender {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let mut peer = WsConn::new(theirs, receiver, limits, &[]);
        let sizes = [
            0usize,
            1,
            125,
            126,
            2047,
            2048,
            2049,
            65_535,
            65_536,
            3 << 20,
            7,
            300_000,
        ];
        let messages: Vec<Message> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let payload: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
                if i % 2 == 0 {
                    Message::binary(payload)
                } else {
                    Message::text(String::from_utf8_lossy(&payload).into_owned())
                }
            })
            .collect();
        let expected = messages.clone();
        let send = async move {
            for m in &messages {
                conn.send_ref(m).await.unwrap();
            }
            conn
        };
        let receive = async move {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                got.push(peer.next().await.unwrap().unwrap());
            }
            assert_eq!(got, expected);
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            tokio::join!(send, receive)
        })
        .await
        .expect("all messages within 30 s");
    }

    #[tokio::test]
    async fn a_server_writes_frames_straight_from_the_message() {
        direct_sends_arrive_intact(Role::Server).await;
    }

    #[tokio::test]
    async fn a_client_masks_on_the_stack_and_writes_directly() {
        direct_sends_arrive_intact(Role::Client).await;
    }
}
