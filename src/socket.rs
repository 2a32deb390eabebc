//! `Plain`: a plain TCP connection of a session (the client's without TLS, the upstream's
//! for `ws://`), on the worker's io_uring when it has one (`ring`), else the tokio socket
//! itself. `Either` passes reads and writes to whichever it is.

use std::io;

use tokio::net::TcpStream;
#[cfg(target_os = "linux")]
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
