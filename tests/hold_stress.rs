//! 1,000 concurrent sessions held across one upstream restart, all resumed. Loopback only,
//! bounded in count and time. Prints the resume times (from the upstream being back to each
//! session's buffered message being answered by the new instance); run with --nocapture.

mod support;

use std::time::Instant;

use support::*;
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_held_sessions_all_resume() {
    // Four sockets per session live in this process (client, both proxy sides, upstream).
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let upstream = UpstreamBuilder::new().name("app").start().await;
    // The shipped defaults: backoff 1 s rising to 5 s with full jitter, max_hold 30 s.
    let proxy = Proxy::start(&[upstream.url()], "").await;

    let mut clients = connect_relaying(&proxy, SESSIONS).await;

    restart_under(&upstream, &mut clients, "whoami").await;

    let back = Instant::now();
    upstream.start_again(None).await;
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let reply = next_message(&mut client).await;
                assert_eq!(
                    reply,
                    Message::text("app 1"),
                    "the session resumed on the new instance"
                );
                (back.elapsed(), client)
            })
        })
        .collect();
    let mut times = Vec::with_capacity(SESSIONS);
    let mut clients = Vec::with_capacity(SESSIONS);
    for wait in waits {
        let (elapsed, client) = wait.await.expect("no session saw a close");
        times.push(elapsed);
        clients.push(client);
    }
    times.sort();
    let (median, worst) = (times[SESSIONS / 2], times[SESSIONS - 1]);
    println!(
        "{SESSIONS} sessions resumed after the upstream came back: median {median:?}, worst {worst:?}"
    );
    let resumed = upstream.log.lock().unwrap().handshakes.len();
    assert_eq!(
        resumed,
        2 * SESSIONS,
        "one handshake per session per instance"
    );
}
