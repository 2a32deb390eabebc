//! `RawConfig` → `Config`: every check SPEC §2 names, each problem reported with its key.
//! Nothing stops at the first problem, so an operator sees the whole list at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::raw::{
    RawCodes, RawCompression, RawConfig, RawPolicy, RawRestart, RawRewrite, RawSize, RawUpstream,
    Table,
};
use super::report;
use super::route::{self, HostPattern, Matcher};
use super::units::{self, endpoint, parse_duration, parse_size, token_source};
use super::*;
use crate::close::{Close, Direction, MAX_REASON_BYTES, RewriteRule, is_sendable};
use crate::tls;

/// `restart.max_reconnecting` above this is a typo, not a plan (and a semaphore's bound).
const MAX_RECONNECTING: i64 = 1_000_000;
/// `listen.http2.max_concurrent_streams` above this is not a plan (nginx allows 128).
const MAX_H2_STREAMS: i64 = 10_000;
/// HTTP/2's initial window: a smaller stream window would slow every stream down.
const MIN_H2_WINDOW: u32 = 65_535;
/// The largest `max_message_size` / `max_frame_size`: a message is buffered whole.
const MAX_MESSAGE_LIMIT: usize = 1 << 30;

/// Collects problems and turns each raw value into its typed form.
struct Checker<'a> {
    report: &'a mut dyn FnMut(&str, String),
    failed: bool,
    /// Problems that do not stop the configuration from loading (a shadowed route).
    warnings: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.failed = true;
        (self.report)(key, message.into());
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            key: key.to_owned(),
            message: message.into(),
            origin: None,
        });
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
        warnings: Vec::new(),
    };

    // [listen]
    let tls = raw.listen.tls.as_ref().and_then(|t| {
        let (cert, key) = (PathBuf::from(&t.cert), PathBuf::from(&t.key));
        match tls::server_config(&cert, &key, raw.listen.http2.enabled) {
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
        http2: Http2 {
            enabled: raw.listen.http2.enabled,
            max_concurrent_streams: c.count_within(
                "listen.http2.max_concurrent_streams",
                raw.listen.http2.max_concurrent_streams,
                1,
                MAX_H2_STREAMS,
            ) as u32,
            stream_window: {
                let key = "listen.http2.stream_window";
                let size = c.size(key, &raw.listen.http2.stream_window);
                if !(MIN_H2_WINDOW as usize..=MAX_H2_WINDOW as usize).contains(&size) && size > 0 {
                    c.problem(
                        key,
                        format!(
                            "must be {MIN_H2_WINDOW}-{MAX_H2_WINDOW} bytes (HTTP/2's window \
                             limits), got {size}"
                        ),
                    );
                }
                size.min(MAX_H2_WINDOW as usize) as u32
            },
        },
    };

    // [admin]
    let admin = Admin {
        address: (!raw.admin.address.is_empty())
            .then(|| c.address("admin.address", &raw.admin.address)),
    };

    // [upstream], [restart], [policy], [[rewrite]]: the default route's settings.
    // No top-level endpoints is allowed when routes carry the pools: then there is no
    // default route, and a request no route matches gets a 404.
    let has_default = !raw.upstream.endpoints.is_empty() || raw.route.is_empty();
    let upstream = upstream(&mut c, "", &raw.upstream, has_default);
    let restart = restart(&mut c, "", &raw.restart);
    let policy = policy(&mut c, "", &raw.policy);
    let rewrites = rewrites(&mut c, "", &raw.rewrite);

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

    // [[route]]
    let routes = routes(
        &mut c,
        raw,
        has_default,
        (&upstream, &restart, &policy, &rewrites),
    );

    if c.failed {
        return None;
    }
    let top = Config {
        listen,
        admin,
        upstream: upstream?,
        websocket,
        restart,
        policy,
        rewrites,
        shutdown,
        resume,
        route: Arc::from(DEFAULT_ROUTE),
        routes: Arc::from([]),
        warnings: std::mem::take(&mut c.warnings),
        loaded_at: std::time::Instant::now(),
    };
    // Each route's view: the whole configuration with the route's sections in place.
    let mut built: Vec<Route> = routes
        .into_iter()
        .map(|r| Route {
            view: Arc::new(Config {
                upstream: r.upstream,
                restart: r.restart,
                policy: r.policy,
                rewrites: r.rewrites,
                route: r.name.clone(),
                warnings: Vec::new(),
                ..top.clone()
            }),
            name: r.name,
            matcher: r.matcher,
        })
        .collect();
    if has_default {
        built.push(Route {
            name: Arc::from(DEFAULT_ROUTE),
            matcher: Matcher::default(),
            view: Arc::new(Config {
                warnings: Vec::new(),
                ..top.clone()
            }),
        });
    }
    Some(Config {
        routes: built.into(),
        ..top
    })
}

/// A route as validated, before its view is built.
struct RouteParts {
    name: Arc<str>,
    matcher: Matcher,
    upstream: Upstream,
    restart: Restart,
    policy: Policy,
    rewrites: Vec<RewriteRule>,
}

/// The longest route name: it is a metric label value.
const MAX_ROUTE_NAME: usize = 64;
/// More routes than this is a generated file gone wrong (and a metric label's values).
const MAX_ROUTES: usize = 256;

/// `[[route]]`: names, matchers, and each overridden section laid over the top-level one.
/// A route that an earlier one leaves nothing to match is a warning, not an error.
fn routes(
    c: &mut Checker,
    raw: &RawConfig,
    has_default: bool,
    top: (&Option<Upstream>, &Restart, &Policy, &[RewriteRule]),
) -> Vec<RouteParts> {
    if raw.route.len() > MAX_ROUTES {
        c.problem(
            "route",
            format!("{} routes; at most {MAX_ROUTES}", raw.route.len()),
        );
    }
    let mut names: Vec<&str> = Vec::new();
    let mut parts = Vec::new();
    for (i, r) in raw.route.iter().enumerate() {
        let at = format!("route[{i}].");
        let key = |name: &str| format!("{at}{name}");
        if r.name.is_empty()
            || r.name.len() > MAX_ROUTE_NAME
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            c.problem(
                &key("name"),
                format!(
                    "`{}` must be 1-{MAX_ROUTE_NAME} letters, digits, `_`, `-` or `.` \
                     (it names the route in metrics and logs)",
                    r.name
                ),
            );
        } else if r.name == DEFAULT_ROUTE {
            c.problem(
                &key("name"),
                "`default` is the top-level sections' route; name this one otherwise",
            );
        } else if let Some(first) = names.iter().position(|n| *n == r.name) {
            c.problem(
                &key("name"),
                format!("`{}` is already the name of route[{first}]", r.name),
            );
        }
        names.push(&r.name);
        let host = r.host.as_deref().and_then(|h| {
            HostPattern::parse(h)
                .map_err(|e| c.problem(&key("host"), e))
                .ok()
        });
        let path_prefix = r.path_prefix.as_deref().and_then(|p| {
            route::parse_prefix(p)
                .map_err(|e| c.problem(&key("path_prefix"), e))
                .ok()
        });
        let matcher = Matcher { host, path_prefix };
        // A section the route does not override is the top-level one, validated (and its
        // problems reported) once, under its own keys.
        let upstream = match &r.upstream {
            None if !has_default => {
                c.problem(
                    &key("upstream.endpoints"),
                    "needs at least one ws:// or wss:// endpoint (there is no top-level \
                     [upstream] to share)",
                );
                None
            }
            None => top.0.clone(),
            Some(_) => route_section(c, &at, "upstream", &raw.upstream, &r.upstream)
                .and_then(|u| upstream(c, &at, &u, true)),
        };
        let restart = match &r.restart {
            None => Some(top.1.clone()),
            Some(_) => route_section(c, &at, "restart", &raw.restart, &r.restart)
                .map(|r| restart(c, &at, &r)),
        };
        let policy = match &r.policy {
            None => Some(top.2.clone()),
            Some(_) => {
                route_section(c, &at, "policy", &raw.policy, &r.policy).map(|p| policy(c, &at, &p))
            }
        };
        let rewrites = match &r.rewrite {
            Some(list) => rewrites(c, &at, list),
            None => top.3.to_vec(),
        };
        if let (Some(upstream), Some(restart), Some(policy)) = (upstream, restart, policy) {
            parts.push(RouteParts {
                name: Arc::from(r.name.as_str()),
                matcher,
                upstream,
                restart,
                policy,
                rewrites,
            });
        }
    }
    if !c.failed {
        let matchers: Vec<Matcher> = parts.iter().map(|p| p.matcher.clone()).collect();
        for (j, earlier) in route::shadowed(&matchers).into_iter().enumerate() {
            if let Some(i) = earlier {
                c.warn(
                    &format!("route[{j}]"),
                    format!(
                        "`{}` can never match: route[{i}] (`{}`) comes first and matches \
                         every request it would",
                        parts[j].name, parts[i].name
                    ),
                );
            }
        }
    }
    parts
}

