//! `HeadGate`: an I/O adapter under tungstenite's client handshake. An upstream's 101 is
//! handed over only up to its blank line; bytes after it (frames the upstream sent right
//! away) stay in the gate, and `into_parts` gives them to the session's `WsConn`. A refusal
//! (any other status) passes through whole, so tungstenite sees its body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the gate is in the incoming byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Until `\r\n\r\n`: `matched` bytes of it seen so far; `is_101` once the status line
    /// has been seen.
    Head { matched: u8, seen: u8, is_101: bool },
    /// A 101's head is complete: nothing more is handed over.
    Upgraded,
    /// Not a WebSocket stream (the upstream refused the upgrade): no limits.
    Passthrough,
}

impl State {
    /// Consumes bytes of `input` up to the end of the head; returns how many.
    fn advance(&mut self, input: &[u8]) -> usize {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (used, &byte) in input.iter().enumerate() {
            let State::Head {
                matched,
                seen,
                is_101,
            } = self
            else {
                break;
            };
            // "HTTP/1.1 101": the status code is bytes 9-11 of the status line.
            if *seen < 12 {
                match *seen {
                    9 => *is_101 = byte == b'1',
                    10 => *is_101 &= byte == b'0',
                    11 => *is_101 &= byte == b'1',
                    _ => {}
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
                    *self = State::Upgraded;
                    return used + 1;
                }
                *self = State::Passthrough;
            }
        }
        match self {
            State::Upgraded => 0,
            _ => input.len(),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct HeadGate<S> {
    inner: S,
    state: State,
    /// Bytes read past a 101's head.
    rest: Vec<u8>,
}

impl<S> HeadGate<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: State::Head {
                matched: 0,
                seen: 0,
                is_101: false,
            },
            rest: Vec::new(),
        }
    }

    /// The socket, and the bytes read past the head.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.inner, self.rest)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state == State::Upgraded {
            // tungstenite stops reading once it has the head; this is only ever a bug.
            return Poll::Ready(Err(io::Error::other("read past the upgrade response")));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        let used = this.state.advance(read);
        if used < read.len() {
            this.rest = read[used..].to_vec();
            buf.set_filled(before + used);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGate<S> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_refusal_passes_through_with_its_body() {
        let input = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope".to_vec();
        let mut gate = HeadGate::new(&input[..]);
        let mut out = Vec::new();
        gate.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
        assert_eq!(gate.state, State::Passthrough);
    }

    #[tokio::test]
    async fn a_101_ends_at_its_blank_line_and_keeps_what_follows() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let mut input = head.clone();
        input.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let mut gate = HeadGate::new(&input[..]);
        let mut buf = vec![0u8; 4096];
        let n = gate.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &head[..]);
        let (_, rest) = gate.into_parts();
        assert_eq!(rest, [0x81, 0x02, b'h', b'i']);
    }

    #[tokio::test]
    async fn a_head_split_across_reads_is_found() {
        let head = b"HTTP/1.1 101 OK\r\nA: b\r\n\r\n";
        let mut input = head.to_vec();
        input.push(0x8a);
        let mut gate = HeadGate::new(&input[..]);
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        while got.len() < head.len() {
            let n = gate.read(&mut one).await.unwrap();
            got.extend_from_slice(&one[..n]);
        }
        assert_eq!(got, head);
        let (unread, rest) = gate.into_parts();
        assert!(rest.is_empty());
        assert_eq!(unread, [0x8a]);
    }
}
