//! Accepting a WebSocket upgrade: validate it, open the upstream first (trying each pool
//! member once), answer the client with the upstream's 101 — or with the status that says
//! what went wrong — and start the session task on the upgraded connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::connect::{self, Connected};
use super::ends::close_message;
use super::handshake::{self, UpstreamTemplate};
use super::session;
use super::session::resumable::{Resumable, Settings, Start};
use crate::config::Config;
use crate::http::headers::request_host;
use crate::http::{Body, ConnInfo, HandshakeError};
use crate::policy::token;
use crate::resume::{self, token::credentials};
use crate::shared::{Attach, Shared};
use crate::socket::{ClientIo, client_io};
use crate::trace::Trace;
use crate::upstream::{self, Member};

/// A session's id as the upstream sees it (`X-Holdfast-Session`) and logs name it.
pub fn session_name(id: u64) -> String {
    format!("{id:016x}")
}

/// The client's headers as the upstream gets them: holdfast's own subprotocol entries
/// (`holdfast.*`) removed from the offer, the application's kept in order.
fn forwarded_headers(headers: &HeaderMap, app: &[String]) -> Option<HeaderMap> {
    let ours = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(resume::ENTRY_PREFIX));
    if !ours {
        return None;
    }
    let mut headers = headers.clone();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !app.is_empty()
        && let Ok(value) = HeaderValue::from_str(&app.join(", "))
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    Some(headers)
}

/// Opens the upstream WebSocket for a new session, trying each pool member once in order
/// (round robin, members that just failed last). An upstream that answers with an HTTP
/// status is final: the client gets that answer.
async fn open_upstream(
    template: &UpstreamTemplate,
    config: &Config,
    shared: &Shared,
    resumes: u32,
) -> Result<(Connected, Member), HandshakeError> {
    let window = super::session::hold::failure_window(&config.restart);
    let members = shared
        .pool
        .members(&config.route, &config.upstream.endpoints, window)
        .await;
    let mut last = None;
    for member in members {
        match connect::connect(
            template,
            &member,
            resumes,
            config,
            &shared.pool,
            &shared.metrics,
        )
        .await
        {
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

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a returning client may take its session back: an authentic, unexpired token of
/// a session it has the credentials of, and how many messages it has received.
fn check_return(
    shared: &Shared,
    headers: &HeaderMap,
    token: &str,
    received: Option<u64>,
) -> Result<(resume::token::Claims, u64), String> {
    let claims = shared
        .resume_key()
        .verify(token, now_ms())
        .map_err(|e| e.to_string())?;
    let value = |name| headers.get(name).map(HeaderValue::as_bytes);
    if credentials(value(header::AUTHORIZATION), value(header::COOKIE)) != claims.credentials {
        return Err("credentials differ from the session's".into());
    }
    let received = received.ok_or("no received count (holdfast.r.<n>) with the token")?;
    Ok((claims, received))
}

/// Where a returning client's session is.
enum Return {
    /// Here: its task takes the connection (the channel, the id, what the client received).
    Here(
        tokio::sync::mpsc::Sender<Box<Attach>>,
        u64,
        u64,
        Option<Trace>,
    ),
    /// Another holdfast drained and told it to move: it continues here.
    Move(resume::token::Claims, u64),
    /// Nowhere any more (its id and trace).
    Gone(u64, Option<Trace>),
}

/// A returning resumable client that stays (or is refused) without a dial: answered 101 at
/// once; its session here takes the connection, or it is closed with why (a bad token, a
/// session that is gone) in a way the client library understands.
fn returning(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
    config: &Arc<Config>,
    offer: &handshake::ClientOffer,
    target: Result<Return, String>,
) -> Response<Body> {
    let mut response = handshake::client_answer(offer, &Response::new(()));
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(resume::SUBPROTOCOL),
    );
    let config = config.clone();
    // The new connection negotiates compression of its own, whatever the last one had.
    let deflate = negotiate_deflate(&mut response, req.headers(), &config, &shared);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = super::limits(&config.websocket);
    let peer = conn.peer;
    // Held until the connection is closed here or handed to its session.
    let Some(permits) = conn.session_permits(&shared.connections) else {
        shared.metrics.handshake_rejected(503, &conn.unrouted());
        return HandshakeError::Overloaded.into_response();
    };
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        // A client returning to a session stays off this worker's ring: the session's
        // worker (maybe another) adopts it.
        let here = !matches!(target, Ok(Return::Here(..)));
        let Ok((io, already_read)) = on_upgrade
            .await
            .map_err(std::io::Error::other)
            .and_then(|upgraded| client_io(upgraded, here))
        else {
            return;
        };
        let give_up = || close_message(crate::close::to_wire(config.restart.give_up.clone()));
        let (io, already_read, deflate, close) = match target {
            Err(why) => {
                tracing::info!(peer = %peer, reason = %why, "resume refused");
                task_shared.metrics.client_resume("rejected");
                (io, already_read, deflate, session::attach::resume_refused(&why))
            }
            Ok(Return::Here(session, id, received, trace)) => {
                let attach = Box::new(Attach {
                    io,
                    already_read,
                    received,
                    peer,
                    deflate,
                    permits,
                });
                match session.send(attach).await {
                    Ok(()) => return,
                    Err(gone) => {
                        // The session ended between the lookup and now.
                        let trace_id = trace.map(|t| t.id().to_string());
                        tracing::info!(session = %session_name(id), trace_id, peer = %peer, "resume refused: the session just ended");
                        let Attach {
                            io,
                            already_read,
                            deflate,
                            ..
                        } = *gone.0;
                        (io, already_read, deflate, give_up())
                    }
                }
            }
            Ok(
                Return::Gone(id, trace)
                | Return::Move(resume::token::Claims { session: id, trace, .. }, _),
            ) => {
                let trace_id = trace.map(|t| t.id().to_string());
                tracing::info!(session = %session_name(id), trace_id, peer = %peer, "resume refused: no such session here");
                task_shared.metrics.client_resume("expired");
                (io, already_read, deflate, give_up())
            }
        };
        let mut client =
            crate::codec::WsConn::new(io, crate::codec::Role::Server, limits, &already_read)
                .with_deflate(deflate);
        session::closing::complete_close(&mut client, vec![close]).await;
    });
    response
}

