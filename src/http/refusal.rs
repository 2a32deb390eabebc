//! `HandshakeError`: why a WebSocket handshake (or a request over `max_connections`) was
//! refused, and the one place that becomes an HTTP status and response.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::{Body, full};
use super::headers::copy_end_to_end;
use crate::upstream::DialError;

/// Why a handshake was refused; `into_response` is the one place this becomes a status.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("bad WebSocket handshake: {0}")]
    BadRequest(&'static str),
    #[error("unsupported WebSocket version")]
    Version,
    #[error("origin not allowed")]
    Origin,
    #[error("over max_connections")]
    Overloaded,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("request head larger than {} bytes", super::MAX_REQUEST_HEAD)]
    HeadTooLarge,
    #[error("token refused: {0}")]
    Unauthorized(#[from] crate::policy::token::TokenError),
    #[error("upstream unreachable: {0}")]
    Unreachable(#[from] DialError),
    #[error("upstream did not complete the handshake in time")]
    UpstreamTimeout,
    #[error("upstream handshake failed: {0}")]
    UpstreamProtocol(String),
    /// The upstream answered with an HTTP status instead of 101: relayed as is.
    #[error("upstream refused with {}", .0.status())]
    Refused(Box<Response<bytes::Bytes>>),
}

impl HandshakeError {
    /// The status for `holdfast_handshakes_rejected_total` and the response.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HandshakeError::Version => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Origin => StatusCode::FORBIDDEN,
            HandshakeError::NoRoute => StatusCode::NOT_FOUND,
            HandshakeError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            HandshakeError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HandshakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HandshakeError::Unreachable(_) | HandshakeError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            HandshakeError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            HandshakeError::Refused(r) => r.status(),
        }
    }

    /// The refusal as an HTTP response. The connection is closed after it: a client whose
    /// upgrade failed starts over on a fresh connection.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut response = match self {
            HandshakeError::Refused(upstream) => {
                let (parts, body) = (*upstream).into_parts();
                let mut response = Response::new(full(body));
                copy_end_to_end(
                    &parts.headers,
                    response.headers_mut(),
                    &[header::CONTENT_LENGTH],
                );
                response
            }
            other => {
                let mut response = Response::new(full(format!("{other}\n")));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        };
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if status == StatusCode::UNAUTHORIZED && !headers.contains_key(header::WWW_AUTHENTICATE) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}
