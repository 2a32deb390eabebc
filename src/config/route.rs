//! Routes' matching, pure: which route a request's host and path pick (first match wins),
//! how a `host` or `path_prefix` value is read, and whether an earlier route leaves a later
//! one nothing to match. No I/O: table-tested below.

/// A route's `host`: one name exactly, or every name under a suffix (`*.example.com`
/// matches `a.example.com` and `a.b.example.com`, not `example.com`). Stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Under(String),
}

impl HostPattern {
    /// Reads a `host` value: a DNS name or `*.` followed by one; no port, no other `*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (under, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "`{text}` must be a host name (`chat.example.com`) or `*.` and a domain \
                 (`*.example.com`), without a port"
            ));
        }
        Ok(if under {
            HostPattern::Under(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Does a request's host (lower-case, no port) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Under(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// Does every host `other` matches also match `self`?
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(_), HostPattern::Under(_)) => false,
            (HostPattern::Under(_), HostPattern::Exact(b)) => self.matches(b),
            (HostPattern::Under(a), HostPattern::Under(b)) => b.ends_with(a.as_str()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Under(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Reads a `path_prefix` value: starts with `/`, no query or fragment; a trailing `/` is
/// dropped (`/ws/` and `/ws` are the same prefix), so `/` alone is every path.
pub fn parse_prefix(text: &str) -> Result<String, String> {
    if !text.starts_with('/') || text.contains(['?', '#']) || text.contains(char::is_whitespace) {
        return Err(format!(
            "`{text}` must be a path starting with `/`, without a query (`/ws/chat`)"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Does `path` start with `prefix` on a segment boundary? `/ws/chat` matches `/ws/chat`,
/// `/ws/chat/` and `/ws/chat/room`, never `/ws/chatx`. The empty prefix (from `/`) matches
/// every path.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// What one route matches: a host (any when `None`) and a path prefix (any when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matcher {
    pub host: Option<HostPattern>,
    pub path_prefix: Option<String>,
}

impl Matcher {
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some(host)) => pattern.matches(host),
            (Some(_), None) => false,
        };
        host_ok
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| prefix_matches(prefix, path))
    }

    /// Does `self` match every request `later` matches (so that, first, it shadows it)?
    pub fn covers(&self, later: &Matcher) -> bool {
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let path = match (&self.path_prefix, &later.path_prefix) {
            (None, _) => true,
            (Some(a), None) => a.is_empty(),
            (Some(a), Some(b)) => prefix_matches(a, b),
        };
        host && path
    }
}

/// A request's host as routes compare it: the authority's (HTTP/2) or the `Host` header's
/// name, lower-case, without the port or a trailing dot. IPv6 literals keep their brackets.
pub fn request_host(authority: &str) -> String {
    let name = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(name, _port)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The index of the first of `matchers` that matches: the route a request takes.
pub fn pick<'a>(
    matchers: impl IntoIterator<Item = &'a Matcher>,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    matchers
        .into_iter()
        .position(|matcher| matcher.matches(host, path))
}

/// For each matcher, the first earlier one that covers it (it can never be picked).
pub fn shadowed(matchers: &[Matcher]) -> Vec<Option<usize>> {
    matchers
        .iter()
        .enumerate()
        .map(|(j, later)| matchers[..j].iter().position(|m| m.covers(later)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(host: Option<&str>, prefix: Option<&str>) -> Matcher {
        Matcher {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path_prefix: prefix.map(|p| parse_prefix(p).unwrap()),
        }
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries() {
        let table = [
            ("/ws/chat", "/ws/chat", true),
            ("/ws/chat", "/ws/chat/", true),
            ("/ws/chat", "/ws/chat/room/1", true),
            ("/ws/chat", "/ws/chatx", false),
            ("/ws/chat", "/ws/cha", false),
            ("/ws/chat", "/ws", false),
            ("/ws/chat/", "/ws/chat", true),
            ("/ws/chat/", "/ws/chatx", false),
            ("/", "/", true),
            ("/", "/anything/at/all", true),
            ("/ws", "/WS", false),
        ];
        for (prefix, path, expected) in table {
            let prefix = parse_prefix(prefix).unwrap();
            assert_eq!(
                prefix_matches(&prefix, path),
                expected,
                "{prefix} vs {path}"
            );
        }
    }

    #[test]
    fn hosts_match_exactly_or_under_a_suffix() {
        let table = [
            ("chat.example.com", "chat.example.com", true),
            ("chat.example.com", "feed.example.com", false),
            ("Chat.Example.com.", "chat.example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "xexample.com", false),
        ];
        for (pattern, host, expected) in table {
            let pattern = HostPattern::parse(pattern).unwrap();
            assert_eq!(pattern.matches(host), expected, "{pattern} vs {host}");
        }
    }

    #[test]
    fn bad_hosts_and_prefixes_are_refused() {
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "chat.example.com:443",
            "a b",
            "*.*.x",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["ws/chat", "", "/ws?x=1", "/ws#a", "/a b"] {
            assert!(parse_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn request_hosts_lose_port_case_and_trailing_dot() {
        let table = [
            ("chat.example.com", "chat.example.com"),
            ("Chat.Example.COM:8443", "chat.example.com"),
            ("chat.example.com.", "chat.example.com"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
        ];
        for (authority, expected) in table {
            assert_eq!(request_host(authority), expected, "{authority}");
        }
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = [
            matcher(Some("chat.example.com"), Some("/ws/chat")),
            matcher(None, Some("/ws/chat")),
            matcher(Some("*.example.com"), None),
            matcher(None, None),
        ];
        let table = [
            (Some("chat.example.com"), "/ws/chat", Some(0)),
            (Some("chat.example.com"), "/ws/chat/room", Some(0)),
            (Some("chat.example.com"), "/ws/chatx", Some(2)),
            (Some("other.org"), "/ws/chat", Some(1)),
            (None, "/ws/chat", Some(1)),
            (Some("feed.example.com"), "/ws/feed", Some(2)),
            (Some("other.org"), "/ws/feed", Some(3)),
            (None, "/", Some(3)),
        ];
        for (host, path, expected) in table {
            assert_eq!(pick(&routes, host, path), expected, "{host:?} {path}");
        }
        assert_eq!(pick(&routes[..2], Some("x.org"), "/ws/feed"), None);
        // A route with a host never matches a request without one (HTTP/1.0).
        assert_eq!(pick(&routes[2..3], None, "/"), None);
    }

    #[test]
    fn earlier_routes_that_cover_later_ones_are_found() {
        let routes = [
            matcher(None, Some("/ws")),                        // 0
            matcher(None, Some("/ws/chat")),                   // 1: under 0
            matcher(Some("chat.example.com"), Some("/api")),   // 2
            matcher(Some("*.example.com"), Some("/api/v1")),   // 3: not under 2 (host wider)
            matcher(Some("a.example.com"), Some("/api/v1/x")), // 4: under 3
            matcher(None, Some("/wsx")),                       // 5: not under 0 (segments)
            matcher(Some("*.b.example.com"), Some("/api/v1")), // 6: under 3
            matcher(None, Some("/")),                          // 7: every path, covers later
            matcher(Some("z.org"), None),                      // 8: under 7
        ];
        let expected = [
            None,
            Some(0),
            None,
            None,
            Some(3),
            None,
            Some(3),
            None,
            Some(7),
        ];
        assert_eq!(shadowed(&routes), expected);
        // A route for every path covers a later one without a path prefix, and not the
        // other way round.
        assert!(matcher(None, Some("/")).covers(&matcher(None, None)));
        assert!(!matcher(None, Some("/ws")).covers(&matcher(None, None)));
    }
}
