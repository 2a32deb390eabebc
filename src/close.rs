//! The close-code vocabulary (RFC 6455 §7.4): the codes holdfast names, which of them may
//! appear on the wire, a close as one side sent it, rewrite rules and the last step before
//! the wire. Pure, and below everything else: the configuration validates operators' codes
//! with it, the codec answers peers' closes with it, the session's close pipeline
//! (`ws::ends`) decides with it.
use std::ops::RangeInclusive;

/// RFC 6455 §5.5: a close frame's payload is at most 125 bytes, two of them the code.
pub const MAX_REASON_BYTES: usize = 123;

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;
pub const SERVICE_RESTART: u16 = 1012;
/// Pseudo-code: a close frame without a status code.
pub const NO_STATUS: u16 = 1005;
/// Pseudo-code: the connection ended without a close frame.
pub const ABNORMAL: u16 = 1006;
/// Pseudo-code: the TLS handshake failed.
pub const TLS_FAILURE: u16 = 1015;

/// May this code appear in a close frame on the wire? (RFC 6455 §7.4, IANA registry)
pub fn is_sendable(code: u16) -> bool {
    match code {
        1004 | NO_STATUS | ABNORMAL | TLS_FAILURE => false,
        1000..=1015 => true,
        1016..=2999 => false,
        3000..=4999 => true,
        _ => false,
    }
}

/// The longest prefix of `text` that fits in `max` bytes without splitting a character.
///
/// ```
/// use holdfast::close::truncate_utf8;
/// assert_eq!(truncate_utf8("héllo", 2), "h"); // "é" is two bytes: not cut in half
/// assert_eq!(truncate_utf8("héllo", 3), "hé");
/// ```
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Which way a close travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ToClient,
    ToUpstream,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToClient => "to_client",
            Direction::ToUpstream => "to_upstream",
        }
    }
}

/// One `[[rewrite]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteRule {
    pub direction: Direction,
    pub from: RangeInclusive<u16>,
    pub to: u16,
    /// `None` keeps the original reason.
    pub reason: Option<String>,
}

impl RewriteRule {
    /// A rule; `reason: None` keeps the original reason.
    pub fn new(
        direction: Direction,
        from: RangeInclusive<u16>,
        to: u16,
        reason: Option<&str>,
    ) -> Self {
        Self {
            direction,
            from,
            to,
            reason: reason.map(str::to_owned),
        }
    }
}

/// A close as one side sent it (or as holdfast models what happened: 1005/1006 pseudo-codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// What is actually written: `None` is an empty close frame (no code, no reason).
pub type WireClose = Option<Close>;

/// Applies the first matching rule of `direction`; returns the close unchanged if none matches.
pub fn rewrite(close: Close, direction: Direction, rules: &[RewriteRule]) -> Close {
    match rules
        .iter()
        .find(|r| r.direction == direction && r.from.contains(&close.code))
    {
        Some(rule) => Close {
            code: rule.to,
            reason: rule.reason.clone().unwrap_or(close.reason),
        },
        None => close,
    }
}

/// The last step before the wire: codes that must never be sent are replaced
/// (1005 → an empty close frame; 1006, 1015 and anything unsendable → 1011) and the
/// reason is cut to 123 bytes on a character boundary.
///
/// ```
/// use holdfast::close::{to_wire, Close};
/// assert_eq!(to_wire(Close::new(1005, "")), None); // an empty close frame
/// assert_eq!(to_wire(Close::new(1006, "gone")), Some(Close::new(1011, "gone")));
/// ```
pub fn to_wire(close: Close) -> WireClose {
    if close.code == NO_STATUS {
        return None;
    }
    let code = if is_sendable(close.code) {
        close.code
    } else {
        INTERNAL_ERROR
    };
    let reason = truncate_utf8(&close.reason, MAX_REASON_BYTES).to_owned();
    Some(Close { code, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes() {
        let table = [
            (999, false),
            (1000, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1008, true),
            (1012, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
        ];
        for (code, expected) in table {
            assert_eq!(is_sendable(code), expected, "code {code}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("abc", 123), "abc");
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate_utf8(&long, 123);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_utf8("€", 2), "");
    }

    #[test]
    fn rewrite_first_match_wins_and_respects_direction() {
        let rules = [
            RewriteRule::new(Direction::ToUpstream, 4000..=4099, 1000, None),
            RewriteRule::new(
                Direction::ToClient,
                4000..=4099,
                1008,
                Some("application policy"),
            ),
            RewriteRule::new(Direction::ToClient, 4050..=4050, 1000, None),
            RewriteRule::new(
                Direction::ToClient,
                1006..=1006,
                1001,
                Some("upstream gone"),
            ),
        ];
        let table = [
            (Direction::ToClient, 4050, "x", 1008, "application policy"),
            (Direction::ToUpstream, 4050, "x", 1000, "x"),
            (Direction::ToClient, 4100, "x", 4100, "x"),
            (Direction::ToClient, 1006, "", 1001, "upstream gone"),
            (Direction::ToUpstream, 1006, "", 1006, ""),
        ];
        for (dir, code, reason, want_code, want_reason) in table {
            let out = rewrite(Close::new(code, reason), dir, &rules);
            assert_eq!(out, Close::new(want_code, want_reason), "{dir:?} {code}");
        }
    }

    #[test]
    fn reserved_codes_never_reach_the_wire() {
        let table = [
            (1005, None),
            (1006, Some(1011)),
            (1015, Some(1011)),
            (1004, Some(1011)),
            (2000, Some(1011)),
            (1000, Some(1000)),
            (4001, Some(4001)),
        ];
        for (code, want) in table {
            let out = to_wire(Close::new(code, "r"));
            assert_eq!(out.map(|c| c.code), want, "code {code}");
        }
        let long = to_wire(Close::new(1000, "x".repeat(200))).unwrap();
        assert_eq!(long.reason.len(), MAX_REASON_BYTES);
    }
}
