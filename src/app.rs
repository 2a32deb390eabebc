//! Build, then run: `App::build` binds every socket and loads TLS so start-up errors
//! appear before any traffic and tests can read the bound address back; `App::run`
//! serves until the shutdown future resolves, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::upstream::Pool;

/// State shared by every connection and session.
pub struct Shared {
    /// The live configuration; sessions read it at decision points.
    pub config: ArcSwap<Config>,
    pub pool: Pool,
    /// Session tasks, waited for on shutdown.
    pub tracker: TaskTracker,
    /// Cancelled when the proxy starts draining.
    pub shutdown: CancellationToken,
    /// `listen.max_connections` permits.
    pub connections: Arc<Semaphore>,
}

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
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, BuildError> {
        let addr = config.listen.address;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BuildError::Bind { addr, source })?;
        let tls = config
            .listen
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.config.clone()));
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(config.listen.max_connections)),
            config: ArcSwap::from_pointee(config),
            pool: Pool::default(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        Ok(App {
            listener,
            tls,
            shared,
        })
    }

    /// The address the proxy listener is bound to (the real port when configured as 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves; then every session is told (`shutdown.client_code`
    /// to clients, 1001 to upstreams) and waited for up to `drain_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let App {
            listener,
            tls,
            shared,
        } = self;
        let accept = crate::listener::serve(listener, tls, shared.clone());
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
        let drain = shared.config.load().shutdown.drain_timeout;
        shared.shutdown.cancel();
        shared.tracker.close();
        tracing::info!(sessions = shared.tracker.len(), "draining");
        if tokio::time::timeout(drain, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions_left = shared.tracker.len(),
                "drain_timeout passed with sessions still open"
            );
        }
    }
}
