//! `RawConfig`: the TOML/env schema exactly as operators write it (SPEC §2).
//! Values stay loose here (durations and sizes as strings); `super::validate` turns
//! them into the typed `Config` and reports every problem at once.

use serde::{Deserialize, Serialize};

/// A size: a plain integer (bytes) or a string such as `"64KiB"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

/// A close code for matching: one code (`4000` or `"4000"`) or an inclusive range `"4000-4099"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawCodes {
    One(i64),
    Text(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub upstream: RawUpstream,
    pub websocket: RawWebSocket,
    pub restart: RawRestart,
    pub policy: RawPolicy,
    pub rewrite: Vec<RawRewrite>,
    pub shutdown: RawShutdown,
    pub resume: RawResume,
    pub route: Vec<RawRoute>,
}

/// One `[[route]]`. Its sections override the top-level ones key by key (`rewrite`
/// replaces the top-level list), so they stay loose tables here: `validate` lays each over
/// its top-level section before reading it as that section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Vec<RawRewrite>>,
}

/// A table of a route's overrides, as written.
pub type Table = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawServerTls>,
    pub max_connections: i64,
    pub handshake_timeout: String,
    pub http2: RawHttp2,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp2 {
    pub enabled: bool,
    pub max_concurrent_streams: i64,
    pub stream_window: RawSize,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: 128,
            stream_window: RawSize::Text("256KiB".into()),
        }
    }
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            address: "0.0.0.0:8080".into(),
            tls: None,
            max_connections: 10_000,
            handshake_timeout: "10s".into(),
            http2: RawHttp2::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub address: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub endpoints: Vec<String>,
    pub connect_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawClientTls>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            endpoints: vec!["ws://127.0.0.1:9000".into()],
            connect_timeout: "3s".into(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClientTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebSocket {
    pub max_message_size: RawSize,
    pub max_frame_size: RawSize,
    pub ping_interval: String,
    pub idle_timeout: String,
    pub allowed_origins: Vec<String>,
    pub compression: RawCompression,
}

impl Default for RawWebSocket {
    fn default() -> Self {
        Self {
            max_message_size: RawSize::Text("1MiB".into()),
            max_frame_size: RawSize::Text("1MiB".into()),
            ping_interval: "30s".into(),
            idle_timeout: "0s".into(),
            allowed_origins: Vec::new(),
            compression: RawCompression::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCompression {
    pub client: bool,
    pub upstream: bool,
    pub level: i64,
    pub min_size: i64,
    pub server_max_window_bits: i64,
    pub client_max_window_bits: i64,
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
}

impl Default for RawCompression {
    fn default() -> Self {
        let d = crate::deflate::Settings::default();
        Self {
            client: true,
            upstream: false,
            level: d.level.into(),
            min_size: d.min_size as i64,
            server_max_window_bits: d.server_max_window_bits.into(),
            client_max_window_bits: d.client_max_window_bits.into(),
            server_no_context_takeover: d.server_no_context_takeover,
            client_no_context_takeover: d.client_no_context_takeover,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRestart {
    pub hold: bool,
    pub codes: Vec<i64>,
    pub on_disconnect: bool,
    pub max_hold: String,
    pub backoff_initial: String,
    pub backoff_max: String,
    pub buffer_messages: i64,
    pub buffer_bytes: RawSize,
    pub replay_first: i64,
    pub max_reconnecting: i64,
    pub give_up_code: i64,
    pub give_up_reason: String,
}

impl Default for RawRestart {
    fn default() -> Self {
        Self {
            hold: true,
            // Many servers say 1001 Going Away when they shut down (Python websockets,
            // neffos): from the client's point of view that is a restart too.
            codes: vec![1012, 1001],
            on_disconnect: true,
            max_hold: "30s".into(),
            backoff_initial: "1s".into(),
            backoff_max: "5s".into(),
            buffer_messages: 1024,
            buffer_bytes: RawSize::Text("1MiB".into()),
            replay_first: 0,
            max_reconnecting: 128,
            give_up_code: 1012,
            give_up_reason: "upstream restarting; reconnect in 1-5s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub context: String,
    pub expose_upstream_reason: bool,
    pub catalog: Vec<RawCatalogEntry>,
    pub rate_limit: RawRateLimit,
    pub token_expiry: RawTokenExpiry,
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            context: "reason".into(),
            expose_upstream_reason: true,
            catalog: Vec::new(),
            rate_limit: RawRateLimit::default(),
            token_expiry: RawTokenExpiry::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalogEntry {
    pub id: String,
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub messages_per_second: i64,
    pub burst: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokenExpiry {
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub direction: String,
    pub from: RawCodes,
    pub to: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    pub drain_timeout: String,
    pub client_code: i64,
    pub client_reason: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            drain_timeout: "30s".into(),
            client_code: 1012,
            client_reason: "proxy restarting; reconnect in 1-5s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResume {
    pub enabled: bool,
    pub client_hold: String,
    pub buffer_messages: i64,
    pub buffer_bytes: RawSize,
    pub key_file: String,
}

impl Default for RawResume {
    fn default() -> Self {
        Self {
            enabled: true,
            client_hold: "30s".into(),
            buffer_messages: 1024,
            buffer_bytes: RawSize::Text("1MiB".into()),
            key_file: String::new(),
        }
    }
}

/// Every key the schema knows, per table path (`[]` marks an array of tables).
/// Used to report *all* unknown keys with their location, where serde stops at the first.
pub const SCHEMA: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "admin",
            "upstream",
            "websocket",
            "restart",
            "policy",
            "rewrite",
            "shutdown",
            "resume",
            "route",
        ],
    ),
    (
        "listen",
        &[
            "address",
            "tls",
            "max_connections",
            "handshake_timeout",
            "http2",
        ],
    ),
    ("listen.tls", &["cert", "key"]),
    (
        "listen.http2",
        &["enabled", "max_concurrent_streams", "stream_window"],
    ),
    ("admin", &["address"]),
    ("upstream", UPSTREAM_KEYS),
    ("upstream.tls", UPSTREAM_TLS_KEYS),
    (
        "websocket",
        &[
            "max_message_size",
            "max_frame_size",
            "ping_interval",
            "idle_timeout",
            "allowed_origins",
            "compression",
        ],
    ),
    (
        "websocket.compression",
        &[
            "client",
            "upstream",
            "level",
            "min_size",
            "server_max_window_bits",
            "client_max_window_bits",
            "server_no_context_takeover",
            "client_no_context_takeover",
        ],
    ),
    ("restart", RESTART_KEYS),
    ("policy", POLICY_KEYS),
    ("policy.catalog[]", CATALOG_KEYS),
    ("policy.rate_limit", RATE_LIMIT_KEYS),
    ("policy.token_expiry", TOKEN_EXPIRY_KEYS),
    ("rewrite[]", REWRITE_KEYS),
    (
        "route[]",
        &[
            "name",
            "host",
            "path_prefix",
            "upstream",
            "restart",
            "policy",
            "rewrite",
        ],
    ),
    ("route[].upstream", UPSTREAM_KEYS),
    ("route[].upstream.tls", UPSTREAM_TLS_KEYS),
    ("route[].restart", RESTART_KEYS),
    ("route[].policy", POLICY_KEYS),
    ("route[].policy.catalog[]", CATALOG_KEYS),
    ("route[].policy.rate_limit", RATE_LIMIT_KEYS),
    ("route[].policy.token_expiry", TOKEN_EXPIRY_KEYS),
    ("route[].rewrite[]", REWRITE_KEYS),
    (
        "shutdown",
        &["drain_timeout", "client_code", "client_reason"],
    ),
    (
        "resume",
        &[
            "enabled",
            "client_hold",
            "buffer_messages",
            "buffer_bytes",
            "key_file",
        ],
    ),
];

// The sections a route may override have the same keys in a route as at the top level.
const UPSTREAM_KEYS: &[&str] = &["endpoints", "connect_timeout", "tls"];
const UPSTREAM_TLS_KEYS: &[&str] = &["ca", "server_name"];
const RESTART_KEYS: &[&str] = &[
    "hold",
    "codes",
    "on_disconnect",
    "max_hold",
    "backoff_initial",
    "backoff_max",
    "buffer_messages",
    "buffer_bytes",
    "replay_first",
    "max_reconnecting",
    "give_up_code",
    "give_up_reason",
];
const POLICY_KEYS: &[&str] = &[
    "context",
    "expose_upstream_reason",
    "catalog",
    "rate_limit",
    "token_expiry",
];
const CATALOG_KEYS: &[&str] = &["id", "match", "retry_after", "docs"];
const RATE_LIMIT_KEYS: &[&str] = &["messages_per_second", "burst"];
const TOKEN_EXPIRY_KEYS: &[&str] = &["source"];
const REWRITE_KEYS: &[&str] = &["direction", "from", "to", "reason"];
