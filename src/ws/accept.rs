//! Accepting a WebSocket upgrade: validate it, open the upstream first (trying each pool
//! member once), answer the client with the upstream's 101 — or with the status that says
//! what went wrong — and start the session task on the upgraded connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::connect::{self, Connected};
use super::ends::close_message;
use super::handshake::{self, UpstreamTemplate};
use super::session;
use crate::config::Config;
use crate::http::{Body, ConnInfo, HandshakeError};
use crate::policy::token;
use crate::shared::Shared;
use crate::socket::{Plain, plain};
use crate::upstream::{self, Member};

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

fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Opens the upstream WebSocket for a new session, trying each pool member once in order
/// (round robin, members that just failed last). An upstream that answers with an HTTP
/// status is final: the client gets that answer.
async fn open_upstream(
    template: &UpstreamTemplate,
    config: &Config,
    shared: &Shared,
) -> Result<(Connected, Member), HandshakeError> {
    let window = super::session::hold::failure_window(&config.restart);
    let members = shared
        .pool
        .members(&config.upstream.endpoints, window)
        .await;
    let mut last = None;
    for member in members {
        match connect::connect(template, &member, 0, config, &shared.pool, &shared.metrics).await {
            Ok(connected) => return Ok((connected, member)),
            Err(refused @ HandshakeError::Refused(_)) => return Err(refused),
            Err(e) => last = Some(e),
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
    // Token expiry: the JWT is read (not verified: the upstream authenticates the
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
        open_upstream(&template, &config, &shared),
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
    let limits = super::limits(&config.websocket);
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
                session::closing::complete_close(&mut upstream, vec![close_message(Some(going_away))]).await;
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