/// permessage-deflate for the client's connection: the extension in the 101 and the
/// connection's context, if the client offered what holdfast can honour.
fn negotiate_deflate(
    response: &mut Response<Body>,
    client_headers: &HeaderMap,
    config: &Config,
    shared: &Shared,
) -> Option<crate::deflate::Context> {
    let (header, context) = super::client_deflate(client_headers, config, &shared.metrics)?;
    response
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_EXTENSIONS, header);
    Some(context)
}

/// What a resumable session of this handshake is made with.
fn resume_settings(
    config: &Config,
    shared: &Shared,
    client_headers: &HeaderMap,
    protocol: &Option<HeaderValue>,
    (resumes, trace): (u32, Trace),
) -> Settings {
    let value = |name| client_headers.get(name).map(HeaderValue::as_bytes);
    Settings {
        key: shared.resume_key(),
        credentials: credentials(value(header::AUTHORIZATION), value(header::COOKIE)),
        resumes,
        protocol: protocol
            .as_ref()
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned),
        replay_first: config.restart.replay_first as u64,
        client_hold: config.resume.client_hold,
        max_messages: config.resume.buffer_messages,
        max_bytes: config.resume.buffer_bytes,
        trace,
    }
}

/// What a session task needs until the client's upgrade completes, in one box: a task's
/// future keeps whatever its `async` block captured for as long as it runs, so the session
/// would carry these bytes for its whole life; boxed, it carries a pointer, and the box goes
/// when the session starts.
struct Starting {
    upstream: crate::ws::UpstreamWs,
    on_upgrade: hyper::upgrade::OnUpgrade,
    session_id: String,
    opened: session::Opened,
    peer: std::net::SocketAddr,
    deflate: Option<crate::deflate::Context>,
    limits: crate::codec::Limits,
    shutdown: tokio_util::sync::CancellationToken,
    shared: Arc<Shared>,
}

impl Starting {
    /// The session task: the upgrade, then the session.
    async fn run(self: Box<Self>) {
        // `let … else`, not `if let`: the `if let`'s scrutinee would stay in the task's
        // future for the whole session.
        let Some((session, upstream)) = self.start().await else {
            return;
        };
        session.run(upstream).await;
    }

