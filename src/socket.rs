//! `Plain`: a plain TCP connection of a session (the client's without TLS, the upstream's
//! for `ws://`), on the worker's io_uring when it has one (`ring`), else the tokio socket
//! itself. `Either` passes reads and writes to whichever it is.
//!
//! `Written` says when written bytes are with the kernel: at once for a socket whose
//! `write` is a system call, when the send completes for a ring socket (whose writes only
//! copy into its outgoing buffer). A hold uses it to let a message go only once it is out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio_util::either::Either;

#[cfg(target_os = "linux")]
pub type Plain = Either<TcpStream, crate::ring::RingStream>;
#[cfg(not(target_os = "linux"))]
pub type Plain = TcpStream;

/// `tcp` on this thread's ring, if it has one.
#[cfg(target_os = "linux")]
pub fn plain(tcp: TcpStream) -> io::Result<Plain> {
    Ok(match crate::ring::RingStream::adopt(tcp)? {
        Ok(ring) => Either::Right(ring),
        Err(tcp) => Either::Left(tcp),
    })
}

#[cfg(not(target_os = "linux"))]
pub fn plain(tcp: TcpStream) -> io::Result<Plain> {
    Ok(tcp)
}

/// See the module documentation.
pub trait Written {
    /// Ready once every byte written (and flushed) so far is with the kernel.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Written for TcpStream {
    fn poll_written(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A TLS stream's flush writes its records with system calls on the TCP socket.
impl<S> Written for Box<tokio_rustls::client::TlsStream<S>> {
    fn poll_written(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(target_os = "linux")]
impl Written for crate::ring::RingStream {
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        crate::ring::RingStream::poll_written(self, cx)
    }
}

impl<L: Written, R: Written> Written for Either<L, R> {
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Either::Left(l) => l.poll_written(cx),
            Either::Right(r) => r.poll_written(cx),
        }
    }
}

/// Waits until `io` has handed everything written to the kernel.
pub async fn written<W: Written + Unpin>(io: &mut W) -> io::Result<()> {
    std::future::poll_fn(|cx| Pin::new(&mut *io).get_mut().poll_written(cx)).await
}
