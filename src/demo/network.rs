//! The demo's network: the one address a client of the demo connects to. WebSocket
//! handshakes are relayed byte for byte to the current holdfast (the way a load balancer
//! would), and every relayed connection can be cut at once (a reset both ways, as a lost
//! network does) or sent to another holdfast from now on. With a page to serve, any other
//! HTTP request goes to it instead. The tests and the benchmark cut connections with it too
//! (`Network::start`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How much of a request is looked at to tell a WebSocket handshake from a page request,
/// and for how long.
const HEAD_LIMIT: usize = 8 * 1024;
const HEAD_WAIT: Duration = Duration::from_secs(5);

/// Where a connection goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Relay,
    Page,
}

/// What a connection is, from the bytes it sent first: `None` while its head is incomplete.
/// A head that does not fit `HEAD_LIMIT` goes to the relay, which refuses it as holdfast does.
pub fn route(head: &[u8]) -> Option<Route> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (head.len() >= HEAD_LIMIT).then_some(Route::Relay);
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let upgrade = text.lines().skip(1).any(|line| {
        line.split_once(':')
            .is_some_and(|(name, value)| name.trim() == "upgrade" && value.contains("websocket"))
    });
    Some(if upgrade { Route::Relay } else { Route::Page })
}

/// The demo's front door (see the module documentation).
pub struct Network {
    pub addr: SocketAddr,
    /// The current connections' cut and their relay tasks, replaced at every cut.
    cut: Mutex<(CancellationToken, TaskTracker)>,
    /// Where new WebSocket connections go.
    target: Mutex<SocketAddr>,
}

impl Network {
    /// A relay on a free loopback port in front of `target`, relaying everything.
    pub async fn start(target: SocketAddr) -> Arc<Network> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let (network, listener) = Network::bind(loopback, target)
            .await
            .expect("a loopback port for the relay");
        network.serve(listener, None::<fn(TcpStream) -> std::future::Ready<()>>);
        network
    }

    /// Listens on `listen` (with room for a thousand connections at once, as a load
    /// balancer would have), relaying to `target` until told otherwise.
    pub async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<(Arc<Network>, TcpListener)> {
        let listener = crate::socket::listen(listen)?;
        let network = Arc::new(Network {
            addr: listener.local_addr()?,
            cut: Mutex::default(),
            target: Mutex::new(target),
        });
        Ok((network, listener))
    }

    /// Serves the connections `listener` accepts: `page` takes what is not a WebSocket
    /// handshake (without one, everything is relayed).
    pub fn serve<P, F>(self: &Arc<Self>, listener: TcpListener, page: Option<P>)
    where
        P: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let page = page.map(Arc::new);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let this = this.clone();
                let page = page.clone();
                tokio::spawn(async move {
                    let route = match &page {
                        None => Route::Relay,
                        Some(_) => match head_of(&tcp).await {
                            Some(route) => route,
                            None => return,
                        },
                    };
                    match (route, page) {
                        (Route::Page, Some(page)) => page(tcp).await,
                        _ => this.relay(tcp),
                    }
                });
            }
        });
    }

    fn relay(&self, mut inbound: TcpStream) {
        let (cut, tasks) = self.cut.lock().expect("demo lock").clone();
        let target = *self.target.lock().expect("demo lock");
        tasks.spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                biased;
                _ = cut.cancelled() => {
                    // Reset both ways, as a network that drops does (no close frames).
                    let _ = inbound.set_zero_linger();
                    let _ = outbound.set_zero_linger();
                }
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }

    /// Resets every relayed connection now; new ones are relayed as before.
    pub fn cut(&self) {
        let _ = self.cut_started();
    }

    /// Resets every relayed connection and returns once they are all closed, so nothing
    /// sent after it goes through an old connection.
    pub async fn cut_and_wait(&self) {
        self.cut_started().wait().await;
    }

    fn cut_started(&self) -> TaskTracker {
        let (cut, tasks) = std::mem::take(&mut *self.cut.lock().expect("demo lock"));
        cut.cancel();
        tasks.close();
        tasks
    }

    /// New WebSocket connections go to `target` from now on.
    pub fn point_at(&self, target: SocketAddr) {
        *self.target.lock().expect("demo lock") = target;
    }
}

/// Waits for the connection's request head (without taking it off the socket) and routes
/// it; `None` if it does not come in time or the connection ends first.
async fn head_of(tcp: &TcpStream) -> Option<Route> {
    let mut buf = vec![0u8; HEAD_LIMIT];
    let deadline = tokio::time::Instant::now() + HEAD_WAIT;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if let Some(route) = route(&buf[..n]) {
            return Some(route);
        }
        // Part of the head is in: `peek` would return at once until more arrives.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_handshakes_are_relayed_and_other_requests_served() {
        let cases: [(&[u8], Option<Route>); 6] = [
            (
                b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                Some(Route::Relay),
            ),
            (
                b"GET /feed HTTP/1.1\r\nupgrade:WebSocket\r\n\r\n",
                Some(Route::Relay),
            ),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(Route::Page)),
            (
                b"POST /control/cut HTTP/1.1\r\nX-Upgrade: websocket\r\n\r\n",
                Some(Route::Page),
            ),
            (b"GET / HTTP/1.1\r\nHost: x\r\n", None),
            (&[b'a'; HEAD_LIMIT], Some(Route::Relay)),
        ];
        for (head, expected) in cases {
            assert_eq!(
                route(head),
                expected,
                "{:?}",
                String::from_utf8_lossy(&head[..head.len().min(60)])
            );
        }
    }
}
