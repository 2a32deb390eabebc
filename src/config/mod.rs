//! Configuration: loading (figment: defaults → TOML file → `HOLDFAST_*` env), validation
//! into the typed [`Config`], and the provenance report behind `holdfast check`.
//! `raw.rs` holds the serde schema, `units.rs` durations and sizes, `report.rs` the
//! unknown-key walk, key locations and the effective-config listing.

pub mod raw;
mod report;
pub mod route;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use regex::Regex;

pub use report::EffectiveEntry;

use crate::close::{Close, RewriteRule};
use raw::RawConfig;

/// The validated configuration every other module reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub admin: Admin,
    pub upstream: Upstream,
    pub websocket: WebSocket,
    pub restart: Restart,
    pub policy: Policy,
    pub rewrites: Vec<RewriteRule>,
    pub shutdown: Shutdown,
    pub resume: Resume,
    /// The route this is the view of: `default` for the top-level configuration.
    pub route: Arc<str>,
    /// The routes in match order, the default route (the top-level sections, when
    /// `upstream.endpoints` is not empty) last. Empty in a route's own view.
    pub routes: Arc<[Route]>,
    /// Problems that do not stop loading (a route that can never match), for the log and
    /// `holdfast check`.
    pub warnings: Vec<Problem>,
    /// When this configuration was validated (the oldest retired routes are forgotten
    /// first).
    pub loaded_at: std::time::Instant,
}

/// The name of the route made of the top-level sections.
pub const DEFAULT_ROUTE: &str = "default";

/// One route: what it matches, and its view of the configuration — the whole of it, with
/// this route's `upstream`, `restart`, `policy` and rewrites in place of the top-level ones.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: route::Matcher,
    pub view: Arc<Config>,
}

impl Config {
    /// The route a request for `host` (see `route::request_host`) and `path` takes: the
    /// first that matches. `None`: no route, and no default route either (a 404).
    pub fn pick(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        route::pick(self.routes.iter().map(|r| &r.matcher), host, path).map(|i| &self.routes[i])
    }

    /// The live view of the route named `name`, if this configuration has it.
    pub fn route_view(&self, name: &str) -> Option<&Arc<Config>> {
        self.routes
            .iter()
            .find(|r| &*r.name == name)
            .map(|r| &r.view)
    }
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    pub tls: Option<ServerTls>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub http2: Http2,
}

/// `[listen.http2]`: HTTP/2 on the TLS listener (ALPN `h2`), WebSockets over it as
/// extended CONNECT streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    pub enabled: bool,
    /// Streams (sessions and requests) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Each stream's flow-control window; the connection's is this times
    /// `max_concurrent_streams`, so a stream that stops reading cannot hold up the others.
    pub stream_window: u32,
}

impl Http2 {
    /// The connection-level window: room for every stream's window at once.
    pub fn connection_window(&self) -> u32 {
        self.stream_window
            .saturating_mul(self.max_concurrent_streams)
            .min(MAX_H2_WINDOW)
    }
}

/// The largest flow-control window HTTP/2 allows (2^31 - 1).
pub const MAX_H2_WINDOW: u32 = (1 << 31) - 1;

#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    /// `None` when `admin.address = ""`.
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    /// Used for `wss://` endpoints (and `https` passthrough to them).
    pub tls: Arc<rustls::ClientConfig>,
    /// SNI / verification name override.
    pub server_name: Option<String>,
}

/// One `upstream.endpoints` entry: `ws://host:port` or `wss://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub secure: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

#[derive(Debug, Clone)]
pub struct WebSocket {
    pub max_message_size: usize,
    pub max_frame_size: usize,
    /// `None` = keepalive pings off.
    pub ping_interval: Option<Duration>,
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    pub allowed_origins: Vec<String>,
    pub compression: Compression,
}

/// `[websocket.compression]`: permessage-deflate on each hop.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// Accept it from clients that offer it.
    pub client: bool,
    /// Offer it to the upstream.
    pub upstream: bool,
    pub settings: crate::deflate::Settings,
}

#[derive(Debug, Clone)]
pub struct Restart {
    pub hold: bool,
    pub codes: Vec<u16>,
    pub on_disconnect: bool,
    pub max_hold: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub buffer_messages: usize,
    pub buffer_bytes: usize,
    pub replay_first: usize,
    /// Reconnect tries in flight at once per upstream address; 0 = no limit.
    pub max_reconnecting: usize,
    pub give_up: Close,
}

/// Where 1008 policy context goes (SPEC §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextMode {
    Reason,
    Message,
    Both,
    None,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub context: ContextMode,
    pub expose_upstream_reason: bool,
    pub catalog: Vec<CatalogEntry>,
    pub rate_limit: RateLimit,
    pub token_expiry: Option<TokenSource>,
}

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub id: String,
    pub pattern: Regex,
    pub retry_after: Option<Duration>,
    pub docs: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// 0 = off.
    pub messages_per_second: u32,
    pub burst: u32,
}

