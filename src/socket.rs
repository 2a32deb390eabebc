//! `Plain`: a plain TCP connection of a session (the client's without TLS, the upstream's
//! for `ws://`), on the worker's io_uring when it has one (`ring.rs`), else the tokio socket
//! itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum Plain {
    Tcp(TcpStream),
    #[cfg(target_os = "linux")]
    Ring(crate::ring::RingStream),
}

impl Plain {
    /// `tcp` on this thread's ring, if it has one.
    pub fn new(tcp: TcpStream) -> io::Result<Plain> {
        #[cfg(target_os = "linux")]
        let tcp = match crate::ring::RingStream::adopt(tcp)? {
            Ok(ring) => return Ok(Plain::Ring(ring)),
            Err(tcp) => tcp,
        };
        Ok(Plain::Tcp(tcp))
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Plain::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(target_os = "linux")]
            Plain::Ring($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Plain::Tcp(s) => s.is_write_vectored(),
            #[cfg(target_os = "linux")]
            Plain::Ring(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}
