//! The WebSocket handshake's pure parts: validate the client's upgrade, keep what is needed
//! to open the upstream the same way every time (`UpstreamTemplate`, whose requests
//! `connect` sends), and the client's 101 built from the upstream's.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use bytes::Bytes;
use http_body_util::Empty;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::Endpoint;
use crate::http::headers::{add_forwarded, copy_end_to_end, has_token};
use crate::http::{Body, HandshakeError, full};
use crate::trace::Trace;

pub const X_HOLDFAST_SESSION: &str = "x-holdfast-session";
pub const X_HOLDFAST_RESUME: &str = "x-holdfast-resume";

/// What the client offered, once validated.
#[derive(Debug, Clone)]
pub struct ClientOffer {
    /// `Sec-WebSocket-Key` of an HTTP/1.1 upgrade; `None` for an HTTP/2 extended CONNECT
    /// (RFC 8441), which has no key and is answered 200 instead of 101.
    pub key: Option<HeaderValue>,
}

/// RFC 6455 §4.2.1 checks (or RFC 8441 §4's, for an HTTP/2 extended CONNECT whose
/// `:protocol` is `protocol`), in the order that gives the most useful status.
pub fn validate_upgrade(
    method: &Method,
    protocol: Option<&str>,
    headers: &HeaderMap,
    allowed_origins: &[String],
) -> Result<ClientOffer, HandshakeError> {
    if method == Method::CONNECT {
        if !protocol.is_some_and(|p| p.eq_ignore_ascii_case("websocket")) {
            return Err(HandshakeError::BadRequest(
                "CONNECT must carry :protocol websocket",
            ));
        }
        check_version_and_origin(headers, allowed_origins)?;
        return Ok(ClientOffer { key: None });
    }
    if method != Method::GET {
        return Err(HandshakeError::BadRequest("method must be GET"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::BadRequest(
            "Connection header must contain Upgrade",
        ));
    }
    check_version_and_origin(headers, allowed_origins)?;
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::BadRequest("missing Sec-WebSocket-Key"))?;
    // The key is 16 random bytes, base64: always 24 characters ending in "==".
    if key.len() != 24 || !key.as_bytes().ends_with(b"==") {
        return Err(HandshakeError::BadRequest("malformed Sec-WebSocket-Key"));
    }
    Ok(ClientOffer {
        key: Some(key.clone()),
    })
}

/// The checks both forms of the handshake share: version 13 and an allowed `Origin`.
fn check_version_and_origin(
    headers: &HeaderMap,
    allowed_origins: &[String],
) -> Result<(), HandshakeError> {
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => {}
        Some(_) => return Err(HandshakeError::Version),
        None => return Err(HandshakeError::BadRequest("missing Sec-WebSocket-Version")),
    }
    if !allowed_origins.is_empty() {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| allowed_origins.iter().any(|a| a == o)) {
            return Err(HandshakeError::Origin);
        }
    }
    Ok(())
}

/// Headers never forwarded from the client to the upstream WebSocket: holdfast writes its
/// own handshake headers (a key of its own), extensions are negotiated on each hop on its
/// own, and holdfast's own headers cannot be spoofed by a client.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "content-length",
    "x-forwarded-proto",
    "x-forwarded-host",
    X_HOLDFAST_SESSION,
    X_HOLDFAST_RESUME,
    // Each upstream connection carries a `traceparent` of its own (`request`).
    crate::trace::TRACEPARENT,
];

/// Everything needed to (re)open the upstream WebSocket the same way each time. Kept for
/// the life of every session, so it is stored compactly: the headers as one block of
/// `name:value\n` lines (a `HeaderMap` of them would cost several times as much, and its
/// values would share — and keep alive — the buffer hyper read the request into).
#[derive(Debug, Clone)]
pub struct UpstreamTemplate {
    pub session_id: String,
    pub path_and_query: String,
    /// The session's trace: every upstream connection is a new span of it.
    pub trace: Trace,
    /// End-to-end client headers plus `X-Forwarded-*` and `X-Holdfast-Session`.
    header_lines: Box<[u8]>,
}

