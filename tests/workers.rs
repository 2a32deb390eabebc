//! Thread-per-core serving (`Workers`, what the binary runs): sessions handed to worker
//! runtimes relay, hold across an upstream restart (their timers and reconnects run on the
//! worker), and drain on shutdown — against real sockets, on two worker threads.

mod support;

use std::sync::Arc;

use holdfast::workers::Workers;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const FAST: &str =
    "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\nmax_hold = \"20s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_worker_threads_relay_hold_and_drain() {
    relay_hold_and_drain(false).await;
}

/// The same on workers whose plain sockets go through io_uring (where this kernel allows
/// it: the test says so when it does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_io_uring_workers_relay_hold_and_drain() {
    relay_hold_and_drain(true).await;
}

/// Whether every worker got its ring; where the kernel refuses it the test skips (saying
/// so), except in CI.
fn all_on_io_uring(workers: &Workers) -> bool {
    require(
        "io_uring with DEFER_TASKRUN (Linux 6.1+; see the workers' warning)",
        workers.on_io_uring() == workers.len(),
    )
}

async fn relay_hold_and_drain(io_uring: bool) {
    let workers = Arc::new(Workers::start(2, io_uring).expect("worker threads start"));
    assert_eq!(workers.len(), 2);
    if io_uring && !all_on_io_uring(&workers) {
        return;
    }
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let mut proxy = Proxy::start_on_workers(&[upstream.url()], FAST, workers.clone()).await;

    // Enough clients that both workers serve several (connections go round robin).
    let mut clients = connect_relaying(&proxy, 8).await;

    // The upstream restarts: every session holds, buffers, and resumes on its worker.
    upstream
        .go_down(Control::Close(1012, "restarting".into()))
        .await;
    upstream
        .wait_for("the proxy to answer every close", |log| {
            log.closes.len() >= 8
        })
        .await;
    for (i, client) in clients.iter_mut().enumerate() {
        send_text(client, &format!("c{i} held")).await;
    }
    upstream.start_again(None).await;
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(
            next_message(client).await,
            Message::text(format!("c{i} held"))
        );
        send_text(client, "whoami").await;
        assert_eq!(next_message(client).await, Message::text("app 1"));
    }
    assert_eq!(
        proxy
            .metric("holdfast_holds_total{outcome=\"resumed\"}")
            .await,
        8.0
    );
    assert_eq!(
        proxy.metric("holdfast_io_uring_workers").await,
        if io_uring { 2.0 } else { 0.0 }
    );
    // Traffic counted on both worker threads adds up in one series.
    assert_eq!(
        proxy
            .metric("holdfast_messages_total{direction=\"to_client\"}")
            .await,
        24.0
    );

    // Shutdown: every client is told, and the drain ends with no session left.
    proxy.begin_shutdown();
    for client in &mut clients {
        assert_eq!(expect_close(client).await.0, Some(1012));
        // Reading on sends our close reply: the handshake completes and the stream ends.
        within("the client's stream to end", async {
            use futures_util::StreamExt;
            while client.next().await.is_some() {}
        })
        .await;
    }
    let left = within("the drain to end", &mut proxy.done).await.unwrap();
    assert_eq!(left, 0);
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .unwrap();
}

/// A crash-looping instance (it accepts the handshake and resets the connection) on worker
/// threads: a held message leaves the hold buffer only once the kernel took it — on a ring
/// worker, whose writes only copy, that is when the send completes — so nothing held is
/// lost on the crashing instance and the healthy one gets it all once, in order.
async fn crash_looping_instance_loses_nothing(io_uring: bool) {
    let workers = Arc::new(Workers::start(2, io_uring).expect("worker threads start"));
    if io_uring && !all_on_io_uring(&workers) {
        return;
    }
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let proxy = Proxy::start_on_workers(&[upstream.url()], FAST, workers.clone()).await;
    let mut clients = connect_relaying(&proxy, 4).await;
    restart_under(&upstream, &mut clients, "held 0").await;
    for (i, client) in clients.iter_mut().enumerate() {
        for m in 1..20 {
            send_text(client, &format!("held {m} from {i}")).await;
        }
    }
    let crashing = UpstreamBuilder::new()
        .name("app")
        .after_handshake(AfterHandshake::Reset);
    let before = upstream.log.lock().unwrap().handshakes.len();
    upstream.start_again(Some(crashing)).await;
    upstream
        .wait_for("every session to try the crashing instance", |log| {
            log.handshakes.len() >= before + 4
        })
        .await;
    upstream.go_down(Control::Abort).await;
    upstream.start_again(None).await;
    for client in &mut clients {
        send_text(client, "whoami").await;
        loop {
            if next_message(client).await == Message::text("app 2") {
                break;
            }
        }
    }
    let texts = upstream.texts();
    for i in 0..4 {
        let mine: Vec<&String> = texts
            .iter()
            .filter(|t| t.ends_with(&format!("from {i}")))
            .collect();
        let expected: Vec<String> = (1..20).map(|m| format!("held {m} from {i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "client {i}");
    }
    assert_eq!(
        texts.iter().filter(|t| *t == "held 0").count(),
        4,
        "each client's first held message once"
    );
    drop(proxy);
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_instance_loses_nothing_on_epoll_workers() {
    crash_looping_instance_loses_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_instance_loses_nothing_on_io_uring_workers() {
    crash_looping_instance_loses_nothing(true).await;
}

/// Resumable clients cut three times on worker threads: a returning connection accepted by
/// one worker joins a session living on the other (connections go round robin: with three
/// clients every returning connection lands on the other worker), so it is moved onto that
/// worker's ring before the session uses it. Every echo arrives once.
async fn returning_clients_cross_workers(io_uring: bool) {
    use holdfast::client::{Received, ResumableClient};
    let workers = Arc::new(Workers::start(2, io_uring).expect("worker threads start"));
    if io_uring && !all_on_io_uring(&workers) {
        return;
    }
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start_on_workers(&[upstream.url()], FAST, workers.clone()).await;
    let relay = CuttingRelay::start(proxy.addr).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = ResumableClient::connect(relay.addr, "/", &[])
            .await
            .expect("a resumable session");
        clients.push(client);
    }
    within("three cuts", async {
        for cut in 0..3 {
            relay.cut_and_wait().await;
            for (i, client) in clients.iter_mut().enumerate() {
                let text = format!("client {i} after cut {cut}");
                client.send(Message::text(text.clone())).await.unwrap();
                match client.next().await {
                    Ok(Received::Message(m)) => assert_eq!(m, Message::text(text)),
                    other => panic!("client {i} after cut {cut}: {other:?}"),
                }
            }
        }
    })
    .await;
    for client in &clients {
        assert_eq!(client.reconnects, 3);
    }
    assert_eq!(
        proxy
            .metric("holdfast_client_resumes_total{outcome=\"reattached\"}")
            .await,
        9.0
    );
    assert_eq!(upstream.log.lock().unwrap().handshakes.len(), 3);
    drop(proxy);
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_reach_sessions_on_other_epoll_workers() {
    returning_clients_cross_workers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_reach_sessions_on_other_io_uring_workers() {
    returning_clients_cross_workers(true).await;
}
