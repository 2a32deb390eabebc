//! `Shared`: the state every connection and session of one proxy reads — the live
//! configuration, the upstream pool, the metrics, the drain token and the session tracker.
//! It sits low in the module graph (above config, metrics and upstream, below everything
//! that serves traffic), so each stage can take it without reaching up to `app`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::resume::token::Key;
use crate::socket::ClientIo;
use crate::upstream::Pool;

/// Retired routes kept for their live sessions (routes are at most 256 per configuration).
const MAX_RETIRED: usize = 256;

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
    /// Resumable sessions of this process, where a returning client is handed over.
    pub resumables: Resumables,
    /// The resume key of this process, for when `resume.key_file` is not set: tokens then
    /// resume sessions only in this process. Kept across reloads.
    pub process_key: Key,
    /// Routes a reload removed, by name, with their last view: their live sessions keep
    /// those settings (a route added again under the same name is live once more).
    pub retired_routes: Mutex<HashMap<Arc<str>, Arc<Config>>>,
}

impl Shared {
    /// The settings of route `name` for a live session: the route's view in the live
    /// configuration, or — the route was removed by a reload — its last one.
    pub fn route_view(&self, name: &str) -> Option<Arc<Config>> {
        if let Some(view) = self.config.load().route_view(name) {
            return Some(view.clone());
        }
        self.retired_routes
            .lock()
            .expect("retired routes lock")
            .get(name)
            .cloned()
    }

    /// Swaps in `new` (a reload). The routes that disappear are kept as retired before
    /// the swap, and the ones that are back are live again only after it, so a session
    /// always finds its route in one place or the other. At most `MAX_RETIRED` retired
    /// routes are kept (the oldest go first): a session whose route is forgotten keeps the
    /// settings it started with.
    pub fn swap_config(&self, new: Arc<Config>) {
        let mut retired = self.retired_routes.lock().expect("retired routes lock");
        let old = self.config.load_full();
        for route in old.routes.iter() {
            if new.route_view(&route.name).is_none() {
                retired.insert(route.name.clone(), route.view.clone());
            }
        }
        self.config.store(new.clone());
        for route in new.routes.iter() {
            retired.remove(&route.name);
        }
        while retired.len() > MAX_RETIRED {
            let Some(oldest) = retired
                .iter()
                .min_by_key(|(_, view)| view.loaded_at)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            retired.remove(&oldest);
        }
        self.pool.keep_cursors(new.routes.iter().map(|r| &*r.name));
    }

    /// The key resume tokens are signed and checked with.
    pub fn resume_key(&self) -> Key {
        self.config
            .load()
            .resume
            .key
            .clone()
            .unwrap_or_else(|| self.process_key.clone())
    }
}

/// What a WebSocket session holds of `max_connections`: its client connection's permit
/// and, on an HTTP/2 stream, one of its own — every session has an upstream connection, so
/// sessions multiplexed on one client connection count one each.
#[derive(Default)]
pub struct Permits {
    pub connection: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    pub stream: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A returning resumable client, handed to its session's task: its connection (after the
/// 101, with the bytes hyper read past the request), how many of the session's messages
/// it has received, and the compression its new connection negotiated.
pub struct Attach {
    pub io: ClientIo,
    pub already_read: bytes::Bytes,
    pub received: u64,
    pub peer: SocketAddr,
    pub deflate: Option<crate::deflate::Context>,
    /// The new connection's `max_connections` permits, held while it is the session's.
    pub permits: Permits,
}

/// The resumable sessions of this process by id, each with the channel its task takes
/// returning clients from (boxed: a channel allocates room for 32 of what it carries at
/// once, and an `Attach` inline made that 4 KiB more per idle session).
#[derive(Default)]
pub struct Resumables {
    sessions: Mutex<HashMap<u64, mpsc::Sender<Box<Attach>>>>,
}

impl Resumables {
    /// Registers session `id`; its task reads returning clients from the receiver.
    pub fn register(&self, id: u64) -> mpsc::Receiver<Box<Attach>> {
        let (tx, rx) = mpsc::channel(1);
        self.sessions
            .lock()
            .expect("resumables lock")
            .insert(id, tx);
        rx
    }

    /// Where to hand a returning client of session `id`, if it lives here.
    pub fn find(&self, id: u64) -> Option<mpsc::Sender<Box<Attach>>> {
        self.sessions
            .lock()
            .expect("resumables lock")
            .get(&id)
            .cloned()
    }

    pub fn remove(&self, id: u64) {
        self.sessions.lock().expect("resumables lock").remove(&id);
    }

    /// Resumable sessions of this process.
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("resumables lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
