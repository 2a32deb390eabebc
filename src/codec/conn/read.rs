//! The read path: bytes from the socket to messages. A read with nothing buffered lands
//! in a stack buffer and its frames are handled from there; only a frame that arrived in
//! pieces is kept (`rbuf`) until it is whole. Pings are answered and close frames replied
//! to on the way.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::incoming::Payload;
use super::*;
use crate::close::{PROTOCOL_ERROR, is_sendable};
use crate::codec::frame::{self, BINARY, CLOSE, CONTINUATION, Header, PING, PONG, Role, TEXT};
use crate::codec::utf8;
use crate::deflate::InflateError;

/// A fragmented data message being assembled.
pub(super) struct Partial {
    text: bool,
    /// RSV1 was set on its first frame: `data` is deflate data, inflated once it is whole.
    compressed: bool,
    data: Vec<u8>,
    /// `data[..valid]` is checked UTF-8 (text only, uncompressed only).
    valid: usize,
}

/// One buffered frame, or why there is none.
enum Step {
    Message(Incoming),
    /// A frame that is not a message by itself (a fragment).
    Consumed,
    NeedMore,
}

impl<S> WsConn<S> {
    /// A complete frame the relay takes inline: a final data frame of up to `SMALL_INLINE`
    /// bytes (and within `max_message`), outside a fragmented message, while the peer may
    /// still send.
    fn takes_inline(&self, h: &Header) -> bool {
        matches!(h.opcode, TEXT | BINARY)
            && h.fin
            && !h.rsv1
            && h.len <= SMALL_INLINE
            // A limit below the inline size is checked where every other message's is.
            && h.len <= self.limits.max_message
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
                    let valid = if text && !h.rsv1 {
                        utf8::validate(&data, 0, false)?
                    } else {
                        0
                    };
                    self.partial = Some(Box::new(Partial {
                        text,
                        compressed: h.rsv1,
                        data,
                        valid,
                    }));
                    return Ok(None);
                }
                let data = if h.rsv1 {
                    Bytes::from(self.inflate(payload.as_slice())?)
                } else {
                    payload.into_bytes()
                };
                data_message(text, data).map(Some)
            }
            _ => {
                let partial = self.partial.as_mut().expect("checked above");
                let size = partial.data.len() + h.len;
                if size > max {
                    return Err(frame::too_big(size as u64, max));
                }
                partial.data.extend_from_slice(payload.as_slice());
                if partial.text && !partial.compressed {
                    partial.valid = utf8::validate(&partial.data, partial.valid, h.fin)?;
                }
                if !h.fin {
                    return Ok(None);
                }
                let Partial {
                    text,
                    compressed,
                    data,
                    ..
                } = *self.partial.take().expect("checked above");
                let data = if compressed {
                    Bytes::from(self.inflate(&data)?)
                } else {
                    Bytes::from(data)
                };
                data_message(text, data).map(Some)
            }
        }
    }

    /// A compressed message's payload, inflated within `max_message`.
    fn inflate(&mut self, payload: &[u8]) -> Result<Vec<u8>, WsError> {
        let max = self.limits.max_message;
        let deflate = self
            .deflate
            .as_deref_mut()
            .expect("RSV1 is accepted only with a context");
        deflate.inflate(payload, max).map_err(|e| match e {
            InflateError::TooBig => frame::too_big(max as u64 + 1, max),
            InflateError::Corrupt(_) => frame::bad_compressed_data(),
        })
    }

    /// Parses the frame header at the start of `buf` under this connection's extensions.
    fn parse(&self, buf: &[u8]) -> Result<Option<Header>, WsError> {
        frame::parse_with(
            buf,
            self.role,
            self.limits.max_frame,
            self.deflate.is_some(),
        )
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
            let header = self.parse(rest)?;
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
        let Some(h) = self.parse(&self.rbuf)? else {
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

/// A whole data message (text checked for UTF-8).
fn data_message(text: bool, data: Bytes) -> Result<Message, WsError> {
    if text {
        Ok(Message::Text(utf8::text(data)?))
    } else {
        Ok(Message::Binary(data))
    }
}

/// A frame `takes_inline` accepted, unmasked: its payload UTF-8-checked (text) and copied
/// into `inline`.
fn read_inline(h: &Header, payload: &[u8], inline: &mut Inline) -> Result<Incoming, WsError> {
    let text = h.opcode == TEXT;
    if text {
        utf8::validate(payload, 0, true)?;
    }
    inline[..payload.len()].copy_from_slice(payload);
    Ok(Incoming::Small {
        text,
        len: payload.len(),
    })
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
                let need = match self.parse(&self.rbuf) {
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
}
