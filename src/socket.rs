//! `Plain`: a plain TCP connection of a session (the client's without TLS, the upstream's
//! for `ws://`), on the worker's io_uring when it has one (`ring`), else the tokio socket
//! itself. `Either` passes reads and writes to whichever it is. `ClientIo`: a client's
//! connection once hyper has handed it over after the upgrade.

use std::io;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;

#[cfg(target_os = "linux")]
pub type Plain = Either<TcpStream, crate::ring::RingStream>;
#[cfg(not(target_os = "linux"))]
pub type Plain = TcpStream;

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`, 4096 by
/// default since Linux 5.4): room for a thousand clients reconnecting at once after a
/// network blip, where tokio's default of 1024 overflowed and cost them a 1 s SYN retry.
const BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of `BACKLOG`.
pub fn listen(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As tokio's `TcpListener::bind`: a restart can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

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

#[cfg(target_os = "linux")]
fn unadopted(tcp: TcpStream) -> Plain {
    Either::Left(tcp)
}

#[cfg(not(target_os = "linux"))]
fn unadopted(tcp: TcpStream) -> Plain {
    tcp
}

/// A client connection that `client_io` left off the ring, moved onto this thread's ring.
#[cfg(target_os = "linux")]
pub fn adopt(io: ClientIo) -> io::Result<ClientIo> {
    match io {
        Either::Left(Either::Left(tcp)) => plain(tcp).map(Either::Left),
        other => Ok(other),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn adopt(io: ClientIo) -> io::Result<ClientIo> {
    Ok(io)
}

/// The client's connection after the upgrade: the TCP (maybe on the worker's ring) or TLS
/// stream itself when hyper hands it back (every read then skips hyper's upgrade wrappers),
/// else hyper's `Upgraded`.
pub type ClientIo =
    Either<Plain, Either<Box<tokio_rustls::server::TlsStream<TcpStream>>, TokioIo<Upgraded>>>;

/// Unwraps hyper's `Upgraded` into the stream it was built on, with the bytes hyper had
/// already read past the request. A plain TCP connection moves onto this worker's ring
/// (`plain`), unless the connection is bound for a session of another worker: that one
/// adopts it on its own thread (`adopt`), since a ring socket works only on its ring's.
pub fn client_io(upgraded: Upgraded, here: bool) -> std::io::Result<(ClientIo, Bytes)> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner();
            let tcp = if here { plain(tcp)? } else { unadopted(tcp) };
            return Ok((Either::Left(tcp), parts.read_buf));
        }
        Err(other) => other,
    };
    Ok(
        match upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
            Ok(parts) => (
                Either::Right(Either::Left(Box::new(parts.io.into_inner()))),
                parts.read_buf,
            ),
            Err(other) => (
                Either::Right(Either::Right(TokioIo::new(other))),
                Bytes::new(),
            ),
        },
    )
}
