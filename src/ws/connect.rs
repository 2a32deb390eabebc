//! Opening the upstream WebSocket, the one way it is done for a session's first dial and
//! for every resume: dial one pool member (TCP, TLS for `wss://`), send the handshake
//! through hyper's HTTP/1.1 client, check the answer, and take the socket back from hyper
//! with whatever bytes it read past the 101's head (frames the upstream sent at once).
//!
//! What the answer must be is decided by `check_switch` (pure, table-tested): a 101 with
//! `Upgrade: websocket`, `Connection: upgrade`, the `Sec-WebSocket-Accept` that matches our
//! key, no extension but permessage-deflate within holdfast's offer (when
//! `[websocket.compression] upstream` makes one) and either no subprotocol or one the
//! client offered. Any other status is the upstream's refusal, relayed to the client as it
//! is.

use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::UpstreamWs;
use super::handshake::UpstreamTemplate;
use crate::codec::{Limits, Role, WsConn};
use crate::config::Config;
use crate::http::HandshakeError;
use crate::http::headers::has_token;
use crate::metrics::Metrics;
use crate::upstream::{self, Member, Pool, UpstreamIo};

/// The most of a refusal's body relayed to the client; the rest is cut off.
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// An upstream WebSocket, open: the socket and the 101's headers.
pub struct Connected {
    pub socket: UpstreamWs,
    /// The 101's head (its headers go into the client's 101: the subprotocol, cookies).
    pub response: Response<()>,
}

impl Connected {
    /// The subprotocol the upstream chose, if any.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.response.headers().get(header::SEC_WEBSOCKET_PROTOCOL)
    }
}

/// Dials `member` and performs the handshake `template` describes (`resume` > 0 adds
/// `X-Holdfast-Resume`), within `upstream.connect_timeout` for each of the two steps.
/// Counts the try in `holdfast_upstream_connects_total` and tells the pool how the member
/// did: an upstream that answered with a status is alive (it refused), one that could not
/// be reached or broke the handshake is tried last for a while.
pub async fn connect(
    template: &UpstreamTemplate,
    member: &Member,
    resume: u32,
    config: &Config,
    pool: &Pool,
    metrics: &Metrics,
) -> Result<Connected, HandshakeError> {
    let result = async {
        let io = upstream::dial_addr(&member.endpoint, member.addr, &config.upstream).await?;
        let key = new_key();
        let compression = config.websocket.compression;
        let deflate = compression.upstream.then_some(compression.settings);
        let offer = deflate.map(|settings| crate::deflate::negotiate::offer(&settings));
        let request = template.request(
            &member.endpoint,
            resume,
            (&key, rand::random()),
            offer.as_deref(),
        )?;
        let limits = super::limits(&config.websocket);
        let timeout = config.upstream.connect_timeout;
        let mut connected = handshake(io, request, &key, template, limits, timeout).await?;
        if let Some(settings) = deflate {
            let answer: Vec<&str> = connected
                .response
                .headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(|v| v.to_str())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    HandshakeError::UpstreamProtocol(
                        "Sec-WebSocket-Extensions is not visible ASCII".into(),
                    )
                })?;
            let params = crate::deflate::negotiate::check_answer(answer, &settings)
                .map_err(HandshakeError::UpstreamProtocol)?;
            let counters = metrics.deflate_counters(crate::metrics::Hop::Upstream);
            let context = params.map(|p| crate::deflate::Context::new(p, &settings, counters));
            connected.socket = connected.socket.with_deflate(context);
        }
        Ok(connected)
    }
    .await;
    metrics.upstream_connect(result_label(&result));
    match &result {
        Ok(_) => pool.mark_ok(member.addr),
        Err(HandshakeError::Refused(_)) => {}
        Err(e) => {
            tracing::warn!(session = %template.session_id, trace_id = %template.trace.id(), upstream = %member, error = %e, "upstream connect failed");
            pool.mark_failed(member.addr);
        }
    }
    result
}

/// The `result` label of `holdfast_upstream_connects_total` for a try.
pub fn result_label(result: &Result<Connected, HandshakeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(HandshakeError::Unreachable(dial)) => dial.result_label(),
        Err(HandshakeError::Refused(_)) => "refused",
        Err(HandshakeError::UpstreamTimeout) => "timeout",
        Err(_) => "error",
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn new_key() -> HeaderValue {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

/// The HTTP/1.1 handshake over a dialled connection, bounded by `timeout`.
async fn handshake(
    io: UpstreamIo,
    request: http::Request<Empty<Bytes>>,
    key: &HeaderValue,
    template: &UpstreamTemplate,
    limits: Limits,
    timeout: Duration,
) -> Result<Connected, HandshakeError> {
    let offered = request
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS);
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(protocol_error)?;
        // The connection is driven here, next to the request, until hyper hands the socket
        // back: no task is spawned, so nothing outlives a handshake that is given up. It may
        // finish (the upgrade done, or the upstream gone) before the request's future has
        // seen the answer: then only that future is polled, and it resolves either way.
        let mut connection = std::pin::pin!(connection.with_upgrades());
        let mut ended = None;
        let send = sender.send_request(request);
        tokio::pin!(send);
        let mut response = loop {
            tokio::select! {
                biased;
                response = &mut send => break response.map_err(protocol_error)?,
                result = &mut connection, if ended.is_none() => ended = Some(result),
            }
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = response.into_parts();
            let read = read_refusal(body);
            tokio::pin!(read);
            let body = loop {
                tokio::select! {
                    biased;
                    body = &mut read => break body,
                    result = &mut connection, if ended.is_none() => ended = Some(result),
                }
            };
            return Err(HandshakeError::Refused(Box::new(Response::from_parts(
                parts, body,
            ))));
        }
        check_switch(response.headers(), key, template, offered)
            .map_err(HandshakeError::UpstreamProtocol)?;
        let on_upgrade = hyper::upgrade::on(&mut response);
        let upgraded = match ended {
            Some(result) => {
                result.map_err(protocol_error)?;
                on_upgrade.await
            }
            None => {
                let (finished, upgraded) = tokio::join!(connection, on_upgrade);
                finished.map_err(protocol_error)?;
                upgraded
            }
        };
        let parts = upgraded
            .map_err(protocol_error)?
            .downcast::<TokioIo<UpstreamIo>>()
            .map_err(|_| HandshakeError::UpstreamProtocol("upgrade of an unknown socket".into()))?;
        let socket = WsConn::new(parts.io.into_inner(), Role::Client, limits, &parts.read_buf);
        let (head, _) = response.into_parts();
        Ok(Connected {
            socket,
            response: Response::from_parts(head, ()),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(HandshakeError::UpstreamTimeout))
}

fn protocol_error(error: hyper::Error) -> HandshakeError {
    HandshakeError::UpstreamProtocol(error.to_string())
}

/// A refusal's body, up to `MAX_REFUSAL_BODY` bytes (a body that fails midway is cut
/// where it failed: the status is what matters).
async fn read_refusal(mut body: hyper::body::Incoming) -> Bytes {
    let mut out = BytesMut::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = MAX_REFUSAL_BODY - out.len();
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() == MAX_REFUSAL_BODY {
                break;
            }
        }
    }
    out.freeze()
}

