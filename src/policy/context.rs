//! The 1008 policy context (SPEC §3.4) as pure functions: the compact JSON close reason
//! that always fits in 123 bytes, and the full `close_context` message.

use std::fmt::Write;

use crate::close::{MAX_REASON_BYTES, truncate_utf8};

/// Who closed for a policy reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Upstream,
    Proxy,
}

impl crate::metrics::LabelValue for Source {
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Proxy => "proxy",
        }
    }
}

/// Everything a client may learn about a policy close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyContext {
    /// Catalog id, holdfast's own policy (`rate-limit`, `token-expired`) or `unspecified`.
    pub policy: String,
    pub retry_ms: Option<u64>,
    /// Where the policy is documented (`ref` in the JSON).
    pub reference: Option<String>,
    /// The upstream's own reason (when exposed), or holdfast's explanation.
    pub detail: Option<String>,
    pub source: Source,
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a str always serializes")
}

/// `{"policy":…,"retry_ms":…,"ref":…,"detail":…}` with the given parts, keys in that order.
fn compact(
    policy: &str,
    retry_ms: Option<u64>,
    reference: Option<&str>,
    detail: Option<&str>,
) -> String {
    let mut out = format!("{{\"policy\":{}", json_string(policy));
    if let Some(ms) = retry_ms {
        let _ = write!(out, ",\"retry_ms\":{ms}");
    }
    if let Some(r) = reference {
        let _ = write!(out, ",\"ref\":{}", json_string(r));
    }
    if let Some(d) = detail {
        let _ = write!(out, ",\"detail\":{}", json_string(d));
    }
    out.push('}');
    out
}

/// The longest non-empty prefix of `detail` (on a character boundary) that keeps the JSON
/// within the limit, if any.
fn fit_detail(
    policy: &str,
    retry_ms: Option<u64>,
    reference: Option<&str>,
    detail: &str,
) -> Option<String> {
    let fits = |n: usize| {
        compact(policy, retry_ms, reference, Some(&detail[..n])).len() <= MAX_REASON_BYTES
    };
    let boundaries: Vec<usize> = detail
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .collect();
    // JSON length grows with the prefix: binary search the last boundary that fits.
    let (mut lo, mut hi) = (0usize, boundaries.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(boundaries[mid - 1]) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo > 0).then(|| {
        compact(
            policy,
            retry_ms,
            reference,
            Some(&detail[..boundaries[lo - 1]]),
        )
    })
}

impl PolicyContext {
    /// The close reason: compact JSON of at most 123 bytes. When the whole does not fit,
    /// `detail` is shortened on a character boundary, then `ref` is dropped (and `detail`
    /// fitted again), then `detail` is dropped; a policy id too long on its own is cut.
    pub fn reason_json(&self) -> String {
        let (policy, retry, reference) = (
            self.policy.as_str(),
            self.retry_ms,
            self.reference.as_deref(),
        );
        let full = compact(policy, retry, reference, self.detail.as_deref());
        if full.len() <= MAX_REASON_BYTES {
            return full;
        }
        if let Some(detail) = &self.detail {
            if let Some(fitted) = fit_detail(policy, retry, reference, detail) {
                return fitted;
            }
            if reference.is_some()
                && let Some(fitted) = fit_detail(policy, retry, None, detail)
            {
                return fitted;
            }
        }
        let bare = compact(policy, retry, None, None);
        if bare.len() <= MAX_REASON_BYTES {
            return bare;
        }
        // Only an absurd policy id gets here: cut it until the JSON fits.
        let mut cut = truncate_utf8(policy, MAX_REASON_BYTES);
        loop {
            let json = compact(cut, retry, None, None);
            if json.len() <= MAX_REASON_BYTES {
                return json;
            }
            cut = truncate_utf8(cut, cut.len() - 1);
        }
    }

