//! `Shared`: the state every connection and session of one proxy reads — the live
//! configuration, the upstream pool, the metrics, the drain token and the session tracker.
//! It sits low in the module graph (above config, metrics and upstream, below everything
//! that serves traffic), so each stage can take it without reaching up to `app`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Pool;

/// State shared by every connection and session.
pub struct Shared {
    /// The live configuration; sessions read it at decision points, so a reload reaches them.
    pub config: ArcSwap<Config>,
    /// Configurations swapped in so far: a session compares it with the count it last saw
    /// to learn of a reload with one atomic read, instead of loading `config` per message.
    pub reloads: AtomicU64,
    /// The client-facing TLS configuration, swapped when certificates are reloaded.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    pub pool: Pool,
    pub metrics: Metrics,
    /// Session tasks (and their side tasks), waited for on shutdown.
    pub tracker: TaskTracker,
    /// Cancelled when the proxy starts draining; `/readyz` answers 503 from then on.
    pub shutdown: CancellationToken,
    /// `listen.max_connections` permits.
    pub connections: Arc<Semaphore>,
    /// WebSocket sessions open right now (the `holdfast_sessions_active` gauge's value).
    pub sessions: AtomicUsize,
    /// Set when a session relayed a large message; once they stop, the trimmer returns the
    /// freed memory to the system.
    pub memory_freed: AtomicBool,
}
