//! One client connection's HTTP/1.1 service (hyper): WebSocket upgrades go to
//! `ws::accept`, everything else to `http::forward` (plain HTTP passthrough). Connections
//! over `max_connections` are answered 503 on every request.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::headers::is_websocket_upgrade;
use crate::http::{Body, ConnInfo, HandshakeError, MAX_REQUEST_HEAD};
use crate::shared::Shared;

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
            shared.metrics.handshake_rejected(503, &conn.unrouted());
        } else {
            shared.metrics.http_request(503, &conn.unrouted());
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
            shared.metrics.handshake_rejected(431, &conn.unrouted());
        } else {
            shared.metrics.http_request(431, &conn.unrouted());
        }
        return HandshakeError::HeadTooLarge.into_response();
    }
    if is_websocket_upgrade(req.headers()) {
        crate::ws::accept(req, conn, shared).await
    } else {
        crate::http::forward::forward(req, conn, shared).await
    }
}