    /// Waits for the client's upgrade; the session and its upstream, or `None` when the
    /// client never completed it (the upstream is closed with 1001).
    async fn start(
        self: Box<Self>,
    ) -> Option<(Box<session::Session<ClientIo>>, crate::ws::UpstreamWs)> {
        let Starting {
            mut upstream,
            on_upgrade,
            session_id,
            opened,
            peer,
            deflate,
            limits,
            shutdown,
            shared,
        } = *self;
        let upgraded = match on_upgrade
            .await
            .map_err(std::io::Error::other)
            .and_then(|u| client_io(u, true))
        {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(session = %session_id, trace_id = %opened.template.trace.id(), error = %e, "client upgrade did not complete");
                shared
                    .metrics
                    .session_ended(crate::metrics::SessionOutcome::Error, &opened.labels);
                let going_away = crate::close::Close::new(
                    crate::close::GOING_AWAY,
                    "client did not complete the upgrade",
                );
                session::closing::complete_close(
                    &mut upstream,
                    vec![close_message(Some(going_away))],
                )
                .await;
                return None;
            }
        };
        let client = {
            // `already_read` shares hyper's whole read buffer: `new` copies what is in it,
            // and the buffer goes before the session starts.
            let (io, already_read) = upgraded;
            crate::codec::WsConn::new(io, crate::codec::Role::Server, limits, &already_read)
                .with_deflate(deflate)
        };
        tracing::debug!(session = %session_id, trace_id = %opened.template.trace.id(), peer = %peer, "session started");
        Some((
            Box::new(session::Session::new(
                client, opened, peer, shared, shutdown,
            )),
            upstream,
        ))
    }
}

