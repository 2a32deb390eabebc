//! Policy closes (SPEC §3.4): which policy a 1008 is about (`upstream_context`, catalog
//! regexes over the upstream's reason), holdfast's own policies (`ProxyPolicy`: the rate
//! limit and token expiry), and how the context reaches the client (`apply`, per
//! `policy.context`). `context.rs` builds the JSON, `rate_limit.rs` and `token.rs` hold the
//! two policies' mechanics. All pure; the session executes.

pub mod context;
pub mod rate_limit;
pub mod token;

use std::time::Duration;

pub use context::{PolicyContext, Source};

use crate::close::{Close, POLICY_VIOLATION};
use crate::config::{ContextMode, Policy};

pub const RATE_LIMIT: &str = "rate-limit";
pub const TOKEN_EXPIRED: &str = "token-expired";
pub const UNSPECIFIED: &str = "unspecified";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The context of a 1008 from the upstream (or a rewrite that produced 1008): the first
/// catalog entry whose regex matches `reason`, else `unspecified`.
pub fn upstream_context(reason: &str, policy: &Policy) -> PolicyContext {
    let detail = (policy.expose_upstream_reason && !reason.is_empty()).then(|| reason.to_owned());
    match policy
        .catalog
        .iter()
        .find(|entry| entry.pattern.is_match(reason))
    {
        Some(entry) => PolicyContext {
            policy: entry.id.clone(),
            retry_ms: entry.retry_after.map(millis),
            reference: entry.docs.clone(),
            detail,
            source: Source::Upstream,
        },
        None => PolicyContext {
            policy: UNSPECIFIED.to_owned(),
            retry_ms: None,
            reference: None,
            detail,
            source: Source::Upstream,
        },
    }
}

/// One of holdfast's own policies firing on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyPolicy {
    /// The client sent faster than `policy.rate_limit`; a message is allowed again after `retry`.
    RateLimit { retry: Duration },
    /// The handshake's token reached its `exp`.
    TokenExpired,
}

impl ProxyPolicy {
    pub fn id(self) -> &'static str {
        match self {
            ProxyPolicy::RateLimit { .. } => RATE_LIMIT,
            ProxyPolicy::TokenExpired => TOKEN_EXPIRED,
        }
    }

    fn detail(self) -> &'static str {
        match self {
            ProxyPolicy::RateLimit { .. } => "message rate limit exceeded",
            ProxyPolicy::TokenExpired => "access token expired",
        }
    }

    /// The context sent to the client. A catalog entry with the same id supplies the docs
    /// link (and `retry_after` where the policy itself has no retry time).
    pub fn context(self, policy: &Policy) -> PolicyContext {
        let entry = policy.catalog.iter().find(|e| e.id == self.id());
        let retry_ms = match self {
            ProxyPolicy::RateLimit { retry } => Some(millis(retry).max(1)),
            ProxyPolicy::TokenExpired => entry.and_then(|e| e.retry_after).map(millis),
        };
        PolicyContext {
            policy: self.id().to_owned(),
            retry_ms,
            reference: entry.and_then(|e| e.docs.clone()),
            detail: Some(self.detail().to_owned()),
            source: Source::Proxy,
        }
    }

    /// The close as it would read without context (`policy.context = "none"`).
    pub fn plain_close(self) -> Close {
        Close::new(POLICY_VIOLATION, self.detail())
    }
}

/// Puts `context` where `policy.context` says: the close reason (`reason`), a
/// `close_context` text message sent right before the close (`message`), both, or neither.
/// Returns the close to send (its reason still to be cut by `to_wire`) and the message.
pub fn apply(context: &PolicyContext, close: Close, mode: ContextMode) -> (Close, Option<String>) {
    let in_reason = || Close::new(close.code, context.reason_json());
    match mode {
        ContextMode::Reason => (in_reason(), None),
        ContextMode::Message => (close.clone(), Some(context.message_json(close.code))),
        ContextMode::Both => (in_reason(), Some(context.message_json(close.code))),
        ContextMode::None => (close, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CatalogEntry, RateLimit};

    fn policy(expose: bool) -> Policy {
        Policy {
            context: ContextMode::Reason,
            expose_upstream_reason: expose,
            catalog: vec![
                CatalogEntry {
                    id: "rate-limit".into(),
                    pattern: regex::Regex::new("(?i)rate|too many").unwrap(),
                    retry_after: Some(Duration::from_secs(5)),
                    docs: Some("https://example.com/p#rate".into()),
                },
                CatalogEntry {
                    id: "quota".into(),
                    pattern: regex::Regex::new("quota").unwrap(),
                    retry_after: None,
                    docs: None,
                },
            ],
            rate_limit: RateLimit {
                messages_per_second: 0,
                burst: 0,
            },
            token_expiry: None,
        }
    }

    #[test]
    fn catalog_first_match_wins_else_unspecified() {
        let p = policy(true);
        let table = [
            (
                "Too many messages",
                "rate-limit",
                Some(5000),
                Some("https://example.com/p#rate"),
            ),
            ("quota exceeded", "quota", None, None),
            (
                "rate quota",
                "rate-limit",
                Some(5000),
                Some("https://example.com/p#rate"),
            ),
            ("forbidden", "unspecified", None, None),
        ];
        for (reason, id, retry, docs) in table {
            let c = upstream_context(reason, &p);
            assert_eq!(
                (c.policy.as_str(), c.retry_ms, c.reference.as_deref()),
                (id, retry, docs),
                "{reason}"
            );
            assert_eq!(c.detail.as_deref(), Some(reason));
            assert_eq!(c.source, Source::Upstream);
        }
        assert_eq!(upstream_context("too many", &policy(false)).detail, None);
        assert_eq!(upstream_context("", &p).detail, None);
    }

    #[test]
    fn proxy_policies_take_docs_from_a_catalog_entry_of_the_same_id() {
        let p = policy(true);
        let c = ProxyPolicy::RateLimit {
            retry: Duration::from_millis(250),
        }
        .context(&p);
        assert_eq!(c.policy, "rate-limit");
        assert_eq!(c.retry_ms, Some(250));
        assert_eq!(c.reference.as_deref(), Some("https://example.com/p#rate"));
        assert_eq!(c.source, Source::Proxy);
        let c = ProxyPolicy::TokenExpired.context(&p);
        assert_eq!(
            (c.policy.as_str(), c.retry_ms, c.reference),
            ("token-expired", None, None)
        );
    }

    #[test]
    fn modes_place_the_context() {
        let c = upstream_context("too many", &policy(true));
        let close = Close::new(1008, "too many");
        let (r, m) = apply(&c, close.clone(), ContextMode::Reason);
        assert!(r.reason.starts_with("{\"policy\":\"rate-limit\"") && m.is_none());
        let (r, m) = apply(&c, close.clone(), ContextMode::Message);
        assert_eq!(r, close);
        assert!(
            m.unwrap()
                .starts_with("{\"type\":\"close_context\",\"code\":1008,\"source\":\"upstream\"")
        );
        let (r, m) = apply(&c, close.clone(), ContextMode::Both);
        assert!(r.reason.starts_with('{') && m.is_some());
        assert_eq!(apply(&c, close.clone(), ContextMode::None), (close, None));
    }
}
