//! holdfast: a WebSocket-aware reverse proxy that keeps clients connected across upstream
//! restarts (SPEC §3.3), explains policy closes (§3.4) and rewrites close codes (§3.2).
//!
//! Module map:
//! * `config`   — figment loading, validation into `Config`, `holdfast check` report
//! * `app`      — `App::build` (bind, TLS), `App::run` (serve, drain), reload
//! * `admin`    — /metrics /healthz /readyz
//! * `metrics`  — every metric name and its typed helper
//! * `listener` — accept loop, `max_connections`, TLS handshake
//! * `workers`  — thread-per-core: one runtime per thread, connections handed out in turn
//! * `ring`     — a worker's io_uring, and plain sockets on it (`socket::Plain`)
//! * `http`     — hyper service per connection: WebSocket upgrade or passthrough
//! * `forward`  — plain HTTP passthrough to the upstream
//! * `ws`       — handshake, the session task, the close-code pipeline, the frame codec
//! * `policy`   — 1008 context (catalog, JSON builder), rate limit, token expiry
//! * `upstream` — endpoint pool, resolution, dial (TCP + TLS)
//! * `tls`      — rustls configs for both hops

pub mod admin;
pub mod app;
pub mod close;
pub mod codec;
pub mod config;
pub mod demo;
pub mod forward;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod policy;
#[cfg(target_os = "linux")]
pub mod ring;
pub mod socket;
pub mod tls;
pub mod upstream;
pub mod workers;
pub mod ws;

pub use app::App;
