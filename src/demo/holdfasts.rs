//! The demo's holdfast, and its restart the way a rollout does one: the next holdfast
//! starts, the network sends new connections to it, and the old one drains — telling its
//! resumable clients to move, which they do through the network to the new one.

use std::net::SocketAddr;

use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use super::{Clock, DemoError};
use crate::app::{App, AppHandle};
use crate::config;

/// One running holdfast.
struct Running {
    number: usize,
    addr: SocketAddr,
    handle: AppHandle,
    stop: Option<oneshot::Sender<()>>,
    /// Ends with how many sessions the drain left open.
    task: JoinHandle<usize>,
}

/// The demo's holdfast (one at a time, two during a restart).
pub struct Holdfasts {
    /// The configuration, as TOML layers (every holdfast is built from them).
    layers: Vec<String>,
    current: Mutex<Running>,
    clock: Clock,
}

impl Holdfasts {
    pub async fn start(layers: Vec<String>, clock: Clock) -> Result<Holdfasts, DemoError> {
        let first = launch(&layers, 1).await?;
        Ok(Holdfasts {
            layers,
            current: Mutex::new(first),
            clock,
        })
    }

    /// Where the current holdfast listens.
    pub async fn addr(&self) -> SocketAddr {
        self.current.lock().await.addr
    }

    /// The current holdfast's metrics, as Prometheus text.
    pub async fn metrics(&self) -> String {
        self.current.lock().await.handle.render_metrics()
    }

    /// Starts the next holdfast, has `point_at` send new connections to it, and drains the
    /// old one. A restart waits for the one before it.
    pub async fn restart(&self, point_at: impl FnOnce(SocketAddr)) -> Result<(), DemoError> {
        let mut current = self.current.lock().await;
        let next = launch(&self.layers, current.number + 1).await?;
        point_at(next.addr);
        let old = std::mem::replace(&mut *current, next);
        self.clock.say(
            "holdfast",
            format!(
                "holdfast {} listening on {}; holdfast {} draining: tells its resumable clients to move",
                current.number, current.addr, old.number
            ),
        );
        drop(current);
        let (number, mut old) = (old.number, old);
        let left = stop(&mut old).await;
        self.clock.say(
            "holdfast",
            format!("holdfast {number} drained ({left} sessions left) and stopped"),
        );
        Ok(())
    }

    /// Drains and stops the current holdfast.
    pub async fn stop(&self) {
        stop(&mut *self.current.lock().await).await;
    }
}

async fn launch(layers: &[String], number: usize) -> Result<Running, DemoError> {
    let layers: Vec<&str> = layers.iter().map(String::as_str).collect();
    let app = App::build(config::from_toml_layers(&layers)?).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    Ok(Running {
        number,
        addr: app.proxy_addr(),
        handle: app.handle(),
        stop: Some(stop),
        task: tokio::spawn(app.run(async move {
            let _ = stopped.await;
        })),
    })
}

async fn stop(running: &mut Running) -> usize {
    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    (&mut running.task).await.unwrap_or(0)
}
