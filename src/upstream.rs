//! Reaching the upstream: the endpoint pool (round robin), name resolution at every
//! connect, TCP + optional TLS dial with `connect_timeout`. Used by the WebSocket
//! handshake (`ws/handshake.rs`) and the plain HTTP passthrough (`forward.rs`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::config::{Endpoint, Upstream};
use crate::socket::{Plain, plain};

/// A connection to an upstream, plain or TLS.
/// The TLS variant is boxed: a rustls connection is over a kilobyte, and plain sessions
/// should not carry that size in their task.
pub type UpstreamIo = Either<Plain, Box<TlsStream<TcpStream>>>;

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

/// One member of the pool: an endpoint and one address it resolved to. A host name that
/// resolves to several addresses (a Kubernetes headless Service) gives several members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub endpoint: Endpoint,
    pub addr: SocketAddr,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.endpoint.host == self.addr.ip().to_string() {
            write!(f, "{}", self.endpoint)
        } else {
            write!(f, "{} ({})", self.endpoint, self.addr)
        }
    }
}

/// The order in which to try `n` members: round robin from `cursor`, with members that
/// failed recently moved to the back (still tried, after every healthy one).
pub fn try_order(n: usize, cursor: usize, recently_failed: impl Fn(usize) -> bool) -> Vec<usize> {
    let rotated = (0..n).map(|i| (cursor + i) % n);
    let (healthy, failed): (Vec<usize>, Vec<usize>) = rotated.partition(|&i| !recently_failed(i));
    healthy.into_iter().chain(failed).collect()
}

/// How endpoint host names become addresses. `System` asks the system resolver at every
/// connect; `Static` answers from a fixed table (tests, and embedding holdfast where names
/// come from elsewhere) and falls back to the system resolver for other names.
#[derive(Debug, Clone, Default)]
pub enum Resolver {
    #[default]
    System,
    Static(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Resolver {
    /// Every address `endpoint` resolves to now.
    pub async fn resolve(&self, endpoint: &Endpoint) -> Result<Vec<SocketAddr>, DialError> {
        if let Resolver::Static(table) = self
            && let Some(ips) = table.get(&endpoint.host)
        {
            return Ok(ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, endpoint.port))
                .collect());
        }
        resolve(endpoint).await
    }
}

/// Round robin over the pool's members, remembering which addresses just failed and
/// pacing reconnects to each address.
#[derive(Debug, Default)]
pub struct Pool {
    /// Each route's round-robin cursor (a shared one would let two routes' alternating
    /// sessions send every session of one route to the same member).
    next: Mutex<HashMap<String, usize>>,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    /// Per address and `restart.max_reconnecting`: its turns. Keyed by both, so that
    /// routes reaching one address with different limits each keep theirs, instead of
    /// replacing one another's semaphore (and its spent permits) back and forth.
    turns: Mutex<HashMap<(SocketAddr, usize), Arc<Semaphore>>>,
    resolver: Resolver,
}

