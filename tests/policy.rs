//! Policy closes end to end (SPEC §3.4): an upstream 1008 (or a rewrite to 1008) reaches
//! the client with context in each `policy.context` mode; holdfast's own rate limit and
//! token expiry close with 1008 from the proxy.

mod support;

use base64::Engine;
use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CATALOG: &str = r#"
[[policy.catalog]]
id = "rate-limit"
match = "(?i)rate|too many"
retry_after = "5s"
docs = "https://example.com/ws-policies#rate-limit"

[[policy.catalog]]
id = "quota"
match = "quota"
"#;

/// The upstream closes with `script`; returns everything the client got, close last.
async fn client_sees(script: &str, extra: &str) -> Vec<Message> {
    let upstream = UpstreamBuilder::new().start().await;
    let proxy = Proxy::start(&[upstream.url()], &format!("{CATALOG}{extra}")).await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, script).await;
    let mut seen = Vec::new();
    loop {
        let message = next_message(&mut client).await;
        let done = message.is_close();
        seen.push(message);
        if done {
            return seen;
        }
    }
}

fn close_of(message: &Message) -> (u16, String) {
    match message {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close with a code, got {other:?}"),
    }
}

#[tokio::test]
async fn an_upstream_1008_gets_its_catalog_policy_in_the_reason() {
    let seen = client_sees("close 1008 rate limited: too many requests", "").await;
    assert_eq!(seen.len(), 1, "no message before the close in reason mode");
    let (code, reason) = close_of(&seen[0]);
    assert_eq!(code, 1008);
    // The whole context is 133 bytes: the detail is shortened to fit exactly 123.
    assert_eq!(
        reason,
        r#"{"policy":"rate-limit","retry_ms":5000,"ref":"https://example.com/ws-policies#rate-limit","detail":"rate limited: too man"}"#
    );
    assert_eq!(reason.len(), 123);
}

#[tokio::test]
async fn an_unknown_policy_is_unspecified_and_the_detail_can_be_hidden() {
    let seen = client_sees("close 1008 forbidden word", "").await;
    assert_eq!(
        close_of(&seen[0]),
        (
            1008,
            r#"{"policy":"unspecified","detail":"forbidden word"}"#.into()
        )
    );
    let seen = client_sees(
        "close 1008 forbidden word",
        "[policy]\nexpose_upstream_reason = false\n",
    )
    .await;
    assert_eq!(
        close_of(&seen[0]),
        (1008, r#"{"policy":"unspecified"}"#.into())
    );
}

#[tokio::test]
async fn message_mode_sends_the_full_context_before_an_untouched_close() {
    let seen = client_sees(
        "close 1008 quota exceeded",
        "[policy]\ncontext = \"message\"\n",
    )
    .await;
    assert_eq!(seen.len(), 2);
    let Message::Text(text) = &seen[0] else {
        panic!("{:?}", seen[0])
    };
    assert_eq!(
        text.as_str(),
        r#"{"type":"close_context","code":1008,"source":"upstream","policy":"quota","detail":"quota exceeded"}"#
    );
    assert_eq!(close_of(&seen[1]), (1008, "quota exceeded".into()));
}

#[tokio::test]
async fn both_mode_and_none_mode() {
    let seen = client_sees(
        "close 1008 quota exceeded",
        "[policy]\ncontext = \"both\"\n",
    )
    .await;
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0]
            .to_text()
            .unwrap()
            .contains("\"type\":\"close_context\"")
    );
    assert_eq!(
        close_of(&seen[1]),
        (
            1008,
            r#"{"policy":"quota","detail":"quota exceeded"}"#.into()
        )
    );

    let seen = client_sees(
        "close 1008 quota exceeded",
        "[policy]\ncontext = \"none\"\n",
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(close_of(&seen[0]), (1008, "quota exceeded".into()));
}

#[tokio::test]
async fn a_rewrite_to_1008_gets_context_too() {
    let rule = "[[rewrite]]\ndirection = \"to_client\"\nfrom = \"4000-4099\"\nto = 1008\n";
    let seen = client_sees("close 4029 quota exceeded", rule).await;
    assert_eq!(
        close_of(&seen[0]),
        (
            1008,
            r#"{"policy":"quota","detail":"quota exceeded"}"#.into()
        )
    );
}

#[tokio::test]
async fn a_long_reason_still_fits_in_123_bytes_as_valid_json() {
    let reason = "rate limit: ".to_owned() + &"é".repeat(50); // 112 bytes
    let seen = client_sees(&format!("close 1008 {reason}"), "").await;
    let (_, json) = close_of(&seen[0]);
    assert!(json.len() <= 123, "{} bytes", json.len());
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["policy"], "rate-limit");
    assert!(
        reason.starts_with(parsed["detail"].as_str().unwrap()),
        "{json}"
    );
}