impl UpstreamTemplate {
    /// `trace`: the session's trace, and whether it is the one the client's `traceparent`
    /// named (only then does the client's `tracestate` go with it).
    pub fn new(
        uri: &http::Uri,
        client_headers: &HeaderMap,
        peer: SocketAddr,
        tls: bool,
        session_id: &str,
        (trace, clients_trace): (Trace, bool),
    ) -> Self {
        let mut skip: Vec<HeaderName> = NOT_FORWARDED
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        if !clients_trace {
            skip.push(HeaderName::from_static(crate::trace::TRACESTATE));
        }
        let mut headers = HeaderMap::new();
        copy_end_to_end(client_headers, &mut headers, &skip);
        // The host the request was routed by (`http::headers::request_host`): the URI's
        // authority (HTTP/2's `:authority`, an absolute-form target) before `Host`.
        let authority = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        add_forwarded(
            &mut headers,
            peer,
            tls,
            authority.as_ref().or(client_headers.get(header::HOST)),
            true,
        );
        headers.insert(
            X_HOLDFAST_SESSION,
            HeaderValue::from_str(session_id).expect("session ids are hex"),
        );
        let mut lines = Vec::new();
        for (name, value) in &headers {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.push(b':');
            lines.extend_from_slice(value.as_bytes());
            lines.push(b'\n');
        }
        Self {
            session_id: session_id.to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
            trace,
            header_lines: lines.into_boxed_slice(),
        }
    }

    /// The headers sent to the upstream (those of `request` but `X-Holdfast-Resume`).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.append_headers(&mut headers);
        headers
    }

    fn append_headers(&self, to: &mut HeaderMap) {
        for line in self.header_lines.split(|b| *b == b'\n') {
            // Every line was a valid name and value when it was stored; a header value
            // never contains a newline.
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(&line[colon + 1..]),
            ) {
                to.append(name, value);
            }
        }
    }

    /// The handshake request for `endpoint` with `key` as `Sec-WebSocket-Key` and `span` as
    /// this connection's span of the session's trace (`traceparent`); `resume` > 0 adds
    /// `X-Holdfast-Resume`, `extensions` holdfast's own `Sec-WebSocket-Extensions` offer
    /// (the client's never goes upstream: each hop negotiates its own).
    pub fn request(
        &self,
        endpoint: &Endpoint,
        resume: u32,
        (key, span): (&HeaderValue, [u8; 8]),
        extensions: Option<&str>,
    ) -> Result<Request<Empty<Bytes>>, HandshakeError> {
        let mut request = Request::get(self.path_and_query.as_str())
            .body(Empty::new())
            .map_err(|_| HandshakeError::BadRequest("request target cannot be forwarded"))?;
        let headers = request.headers_mut();
        let host = HeaderValue::from_str(&endpoint.authority())
            .map_err(|_| HandshakeError::BadRequest("upstream host is not a valid Host"))?;
        headers.insert(header::HOST, host);
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
        self.append_headers(headers);
        if resume > 0 {
            headers.insert(X_HOLDFAST_RESUME, HeaderValue::from(resume));
        }
        headers.insert(
            crate::trace::TRACEPARENT,
            HeaderValue::from_str(&self.trace.traceparent(span))
                .expect("a traceparent is visible ASCII"),
        );
        if let Some(offer) = extensions {
            let offer = HeaderValue::from_str(offer)
                .map_err(|_| HandshakeError::BadRequest("extension offer is not a header value"))?;
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer);
        }
        Ok(request)
    }

    /// Did the client offer `protocol` (one of its `Sec-WebSocket-Protocol` entries)?
    pub fn offers_protocol(&self, protocol: &HeaderValue) -> bool {
        let Ok(wanted) = protocol.to_str() else {
            return false;
        };
        self.headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|offered| offered.trim() == wanted.trim())
    }
}