/// A turn to reconnect to one address: held for the TCP connect and the handshake.
#[derive(Debug)]
pub struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Pool {
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            ..Self::default()
        }
    }

    /// Connects to the next endpoint (plain HTTP passthrough): resolved now, its addresses
    /// tried in order.
    pub async fn dial_next(
        &self,
        route: &str,
        config: &Upstream,
    ) -> Result<(Endpoint, UpstreamIo), (Endpoint, DialError)> {
        let endpoint = self.pick(route, &config.endpoints);
        let mut last = None;
        for addr in self
            .resolver
            .resolve(endpoint)
            .await
            .map_err(|e| (endpoint.clone(), e))?
        {
            match dial_addr(endpoint, addr, config).await {
                Ok(io) => return Ok((endpoint.clone(), io)),
                Err(e) => last = Some(e),
            }
        }
        let error = last.unwrap_or(DialError::NoAddress {
            host: endpoint.host.clone(),
        });
        Err((endpoint.clone(), error))
    }

    /// The endpoint to try next (no resolution): plain HTTP passthrough uses this.
    pub fn pick<'a>(&self, route: &str, endpoints: &'a [Endpoint]) -> &'a Endpoint {
        &endpoints[self.cursor(route) % endpoints.len()]
    }

    /// The next round-robin position of `route`'s pool.
    fn cursor(&self, route: &str) -> usize {
        let mut next = self.next.lock().expect("pool lock");
        let cursor = match next.get_mut(route) {
            Some(cursor) => cursor,
            None => next.entry(route.to_owned()).or_default(),
        };
        let now = *cursor;
        *cursor = now.wrapping_add(1);
        now
    }

    /// Forgets the round-robin positions of routes `keep` does not name (after a reload:
    /// renamed routes leave nothing behind).
    pub fn keep_cursors<'a>(&self, keep: impl Iterator<Item = &'a str>) {
        let keep: Vec<&str> = keep.collect();
        self.next
            .lock()
            .expect("pool lock")
            .retain(|route, _| keep.contains(&route.as_str()));
    }

    /// Resolves every endpoint now and returns the members in the order to try them:
    /// round robin, members that failed within `window` last. Names that do not resolve
    /// are logged and left out.
    pub async fn members(
        &self,
        route: &str,
        endpoints: &[Endpoint],
        window: Duration,
    ) -> Vec<Member> {
        let mut members = Vec::new();
        for endpoint in endpoints {
            match self.resolver.resolve(endpoint).await {
                Ok(addrs) => members.extend(addrs.into_iter().map(|addr| Member {
                    endpoint: endpoint.clone(),
                    addr,
                })),
                Err(e) => {
                    tracing::warn!(upstream = %endpoint, error = %e, "cannot resolve upstream")
                }
            }
        }
        if members.is_empty() {
            return members;
        }
        let cursor = self.cursor(route);
        let now = Instant::now();
        let mut failed = self.failed.lock().expect("pool lock");
        // A failure older than the window moves no one any more: it is forgotten, so the
        // addresses of pods that are gone do not pile up here.
        if !failed.is_empty() {
            failed.retain(|_, at| now.duration_since(*at) < window);
        }
        let order = try_order(members.len(), cursor, |i| {
            failed.contains_key(&members[i].addr)
        });
        order.into_iter().map(|i| members[i].clone()).collect()
    }

    /// Did `addr` fail within `window`?
    pub fn is_recently_failed(&self, addr: SocketAddr, window: Duration) -> bool {
        self.failed
            .lock()
            .expect("pool lock")
            .get(&addr)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Waits for a turn to reconnect to `addr`: at most `limit` reconnect tries are in
    /// flight at once per address (`restart.max_reconnecting`; 0 = no limit), the others
    /// wait in arrival order. Thousands of sessions held across one restart would otherwise
    /// dial the new instance together and overflow its accept queue, and a dropped SYN is
    /// retried by the kernel only after 1 s, then 2 s, then 4 s.
    pub async fn reconnect_turn(&self, addr: SocketAddr, limit: usize) -> Turn {
        if limit == 0 {
            return Turn { _permit: None };
        }
        let turns = {
            let mut all = self.turns.lock().expect("pool lock");
            match all.get(&(addr, limit)) {
                Some(turns) => turns.clone(),
                None => {
                    // New address, or a new limit (tries holding a turn of the old
                    // semaphore finish on it). Addresses nobody waits on or connects to
                    // are forgotten here, so pods coming and going leave nothing behind.
                    all.retain(|_, turns| Arc::strong_count(turns) > 1);
                    let turns = Arc::new(Semaphore::new(limit));
                    all.insert((addr, limit), turns.clone());
                    turns
                }
            }
        };
        // The semaphore is never closed: acquiring fails only if it were.
        Turn {
            _permit: turns.acquire_owned().await.ok(),
        }
    }

    pub fn mark_failed(&self, addr: SocketAddr) {
        self.failed
            .lock()
            .expect("pool lock")
            .insert(addr, Instant::now());
    }

    pub fn mark_ok(&self, addr: SocketAddr) {
        let mut failed = self.failed.lock().expect("pool lock");
        if !failed.is_empty() {
            failed.remove(&addr);
        }
    }
}

/// Resolves `endpoint` with the system resolver (a name may map to a different set of
/// addresses at every connect).
async fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, DialError> {
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
            let tcp = plain(tcp).map_err(|source| DialError::Io { addr, source })?;
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
        Ok(Either::Right(Box::new(tls)))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(DialError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failures are remembered only as long as they matter: pods that come and go must not
    /// leave an entry each behind.
    #[tokio::test]
    async fn failures_older_than_the_window_are_forgotten() {
        let pool = Pool::default();
        let endpoint = Endpoint {
            secure: false,
            host: "127.0.0.1".into(),
            port: 9,
        };
        let (gone, live): (SocketAddr, SocketAddr) = (
            "127.0.0.2:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
        );
        pool.mark_failed(gone);
        pool.mark_failed(live);
        let hour = Duration::from_secs(3600);
        pool.members("default", std::slice::from_ref(&endpoint), hour)
            .await;
        assert!(
            pool.is_recently_failed(gone, hour),
            "within the window: kept"
        );
        pool.members("default", std::slice::from_ref(&endpoint), Duration::ZERO)
            .await;
        assert!(
            pool.failed.lock().unwrap().is_empty(),
            "past the window: forgotten"
        );
    }

    #[test]
    fn round_robin_with_recent_failures_last() {
        assert_eq!(try_order(3, 0, |_| false), vec![0, 1, 2]);
        assert_eq!(try_order(3, 4, |_| false), vec![1, 2, 0]);
        assert_eq!(try_order(3, 0, |i| i == 0), vec![1, 2, 0]);
        assert_eq!(try_order(4, 1, |i| i == 2), vec![1, 3, 0, 2]);
        assert_eq!(
            try_order(2, 0, |_| true),
            vec![0, 1],
            "all failed: still tried, in turn"
        );
        assert!(try_order(0, 3, |_| false).is_empty());
    }
}
