//! `RawConfig` → `Config`: every check SPEC §2 names, each problem reported with its key.
//! Nothing stops at the first problem, so an operator sees the whole list at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use super::raw::{RawCodes, RawCompression, RawConfig, RawSize};
use super::units::{self, endpoint, parse_duration, parse_size, token_source};
use super::*;
use crate::close::{Close, Direction, MAX_REASON_BYTES, RewriteRule, is_sendable};
use crate::tls;

/// `restart.max_reconnecting` above this is a typo, not a plan (and a semaphore's bound).
const MAX_RECONNECTING: i64 = 1_000_000;
/// The largest `max_message_size` / `max_frame_size`: a message is buffered whole.
const MAX_MESSAGE_LIMIT: usize = 1 << 30;

/// Collects problems and turns each raw value into its typed form.
struct Checker<'a> {
    report: &'a mut dyn FnMut(&str, String),
    failed: bool,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.failed = true;
        (self.report)(key, message.into());
    }

    fn duration(&mut self, key: &str, text: &str) -> Duration {
        parse_duration(text).unwrap_or_else(|e| {
            self.problem(key, e);
            Duration::ZERO
        })
    }

    /// A duration that must not be zero.
    fn positive_duration(&mut self, key: &str, text: &str) -> Duration {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be greater than 0s");
                d
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(key, e);
                Duration::ZERO
            }
        }
    }

    fn size(&mut self, key: &str, raw: &RawSize) -> usize {
        match parse_size(raw) {
            Ok(0) => {
                self.problem(key, "must be greater than 0");
                0
            }
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(e) => {
                self.problem(key, e);
                0
            }
        }
    }

    fn size_at_most(&mut self, key: &str, raw: &RawSize, max: usize) -> usize {
        let size = self.size(key, raw);
        if size > max {
            self.problem(
                key,
                format!(
                    "must be at most {} (a message is held in memory whole)",
                    units::format_size(max as u64)
                ),
            );
        }
        size
    }

    fn count_within(&mut self, key: &str, value: i64, min: i64, max: i64) -> usize {
        if value > max {
            self.problem(key, format!("must be at most {max}, got {value}"));
            return 0;
        }
        self.count(key, value, min)
    }

    fn count(&mut self, key: &str, value: i64, min: i64) -> usize {
        if value < min {
            self.problem(key, format!("must be at least {min}, got {value}"));
            return 0;
        }
        usize::try_from(value).unwrap_or(usize::MAX)
    }

    fn address(&mut self, key: &str, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.problem(
                key,
                format!("`{text}` is not an IP address with a port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    /// A code holdfast may put on the wire (`to`, `give_up_code`, `client_code`).
    fn sendable_code(&mut self, key: &str, value: i64) -> u16 {
        match u16::try_from(value) {
            Ok(code) if is_sendable(code) => code,
            _ => {
                self.problem(
                    key,
                    format!(
                        "{value} may not be sent in a close frame; use 1000-1003, 1007-1014 or 3000-4999 \
                         (1004, 1005, 1006, 1015 and 1016-2999 are reserved)"
                    ),
                );
                1011
            }
        }
    }

    /// A code that may be matched: anything a peer can send, plus the pseudo-codes 1005/1006/1015.
    fn matchable_code(&mut self, key: &str, value: i64) -> Option<u16> {
        match u16::try_from(value) {
            Ok(code @ 1000..=4999) => Some(code),
            _ => {
                self.problem(key, format!("{value} is not a close code (1000-4999)"));
                None
            }
        }
    }

    fn reason(&mut self, key: &str, text: &str) -> String {
        if text.len() > MAX_REASON_BYTES {
            self.problem(
                key,
                format!(
                    "is {} bytes; a close reason is at most {MAX_REASON_BYTES} bytes",
                    text.len()
                ),
            );
        }
        text.to_owned()
    }

    fn code_range(&mut self, key: &str, raw: &RawCodes) -> Option<std::ops::RangeInclusive<u16>> {
        let bad = |text: &str| {
            format!("`{text}` is not a close code or an inclusive range such as \"4000-4099\"")
        };
        let (low, high) = match raw {
            RawCodes::One(n) => (*n, *n),
            RawCodes::Text(text) => {
                let parsed = match text.split_once('-') {
                    Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                    None => text.trim().parse().ok().map(|n| (n, n)),
                };
                match parsed {
                    Some(pair) => pair,
                    None => {
                        self.problem(key, bad(text));
                        return None;
                    }
                }
            }
        };
        let low = self.matchable_code(key, low)?;
        let high = self.matchable_code(key, high)?;
        if low > high {
            self.problem(
                key,
                format!("range {low}-{high} is empty: the first code must not exceed the second"),
            );
            return None;
        }
        Some(low..=high)
    }
}

/// `[websocket.compression]`: zlib's level range, window bits zlib can compress with.
fn compression(c: &mut Checker, raw: &RawCompression) -> Compression {
    let key = |name: &str| format!("websocket.compression.{name}");
    let mut bits = |name: &str, value: i64| {
        if (9..=15).contains(&value) {
            value as u8
        } else {
            c.problem(
                &key(name),
                format!("must be 9-15 (the base-2 logarithm of the window), got {value}"),
            );
            15
        }
    };
    let server_max_window_bits = bits("server_max_window_bits", raw.server_max_window_bits);
    let client_max_window_bits = bits("client_max_window_bits", raw.client_max_window_bits);
    let level = c.count_within(&key("level"), raw.level, 0, 9) as u8;
    let min_size = c.count(&key("min_size"), raw.min_size, 0);
    Compression {
        client: raw.client,
        upstream: raw.upstream,
        settings: crate::deflate::Settings {
            level,
            min_size,
            server_max_window_bits,
            client_max_window_bits,
            server_no_context_takeover: raw.server_no_context_takeover,
            client_no_context_takeover: raw.client_no_context_takeover,
        },
    }
}

/// Validates every key; returns `None` if any problem was reported.
pub fn validate(raw: &RawConfig, report: &mut dyn FnMut(&str, String)) -> Option<Config> {
    let mut c = Checker {
        report,
        failed: false,
    };

    // [listen]
    let tls = raw.listen.tls.as_ref().and_then(|t| {
        let (cert, key) = (PathBuf::from(&t.cert), PathBuf::from(&t.key));
        match tls::server_config(&cert, &key) {
            Ok(config) => Some(ServerTls { cert, key, config }),
            Err(e) => {
                let key_name = if e.contains(&t.key) && !e.contains(&t.cert) {
                    "listen.tls.key"
                } else {
                    "listen.tls.cert"
                };
                c.problem(key_name, e);
                None
            }
        }
    });
    let listen = Listen {
        address: c.address("listen.address", &raw.listen.address),
        tls,
        max_connections: c.count("listen.max_connections", raw.listen.max_connections, 1),
        handshake_timeout: c
            .positive_duration("listen.handshake_timeout", &raw.listen.handshake_timeout),
    };

    // [admin]
    let admin = Admin {
        address: (!raw.admin.address.is_empty())
            .then(|| c.address("admin.address", &raw.admin.address)),
    };

    // [upstream]
    let mut endpoints = Vec::new();
    if raw.upstream.endpoints.is_empty() {
        c.problem(
            "upstream.endpoints",
            "needs at least one ws:// or wss:// endpoint",
        );
    }
    for (i, text) in raw.upstream.endpoints.iter().enumerate() {
        match endpoint(text) {
            Ok(e) => endpoints.push(e),
            Err(e) => c.problem(&format!("upstream.endpoints[{i}]"), e),
        }
    }
    let upstream_tls = raw.upstream.tls.clone().unwrap_or_default();
    let client_tls = match tls::client_config(upstream_tls.ca.as_deref().map(std::path::Path::new))
    {
        Ok(config) => Some(config),
        Err(e) => {
            c.problem("upstream.tls.ca", e);
            None
        }
    };
    let connect_timeout =
        c.positive_duration("upstream.connect_timeout", &raw.upstream.connect_timeout);

    // [websocket]
    let ws = &raw.websocket;
    let ping = c.duration("websocket.ping_interval", &ws.ping_interval);
    let idle = c.duration("websocket.idle_timeout", &ws.idle_timeout);
    let websocket = WebSocket {
        max_message_size: c.size_at_most(
            "websocket.max_message_size",
            &ws.max_message_size,
            MAX_MESSAGE_LIMIT,
        ),
        max_frame_size: c.size_at_most(
            "websocket.max_frame_size",
            &ws.max_frame_size,
            MAX_MESSAGE_LIMIT,
        ),
        ping_interval: (!ping.is_zero()).then_some(ping),
        idle_timeout: (!idle.is_zero()).then_some(idle),
        allowed_origins: ws.allowed_origins.clone(),
        compression: compression(&mut c, &ws.compression),
    };

    // [restart]
    let r = &raw.restart;
    let mut codes = Vec::new();
    for (i, code) in r.codes.iter().enumerate() {
        let key = format!("restart.codes[{i}]");
        if *code == i64::from(crate::close::POLICY_VIOLATION) {
            c.problem(&key, "1008 is a policy close and never triggers a hold");
            continue;
        }
        codes.extend(c.matchable_code(&key, *code));
    }
    let restart = Restart {
        hold: r.hold,
        codes,
        on_disconnect: r.on_disconnect,
        max_hold: c.positive_duration("restart.max_hold", &r.max_hold),
        backoff_initial: c.duration("restart.backoff_initial", &r.backoff_initial),
        backoff_max: c.duration("restart.backoff_max", &r.backoff_max),
        buffer_messages: c.count("restart.buffer_messages", r.buffer_messages, 0),
        buffer_bytes: usize::try_from(parse_size(&r.buffer_bytes).unwrap_or_else(|e| {
            c.problem("restart.buffer_bytes", e);
            0
        }))
        .unwrap_or(usize::MAX),
        replay_first: c.count("restart.replay_first", r.replay_first, 0),
        max_reconnecting: c.count_within(
            "restart.max_reconnecting",
            r.max_reconnecting,
            0,
            MAX_RECONNECTING,
        ),
        give_up: Close::new(
            c.sendable_code("restart.give_up_code", r.give_up_code),
            c.reason("restart.give_up_reason", &r.give_up_reason),
        ),
    };
    if restart.backoff_initial > restart.backoff_max {
        c.problem(
            "restart.backoff_initial",
            format!(
                "{} is greater than restart.backoff_max ({})",
                r.backoff_initial, r.backoff_max
            ),
        );
    }

    // [policy]
    let p = &raw.policy;
    let context = match p.context.as_str() {
        "reason" => ContextMode::Reason,
        "message" => ContextMode::Message,
        "both" => ContextMode::Both,
        "none" => ContextMode::None,
        other => {
            c.problem(
                "policy.context",
                format!("`{other}` must be one of \"reason\", \"message\", \"both\", \"none\""),
            );
            ContextMode::None
        }
    };
    let mut catalog = Vec::new();
    for (i, entry) in p.catalog.iter().enumerate() {
        let key = |field: &str| format!("policy.catalog[{i}].{field}");
        if entry.id.is_empty() {
            c.problem(&key("id"), "must not be empty");
        }
        let pattern = match Regex::new(&entry.pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                c.problem(&key("match"), format!("not a valid regex: {e}"));
                None
            }
        };
        let retry_after = entry
            .retry_after
            .as_ref()
            .map(|t| c.duration(&key("retry_after"), t));
        if let Some(pattern) = pattern {
            catalog.push(CatalogEntry {
                id: entry.id.clone(),
                pattern,
                retry_after,
                docs: entry.docs.clone(),
            });
        }
    }
    let rate = |c: &mut Checker, key: &str, v: i64| -> u32 {
        u32::try_from(v).unwrap_or_else(|_| {
            c.problem(key, format!("must be between 0 and {}, got {v}", u32::MAX));
            0
        })
    };
    let rate_limit = RateLimit {
        messages_per_second: rate(
            &mut c,
            "policy.rate_limit.messages_per_second",
            p.rate_limit.messages_per_second,
        ),
        burst: rate(&mut c, "policy.rate_limit.burst", p.rate_limit.burst),
    };
    let token_expiry = token_source(&p.token_expiry.source).unwrap_or_else(|e| {
        c.problem("policy.token_expiry.source", e);
        None
    });
    let policy = Policy {
        context,
        expose_upstream_reason: p.expose_upstream_reason,
        catalog,
        rate_limit,
        token_expiry,
    };

    // [[rewrite]]
    let mut rewrites = Vec::new();
    for (i, rule) in raw.rewrite.iter().enumerate() {
        let key = |field: &str| format!("rewrite[{i}].{field}");
        let direction = match rule.direction.as_str() {
            "to_client" => Some(Direction::ToClient),
            "to_upstream" => Some(Direction::ToUpstream),
            other => {
                c.problem(
                    &key("direction"),
                    format!("`{other}` must be \"to_client\" or \"to_upstream\""),
                );
                None
            }
        };
        let from = c.code_range(&key("from"), &rule.from);
        let to = c.sendable_code(&key("to"), rule.to);
        let reason = rule.reason.as_ref().map(|r| c.reason(&key("reason"), r));
        if let (Some(direction), Some(from)) = (direction, from) {
            rewrites.push(RewriteRule {
                direction,
                from,
                to,
                reason,
            });
        }
    }

    // [shutdown]
    let s = &raw.shutdown;
    let shutdown = Shutdown {
        drain_timeout: c.duration("shutdown.drain_timeout", &s.drain_timeout),
        client: Close::new(
            c.sendable_code("shutdown.client_code", s.client_code),
            c.reason("shutdown.client_reason", &s.client_reason),
        ),
    };

    // [resume]
    let r = &raw.resume;
    let key_file = (!r.key_file.is_empty()).then(|| PathBuf::from(&r.key_file));
    let resume = Resume {
        enabled: r.enabled,
        client_hold: c.positive_duration("resume.client_hold", &r.client_hold),
        buffer_messages: c.count("resume.buffer_messages", r.buffer_messages, 1),
        buffer_bytes: c.size("resume.buffer_bytes", &r.buffer_bytes),
        key: key_file
            .as_ref()
            .and_then(|path| match crate::resume::token::Key::from_file(path) {
                Ok(key) => Some(key),
                Err(e) => {
                    c.problem("resume.key_file", e);
                    None
                }
            }),
        key_file,
    };

    if c.failed {
        return None;
    }
    Some(Config {
        listen,
        admin,
        upstream: Upstream {
            endpoints,
            connect_timeout,
            tls: client_tls?,
            server_name: upstream_tls.server_name,
        },
        websocket,
        restart,
        policy,
        rewrites,
        shutdown,
        resume,
    })
}
