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
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads, each running its own runtime with
    /// I/O and timers only: signals and child processes are the main thread's business, and
    /// every layer a runtime enables is visited each time it parks.
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("holdfast-worker-{index}"))
                    .spawn(move || runtime.block_on(stop.cancelled()))?,
            );
        }
        Ok(Workers {
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

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}
