//! The accept loop: takes a bound listener, applies `max_connections` (a semaphore permit
//! per connection; connections without one are answered 503), runs the TLS handshake
//! within `handshake_timeout`, and hands each connection to its HTTP service (`service`).

pub mod service;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::http::ConnInfo;
use crate::shared::Shared;
use crate::tls::ALPN_H2;
use crate::workers::Workers;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, workers: Option<&Workers>) {
    let mut accept_errors = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors or similar: log (rate-limited), back off briefly
                // instead of spinning, keep serving the sessions we have.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // The current certificate: a reload swaps it for the next connection.
        let tls = shared.tls.load_full().map(TlsAcceptor::from);
        let permit = shared
            .connections
            .clone()
            .try_acquire_owned()
            .ok()
            .map(Arc::new);
        let conn = ConnInfo {
            peer,
            tls: tls.is_some(),
            protocol: "http1",
            permit,
        };
        let shared = shared.clone();
        let handshake_timeout = shared.config.load().listen.handshake_timeout;
        let serve = move |tcp: TcpStream| async move {
            match tls {
                None => service::serve(tcp, conn, shared).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                            if h2 {
                                let conn = ConnInfo {
                                    protocol: "h2",
                                    ..conn
                                };
                                service::serve_h2(stream, conn, shared).await
                            } else {
                                service::serve(stream, conn, shared).await
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        };
        match workers {
            Some(workers) => workers.serve(tcp, serve),
            None => drop(tokio::spawn(serve(tcp))),
        }
    }
}
