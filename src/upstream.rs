//! Reaching the upstream: the endpoint pool (round robin), name resolution at every
//! connect, TCP + optional TLS dial with `connect_timeout`. Used by the WebSocket
//! handshake (`ws/handshake.rs`) and the plain HTTP passthrough (`forward.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::config::{Endpoint, Upstream};

/// A connection to an upstream, plain or TLS.
pub type UpstreamIo = Either<TcpStream, TlsStream<TcpStream>>;

/// Why a dial failed; the variant is the `result` label of `holdfast_upstream_connects_total`.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connection refused by {0}")]
    Refused(SocketAddr),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("TLS with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("connect to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

impl DialError {
    /// The bounded label value for metrics.
    pub fn result_label(&self) -> &'static str {
        match self {
            DialError::Refused(_) => "refused",
            DialError::Timeout(_) => "timeout",
            _ => "error",
        }
    }
}

/// Round-robin choice over the configured endpoints.
#[derive(Debug, Default)]
pub struct Pool {
    next: AtomicUsize,
}

impl Pool {
    /// The endpoint to try next, given the current endpoint list.
    pub fn pick<'a>(&self, endpoints: &'a [Endpoint]) -> &'a Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &endpoints[i % endpoints.len()]
    }
}

/// Resolves `endpoint` now (a name may map to a different set of addresses at every connect).
pub async fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, DialError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| DialError::Resolve {
            host: endpoint.host.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(DialError::NoAddress {
            host: endpoint.host.clone(),
        });
    }
    Ok(addrs)
}

/// Connects to one address of `endpoint`, with TLS for `wss://`, within `connect_timeout`.
pub async fn dial_addr(
    endpoint: &Endpoint,
    addr: SocketAddr,
    config: &Upstream,
) -> Result<UpstreamIo, DialError> {
    let timeout = config.connect_timeout;
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::ConnectionRefused => DialError::Refused(addr),
                _ => DialError::Io { addr, source },
            })?;
        // Frames are small and latency-sensitive; never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if !endpoint.secure {
            return Ok(Either::Left(tcp));
        }
        let name = config
            .server_name
            .clone()
            .unwrap_or_else(|| endpoint.host.clone());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| DialError::ServerName(name.clone()))?;
        let tls = TlsConnector::from(config.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|source| DialError::Tls { host: name, source })?;
        Ok(Either::Right(tls))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(DialError::Timeout(timeout)))
}

/// Resolves `endpoint` and tries its addresses in order until one connects.
pub async fn dial(endpoint: &Endpoint, config: &Upstream) -> Result<UpstreamIo, DialError> {
    let mut last = None;
    for addr in resolve(endpoint).await? {
        match dial_addr(endpoint, addr, config).await {
            Ok(io) => return Ok(io),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DialError::NoAddress {
        host: endpoint.host.clone(),
    }))
}
