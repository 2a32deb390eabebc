//! Any close from the upstream, any rewrite rule, any policy strings: what reaches the wire
//! is always sendable, reasons fit in 123 bytes of UTF-8, and the 1008 context is valid JSON
//! within the limit.
#![no_main]

use holdfast::close::{Close, Direction, RewriteRule, is_sendable, to_wire};
use holdfast::policy::{PolicyContext, Source};
use holdfast::ws::ends::{CloseRules, UpstreamDecision, UpstreamEnd, on_upstream_end};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let code = u16::from_be_bytes([data[0], data[1]]);
    let from_a = u16::from_be_bytes([data[2], data[3]]).clamp(1000, 4999);
    let from_b = u16::from_be_bytes([data[4], data[5]]).clamp(from_a, 4999);
    let to = u16::from_be_bytes([data[6], data[7]]);
    let text = String::from_utf8_lossy(&data[8..]).into_owned();
    // Rules only ever carry sendable targets (validation refuses others).
    let rules: Vec<RewriteRule> = is_sendable(to)
        .then(|| RewriteRule {
            direction: Direction::ToClient,
            from: from_a..=from_b,
            to,
            reason: (text.len() % 2 == 0).then(|| text.chars().take(40).collect()),
        })
        .into_iter()
        .collect();
    let end = UpstreamEnd::Closed(Close::new(code, text.clone()));
    let close_rules = CloseRules {
        hold: data[0] & 1 == 1,
        restart_codes: &[1012],
        on_disconnect: true,
        rewrites: &rules,
    };
    if let UpstreamDecision::Forward { close, .. } = on_upstream_end(&end, &close_rules) {
        if let Some(wire) = to_wire(close) {
            assert!(is_sendable(wire.code), "{}", wire.code);
            assert!(wire.reason.len() <= 123);
        }
    }
    let context = PolicyContext {
        policy: text.chars().take(60).collect(),
        retry_ms: (data[1] & 1 == 1).then_some(u64::from(code)),
        reference: (data[2] & 1 == 1).then(|| text.chars().rev().collect()),
        detail: Some(text),
        source: Source::Upstream,
    };
    let json = context.reason_json();
    assert!(json.len() <= 123);
    serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
});
