//! Peers that stop reading (SPEC: bounded memory, nothing buffered forever): holdfast
//! applies backpressure, buffers nothing beyond the socket buffers, and drops a peer that
//! takes no data for two keepalive intervals. One test per process, run one after the
//! other, so the peak RSS it prints is this scenario's (`--nocapture` shows it).

mod support;

use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Keepalive every 200 ms: a peer that takes no data for 400 ms has stopped reading.
const KEEPALIVE_200MS: &str = "[websocket]\nping_interval = \"200ms\"\n";

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn stalled_peers_are_dropped_with_bounded_memory() {
    // Peak memory is read from /proc (Linux).
    if !require(
        "/proc/self/status",
        std::path::Path::new("/proc/self/status").exists(),
    ) {
        return;
    }
    let before = peak_rss_kib();
    upstream_stops_reading().await;
    client_stops_reading().await;
    let peak = peak_rss_kib();
    // 256 MiB were offered to a peer that did not read (and 64 MiB the other way): the
    // whole test process (client, proxy and upstream) grew by this much at its peak.
    eprintln!(
        "peak RSS growth while peers stalled: {} KiB",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "memory grew by {} KiB",
        peak - before
    );
}

async fn upstream_stops_reading() {
    use futures_util::{SinkExt, StreamExt};
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], KEEPALIVE_200MS).await;
    let client = connect(&proxy).await;
    let (mut sink, mut stream) = client.split();
    sink.send(Message::text("stall")).await.unwrap();
    // Flood until the socket buffers are full; the proxy stops reading the client too
    // (backpressure), so these sends block and the task is simply abandoned.
    let flood = tokio::spawn(async move {
        for _ in 0..4096 {
            if sink
                .send(Message::binary(vec![1u8; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let close = within("the proxy to give up on the upstream", async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(close, Some(1011));
    flood.abort();
}

async fn client_stops_reading() {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], KEEPALIVE_200MS).await;
    let mut client = connect(&proxy).await;
    // The upstream sends 64 MiB the client never reads: holdfast buffers none of it beyond
    // the socket buffers, and gives up on the client.
    send_text(&mut client, "flood 1024").await;
    let close = upstream.first_close().await;
    assert_eq!(close, Some((1001, "client stopped reading".into())));
    drop(client);
}