/// Where the JWT for `policy.token_expiry` is read at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header(String),
    Query(String),
    Cookie(String),
}

/// `[resume]`: resumable sessions for clients that speak `holdfast.resume.v1`.
#[derive(Debug, Clone)]
pub struct Resume {
    pub enabled: bool,
    pub client_hold: Duration,
    pub buffer_messages: usize,
    pub buffer_bytes: usize,
    /// The HMAC key read from `key_file`; `None`: a random key of this process.
    pub key: Option<crate::resume::token::Key>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Shutdown {
    pub drain_timeout: Duration,
    pub client: Close,
}

/// One configuration problem, naming its key and where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `rewrite[1].to`; empty for file-level problems.
    pub key: String,
    pub message: String,
    /// `proxy.toml:12`, `env HOLDFAST_LISTEN__ADDRESS`, or `None` for defaults.
    pub origin: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        Ok(())
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(key: &str, message: impl Into<String>, origin: Option<String>) -> Self {
        Self {
            problems: vec![Problem {
                key: key.into(),
                message: message.into(),
                origin,
            }],
        }
    }
}

/// A loaded, validated configuration together with where each value came from.
pub struct Loaded {
    pub config: Config,
    pub effective: Vec<EffectiveEntry>,
}

/// The environment variables starting with `HOLDFAST_` that are not config keys.
const NON_CONFIG_ENV: &[&str] = &["config", "log"];

/// One line of `holdfast check` for a route: its name, what it matches, where it goes,
/// and how its settings differ from the top-level ones.
pub fn describe_route(route: &Route) -> String {
    let host = route
        .matcher
        .host
        .as_ref()
        .map_or("any host".to_owned(), |h| format!("host {h}"));
    let path = match route.matcher.path_prefix.as_deref() {
        None | Some("") => "any path".to_owned(),
        Some(prefix) => format!("path {prefix}"),
    };
    let view = &route.view;
    let endpoints: Vec<String> = view
        .upstream
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect();
    format!(
        "{}: {host}, {path} -> {} (hold {}, {} rewrite rule{}, {} policy catalog entr{})",
        route.name,
        endpoints.join(", "),
        if view.restart.hold { "on" } else { "off" },
        view.rewrites.len(),
        if view.rewrites.len() == 1 { "" } else { "s" },
        view.policy.catalog.len(),
        if view.policy.catalog.len() == 1 {
            "y"
        } else {
            "ies"
        },
    )
}

/// Loads `path` (which must exist), then `HOLDFAST_*` environment variables, over the defaults.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::single(
            "",
            format!(
                "config file {} not found (set --config or HOLDFAST_CONFIG)",
                path.display()
            ),
            None,
        ));
    }
    let env = Env::prefixed("HOLDFAST_").split("__").filter(|key| {
        !NON_CONFIG_ENV
            .iter()
            .any(|k| key.as_str().eq_ignore_ascii_case(k))
    });
    let figment = defaults().merge(Toml::file_exact(path)).merge(env);
    load_figment(figment)
}

/// Loads a configuration from TOML text over the defaults, ignoring the environment.
/// Used by tests and the demo.
///
/// ```
/// let config = holdfast::config::from_toml_str("[restart]\nmax_hold = \"2m\"").unwrap();
/// assert_eq!(config.restart.max_hold.as_secs(), 120);
///
/// let error = holdfast::config::from_toml_str("[restart]\ngive_up_code = 1006").unwrap_err();
/// assert_eq!(error.problems[0].key, "restart.give_up_code");
/// ```
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    from_toml_layers(&[text])
}

/// Like [`from_toml_str`], merging several TOML texts in order (later ones win).
pub fn from_toml_layers(layers: &[&str]) -> Result<Config, ConfigError> {
    let figment = layers.iter().fold(defaults(), |figment, layer| {
        figment.merge(Toml::string(layer))
    });
    load_figment(figment).map(|loaded| loaded.config)
}

fn defaults() -> Figment {
    Figment::from(Serialized::defaults(RawConfig::default()))
}

fn load_figment(figment: Figment) -> Result<Loaded, ConfigError> {
    let (raw, mut problems) = report::extract(&figment)?;
    let mut config = validate::validate(&raw, &mut |key, message| {
        problems.push(Problem {
            key: key.to_owned(),
            message,
            origin: report::origin_of(&figment, key),
        })
    });
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    if let Some(config) = &mut config {
        for warning in &mut config.warnings {
            warning.origin = report::origin_of(&figment, &warning.key);
        }
    }
    Ok(Loaded {
        config: config.expect("validation returns a config when it reports no problem"),
        effective: report::effective(&figment),
    })
}

#[cfg(test)]
mod tests;
