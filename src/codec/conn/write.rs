//! The write path: messages to frames to the socket. A data frame is written straight
//! from the caller's payload when nothing is queued (its header, and a client's masked
//! payload, from the stack); everything else, and whatever a write leaves over, goes
//! through the write queue (`out`).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, SinkExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::*;
use crate::codec::frame::{self, BINARY, CLOSE, PING, PONG, Role, TEXT};

impl<S> WsConn<S> {
    /// A fresh masking key for a frame we send: clients mask, servers do not.
    pub(super) fn mask_key(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(rand::random::<[u8; 4]>)
    }

    /// The write queue to append to; what is already written is dropped from it first.
    pub(super) fn out_tail(&mut self) -> &mut Vec<u8> {
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        &mut self.out
    }

    /// Encodes a final frame into the write queue (masked with a fresh key as a client).
    pub(super) fn queue(&mut self, opcode: u8, payload: &[u8]) {
        self.queue_parts(opcode, [&[], payload]);
    }

    /// `queue` for a payload in two parts (an envelope's kind, then the message).
    pub(super) fn queue_parts(&mut self, opcode: u8, parts: [&[u8]; 2]) {
        let len = parts[0].len() + parts[1].len();
        let mask = self.mask_key();
        let out = self.out_tail();
        out.reserve(frame::MAX_HEADER + len);
        frame::encode_header(out, opcode, len, mask);
        let start = out.len();
        out.extend_from_slice(parts[0]);
        out.extend_from_slice(parts[1]);
        if let Some(key) = mask {
            frame::apply_mask(&mut out[start..], key);
        }
    }

    /// Queues a data message from `parts`: compressed as one RSV1 frame when
    /// permessage-deflate is on and the message is at least `min_size`, as it is otherwise.
    pub(super) fn queue_data(&mut self, opcode: u8, parts: [&[u8]; 2]) {
        let len = parts[0].len() + parts[1].len();
        match self.deflate.as_deref_mut() {
            Some(deflate) if deflate.compresses(len) => {
                let mut payload = Vec::new();
                deflate.compress(parts, &mut payload);
                // RSV1 goes into the header's first byte with the opcode.
                self.queue_parts(opcode | frame::RSV1, [&payload, &[]]);
            }
            _ => self.queue_parts(opcode, parts),
        }
    }

    /// Whether a data message of `len` bytes goes out compressed.
    fn compresses(&self, len: usize) -> bool {
        self.deflate.as_ref().is_some_and(|d| d.compresses(len))
    }

    /// Queues what a direct write left over: `parts` from byte `taken` on.
    pub(super) fn queue_rest(&mut self, parts: [&[u8]; 2], taken: usize) {
        let out = self.out_tail();
        let mut skip = taken;
        for part in parts {
            let from = skip.min(part.len());
            skip -= from;
            out.extend_from_slice(&part[from..]);
        }
    }

    pub(super) fn queue_close(&mut self, frame: Option<&CloseFrame>) {
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
    pub(super) fn can_send(&self) -> Result<(), WsError> {
        match self.state {
            State::Active => Ok(()),
            State::Terminated => Err(WsError::AlreadyClosed),
            _ => Err(WsError::Protocol(ProtocolError::SendAfterClosing)),
        }
    }

    /// Queues `message` (tungstenite's rules: nothing after our close frame; a second close
    /// is a no-op). The frame is encoded from the reference: the caller keeps the message.
    pub(super) fn send_message(&mut self, message: &Message) -> Result<(), WsError> {
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
            Message::Text(t) => self.queue_data(TEXT, [&[], t.as_bytes()]),
            Message::Binary(b) => self.queue_data(BINARY, [&[], b]),
            Message::Ping(b) => self.queue(PING, b),
            Message::Pong(b) => self.queue(PONG, b),
            Message::Close(_) => unreachable!("handled above"),
            Message::Frame(_) => return Err(WsError::Protocol(ProtocolError::InvalidOpcode(0))),
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// Writes queued frames and flushes the transport (a TLS record goes out).
    pub(super) fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        self.send_data_as(None, data).await
    }

    /// `send_data` with `kind` as the payload's first byte (a resumable client's envelope,
    /// `resume::envelope`): the byte goes with the frame's header, the payload is not copied.
    pub async fn send_enveloped(&mut self, kind: u8, data: Data<'_>) -> Result<(), WsError> {
        self.send_data_as(Some(kind), data).await
    }

    async fn send_data_as(&mut self, kind: Option<u8>, data: Data<'_>) -> Result<(), WsError> {
        let mut started = false;
        std::future::poll_fn(|cx| {
            if !started {
                ready!(self.poll_start_send_data(cx, kind, data))?;
                started = true;
            }
            Pin::new(&mut *self).poll_flush(cx)
        })
        .await
    }

    /// `send_data`'s first step. With nothing queued, the frame is written at once with one
    /// write: its header (and `kind`, if any) from the stack and its payload from `data` (a
    /// client's payload masked on the stack first). No heap buffer is involved unless the
    /// socket takes only part of it; the rest is queued. Otherwise it is queued as usual.
    pub(super) fn poll_start_send_data(
        &mut self,
        cx: &mut Context<'_>,
        kind: Option<u8>,
        data: Data<'_>,
    ) -> Poll<Result<(), WsError>> {
        ready!(Pin::new(&mut *self).poll_ready(cx))?;
        self.can_send()?;
        let (opcode, payload) = (data.opcode(), data.payload);
        let prefix = kind.as_slice();
        let len = prefix.len() + payload.len();
        if self.compresses(len) {
            self.queue_data(opcode, [prefix, payload]);
            return Poll::Ready(Ok(()));
        }
        let direct = self.pending_out() == 0
            && (len <= DIRECT_SMALL
                || (self.io.is_write_vectored()
                    && (self.role == Role::Server || (len <= DIRECT_MASKED && prefix.is_empty()))));
        if !direct {
            self.queue_parts(opcode, [prefix, payload]);
            return Poll::Ready(Ok(()));
        }
        let mask = self.mask_key();
        let (mut head, mut head_len) = frame::header_bytes(opcode, len, mask);
        let total = head_len + len;
        // Zeroed, not uninitialised: reading back what was written needs no unsafe code, and
        // the 270-byte memset was measured at under 1 % of an echo's instructions.
        let mut small = [0u8; frame::MAX_HEADER + DIRECT_SMALL];
        let mut scratch = [MaybeUninit::<u8>::uninit(); DIRECT_MASKED];
        let (parts, written) = if len <= DIRECT_SMALL {
            small[..head_len].copy_from_slice(&head[..head_len]);
            let body = &mut small[head_len..total];
            body[..prefix.len()].copy_from_slice(prefix);
            body[prefix.len()..].copy_from_slice(payload);
            if let Some(key) = mask {
                frame::apply_mask(body, key);
            }
            let frame: &[u8] = &small[..total];
            (
                [frame, &[][..]],
                Pin::new(&mut self.io).poll_write(cx, frame),
            )
        } else {
            let body: &[u8] = match mask {
                None => {
                    // The envelope's kind travels with the header (a server's header is
                    // at most 10 of its 14 bytes).
                    head[head_len..head_len + prefix.len()].copy_from_slice(prefix);
                    head_len += prefix.len();
                    payload
                }
                Some(key) => {
                    // A client's envelope kind goes through the queue (see `direct`).
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
