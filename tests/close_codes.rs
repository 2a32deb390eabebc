//! The close pipeline end to end: rewrite rules in both directions, reserved codes never
//! on the wire, upstream protocol errors as 1011, restart codes passing when hold is off.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const RULES: &str = r#"
[restart]
hold = false

[[rewrite]]
direction = "to_client"
from = "4000-4099"
to = 1008
reason = "application policy"

[[rewrite]]
direction = "to_client"
from = 4100
to = 4200

[[rewrite]]
direction = "to_client"
from = 1006
to = 1001
reason = "upstream went away"

[[rewrite]]
direction = "to_upstream"
from = "4000-4999"
to = 1000
reason = "client left"

[[rewrite]]
direction = "to_upstream"
from = 1005
to = 4005
"#;

/// Sends `script` to the upstream through the proxy; returns the close the client got.
async fn client_close_after(script: &str, extra: &str) -> (Option<u16>, String) {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, script).await;
    expect_close(&mut client).await
}

/// The client closes with `frame`; returns the close the upstream got.
async fn upstream_close_after(frame: Option<CloseFrame>) -> Option<(u16, String)> {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], RULES).await;
    let mut client = connect(&proxy).await;
    client.send(Message::Close(frame)).await.unwrap();
    upstream.first_close().await
}

#[tokio::test]
async fn to_client_range_rule_with_reason() {
    let got = client_close_after("close 4042 quota exceeded", RULES).await;
    // A rewrite that produces 1008 gets policy context (SPEC §3.2 step 3), built from the
    // rule's reason.
    assert_eq!(
        got,
        (
            Some(1008),
            r#"{"policy":"unspecified","detail":"application policy"}"#.into()
        )
    );
}

#[tokio::test]
async fn to_client_single_code_rule_keeps_the_reason() {
    let got = client_close_after("close 4100 moved", RULES).await;
    assert_eq!(got, (Some(4200), "moved".into()));
}

#[tokio::test]
async fn unmatched_codes_pass_unchanged() {
    let got = client_close_after("close 4300 other", RULES).await;
    assert_eq!(got, (Some(4300), "other".into()));
    let got = client_close_after("close 1000 done", RULES).await;
    assert_eq!(got, (Some(1000), "done".into()));
}

#[tokio::test]
async fn to_upstream_range_rule() {
    let frame = CloseFrame {
        code: CloseCode::from(4321),
        reason: "tab closed".into(),
    };
    assert_eq!(
        upstream_close_after(Some(frame)).await,
        Some((1000, "client left".into()))
    );
}

#[tokio::test]
async fn to_upstream_rule_can_match_an_empty_close() {
    assert_eq!(
        upstream_close_after(None).await,
        Some((4005, String::new()))
    );
}

#[tokio::test]
async fn an_empty_close_from_the_upstream_stays_empty() {
    assert_eq!(
        client_close_after("close-empty", "").await,
        (None, String::new())
    );
}

#[tokio::test]
async fn an_upstream_that_vanishes_is_1011_never_1006() {
    let got = client_close_after("abort", "[restart]\nhold = false").await;
    assert_eq!(got.0, Some(1011));
    let got = client_close_after("abort", "[restart]\non_disconnect = false").await;
    assert_eq!(got.0, Some(1011));
}

#[tokio::test]
async fn a_rewrite_rule_may_match_the_1006_pseudo_code() {
    let got = client_close_after("abort", RULES).await;
    assert_eq!(got, (Some(1001), "upstream went away".into()));
}

#[tokio::test]
async fn disallowed_codes_on_the_wire_from_the_upstream_become_1011() {
    // 1006 and 1015 must never be sent; 1016 is unassigned. tungstenite rejects them as a
    // protocol error, which is the upstream's fault: the client gets 1011, never 1002.
    for code in [1006, 1015, 1016, 999] {
        let got = client_close_after(&format!("raw-close {code}"), "").await;
        assert_eq!(got.0, Some(1011), "upstream sent {code}");
    }
}

#[tokio::test]
async fn restart_codes_pass_through_when_hold_is_off() {
    let got = client_close_after("close 1012 deploying", "[restart]\nhold = false").await;
    assert_eq!(got, (Some(1012), "deploying".into()));
}
