//! `FrameGate`: an I/O adapter under tungstenite that hands it at most one WebSocket frame
//! per read (bytes past the frame's end wait in a small stash). tungstenite parses every
//! complete frame as soon as it has read it, so between its calls its read buffer holds at
//! most part of one frame — and when the gate is at a frame boundary, nothing. That makes it
//! safe to rebuild a socket's tungstenite state (`ws::compact`), which is how a session
//! gives back the buffers a large message grew: tungstenite never shrinks them.
//!
//! An upstream socket starts in `HttpHead` mode: the handshake response is handed over only
//! up to its blank line, so frames the upstream sends right after the 101 are seen by the
//! gate too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the gate is in the incoming byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Until `\r\n\r\n`: `matched` bytes of it seen so far; `is_101` once the status line
    /// has been seen (a refusal's body is not frames: after it, bytes pass through).
    HttpHead { matched: u8, seen: u8, is_101: bool },
    /// Not a WebSocket stream (an upstream refused the upgrade): no limits.
    Passthrough,
    /// Reading a frame header: `have` of `need` bytes (`need` grows once the length byte is seen).
    Header {
        have: u8,
        need: u8,
        header: [u8; 14],
    },
    /// Payload bytes left in the current frame.
    Payload(u64),
}

const FRAME_START: State = State::Header {
    have: 0,
    need: 2,
    header: [0; 14],
};

