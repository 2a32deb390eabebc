//! HTTP pieces every stage that speaks HTTP shares, below the WebSocket layer: response
//! bodies (`body`), header rules (`headers`: hop-by-hop, `X-Forwarded-*`, upgrade
//! detection), the one place a refused handshake becomes a status (`refusal`), and plain
//! HTTP forwarding to the upstream (`forward`). The per-connection service that chooses
//! between a WebSocket upgrade and forwarding lives above, in `listener::service`.

pub mod body;
pub mod forward;
pub mod headers;
pub mod refusal;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

pub use body::{Body, full};
pub use refusal::HandshakeError;

/// The largest request head (request line and headers) accepted, in bytes.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

impl ConnInfo {
    /// The permits a session on this connection holds; `None` over `max_connections`
    /// (an HTTP/2 stream when every permit is taken).
    pub fn session_permits(
        &self,
        all: &Arc<tokio::sync::Semaphore>,
    ) -> Option<crate::shared::Permits> {
        let stream = match self.protocol {
            "h2" => Some(all.clone().try_acquire_owned().ok()?),
            _ => None,
        };
        Some(crate::shared::Permits {
            connection: self.permit.clone(),
            stream,
        })
    }

    /// The metric labels of a request on this connection before (or without) a route.
    pub fn unrouted(&self) -> crate::metrics::SessionLabels {
        self.labels(crate::metrics::NO_ROUTE.into())
    }

    /// The metric labels of a request on this connection that took `route`.
    pub fn labels(&self, route: std::sync::Arc<str>) -> crate::metrics::SessionLabels {
        crate::metrics::SessionLabels {
            route,
            protocol: self.protocol,
        }
    }
}

/// What the service knows about the connection it serves.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// `http1` or `h2`: the protocol label of what this connection carries.
    pub protocol: &'static str,
    /// Held for the connection's life, and by any session it upgrades to; `None` when the
    /// connection arrived over `max_connections`.
    pub permit: Option<Arc<OwnedSemaphorePermit>>,
}