    /// The full, untruncated `close_context` message sent right before the close frame.
    pub fn message_json(&self, code: u16) -> String {
        let mut out = format!(
            "{{\"type\":\"close_context\",\"code\":{code},\"source\":\"{}\",\"policy\":{}",
            self.source.as_str(),
            json_string(&self.policy)
        );
        if let Some(ms) = self.retry_ms {
            let _ = write!(out, ",\"retry_ms\":{ms}");
        }
        if let Some(r) = &self.reference {
            let _ = write!(out, ",\"ref\":{}", json_string(r));
        }
        if let Some(d) = &self.detail {
            let _ = write!(out, ",\"detail\":{}", json_string(d));
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(
        policy: &str,
        retry_ms: Option<u64>,
        reference: Option<&str>,
        detail: Option<&str>,
    ) -> PolicyContext {
        PolicyContext {
            policy: policy.into(),
            retry_ms,
            reference: reference.map(Into::into),
            detail: detail.map(Into::into),
            source: Source::Upstream,
        }
    }

    #[test]
    fn the_whole_context_when_it_fits() {
        let c = ctx(
            "rate-limit",
            Some(5000),
            Some("https://example.com/p#rl"),
            Some("too many"),
        );
        assert_eq!(
            c.reason_json(),
            r#"{"policy":"rate-limit","retry_ms":5000,"ref":"https://example.com/p#rl","detail":"too many"}"#
        );
        assert_eq!(
            ctx("unspecified", None, None, None).reason_json(),
            r#"{"policy":"unspecified"}"#
        );
    }

    #[test]
    fn detail_is_shortened_first_then_ref_dropped_then_detail_dropped() {
        let url = "https://example.com/docs/websocket-policies#rate-limit";
        let long = "x".repeat(200);
        let shortened = ctx("rate-limit", Some(5000), Some(url), Some(&long)).reason_json();
        assert_eq!(shortened.len(), 123);
        assert!(shortened.contains(url) && shortened.contains("\"detail\":\"xxx"));

        // A reference so long that no detail fits beside it: ref goes, detail stays.
        let huge_url = format!("https://example.com/{}", "p".repeat(90));
        let no_ref =
            ctx("rate-limit", Some(5000), Some(&huge_url), Some("slow down")).reason_json();
        assert_eq!(
            no_ref,
            r#"{"policy":"rate-limit","retry_ms":5000,"detail":"slow down"}"#
        );

        // An id so long that nothing else fits.
        let id = "p".repeat(90);
        let bare = ctx(&id, Some(1), Some(url), Some("d")).reason_json();
        assert_eq!(bare, format!(r#"{{"policy":"{id}","retry_ms":1}}"#));
    }

    #[test]
    fn shortening_never_splits_an_escape_or_a_character() {
        let detail = "\"é\\\n€".repeat(40);
        let json = ctx("p", None, None, Some(&detail)).reason_json();
        assert!(json.len() <= 123);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(detail.starts_with(parsed["detail"].as_str().unwrap()));
    }

    #[test]
    fn the_message_form_is_whole() {
        let long = "y".repeat(300);
        let mut c = ctx("rate-limit", Some(250), Some("https://x"), Some(&long));
        c.source = Source::Proxy;
        let message = c.message_json(1008);
        assert!(message.starts_with(
            r#"{"type":"close_context","code":1008,"source":"proxy","policy":"rate-limit","retry_ms":250,"ref":"https://x","detail":"yyy"#
        ));
        assert!(message.len() > 300);
        let parsed: serde_json::Value = serde_json::from_str(&message).unwrap();
        assert_eq!(parsed["detail"].as_str().unwrap(), long);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn reason_json_is_always_valid_bounded_and_faithful(
            policy in "\\PC{0,140}|[a-z-]{1,20}",
            retry_ms in proptest::option::of(any::<u64>()),
            reference in proptest::option::of("\\PC{0,150}|https://[a-z./#-]{0,60}"),
            detail in proptest::option::of(any::<String>()),
        ) {
            let c = PolicyContext { policy: policy.clone(), retry_ms, reference: reference.clone(), detail: detail.clone(), source: Source::Upstream };
            let json = c.reason_json();
            prop_assert!(json.len() <= MAX_REASON_BYTES, "{} bytes: {}", json.len(), json);
            let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
            prop_assert!(json.starts_with(r#"{"policy":"#), "{}", json);
            // Every part is the original or a prefix of it; retry_ms is never lost.
            prop_assert!(policy.starts_with(parsed["policy"].as_str().unwrap()));
            if compact(&policy, retry_ms, None, None).len() <= MAX_REASON_BYTES {
                prop_assert_eq!(parsed["policy"].as_str().unwrap(), policy.as_str());
                prop_assert_eq!(parsed.get("retry_ms").and_then(|v| v.as_u64()), retry_ms);
            }
            if let Some(r) = parsed.get("ref") {
                prop_assert_eq!(Some(r.as_str().unwrap()), reference.as_deref());
            }
            if let Some(d) = parsed.get("detail") {
                let d = d.as_str().unwrap();
                prop_assert!(!d.is_empty() || detail.as_deref() == Some(""));
                prop_assert!(detail.as_deref().unwrap().starts_with(d));
            }
            // Keys keep their order.
            let order: Vec<usize> = ["\"policy\":", "\"retry_ms\":", "\"ref\":", "\"detail\":"]
                .iter()
                .filter(|k| parsed.get(k.trim_matches(|c| c == '"' || c == ':')).is_some())
                .map(|k| json.find(*k).unwrap())
                .collect();
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]));
            // Nothing is dropped when everything fits.
            let whole = compact(&policy, retry_ms, reference.as_deref(), detail.as_deref());
            if whole.len() <= MAX_REASON_BYTES {
                prop_assert_eq!(json, whole);
            }
        }

        #[test]
        fn message_json_is_always_valid(
            policy in "\\PC*", detail in proptest::option::of(any::<String>()), code in 1000u16..5000,
        ) {
            let c = PolicyContext { policy: policy.clone(), retry_ms: None, reference: None, detail: detail.clone(), source: Source::Proxy };
            let parsed: serde_json::Value = serde_json::from_str(&c.message_json(code)).expect("valid JSON");
            prop_assert_eq!(parsed["policy"].as_str().unwrap(), policy.as_str());
            prop_assert_eq!(parsed["detail"].as_str(), detail.as_deref());
            prop_assert_eq!(parsed["code"].as_u64(), Some(code as u64));
        }
    }
}
