//! The WebSocket side of the proxy: `handshake` (validate, dial upstream, 101),
//! `session` (the session task: relaying and closing), `hold` (holding across upstream
//! restarts), `close` (the close-code pipeline, pure), `frame` (the frame format, pure),
//! `conn` (a WebSocket connection over it), `gate` (the upstream handshake's head).

pub mod ends;
pub mod gate;
pub mod handshake;
pub mod hold;
pub mod session;
pub mod woken;

use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::config::{self, Config};
use crate::http::HandshakeError;
use crate::http::{Body, ConnInfo};
use crate::policy::token;
use crate::shared::Shared;
use crate::socket::{Plain, plain};
use crate::upstream;
use handshake::{UpstreamSocket, UpstreamTemplate};

/// The client's connection after the upgrade: the TCP (maybe on the worker's ring) or TLS
/// stream itself when hyper hands it back (every read then skips hyper's upgrade wrappers),
/// else hyper's `Upgraded`.
pub type ClientIo =
    Either<Plain, Either<Box<tokio_rustls::server::TlsStream<TcpStream>>, TokioIo<Upgraded>>>;

/// Unwraps hyper's `Upgraded` into the stream it was built on, with the bytes hyper had
/// already read past the request.
fn client_io(upgraded: Upgraded) -> std::io::Result<(ClientIo, Bytes)> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = plain(parts.io.into_inner())?;
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

/// An upstream WebSocket connection, over TCP or TLS.
pub type UpstreamWs = crate::codec::WsConn<upstream::UpstreamIo>;

/// What a peer may send (`websocket.max_message_size`, `websocket.max_frame_size`).
pub fn limits(ws: &config::WebSocket) -> crate::codec::Limits {
    crate::codec::Limits {
        max_message: ws.max_message_size,
        max_frame: ws.max_frame_size,
    }
}

fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Opens the upstream WebSocket for `template`, trying each pool member once in order
/// (round robin, members that just failed last). An upstream that answers with an HTTP
/// status is final: the client gets that answer.
pub async fn open_upstream(
    template: &UpstreamTemplate,
    config: &Config,
    pool: &upstream::Pool,
    metrics: &crate::metrics::Metrics,
) -> Result<(UpstreamSocket, upstream::Member), HandshakeError> {
    let window = hold::failure_window(&config.restart);
    let members = pool.members(&config.upstream.endpoints, window).await;
    let mut last = None;
    for member in members {
        let request = template.request(&member.endpoint, 0)?;
        let io = match upstream::dial_addr(&member.endpoint, member.addr, &config.upstream).await {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(upstream = %member, error = %e, "upstream connect failed");
                metrics.upstream_connect(e.result_label());
                pool.mark_failed(member.addr);
                last = Some(HandshakeError::Unreachable(e));
                continue;
            }
        };
        let timeout = config.upstream.connect_timeout;
        match handshake::upstream_handshake(request, io, limits(&config.websocket), timeout).await {
            Err(e @ (HandshakeError::UpstreamProtocol(_) | HandshakeError::UpstreamTimeout)) => {
                tracing::warn!(upstream = %member, error = %e, "upstream handshake failed");
                metrics.upstream_connect(hold::connect_result(&e));
                pool.mark_failed(member.addr);
                last = Some(e);
            }
            Ok(socket) => {
                metrics.upstream_connect("ok");
                pool.mark_ok(member.addr);
                return Ok((socket, member));
            }
            Err(refused) => {
                metrics.upstream_connect(hold::connect_result(&refused));
                return Err(refused);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        HandshakeError::Unreachable(upstream::DialError::NoAddress {
            host: config
                .upstream
                .endpoints
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }))
}

/// Handles a WebSocket upgrade: validate, open the upstream first, answer 101, and spawn
/// the session task on the upgraded connection.
pub async fn accept(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Response<Body> {
    let config = shared.config.load_full();
    let reject = |e: HandshakeError| {
        tracing::info!(peer = %conn.peer, status = e.status().as_u16(), reason = %e, "handshake rejected");
        shared.metrics.handshake_rejected(e.status().as_u16());
        e.into_response()
    };
    let offer = match handshake::validate_upgrade(
        req.method(),
        req.headers(),
        &config.websocket.allowed_origins,
    ) {
        Ok(offer) => offer,
        Err(e) => return reject(e),
    };
    // SPEC §3.4 token expiry: the JWT is read (not verified: the upstream authenticates the
    // handshake) before the upstream is dialled; no token or an expired one is a 401.
    let expires_in = match &config.policy.token_expiry {
        None => None,
        Some(source) => {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            match token::check(
                source,
                req.uri().query(),
                req.headers(),
                since_epoch.as_secs(),
            ) {
                Ok(exp) => exp.map(|exp| Duration::from_secs(exp).saturating_sub(since_epoch)),
                Err(e) => return reject(e.into()),
            }
        }
    };
    let session_id = new_session_id();
    let template =
        UpstreamTemplate::new(req.uri(), req.headers(), conn.peer, conn.tls, &session_id);
    let opened = tokio::time::timeout(
        config.listen.handshake_timeout,
        open_upstream(&template, &config, &shared.pool, &shared.metrics),
    )
    .await;
    let (upstream, member) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return reject(e),
        Err(_) => return reject(HandshakeError::UpstreamTimeout),
    };
    let response = handshake::switching_protocols(&offer, &upstream.response);
    // Only the socket lives on in the session; the upstream's response headers are done.
    let opened = session::Opened {
        template: Arc::new(template),
        member,
        protocol: upstream.protocol().cloned(),
        expires_in,
    };
    let upstream = upstream.socket;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = limits(&config.websocket);
    let shutdown = shared.shutdown.child_token();
    let shared_for_session = shared.clone();
    shared.tracker.spawn(async move {
        let permit = conn.permit;
        let upgraded = match on_upgrade.await.map_err(std::io::Error::other).and_then(client_io) {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(session = %session_id, error = %e, "client upgrade did not complete");
                shared_for_session.metrics.session_ended(crate::metrics::SessionOutcome::Error);
                let mut upstream = upstream;
                let going_away = crate::close::Close::new(crate::close::GOING_AWAY, "client did not complete the upgrade");
                session::complete_close(&mut upstream, vec![session::close_message(Some(going_away))]).await;
                return;
            }
        };
        let client = {
            // `already_read` shares hyper's whole read buffer: `new` copies what is in it,
            // and the buffer goes before the session starts.
            let (io, already_read) = upgraded;
            crate::codec::WsConn::new(io, crate::codec::Role::Server, limits, &already_read)
        };
        tracing::debug!(session = %session_id, peer = %conn.peer, "session started");
        let session = Box::new(session::Session::new(client, opened, conn.peer, shared_for_session, shutdown));
        session.run(upstream).await;
        drop(permit);
    });
    response
}
