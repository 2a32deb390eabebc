//! Plain HTTP passthrough (SPEC §3.1): a non-upgrade request is sent to the next upstream
//! endpoint (`http`/`https` for `ws`/`wss`) with its body streamed both ways, hop-by-hop
//! headers removed and `X-Forwarded-*` added. An unreachable upstream is a 502.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::http::headers::request_host;
use crate::http::headers::{add_forwarded, copy_end_to_end};
use crate::http::{Body, ConnInfo, HandshakeError, full};
use crate::shared::Shared;

fn bad_gateway(why: impl std::fmt::Display) -> Response<Body> {
    let mut response = Response::new(full(format!("bad gateway: {why}\n")));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub async fn forward(
    req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Response<Body> {
    if req.method() == http::Method::CONNECT {
        // holdfast is a reverse proxy: a CONNECT that is not a WebSocket tunnels nowhere.
        shared.metrics.http_request(405, &conn.unrouted());
        let mut response = Response::new(full("CONNECT is only for WebSockets here\n"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    let config = shared.config.load_full();
    let host = request_host(&req);
    let Some(route) = config.pick(host.as_deref(), req.uri().path()) else {
        tracing::debug!(peer = %conn.peer, host = ?host, path = %req.uri().path(), "no route: 404");
        shared.metrics.http_request(404, &conn.unrouted());
        return HandshakeError::NoRoute.into_response();
    };
    let labels = conn.labels(route.name.clone());
    let response = pass(req, conn, &route.view, &shared).await;
    shared
        .metrics
        .http_request(response.status().as_u16(), &labels);
    response
}

async fn pass(
    req: Request<Incoming>,
    conn: ConnInfo,
    config: &Config,
    shared: &Shared,
) -> Response<Body> {
    let (endpoint, io) = match shared.pool.dial_next(&config.route, &config.upstream).await {
        Ok(pair) => pair,
        Err((endpoint, e)) => {
            tracing::warn!(upstream = %endpoint, error = %e, "HTTP passthrough: upstream unreachable");
            return bad_gateway(e);
        }
    };
    // One upstream connection per request: passthrough is for the occasional health check
    // or asset next to the WebSocket, not a high-volume HTTP path.
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
            Ok(pair) => pair,
            Err(e) => return bad_gateway(e),
        };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP passthrough upstream connection ended with an error");
        }
    });

    let (parts, body) = req.into_parts();
    // The host the request was routed by (`headers::request_host`): the URI's authority
    // (HTTP/2's `:authority`, an absolute-form target) before `Host`.
    let forwarded_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let headers = builder.headers_mut().expect("builder has no error yet");
    copy_end_to_end(&parts.headers, headers, &[header::HOST]);
    add_forwarded(headers, conn.peer, conn.tls, forwarded_host.as_ref(), false);
    if let Ok(host) = HeaderValue::from_str(&endpoint.authority()) {
        headers.insert(header::HOST, host);
    }
    let outgoing = match builder.body(body) {
        Ok(r) => r,
        Err(e) => return bad_gateway(e),
    };
    match sender.send_request(outgoing).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let mut out = Response::new(body.boxed());
            *out.status_mut() = parts.status;
            copy_end_to_end(&parts.headers, out.headers_mut(), &[]);
            out
        }
        Err(e) => {
            tracing::warn!(upstream = %endpoint, error = %e, "HTTP passthrough: upstream failed");
            bad_gateway(e)
        }
    }
}
