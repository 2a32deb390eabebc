//! Thread-per-core serving: `Workers` runs one single-threaded tokio runtime per thread and
//! hands each accepted connection to the next one in turn. Everything a connection leads
//! to (its HTTP service, its WebSocket session, the upstream socket, every timer and side
//! task) then lives on that one thread, the way an nginx worker keeps both sockets of a
//! proxied connection. On a multi-threaded runtime the session task would follow whichever
//! thread polled epoll, dragging both sockets' kernel state and the session's buffers from
//! core to core on every message.
//!
//! Without `Workers` (the library default, and what the tests' paused-time runtimes use)
//! connections are served on the runtime that accepted them.

use std::future::Future;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub struct Workers {
    handles: Vec<Handle>,
    io_uring: usize,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads, each running its own runtime with
    /// I/O and timers only: signals and child processes are the main thread's business, and
    /// every layer a runtime enables is visited each time it parks. With `io_uring`, each
    /// worker also tries to set up its ring (Linux); one that cannot serves on epoll.
    pub fn start(count: usize, io_uring: bool) -> io::Result<Workers> {
        let count = count.max(1);
        let stop = CancellationToken::new();
        let (started_tx, started) = std::sync::mpsc::channel();
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_io().enable_time();
            #[cfg(target_os = "linux")]
            if io_uring {
                // Queued ring operations go to the kernel before the thread sleeps.
                builder.on_thread_park(|| {
                    crate::ring::flush();
                });
            }
            let runtime = builder.build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let started = started_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("holdfast-worker-{index}"))
                    .spawn(move || {
                        runtime.block_on(async move {
                            let _ = started.send(io_uring && install_ring());
                            stop.cancelled().await
                        })
                    })?,
            );
        }
        drop(started_tx);
        // Every worker has tried its ring before the first connection arrives.
        let on_ring = (0..count).filter(|_| started.recv() == Ok(true)).count();
        Ok(Workers {
            io_uring: on_ring,
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// How many workers run their plain TCP sockets on io_uring (`ring.rs`).
    pub fn on_io_uring(&self) -> usize {
        self.io_uring
    }

    /// Always false: `start` makes at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Moves an accepted connection to the next worker (round robin) and runs `serve` on
    /// it there. The socket leaves this runtime's poller and joins the worker's.
    pub fn serve<F, Fut>(&self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the connection to a worker; dropped");
                return;
            }
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a worker cannot take the connection; dropped")
                }
            }
        });
    }

    /// Stops every worker: tasks still on them are dropped. Call after the drain.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().expect("workers lock"));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Sets up this worker's io_uring (`ring.rs`); false, with a warning, where it cannot.
fn install_ring() -> bool {
    #[cfg(target_os = "linux")]
    match crate::ring::install() {
        Ok(()) => return true,
        Err(e) => tracing::warn!(
            error = %e,
            "io_uring unavailable (an old kernel, or a seccomp profile that refuses it); this worker uses epoll"
        ),
    }
    false
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}
