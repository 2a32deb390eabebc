//! Every wait inside a session is bounded: a new upstream that accepts the handshake and
//! stops reading cannot pin a hold past `max_hold`, and a keepalive ping to a client whose
//! socket is full cannot pin a session at all — it ends within two keepalive intervals.

mod support;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Keepalive every 200 ms: a peer that takes nothing for 400 ms has stopped reading.
const KEEPALIVE: &str = "[websocket]\nping_interval = \"200ms\"\n";

#[tokio::test]
async fn a_new_upstream_that_stops_reading_cannot_hold_a_session_past_max_hold() {
    let upstream = UpstreamBuilder::new().start().await;
    let config = format!(
        "{KEEPALIVE}[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n\
         max_hold = \"2s\"\nbuffer_bytes = \"64MiB\"\n"
    );
    let proxy = Proxy::start(&[upstream.url()], &config).await;
    let mut client = connect(&proxy).await;
    restart_under(&upstream, std::slice::from_mut(&mut client), "first").await;
    // More than the kernel's socket buffers on both ends of the new connection can take.
    for _ in 0..96 {
        send_binary(&mut client, vec![7u8; 256 * 1024]).await;
    }
    let silent = UpstreamBuilder::new().after_handshake(AfterHandshake::StopReading);
    upstream.start_again(Some(silent)).await;
    upstream
        .wait_for("a try to reach the silent instance", |log| {
            log.handshakes.len() >= 2
        })
        .await;
    // The delivery stalls; the hold gives up at max_hold and says so.
    assert_eq!(expect_close(&mut client).await.0, Some(1012));
    assert_eq!(
        proxy
            .metric("holdfast_holds_total{outcome=\"timeout\"}")
            .await,
        1.0
    );
}

/// A client that sends pings and never reads: holdfast's pongs fill its socket, then the
/// keepalive ping cannot be written. The session ends (the client stopped reading) instead
/// of waiting on that ping for good.
async fn flood_pings_without_reading(proxy: &Proxy) -> tokio::task::JoinHandle<()> {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&upgrade_request("")).await.unwrap();
    tokio::spawn(async move {
        // Masked pings with 125-byte payloads (the key is all zeroes: the payload is as is).
        let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
        ping.extend_from_slice(&[b'p'; 125]);
        let burst: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 512)
            .collect();
        // Blocks for good once holdfast stops reading; the task is dropped with the runtime.
        while tcp.write_all(&burst).await.is_ok() {}
    })
}

#[tokio::test]
async fn a_keepalive_ping_to_a_full_client_socket_ends_the_session() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], KEEPALIVE).await;
    let _flood = flood_pings_without_reading(&proxy).await;
    assert_eq!(
        upstream.first_close().await,
        Some((1001, "client stopped reading".into()))
    );
}

#[tokio::test]
async fn a_keepalive_ping_to_a_full_client_socket_ends_a_hold_too() {
    let upstream = UpstreamBuilder::new().start().await;
    let config = format!("{KEEPALIVE}[restart]\nmax_hold = \"60s\"\n");
    let proxy = Proxy::start(&[upstream.url()], &config).await;
    let _flood = flood_pings_without_reading(&proxy).await;
    upstream
        .wait_for("the session", |log| !log.handshakes.is_empty())
        .await;
    // Held: the upstream is gone for good, only the client's keepalive is left.
    upstream
        .go_down(Control::Close(1012, "restarting".into()))
        .await;
    // The hold ends (the client stopped reading), then the session, once its close
    // handshake has had its bounded time.
    within("the held session to end", async {
        while proxy
            .metric("holdfast_holds_total{outcome=\"client_closed\"}")
            .await
            < 1.0
            || proxy.metric("holdfast_sessions_active").await > 0.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}
