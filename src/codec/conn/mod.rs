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
//! With permessage-deflate negotiated (`with_deflate`), a compressed message is inflated
//! whole once its last frame is in (within `max_message`, counted inflated), and a data
//! message of at least `min_size` bytes is sent compressed as one frame.
//!
//! The frame format and every receiver check live in `frame.rs` (pure); here, the state
//! (`mod.rs`), what a message is (`incoming.rs`), the read path (`read.rs`) and the write
//! path (`write.rs`).

#[cfg(test)]
mod deflate_tests;
mod incoming;
mod read;
#[cfg(test)]
mod tests;
mod write;

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::codec::frame::Role;
pub use incoming::{Data, Incoming, Inline};
use read::Partial;

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
    /// permessage-deflate, when negotiated.
    deflate: Option<Box<crate::deflate::Context>>,
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
            deflate: None,
        }
    }

    /// The connection with permessage-deflate (`None`: without).
    pub fn with_deflate(mut self, deflate: Option<crate::deflate::Context>) -> Self {
        self.deflate = deflate.map(Box::new);
        self
    }

    /// What this connection negotiated for permessage-deflate, if it did.
    pub fn deflate(&self) -> Option<crate::deflate::Params> {
        self.deflate.as_ref().map(|d| d.params())
    }

    /// Gives back compression memory unused since the last call (see `deflate::Context`);
    /// true if some went back.
    pub fn release_idle_compression(&mut self) -> bool {
        self.deflate.as_mut().is_some_and(|d| d.release_idle())
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub(super) fn pending_out(&self) -> usize {
        self.out.len() - self.written
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
