//! Build, then run: `App::build` binds every socket (proxy and admin) and loads TLS so
//! start-up errors appear before any traffic and tests can read the bound addresses back;
//! `App::run` serves until the shutdown future resolves, then drains. `AppHandle::reload`
//! swaps in a new configuration (SIGHUP) without dropping a session.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::upstream::{Pool, Resolver};
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    workers: Option<Arc<Workers>>,
}

/// A handle on a running (or built) app, for reloads.
#[derive(Clone)]
pub struct AppHandle {
    shared: Arc<Shared>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BuildError> {
    crate::socket::listen(addr).map_err(|source| BuildError::Bind { addr, source })
}

impl App {
    pub async fn build(config: Config) -> Result<App, BuildError> {
        Self::build_with_resolver(config, Resolver::System).await
    }

    /// Like `build`, with host names resolved by `resolver`.
    pub async fn build_with_resolver(
        config: Config,
        resolver: Resolver,
    ) -> Result<App, BuildError> {
        let listener = bind(config.listen.address).await?;
        let admin = match config.admin.address {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(config.listen.max_connections)),
            tls: ArcSwapOption::from(config.listen.tls.as_ref().map(|t| t.config.clone())),
            config: ArcSwap::from_pointee(config),
            reloads: AtomicU64::new(0),
            pool: Pool::new(resolver),
            metrics: Metrics::new(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            sessions: AtomicUsize::new(0),
            memory_freed: AtomicBool::new(false),
            resumables: Default::default(),
            process_key: crate::resume::token::Key::of_this_process(),
            retired_routes: Default::default(),
        });
        log_routes(&shared.config.load(), &shared.metrics);
        Ok(App {
            listener,
            admin,
            shared,
            workers: None,
        })
    }

    /// Serves connections on `workers` (one runtime per thread, connections handed out in
    /// turn) instead of on the runtime `run` is called on.
    pub fn with_workers(mut self, workers: Arc<Workers>) -> App {
        self.shared
            .metrics
            .io_uring_workers
            .set(workers.on_io_uring() as f64);
        self.workers = Some(workers);
        self
    }

    /// The address the proxy listener is bound to (the real port when configured as 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn handle(&self) -> AppHandle {
        AppHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` resolves; then readiness goes false, the listener stops
    /// accepting, every session is told (`shutdown.client_code` to clients, 1001 to
    /// upstreams) and waited for up to `drain_timeout`. Returns how many sessions were
    /// still open when the drain ended.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let App {
            listener,
            admin,
            shared,
            workers,
        } = self;
        let admin_stop = CancellationToken::new();
        if let Some(admin) = admin {
            tokio::spawn(crate::admin::serve(
                admin,
                shared.clone(),
                admin_stop.clone(),
            ));
        }
        let upkeep = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                let mut trim_due = false;
                for tick in 0u64.. {
                    every.tick().await;
                    // Trim once large messages have stopped for a second: under sustained
                    // large traffic the allocator keeps what it reuses.
                    if shared.memory_freed.swap(false, Ordering::Relaxed) {
                        trim_due = true;
                    } else if std::mem::take(&mut trim_due) {
                        // Off the async threads: trimming walks the allocator's arenas.
                        let _ = tokio::task::spawn_blocking(crate::trim::return_freed_memory).await;
                    }
                    if tick % 5 == 0 {
                        shared.metrics.run_upkeep();
                    }
                }
            })
        };
        let accept = crate::listener::serve(listener, shared.clone(), workers.as_deref());
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
        let drain = shared.config.load().shutdown.drain_timeout;
        shared.shutdown.cancel();
        shared.tracker.close();
        tracing::info!(
            sessions = shared.sessions.load(Ordering::Relaxed),
            drain_timeout = ?drain,
            "draining: readiness false, no new connections, clients told to reconnect"
        );
        let left = match tokio::time::timeout(drain, shared.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => shared.sessions.load(Ordering::Relaxed),
        };
        if left > 0 {
            tracing::warn!(
                sessions_left = left,
                "drain_timeout passed with sessions still open"
            );
        } else {
            tracing::info!("drained: every session closed");
        }
        shared.metrics.run_upkeep();
        admin_stop.cancel();
        upkeep.abort();
        left
    }
}

/// The routes a configuration serves, in order, and its warnings (a route that can never
/// match), in the log.
/// Each route's series start at zero.
fn log_routes(config: &Config, metrics: &crate::metrics::Metrics) {
    let names: Vec<&str> = config.routes.iter().map(|r| &*r.name).collect();
    for name in &names {
        metrics.prepare_route(name);
    }
    tracing::info!(routes = %names.join(", "), "routes, in match order");
    for warning in &config.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
}

impl AppHandle {
    /// Re-reads `path` (and the environment). A valid configuration replaces the live one:
    /// new sessions use it and live sessions pick up rewrite rules, policies, endpoints and
    /// restart settings at their next decision; certificates are swapped. An invalid one
    /// is logged and counted, and the old configuration stays.
    pub fn reload_file(&self, path: &Path) -> Result<(), config::ConfigError> {
        match config::load_file(path) {
            Ok(loaded) => {
                self.apply(loaded.config);
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.config_reload(false);
                tracing::error!(path = %path.display(), error = %e, "reload failed; keeping the running configuration");
                Err(e)
            }
        }
    }

    /// Swaps in `new`; settings bound at start-up are reported as needing a restart.
    pub fn apply(&self, new: Config) {
        let shared = &self.shared;
        let old = shared.config.load_full();
        let mut needs_restart = Vec::new();
        if old.listen.address != new.listen.address {
            needs_restart.push("listen.address");
        }
        if old.admin.address != new.admin.address {
            needs_restart.push("admin.address");
        }
        if old.listen.max_connections != new.listen.max_connections {
            needs_restart.push("listen.max_connections");
        }
        match (&old.listen.tls, &new.listen.tls) {
            (Some(_), Some(tls)) => {
                shared.tls.store(Some(tls.config.clone()));
                tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded");
            }
            (None, None) => {}
            _ => needs_restart.push("listen.tls (turning TLS on or off)"),
        }
        log_routes(&new, &shared.metrics);
        shared.swap_config(Arc::new(new));
        // Released after the store: a session that sees the new count reads the new config.
        shared.reloads.fetch_add(1, Ordering::Release);
        shared.metrics.config_reload(true);
        tracing::info!("configuration reloaded");
        for key in needs_restart {
            tracing::warn!(
                key,
                "changed in the file but only takes effect after a restart"
            );
        }
    }

    /// The Prometheus text of this app's metrics (what `/metrics` serves).
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// Whether the proxy reports ready (listening and not draining).
    pub fn is_ready(&self) -> bool {
        !self.shared.shutdown.is_cancelled()
    }
}
