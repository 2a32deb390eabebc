//! holdfast: a WebSocket-aware reverse proxy that keeps clients connected across upstream
//! restarts, explains policy closes (1008) and rewrites close codes.
//!
//! The modules in the order a connection travels through them. Each uses only modules
//! listed after it (`tests/layering.rs` keeps the graph one-way):
//! * `app`      — `App::build` (bind, TLS), `App::run` (serve, drain), reload
//! * `admin`    — /metrics /healthz /readyz
//! * `listener` — accept loop, `max_connections`, TLS; the per-connection HTTP service
//! * `workers`  — thread per core: one runtime per thread, connections handed out in turn
//! * `ws`       — accept an upgrade, connect upstream, the session task (relay, hold,
//!   closing) and the close pipeline's decisions
//! * `codec`    — the WebSocket frame format and one connection over it (`WsConn`)
//! * `http`     — bodies, header rules, refusals as statuses, plain HTTP forwarding
//! * `policy`   — 1008 context (catalog, JSON builder), rate limit, token expiry
//! * `shared`   — the state every connection shares
//! * `upstream` — endpoint pool, resolution, dial (TCP + TLS)
//! * `socket`   — a plain TCP socket, on the worker's io_uring when it has one
//! * `ring`     — the workers' io_uring driver (the crate's unsafe I/O code)
//! * `metrics`  — every metric name and its typed helper
//! * `config`   — figment loading, validation into `Config`, `holdfast check` report
//! * `deflate`  — permessage-deflate: negotiation (pure) and compression contexts
//! * `resume`   — resumable sessions' tokens and envelopes (pure)
//! * `tls`      — rustls configs for both hops
//! * `close`    — the close-code vocabulary
//!
//! `demo` sits on top of everything: an upstream, the proxy and a client in one process;
//! `client` is a resumable client in Rust (the demo's and the tests');
//! `trim` (giving freed memory back to the system) is used by `app` alone.
//!
//! Unsafe code lives in `ring` (the io_uring driver, each block with its reason), in
//! `trim` (one foreign call) and in `codec::utf8` (text taken as checked by the faster
//! check); everywhere else it is refused.
#![deny(unsafe_code)]

pub mod app;

pub mod admin;
pub mod listener;
pub mod workers;

pub mod ws;

pub mod codec;
pub mod http;
pub mod policy;
pub mod shared;
pub mod upstream;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub mod ring;
pub mod socket;

pub mod config;
pub mod deflate;
pub mod metrics;
pub mod resume;
pub mod tls;
pub mod trace;

pub mod close;

pub mod client;
pub mod demo;
pub mod trim;

pub use app::App;