/// A route's section: the top-level one, with the route's table (if any) laid over it.
fn route_section<T: Clone + Serialize + DeserializeOwned>(
    c: &mut Checker,
    at: &str,
    name: &str,
    base: &T,
    over: &Option<Table>,
) -> Option<T> {
    match over {
        None => Some(base.clone()),
        // Keys the schema does not know are left out: the unknown-key walk reported them.
        Some(over) => lay_over(
            c,
            &format!("{at}{name}"),
            base,
            known_only(over, &format!("route[].{name}")),
        ),
    }
}

/// `table` without the keys the schema does not know at `schema` (nested tables too).
fn known_only(table: &Table, schema: &str) -> Table {
    let known = report::schema_keys(schema).unwrap_or(&[]);
    let known_value = |value: &serde_json::Value, schema: &str| match value {
        serde_json::Value::Object(t) if report::schema_keys(schema).is_some() => {
            serde_json::Value::Object(known_only(t, schema))
        }
        other => other.clone(),
    };
    table
        .iter()
        .filter(|(k, _)| known.contains(&k.as_str()))
        .map(|(k, v)| {
            let child = format!("{schema}.{k}");
            let v = match v {
                serde_json::Value::Array(items) => {
                    let element = format!("{child}[]");
                    serde_json::Value::Array(
                        items.iter().map(|i| known_value(i, &element)).collect(),
                    )
                }
                other => known_value(other, &child),
            };
            (k.clone(), v)
        })
        .collect()
}