/// Handles a WebSocket upgrade: validate, open the upstream first, answer 101, and spawn
/// the session task on the upgraded connection.
pub async fn accept(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Response<Body> {
    let live = shared.config.load_full();
    // The session's trace: the client's, or one of its own (and, for a session that moves
    // here, the one its token carries).
    let clients_trace = Trace::continued(
        req.headers()
            .get_all(crate::trace::TRACEPARENT)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut trace = clients_trace.unwrap_or_else(|| Trace::start(rand::random()));
    let host = request_host(&req);
    let Some(route) = live.pick(host.as_deref(), req.uri().path()) else {
        tracing::info!(peer = %conn.peer, host = ?host, path = %req.uri().path(), trace_id = %trace.id(), status = 404, "handshake rejected: no route");
        shared.metrics.handshake_rejected(404, &conn.unrouted());
        return HandshakeError::NoRoute.into_response();
    };
    // Everything below reads the route's settings.
    let config = route.view.clone();
    let labels = conn.labels(route.name.clone());
    let reject = |e: HandshakeError, trace: Trace| {
        tracing::info!(peer = %conn.peer, route = %labels.route, trace_id = %trace.id(), status = e.status().as_u16(), reason = %e, "handshake rejected");
        shared
            .metrics
            .handshake_rejected(e.status().as_u16(), &labels);
        e.into_response()
    };
    let extended = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_owned());
    let offer = match handshake::validate_upgrade(
        req.method(),
        extended.as_deref(),
        req.headers(),
        &config.websocket.allowed_origins,
    ) {
        Ok(offer) => offer,
        Err(e) => return reject(e, trace),
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
                Err(e) => return reject(e.into(), trace),
            }
        }
    };
    let resume_offer = resume::split_offer(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let resumable = resume_offer.resumable && config.resume.enabled;
    // A returning client: back to its session here (no dial), refused, or — with a token
    // given when another holdfast drained — moved here (a new upstream connection).
    let mut moved = None;
    if resumable && let Some(token) = &resume_offer.token {
        let target = check_return(&shared, req.headers(), token, resume_offer.received).map(
            |(claims, received)| match shared.resumables.find(claims.session) {
                Some(session) => Return::Here(session, claims.session, received, claims.trace),
                None if claims.moving => Return::Move(claims, received),
                None => Return::Gone(claims.session, claims.trace),
            },
        );
        match target {
            Ok(Return::Move(claims, received)) => moved = Some((claims, received)),
            other => return returning(req, conn, shared.clone(), &config, &offer, other),
        }
    }
    let (id, resumes) = match &moved {
        Some((claims, _)) => (claims.session, claims.resumes.saturating_add(1)),
        None => (rand::random::<u64>(), 0),
    };
    if let Some(moved_trace) = moved.as_ref().and_then(|(claims, _)| claims.trace) {
        trace = moved_trace;
    }
    // The client's trace state goes along only with the client's own trace.
    let with_clients_state = moved.is_none() && clients_trace.is_some();
    // An HTTP/2 stream's session takes a `max_connections` permit of its own.
    let Some(permits) = conn.session_permits(&shared.connections) else {
        return reject(HandshakeError::Overloaded, trace);
    };
    let session_id = session_name(id);
    let template = {
        let forwarded = forwarded_headers(req.headers(), &resume_offer.upstream);
        let headers = forwarded.as_ref().unwrap_or(req.headers());
        let trace = (trace, with_clients_state);
        UpstreamTemplate::new(req.uri(), headers, conn.peer, conn.tls, &session_id, trace)
    };
    let opened = tokio::time::timeout(
        config.listen.handshake_timeout,
        open_upstream(&template, &config, &shared, resumes),
    )
    .await;
    let (upstream, member) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return reject(e, trace),
        Err(_) => return reject(HandshakeError::UpstreamTimeout, trace),
    };
    let mut response = handshake::client_answer(&offer, &upstream.response);
    let protocol = upstream.protocol().cloned();
    if let Some((claims, _)) = &moved
        && claims.protocol.as_deref() != protocol.as_ref().and_then(|p| p.to_str().ok())
    {
        // The new upstream chose another subprotocol: not the session the client had.
        let e = HandshakeError::UpstreamProtocol(format!(
            "the upstream chose subprotocol {protocol:?}, the moved session uses {:?}",
            claims.protocol
        ));
        return reject(e, trace);
    }
    let deflate = negotiate_deflate(&mut response, req.headers(), &config, &shared);
    let resume = resumable.then(|| {
        // The client's subprotocol is holdfast's; the application's goes in the hello.
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(resume::SUBPROTOCOL),
        );
        let session = (resumes, trace);
        let settings = resume_settings(&config, &shared, req.headers(), &protocol, session);
        let attach = shared.resumables.register(id);
        match &moved {
            // Continues the session's counts: what the last holdfast received, and what the
            // client says it has.
            Some((claims, received)) => {
                let mut resumable =
                    Resumable::new(id, settings, (claims.client_received, *received), attach);
                resumable.expect_replay();
                shared.metrics.client_resume("moved");
                // Paused since the draining holdfast told it to move (its token's issue
                // time, on that holdfast's clock) until this upstream connection answered;
                // at most the token's validity, whatever the clocks' skew.
                let paused = Duration::from_millis(
                    now_ms()
                        .saturating_sub(claims.issued_ms)
                        .min(claims.expires_ms.saturating_sub(claims.issued_ms)),
                );
                let cause = crate::metrics::Disruption::Move;
                shared.metrics.client_disruption(cause, paused, &labels.route);
                tracing::info!(session = %session_name(id), trace_id = %trace.id(), peer = %conn.peer, resumes, "session moved here");
                (Box::new(resumable), Start::Moved)
            }
            None => (
                Box::new(Resumable::new(id, settings, (0, 0), attach)),
                Start::New,
            ),
        }
    });
    // Only the socket lives on in the session; the upstream's response headers are done.
    let opened = session::Opened {
        template: Arc::new(template),
        member,
        protocol,
        expires_in,
        resume,
        labels: labels.clone(),
        view: config.clone(),
        permits,
    };
    let starting = Box::new(Starting {
        upstream: upstream.socket,
        on_upgrade: hyper::upgrade::on(&mut req),
        session_id,
        opened,
        peer: conn.peer,
        deflate,
        limits: super::limits(&config.websocket),
        // Never cancelled on its own: a clone (no allocation) rather than a child token.
        shutdown: shared.shutdown.clone(),
        shared: shared.clone(),
    });
    shared.tracker.spawn(starting.run());
    response
}