/// Is this 101 a WebSocket answer to our handshake (RFC 6455 §4.1, the client's checks)?
/// A subprotocol must be one the client offered; none at all is fine, whatever was offered.
/// An extension is checked here only for being there at all: without an offer
/// (`offered_extension` false) it is an error; the answer to an offer is checked by
/// `deflate::negotiate::check_answer`.
pub fn check_switch(
    headers: &HeaderMap,
    key: &HeaderValue,
    template: &UpstreamTemplate,
    offered_extension: bool,
) -> Result<(), String> {
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err("101 without Upgrade: websocket".into());
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err("101 without Connection: upgrade".into());
    }
    let expected = derive_accept_key(key.as_bytes());
    match headers.get(header::SEC_WEBSOCKET_ACCEPT) {
        Some(accept) if accept.as_bytes() == expected.as_bytes() => {}
        Some(_) => return Err("wrong Sec-WebSocket-Accept".into()),
        None => return Err("101 without Sec-WebSocket-Accept".into()),
    }
    if !offered_extension && headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err("an extension holdfast did not offer".into());
    }
    let mut chosen = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter();
    match (chosen.next(), chosen.next()) {
        (None, _) => Ok(()),
        (Some(protocol), None) if template.offers_protocol(protocol) => Ok(()),
        (Some(protocol), None) => Err(format!(
            "subprotocol {protocol:?} was not offered by the client"
        )),
        (Some(_), Some(_)) => Err("more than one Sec-WebSocket-Protocol".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::header_map;

    fn template(offered: Option<&str>) -> UpstreamTemplate {
        let mut client = HeaderMap::new();
        if let Some(offer) = offered {
            client.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(offer).unwrap(),
            );
        }
        let uri: http::Uri = "/".parse().unwrap();
        let trace = (crate::trace::Trace::start([1; 16]), false);
        UpstreamTemplate::new(
            &uri,
            &client,
            "127.0.0.1:1".parse().unwrap(),
            false,
            "0",
            trace,
        )
    }

    #[test]
    fn a_switch_is_checked_like_a_client_would() {
        // The RFC's own example key and accept value.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let good = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-accept", accept),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = good.to_vec();
            pairs.extend_from_slice(extra);
            header_map(&pairs)
        };
        let without = |name: &str| {
            header_map(
                &good
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != name)
                    .collect::<Vec<_>>(),
            )
        };
        let offered = template(Some("chat, superchat"));
        let table: Vec<(HeaderMap, &UpstreamTemplate, bool)> = vec![
            (with(&[]), &offered, true),
            // No subprotocol chosen although some were offered: allowed.
            (with(&[]), &offered, true),
            (
                with(&[("sec-websocket-protocol", "superchat")]),
                &offered,
                true,
            ),
            (
                with(&[("sec-websocket-protocol", "other")]),
                &offered,
                false,
            ),
            (
                with(&[
                    ("sec-websocket-protocol", "chat"),
                    ("sec-websocket-protocol", "superchat"),
                ]),
                &offered,
                false,
            ),
            (
                with(&[("sec-websocket-extensions", "permessage-deflate")]),
                &offered,
                false,
            ),
            (without("upgrade"), &offered, false),
            (without("connection"), &offered, false),
            (without("sec-websocket-accept"), &offered, false),
            (
                header_map(&[
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                ]),
                &offered,
                false,
            ),
        ];
        for (i, (headers, template, ok)) in table.into_iter().enumerate() {
            assert_eq!(
                check_switch(&headers, &key, template, false).is_ok(),
                ok,
                "case {i}: {headers:?}"
            );
        }
        // Nothing offered: a chosen subprotocol is a protocol error.
        let none = template(None);
        assert!(
            check_switch(
                &with(&[("sec-websocket-protocol", "chat")]),
                &key,
                &none,
                false
            )
            .is_err()
        );
        assert!(check_switch(&with(&[]), &key, &none, false).is_ok());
        // With an offer, the extension's answer is `deflate::negotiate::check_answer`'s.
        let deflate = with(&[("sec-websocket-extensions", "permessage-deflate")]);
        assert!(check_switch(&deflate, &key, &none, true).is_ok());
    }
}