/// `base` with `over`'s keys laid over it (tables merged key by key, anything else
/// replaced). A value of the wrong type is reported at its own key.
fn lay_over<T: Serialize + DeserializeOwned>(
    c: &mut Checker,
    key: &str,
    base: &T,
    over: Table,
) -> Option<T> {
    let merged = |over: &Table| {
        let mut value = serde_json::to_value(base).expect("a raw section serializes");
        merge(&mut value, over);
        serde_json::from_value::<T>(value)
    };
    match merged(&over) {
        Ok(section) => Some(section),
        Err(error) => {
            // Name the key: the first override that fails on its own.
            let culprit = over.iter().find_map(|(k, v)| {
                let one = Table::from_iter([(k.clone(), v.clone())]);
                merged(&one).err().map(|e| (k.clone(), e))
            });
            match culprit {
                Some((k, e)) => c.problem(&format!("{key}.{k}"), e.to_string()),
                None => c.problem(key, error.to_string()),
            }
            None
        }
    }
}

fn merge(value: &mut serde_json::Value, over: &Table) {
    let serde_json::Value::Object(base) = value else {
        return;
    };
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(existing @ serde_json::Value::Object(_)), serde_json::Value::Object(inner)) => {
                merge(existing, inner)
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `[upstream]` (or a route's): endpoints, timeout, TLS. `required`: an empty endpoint list
/// is a problem (it is not at the top level when the routes carry every pool).
fn upstream(c: &mut Checker, at: &str, raw: &RawUpstream, required: bool) -> Option<Upstream> {
    let key = |name: &str| format!("{at}upstream.{name}");
    let mut endpoints = Vec::new();
    if raw.endpoints.is_empty() && required {
        c.problem(
            &key("endpoints"),
            "needs at least one ws:// or wss:// endpoint",
        );
    }
    for (i, text) in raw.endpoints.iter().enumerate() {
        match endpoint(text) {
            Ok(e) => endpoints.push(e),
            Err(e) => c.problem(&format!("{at}upstream.endpoints[{i}]"), e),
        }
    }
    let upstream_tls = raw.tls.clone().unwrap_or_default();
    let client_tls = match tls::client_config(upstream_tls.ca.as_deref().map(std::path::Path::new))
    {
        Ok(config) => Some(config),
        Err(e) => {
            c.problem(&key("tls.ca"), e);
            None
        }
    };
    let connect_timeout = c.positive_duration(&key("connect_timeout"), &raw.connect_timeout);
    Some(Upstream {
        endpoints,
        connect_timeout,
        tls: client_tls?,
        server_name: upstream_tls.server_name,
    })
}

/// `[restart]` (or a route's).
fn restart(c: &mut Checker, at: &str, r: &RawRestart) -> Restart {
    let key = |name: &str| format!("{at}restart.{name}");
    let mut codes = Vec::new();
    for (i, code) in r.codes.iter().enumerate() {
        let key = format!("{at}restart.codes[{i}]");
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
        max_hold: c.positive_duration(&key("max_hold"), &r.max_hold),
        backoff_initial: c.duration(&key("backoff_initial"), &r.backoff_initial),
        backoff_max: c.duration(&key("backoff_max"), &r.backoff_max),
        buffer_messages: c.count(&key("buffer_messages"), r.buffer_messages, 0),
        buffer_bytes: usize::try_from(parse_size(&r.buffer_bytes).unwrap_or_else(|e| {
            c.problem(&key("buffer_bytes"), e);
            0
        }))
        .unwrap_or(usize::MAX),
        replay_first: c.count(&key("replay_first"), r.replay_first, 0),
        max_reconnecting: c.count_within(
            &key("max_reconnecting"),
            r.max_reconnecting,
            0,
            MAX_RECONNECTING,
        ),
        give_up: Close::new(
            c.sendable_code(&key("give_up_code"), r.give_up_code),
            c.reason(&key("give_up_reason"), &r.give_up_reason),
        ),
    };
    if restart.backoff_initial > restart.backoff_max {
        c.problem(
            &key("backoff_initial"),
            format!(
                "{} is greater than {} ({})",
                r.backoff_initial,
                key("backoff_max"),
                r.backoff_max
            ),
        );
    }
    restart
}

/// `[policy]` (or a route's).
fn policy(c: &mut Checker, at: &str, p: &RawPolicy) -> Policy {
    let key = |name: &str| format!("{at}policy.{name}");
    let context = match p.context.as_str() {
        "reason" => ContextMode::Reason,
        "message" => ContextMode::Message,
        "both" => ContextMode::Both,
        "none" => ContextMode::None,
        other => {
            c.problem(
                &key("context"),
                format!("`{other}` must be one of \"reason\", \"message\", \"both\", \"none\""),
            );
            ContextMode::None
        }
    };
    let mut catalog = Vec::new();
    for (i, entry) in p.catalog.iter().enumerate() {
        let key = |field: &str| format!("{at}policy.catalog[{i}].{field}");
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
            c,
            &key("rate_limit.messages_per_second"),
            p.rate_limit.messages_per_second,
        ),
        burst: rate(c, &key("rate_limit.burst"), p.rate_limit.burst),
    };
    let token_expiry = token_source(&p.token_expiry.source).unwrap_or_else(|e| {
        c.problem(&key("token_expiry.source"), e);
        None
    });
    Policy {
        context,
        expose_upstream_reason: p.expose_upstream_reason,
        catalog,
        rate_limit,
        token_expiry,
    }
}

/// `[[rewrite]]` (or a route's list).
fn rewrites(c: &mut Checker, at: &str, list: &[RawRewrite]) -> Vec<RewriteRule> {
    let mut rewrites = Vec::new();
    for (i, rule) in list.iter().enumerate() {
        let key = |field: &str| format!("{at}rewrite[{i}].{field}");
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
    rewrites
}
