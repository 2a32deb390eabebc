//! One client connection's HTTP service (hyper), HTTP/1.1 (`serve`) or HTTP/2 (`serve_h2`,
//! on a TLS connection that chose `h2`): WebSocket upgrades and RFC 8441 extended CONNECT
//! streams go to `ws::accept`, everything else to `http::forward` (plain HTTP passthrough).
//! Connections over `max_connections` are answered 503 on every request.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// Serves HTTP/2 on one accepted TLS connection until it closes. Each stream is a
/// request, or a WebSocket session (extended CONNECT, RFC 8441) relayed to the upstream
/// over HTTP/1.1 like any other. On shutdown the connection gets a GOAWAY: no new streams,
/// and its sessions drain like every other session.
pub async fn serve_h2<I>(io: I, conn: ConnInfo, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (h2, ping, idle_after) = {
        let config = shared.config.load();
        (
            config.listen.http2,
            config.websocket.ping_interval,
            config.listen.handshake_timeout,
        )
    };
    let shutdown = shared.shutdown.clone();
    // Every request and session of the connection holds a clone of its permit: with none
    // but this one and the service's, the connection has no stream open.
    let permit = conn.permit.clone();
    let service = service_fn(move |req| {
        let (conn, shared) = (conn.clone(), shared.clone());
        async move { Ok::<_, Infallible>(handle(req, conn, shared).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(h2.max_concurrent_streams)
        // Flow control per stream, and a connection window with room for every stream's:
        // a session whose client (or upstream) stops reading fills its own window only.
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window())
        .max_send_buf_size(h2.stream_window as usize)
        .max_header_list_size(MAX_REQUEST_HEAD as u32)
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels at once are
        // counted, and past this many pending the connection gets a GOAWAY.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams holdfast itself had to reset for a client's errors, before a GOAWAY.
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        // A connection whose peer is gone is found by HTTP/2 pings, as sessions find a
        // silent peer by WebSocket pings.
        .keep_alive_interval(ping);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // A connection without a stream through a whole `handshake_timeout` is closed (GOAWAY),
    // as an idle HTTP/1.1 connection is: it holds a `max_connections` permit.
    let mut idle_check =
        tokio::time::interval_at(tokio::time::Instant::now() + idle_after, idle_after);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_ticks = 0u8;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                break connection.await;
            }
            _ = idle_check.tick() => {
                let open_streams = permit
                    .as_ref()
                    .map_or(0, |p| Arc::strong_count(p).saturating_sub(2));
                idle_ticks = if open_streams == 0 { idle_ticks + 1 } else { 0 };
                // No stream at two checks in a row, one interval apart.
                if idle_ticks >= 2 {
                    tracing::debug!("HTTP/2 connection idle: GOAWAY");
                    connection.as_mut().graceful_shutdown();
                    break connection.await;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// Streams a client may open and reset before the server has accepted them (h2's own
/// default, named here: it is the rapid-reset guard).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams holdfast may reset for protocol errors on one connection before a GOAWAY.
const H2_MAX_LOCAL_RESETS: usize = 1024;

/// A WebSocket handshake in either form: an HTTP/1.1 upgrade, or an HTTP/2 CONNECT (with
/// any `:protocol`: a wrong one is refused with a status by `ws::accept`).
fn is_websocket(req: &Request<Incoming>) -> bool {
    is_websocket_upgrade(req.headers())
        || (req.method() == hyper::Method::CONNECT
            && req.extensions().get::<hyper::ext::Protocol>().is_some())
}

async fn handle(req: Request<Incoming>, conn: ConnInfo, shared: Arc<Shared>) -> Response<Body> {
    if conn.permit.is_none() {
        tracing::debug!(peer = %conn.peer, "over max_connections: 503");
        if is_websocket(&req) {
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
        let websocket = is_websocket(&req);
        tracing::debug!(peer = %conn.peer, bytes = head, "request head too large: 431");
        if websocket {
            shared.metrics.handshake_rejected(431, &conn.unrouted());
        } else {
            shared.metrics.http_request(431, &conn.unrouted());
        }
        return HandshakeError::HeadTooLarge.into_response();
    }
    if is_websocket(&req) {
        crate::ws::accept(req, conn, shared).await
    } else {
        crate::http::forward::forward(req, conn, shared).await
    }
}
