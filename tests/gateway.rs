//! The gateway shape without Kubernetes: one host name that resolves to several addresses
//! (as a headless Service lists every pod). Here `app.internal` resolves to 127.0.0.1 and
//! ::1 on the same port, each a different upstream instance; when the instance a client is
//! on goes away, the held client resumes on the other address.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use holdfast::upstream::Resolver;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Two instances on one port, one on each loopback address (`None`: no IPv6 loopback).
async fn two_pods() -> Option<(TestUpstream, TestUpstream, Resolver)> {
    // The port is held on both addresses before either instance listens.
    let (v4, v6) = reserve_on_both_loopbacks()?;
    let a = UpstreamBuilder::new()
        .name("pod-a")
        .bind(v4.addr())
        .start()
        .await;
    let b = UpstreamBuilder::new()
        .name("pod-b")
        .bind(v6.addr())
        .start()
        .await;
    let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let resolver = Resolver::Static(Arc::new(HashMap::from([("app.internal".to_owned(), ips)])));
    Some((a, b, resolver))
}

async fn whoami(client: &mut Client) -> String {
    send_text(client, "whoami").await;
    match next_message(client).await {
        Message::Text(t) => t.to_string(),
        other => panic!("client saw {other:?}"),
    }
}

#[tokio::test]
async fn held_clients_resume_on_another_address_of_the_same_name() {
    let pods = two_pods().await;
    if !require("an IPv6 loopback (::1)", pods.is_some()) {
        return;
    }
    let (a, b, resolver) = pods.expect("checked");
    let endpoint = format!("ws://app.internal:{}", a.addr.port());
    // A backoff this long would time the test out: the other address is tried at once.
    let extra = "[restart]\nbackoff_initial = \"30s\"\nbackoff_max = \"60s\"\nmax_hold = \"2m\"\n";
    let proxy = Proxy::start_with_resolver(&[endpoint], extra, resolver).await;

    // Round robin over the two addresses: consecutive sessions land on both pods.
    let mut first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    let (on_first, on_second) = (whoami(&mut first).await, whoami(&mut second).await);
    assert_ne!(
        on_first, on_second,
        "sessions are spread over both addresses"
    );

    // The pod the first client is on rolls away.
    let (gone, other) = if on_first == "pod-a 0" {
        (&a, "pod-b 0")
    } else {
        (&b, "pod-a 0")
    };
    gone.go_down(Control::Close(1012, "pod terminating".into()))
        .await;
    gone.wait_for("the proxy's close reply", |log| !log.closes.is_empty())
        .await;
    assert_eq!(
        whoami(&mut first).await,
        other,
        "resumed on the other address"
    );
    assert_eq!(
        whoami(&mut second).await,
        other,
        "the other client is undisturbed or resumed too"
    );
}
