//! `policy.token_expiry`: read a JWT from the handshake (Authorization Bearer, a query
//! parameter or a cookie) and its `exp` claim. The signature is not verified: the upstream
//! authenticates the handshake; holdfast only closes the session when the token runs out.

use base64::Engine;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use crate::config::TokenSource;

/// Why a configured token check refuses a handshake (answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token in {0}")]
    Missing(String),
    #[error("the token is not a JWT with a readable payload")]
    Malformed,
    #[error("the token expired")]
    Expired,
}

/// The raw token from where `source` says, if present.
pub fn find_token(
    source: &TokenSource,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<String> {
    match source {
        TokenSource::Header(_) => headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned()),
        TokenSource::Query(name) => query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_owned())
        }),
        TokenSource::Cookie(name) => headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            }),
    }
}

/// The `exp` claim (seconds since the Unix epoch) of a JWT; `Ok(None)` if it has none.
pub fn expiry(token: &str) -> Result<Option<u64>, TokenError> {
    let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    match claims.get("exp") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(exp) => exp
            .as_u64()
            .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::Malformed),
    }
}

/// Checks the handshake against `source` at `now` (Unix seconds): the token's expiry, or
/// why the handshake must be refused.
pub fn check(
    source: &TokenSource,
    query: Option<&str>,
    headers: &HeaderMap,
    now: u64,
) -> Result<Option<u64>, TokenError> {
    let where_ = match source {
        TokenSource::Header(_) => "the Authorization header (Bearer)".to_owned(),
        TokenSource::Query(n) => format!("query parameter `{n}`"),
        TokenSource::Cookie(n) => format!("cookie `{n}`"),
    };
    let token = find_token(source, query, headers).ok_or(TokenError::Missing(where_))?;
    match expiry(&token)? {
        Some(exp) if exp <= now => Err(TokenError::Expired),
        other => Ok(other),
    }
}

#[cfg(test)]
pub(crate) fn make_jwt(claims: &str) -> String {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.signature",
        enc(r#"{"alg":"HS256","typ":"JWT"}"#),
        enc(claims)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_are_found_where_configured() {
        let h = headers(&[
            ("authorization", "Bearer abc.def.ghi"),
            ("cookie", "a=1; session=xyz; b=2"),
        ]);
        let header = TokenSource::Header("authorization".into());
        assert_eq!(
            find_token(&header, None, &h).as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            find_token(
                &header,
                None,
                &headers(&[("authorization", "Basic dXNlcg==")])
            ),
            None
        );
        let cookie = TokenSource::Cookie("session".into());
        assert_eq!(find_token(&cookie, None, &h).as_deref(), Some("xyz"));
        let query = TokenSource::Query("access_token".into());
        assert_eq!(
            find_token(&query, Some("room=1&access_token=t0k"), &h).as_deref(),
            Some("t0k")
        );
        assert_eq!(find_token(&query, Some("room=1"), &h), None);
    }

    #[test]
    fn exp_is_read_without_verifying_the_signature() {
        assert_eq!(
            expiry(&make_jwt(r#"{"sub":"ann","exp":1900000000}"#)),
            Ok(Some(1_900_000_000))
        );
        assert_eq!(expiry(&make_jwt(r#"{"sub":"ann"}"#)), Ok(None));
        assert_eq!(expiry("not-a-jwt"), Err(TokenError::Malformed));
        assert_eq!(expiry("a.!!!.c"), Err(TokenError::Malformed));
        assert_eq!(
            expiry(&make_jwt(r#"{"exp":"tomorrow"}"#)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn handshake_check() {
        let source = TokenSource::Header("authorization".into());
        let bearer =
            |claims: &str| headers(&[("authorization", &format!("Bearer {}", make_jwt(claims)))]);
        assert_eq!(
            check(&source, None, &bearer(r#"{"exp":2000}"#), 1000),
            Ok(Some(2000))
        );
        assert_eq!(
            check(&source, None, &bearer(r#"{"exp":1000}"#), 1000),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            check(&source, None, &HeaderMap::new(), 1000),
            Err(TokenError::Missing(_))
        ));
    }
}