impl State {
    /// Consumes bytes of `input` up to the end of the current frame (or of the HTTP head);
    /// returns how many, and whether that reached a boundary. `fragmented` tracks whether a
    /// fragmented data message is in progress (its first frame had FIN clear).
    fn advance(&mut self, input: &[u8], fragmented: &mut bool) -> (usize, bool) {
        let mut used = 0;
        while used < input.len() {
            match self {
                State::Passthrough => return (input.len(), false),
                State::HttpHead {
                    matched,
                    seen,
                    is_101,
                } => {
                    const END: &[u8; 4] = b"\r\n\r\n";
                    let byte = input[used];
                    used += 1;
                    // "HTTP/1.1 101": the status code is bytes 9-11 of the status line.
                    if *seen < 12 {
                        if *seen == 9 {
                            *is_101 = byte == b'1';
                        } else if *seen == 10 || *seen == 11 {
                            *is_101 &= byte == if *seen == 10 { b'0' } else { b'1' };
                        }
                        *seen += 1;
                    }
                    *matched = if byte == END[*matched as usize] {
                        *matched + 1
                    } else if byte == b'\r' {
                        1
                    } else {
                        0
                    };
                    if *matched == 4 {
                        if *is_101 {
                            *self = FRAME_START;
                            return (used, true);
                        }
                        *self = State::Passthrough;
                        return (input.len(), false);
                    }
                }
                State::Header { have, need, header } => {
                    header[*have as usize] = input[used];
                    *have += 1;
                    used += 1;
                    if *have == 2 {
                        let masked = header[1] & 0x80 != 0;
                        let extended = match header[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        *need = 2 + extended + if masked { 4 } else { 0 };
                    }
                    if *have == *need {
                        let (fin, opcode) = (header[0] & 0x80 != 0, header[0] & 0x0f);
                        match opcode {
                            1 | 2 if !fin => *fragmented = true,
                            0 if fin => *fragmented = false,
                            _ => {}
                        }
                        let len = match header[1] & 0x7f {
                            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
                            127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
                            n => u64::from(n),
                        };
                        if len == 0 {
                            *self = FRAME_START;
                            return (used, true);
                        }
                        *self = State::Payload(len);
                    }
                }
                State::Payload(left) => {
                    let take = (*left).min((input.len() - used) as u64);
                    *left -= take;
                    used += take as usize;
                    if *left == 0 {
                        *self = FRAME_START;
                        return (used, true);
                    }
                }
            }
        }
        (used, false)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FrameGate<S> {
    inner: S,
    state: State,
    /// A fragmented data message is in progress: tungstenite holds its first part.
    fragmented: bool,
    /// Bytes read past a frame boundary, handed over on the next reads.
    stash: Vec<u8>,
    stash_start: usize,
}

impl<S> FrameGate<S> {
    /// For a socket whose next bytes are frames (the client side, after hyper's upgrade).
    pub fn frames(inner: S) -> Self {
        Self::with_state(inner, FRAME_START)
    }

    /// Like `frames`, with `prefix` — bytes already read from the socket (by hyper, past the
    /// upgrade request) — handed over first.
    pub fn frames_after(inner: S, prefix: &[u8]) -> Self {
        let mut gate = Self::frames(inner);
        gate.stash = prefix.to_vec();
        gate
    }

    /// For a socket whose next bytes are an HTTP response head (an upstream handshake).
    pub fn http_then_frames(inner: S) -> Self {
        Self::with_state(
            inner,
            State::HttpHead {
                matched: 0,
                seen: 0,
                is_101: false,
            },
        )
    }

    fn with_state(inner: S, state: State) -> Self {
        Self {
            inner,
            state,
            fragmented: false,
            stash: Vec::new(),
            stash_start: 0,
        }
    }

    /// True when every byte handed over so far belongs to complete frames: tungstenite's
    /// read buffer is then empty whenever it is not being polled.
    pub fn at_frame_boundary(&self) -> bool {
        self.state == FRAME_START
    }

    /// At a frame boundary and not inside a fragmented message: tungstenite holds nothing of
    /// what it read, so its state can be rebuilt without losing a byte.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && !self.fragmented
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stash_start < this.stash.len() {
            let pending = &this.stash[this.stash_start..];
            let room = pending.len().min(buf.remaining());
            let (used, _) = this.state.advance(&pending[..room], &mut this.fragmented);
            buf.put_slice(&pending[..used]);
            this.stash_start += used;
            if this.stash_start == this.stash.len() {
                // Give the memory back: the stash is only ever a few frames' worth.
                this.stash = Vec::new();
                this.stash_start = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        let (used, _) = this.state.advance(read, &mut this.fragmented);
        if used < read.len() {
            this.stash = read[used..].to_vec();
            this.stash_start = 0;
            buf.set_filled(before + used);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A masked client frame with `len` payload bytes.
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    /// Reads through the gate with `chunk`-sized reads; returns each read's length.
    async fn reads(input: Vec<u8>, chunk: usize, http: bool) -> Vec<usize> {
        let mut gate = if http {
            FrameGate::http_then_frames(&input[..])
        } else {
            FrameGate::frames(&input[..])
        };
        let mut sizes = Vec::new();
        let mut buf = vec![0u8; chunk];
        let mut all = Vec::new();
        loop {
            let n = gate.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            sizes.push(n);
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, input, "the gate never loses or reorders a byte");
        assert!(gate.at_frame_boundary());
        sizes
    }

    #[tokio::test]
    async fn one_frame_per_read() {
        let mut input = frame(1, 5);
        input.extend(frame(9, 0));
        input.extend(frame(2, 300));
        input.extend(frame(2, 70_000));
        let sizes = reads(input, 4096, false).await;
        // 11 + 6 + 308; then the 70,014-byte frame in 4 KiB reads.
        assert_eq!(&sizes[..3], &[11, 6, 308]);
        assert_eq!(sizes[3..].iter().sum::<usize>(), 70_014);
    }

    #[test]
    fn fragmented_messages_are_tracked() {
        let mut state = FRAME_START;
        let mut fragmented = false;
        let mut first = frame(1, 3);
        first[0] &= 0x7f; // FIN clear: the message continues
        state.advance(&first, &mut fragmented);
        assert!(fragmented);
        state.advance(&frame(9, 0), &mut fragmented); // a ping in between
        assert!(fragmented);
        state.advance(&frame(0, 2), &mut fragmented); // final continuation
        assert!(!fragmented && state == FRAME_START);
    }

    #[tokio::test]
    async fn a_refusal_passes_through_with_its_body() {
        let input = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope".to_vec();
        let mut gate = FrameGate::http_then_frames(&input[..]);
        let mut out = Vec::new();
        gate.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
        assert_eq!(gate.state, State::Passthrough);
    }

    #[tokio::test]
    async fn tiny_reads_cross_headers() {
        let mut input = frame(1, 200);
        input.extend(frame(2, 3));
        let sizes = reads(input.clone(), 1, false).await;
        assert_eq!(sizes.len(), input.len());
    }

    #[tokio::test]
    async fn an_http_head_ends_at_its_blank_line() {
        let mut input = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let head = input.len();
        let mut server_frame = frame(1, 4);
        server_frame[1] &= 0x7f; // unmasked, as a server sends
        server_frame.drain(2..6);
        input.extend(&server_frame);
        let sizes = reads(input, 4096, true).await;
        assert_eq!(sizes, vec![head, server_frame.len()]);
    }
}
