//! One client connection's HTTP/1.1 service (hyper): WebSocket upgrades go to
//! `ws::accept`, everything else to `forward` (plain HTTP passthrough). Connections over
//! `max_connections` are answered 503 on every request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use crate::app::Shared;
use crate::ws::handshake::{HandshakeError, is_websocket_upgrade};

/// The body type of every response holdfast writes.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the legacy ones proxies also drop.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The largest request head (request line and headers) accepted, in bytes.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// What the service knows about the connection it serves.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Held for the connection's life, and by any session it upgrades to; `None` when the
    /// connection arrived over `max_connections`.
    pub permit: Option<Arc<OwnedSemaphorePermit>>,
}

/// Serves HTTP/1.1 on one accepted connection until it closes or upgrades.
pub async fn serve<I>(io: I, conn: ConnInfo, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = shared.config.load().listen.handshake_timeout;
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| {
        let (conn, shared) = (conn.clone(), shared.clone());
        async move { Ok::<_, Infallible>(handle(req, conn, shared).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        // Request heads larger than this are refused with 431 (nginx allows 4 × 8 KiB).
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, conn: ConnInfo, shared: Arc<Shared>) -> Response<Body> {
    if conn.permit.is_none() {
        tracing::debug!(peer = %conn.peer, "over max_connections: 503");
        if is_websocket_upgrade(req.headers()) {
            shared.metrics.handshake_rejected(503);
        } else {
            shared.metrics.http_request(503);
        }
        return HandshakeError::Overloaded.into_response();
    }
    // hyper bounds what it buffers (`max_buf_size`) but lets a head somewhat over the limit
    // through; the limit itself is enforced here.
    let head: usize = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > MAX_REQUEST_HEAD {
        let websocket = is_websocket_upgrade(req.headers());
        tracing::debug!(peer = %conn.peer, bytes = head, "request head too large: 431");
        if websocket {
            shared.metrics.handshake_rejected(431);
        } else {
            shared.metrics.http_request(431);
        }
        return HandshakeError::HeadTooLarge.into_response();
    }
    if is_websocket_upgrade(req.headers()) {
        crate::ws::accept(req, conn, shared).await
    } else {
        crate::forward::forward(req, conn, shared).await
    }
}