/// The client's answer: the upstream's chosen subprotocol and its other end-to-end
/// headers (e.g. `Set-Cookie`) in a 101 with the accept key, or — over HTTP/2 — a 200.
pub fn client_answer(offer: &ClientOffer, upstream: &Response<()>) -> Response<Body> {
    let mut response = Response::new(full(Vec::new()));
    let headers = response.headers_mut();
    let skip = [
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::CONTENT_LENGTH,
    ];
    copy_end_to_end(upstream.headers(), headers, &skip);
    if let Some(key) = &offer.key {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        let accept = derive_accept_key(key.as_bytes());
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
    }
    if let Some(protocol) = upstream.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    *response.status_mut() = match offer.key {
        Some(_) => StatusCode::SWITCHING_PROTOCOLS,
        None => StatusCode::OK,
    };
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::header_map as headers;

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn upgrade_validation_statuses() {
        let status = |method: Method, h: HeaderMap, origins: &[String]| {
            validate_upgrade(&method, None, &h, origins)
                .err()
                .map(|e| e.status().as_u16())
        };
        let without = |name: &str| {
            headers(
                &GOOD
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != name)
                    .collect::<Vec<_>>(),
            )
        };
        let with = |name: &str, value: &str| {
            let mut h = headers(GOOD);
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            h
        };
        let allowed = vec!["https://app.example".to_owned()];
        assert_eq!(status(Method::GET, headers(GOOD), &[]), None);
        assert_eq!(status(Method::POST, headers(GOOD), &[]), Some(400));
        assert_eq!(
            status(Method::GET, without("sec-websocket-key"), &[]),
            Some(400)
        );
        assert_eq!(
            status(Method::GET, with("sec-websocket-key", "short"), &[]),
            Some(400)
        );
        assert_eq!(status(Method::GET, without("connection"), &[]), Some(400));
        assert_eq!(
            status(Method::GET, with("sec-websocket-version", "8"), &[]),
            Some(426)
        );
        assert_eq!(status(Method::GET, headers(GOOD), &allowed), Some(403));
        assert_eq!(
            status(
                Method::GET,
                with("origin", "https://evil.example"),
                &allowed
            ),
            Some(403)
        );
        assert_eq!(
            status(Method::GET, with("origin", "https://app.example"), &allowed),
            None
        );
    }

    #[test]
    fn extended_connect_validation_statuses() {
        let h2 = |protocol: Option<&str>, version: Option<&str>, origins: &[String]| {
            let mut h = HeaderMap::new();
            if let Some(v) = version {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h.insert(
                header::ORIGIN,
                HeaderValue::from_static("https://app.example"),
            );
            validate_upgrade(&Method::CONNECT, protocol, &h, origins)
                .map(|offer| offer.key.is_none())
                .map_err(|e| e.status().as_u16())
        };
        let allowed = vec!["https://app.example".to_owned()];
        let other = vec!["https://other.example".to_owned()];
        // No key over HTTP/2: the offer says so, and the answer is a 200.
        assert_eq!(h2(Some("websocket"), Some("13"), &[]), Ok(true));
        assert_eq!(h2(Some("WebSocket"), Some("13"), &allowed), Ok(true));
        assert_eq!(h2(Some("websocket"), Some("13"), &other), Err(403));
        assert_eq!(h2(Some("websocket"), Some("8"), &[]), Err(426));
        assert_eq!(h2(Some("websocket"), None, &[]), Err(400));
        assert_eq!(h2(Some("connect-udp"), Some("13"), &[]), Err(400));
        assert_eq!(h2(None, Some("13"), &[]), Err(400));

        let upstream = Response::builder()
            .header(header::SEC_WEBSOCKET_PROTOCOL, "chat")
            .body(())
            .unwrap();
        let answer = client_answer(&ClientOffer { key: None }, &upstream);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        for hop in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
        ] {
            assert!(
                !answer.headers().contains_key(&hop),
                "{hop} in an HTTP/2 answer"
            );
        }
        let key = Some(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        let answer = client_answer(&ClientOffer { key }, &upstream);
        assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            answer.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn template_forwards_end_to_end_headers_only() {
        let mut h = headers(GOOD);
        for (k, v) in [
            ("host", "proxy.example"),
            ("cookie", "a=1"),
            ("authorization", "Bearer x"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-holdfast-session", "spoofed"),
            ("keep-alive", "timeout=5"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let uri: http::Uri = "/chat?room=1".parse().unwrap();
        let peer = "127.0.0.1:5555".parse().unwrap();
        let trace = (Trace::start([7; 16]), false);
        let t = UpstreamTemplate::new(&uri, &h, peer, false, "abc123", trace);
        assert_eq!(t.path_and_query, "/chat?room=1");
        let out = &t.headers();
        assert_eq!(out["cookie"], "a=1");
        assert_eq!(out["authorization"], "Bearer x");
        assert_eq!(out["sec-websocket-protocol"], "chat, superchat");
        assert_eq!(out["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "ws");
        assert_eq!(out["x-forwarded-host"], "proxy.example");
        assert_eq!(out["x-holdfast-session"], "abc123");
        for absent in [
            "sec-websocket-extensions",
            "sec-websocket-key",
            "host",
            "keep-alive",
            "upgrade",
            "connection",
        ] {
            assert!(!out.contains_key(absent), "{absent} must not be forwarded");
        }
        let endpoint = Endpoint {
            secure: false,
            host: "127.0.0.1".into(),
            port: 9000,
        };
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let req = t.request(&endpoint, 2, (&key, [1; 8]), None).unwrap();
        assert_eq!(req.uri(), "/chat?room=1");
        assert_eq!(req.headers()["host"], "127.0.0.1:9000");
        assert_eq!(req.headers()["x-holdfast-resume"], "2");
        assert_eq!(req.headers()["sec-websocket-key"], key);
        for name in [
            "sec-websocket-key",
            "sec-websocket-version",
            "upgrade",
            "connection",
            "host",
        ] {
            assert_eq!(req.headers().get_all(name).iter().count(), 1, "{name} once");
        }
        assert!(t.offers_protocol(&HeaderValue::from_static("superchat")));
        assert!(!t.offers_protocol(&HeaderValue::from_static("super")));
    }

    #[test]
    fn every_upstream_request_is_a_new_span_of_the_sessions_trace() {
        const CLIENTS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let uri: http::Uri = "/".parse().unwrap();
        let peer = "127.0.0.1:5555".parse().unwrap();
        let endpoint = Endpoint {
            secure: false,
            host: "127.0.0.1".into(),
            port: 9000,
        };
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut h = headers(GOOD);
        h.insert("traceparent", HeaderValue::from_static(CLIENTS));
        h.insert("tracestate", HeaderValue::from_static("vendor=opaque"));
        // The client's trace: its id, a span of holdfast's, its trace state along.
        let trace = Trace::continued(h.get_all("traceparent").iter().map(|v| v.as_bytes()));
        let t = UpstreamTemplate::new(&uri, &h, peer, false, "s", (trace.unwrap(), true));
        for (span, expected) in [
            (
                [1; 8],
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0101010101010101-01",
            ),
            (
                [2; 8],
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0202020202020202-01",
            ),
        ] {
            let req = t.request(&endpoint, 0, (&key, span), None).unwrap();
            let values: Vec<_> = req.headers().get_all("traceparent").iter().collect();
            assert_eq!(values, [expected]);
            assert_eq!(req.headers()["tracestate"], "vendor=opaque");
        }
        // A trace of holdfast's own: the client's trace state means nothing in it.
        let t = UpstreamTemplate::new(&uri, &h, peer, false, "s", (Trace::start([3; 16]), false));
        let req = t.request(&endpoint, 0, (&key, [4; 8]), None).unwrap();
        assert_eq!(
            req.headers()["traceparent"],
            "00-03030303030303030303030303030303-0404040404040404-01"
        );
        assert!(!req.headers().contains_key("tracestate"));
    }
}