#[tokio::test]
async fn policy_closes_never_hold() {
    // Hold is on by default; a 1008 still reaches the client at once.
    let seen = client_sees("close 1008 banned", "[restart]\nmax_hold = \"1m\"\n").await;
    assert_eq!(close_of(&seen[0]).0, 1008);
}

#[tokio::test]
async fn the_rate_limit_closes_with_1008_and_when_to_retry() {
    let upstream = UpstreamBuilder::new().start().await;
    let extra = format!("{CATALOG}[policy.rate_limit]\nmessages_per_second = 1\nburst = 3\n");
    let proxy = Proxy::start(&[upstream.url()], &extra).await;
    let mut client = connect(&proxy).await;
    for i in 0..4 {
        // The fourth message is over the limit; the proxy may close before it is written.
        let _ = client.send(Message::text(format!("m{i}"))).await;
    }
    let close = loop {
        match next_message(&mut client).await {
            Message::Close(f) => break f.unwrap(),
            _ => continue, // echoes of the first three
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    let json: serde_json::Value = serde_json::from_str(&close.reason).unwrap();
    assert_eq!(json["policy"], "rate-limit");
    let retry = json["retry_ms"].as_u64().unwrap();
    assert!((1..=1000).contains(&retry), "retry_ms {retry}");
    // The docs link comes from the catalog entry with the same id.
    assert_eq!(json["ref"], "https://example.com/ws-policies#rate-limit");
    let upstream_close = upstream.first_close().await;
    assert_eq!(
        upstream.texts(),
        ["m0", "m1", "m2"],
        "the message over the limit is not relayed"
    );
    assert_eq!(upstream_close.map(|c| c.0), Some(1001));
}

fn jwt(exp: Option<u64>) -> String {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let claims = match exp {
        Some(exp) => format!(r#"{{"sub":"ann","exp":{exp}}}"#),
        None => r#"{"sub":"ann"}"#.to_owned(),
    };
    format!("{}.{}.sig", enc(r#"{"alg":"HS256"}"#), enc(&claims))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_missing_or_expired_token_is_refused_with_401() {
    let upstream = UpstreamBuilder::new().start().await;
    let extra = "[policy.token_expiry]\nsource = \"header:authorization\"\n";
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let missing = raw_exchange(proxy.addr, &upgrade_request("")).await;
    assert!(missing.starts_with("HTTP/1.1 401"), "{missing}");
    let expired = format!("Authorization: Bearer {}\r\n", jwt(Some(now_secs() - 10)));
    let answer = raw_exchange(proxy.addr, &upgrade_request(&expired)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        !answer.contains(&jwt(Some(now_secs() - 10))),
        "the token is not echoed"
    );
    assert!(upstream.log.lock().unwrap().handshakes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_session_is_closed_when_the_token_expires() {
    let upstream = UpstreamBuilder::new().start().await;
    let extra = "[policy.token_expiry]\nsource = \"query:access_token\"\n[websocket]\nping_interval = \"0s\"\n";
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let url = proxy.url(&format!("/?access_token={}", jwt(Some(now_secs() + 3600))));
    let (mut client, _) = connect_request(proxy.addr, url.into_client_request().unwrap())
        .await
        .unwrap();
    send_text(&mut client, "before expiry").await;
    let started = tokio::time::Instant::now();
    let close = tokio::time::timeout(std::time::Duration::from_secs(7200), async {
        use futures_util::StreamExt;
        loop {
            match client.next().await {
                Some(Ok(Message::Close(f))) => return f.unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("closed at expiry");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3590),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(
        close.reason.as_str(),
        r#"{"policy":"token-expired","detail":"access token expired"}"#
    );
}

#[tokio::test]
async fn a_token_without_exp_never_expires_and_is_admitted() {
    let upstream = UpstreamBuilder::new().start().await;
    let extra = "[policy.token_expiry]\nsource = \"cookie:session\"\n";
    let proxy = Proxy::start(&[upstream.url()], extra).await;
    let mut request = proxy.url("/").into_client_request().unwrap();
    request.headers_mut().insert(
        "cookie",
        format!("theme=dark; session={}", jwt(None))
            .parse()
            .unwrap(),
    );
    let (mut client, _) = connect_request(proxy.addr, request).await.unwrap();
    send_text(&mut client, "hello").await;
    assert_eq!(next_message(&mut client).await, Message::text("hello"));
}
