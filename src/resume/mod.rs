//! Resumable sessions' pure parts (docs/RESUME.md): `token` (what a returning client
//! presents, HMAC-signed) and `envelope` (what every frame on a resumable client's hop
//! carries). The session executes them.

pub mod envelope;
pub mod token;

/// The subprotocol a resumable client offers and holdfast selects.
pub const SUBPROTOCOL: &str = "holdfast.resume.v1";
/// The prefix of every subprotocol entry holdfast consumes (never forwarded upstream).
pub const ENTRY_PREFIX: &str = "holdfast.";
/// A returning client's token entry: `holdfast.t.<token>`.
pub const TOKEN_ENTRY: &str = "holdfast.t.";
/// A returning client's received count: `holdfast.r.<count>`.
pub const RECEIVED_ENTRY: &str = "holdfast.r.";

/// What a client's `Sec-WebSocket-Protocol` offer says about resumption, and the offer
/// left for the upstream (the application's own entries, in order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    pub resumable: bool,
    pub token: Option<String>,
    pub received: Option<u64>,
    pub upstream: Vec<String>,
}

/// Splits a client's subprotocol offer (every `Sec-WebSocket-Protocol` value, in order)
/// into holdfast's entries and the application's.
pub fn split_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> Offer {
    let mut offer = Offer::default();
    for entry in values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if entry == SUBPROTOCOL {
            offer.resumable = true;
        } else if let Some(token) = entry.strip_prefix(TOKEN_ENTRY) {
            offer.token = Some(token.to_owned());
        } else if let Some(count) = entry.strip_prefix(RECEIVED_ENTRY) {
            offer.received = count.parse().ok();
        } else if !entry.starts_with(ENTRY_PREFIX) {
            offer.upstream.push(entry.to_owned());
        }
    }
    offer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_split_into_holdfast_entries_and_the_applications() {
        let o = split_offer([
            "holdfast.resume.v1, chat.v2",
            "holdfast.t.abc_-1, holdfast.r.12, superchat",
        ]);
        assert_eq!(
            o,
            Offer {
                resumable: true,
                token: Some("abc_-1".into()),
                received: Some(12),
                upstream: vec!["chat.v2".into(), "superchat".into()],
            }
        );
        let plain = split_offer(["chat"]);
        assert!(!plain.resumable && plain.token.is_none());
        assert_eq!(plain.upstream, ["chat"]);
        // Unknown holdfast.* entries are consumed, never forwarded; a bad count is no count.
        let odd = split_offer(["holdfast.future.v9, holdfast.r.x"]);
        assert!(odd.upstream.is_empty() && odd.received.is_none());
    }
}
