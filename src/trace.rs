//! W3C trace context: the trace a session belongs to, and the `traceparent` each of its
//! upstream connections carries. A session continues the client's trace when the client's
//! handshake carries a valid `traceparent`, and starts one of its own otherwise; every
//! upstream connection (the first, each re-dial of a hold, a move to another holdfast) is a
//! new span of that one trace. Pure: randomness comes in as arguments.

use std::fmt;

/// The header that carries a trace to the upstream.
pub const TRACEPARENT: &str = "traceparent";
/// Vendors' trace state: forwarded as it is with the client's `traceparent`, dropped
/// without one (it means nothing outside its trace).
pub const TRACESTATE: &str = "tracestate";

/// The sampled flag (the only flag of trace context version 00).
const SAMPLED: u8 = 0x01;

/// A trace: its id and the flags passed on with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    id: [u8; 16],
    flags: u8,
}

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const LEN: usize = 55;

impl Trace {
    /// The trace a client's `traceparent` values continue: exactly one value, valid by the
    /// W3C rules (lowercase hex; version `ff`, an all-zero trace id or parent id are
    /// invalid; a later version is read as far as version 00 goes). `None`: start a new
    /// trace.
    pub fn continued<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<Trace> {
        let value = values.next()?;
        if values.next().is_some() {
            // Two traceparents: which one the client meant cannot be known.
            return None;
        }
        Self::parse(value)
    }

    fn parse(value: &[u8]) -> Option<Trace> {
        if value.len() < LEN {
            return None;
        }
        let version = hex::<1>(&value[0..2])?[0];
        let exact = match version {
            0xff => return None,
            0x00 => value.len() == LEN,
            // A future version may add fields after a dash.
            _ => value.len() == LEN || value[LEN] == b'-',
        };
        if !exact || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let id = hex::<16>(&value[3..35])?;
        let parent = hex::<8>(&value[36..52])?;
        let flags = hex::<1>(&value[53..55])?[0];
        if id == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(Trace {
            id,
            // Flags holdfast does not know are not passed on.
            flags: flags & SAMPLED,
        })
    }

    /// A trace holdfast starts (the client sent none, or an invalid one), marked sampled:
    /// an application whose sampler follows its parent records the session's upstream
    /// connections as it would record them without holdfast in front.
    pub fn start(random: [u8; 16]) -> Trace {
        let mut id = random;
        if id == [0; 16] {
            id[15] = 1;
        }
        Trace { id, flags: SAMPLED }
    }

    /// The `traceparent` of one upstream connection: this trace, `span` as the parent id.
    pub fn traceparent(&self, span: [u8; 8]) -> String {
        let mut span = span;
        if span == [0; 8] {
            span[7] = 1;
        }
        format!("00-{}-{}-{:02x}", Hex(&self.id), Hex(&span), self.flags)
    }

    /// The trace id, as logs and trace backends show it (32 lowercase hex digits).
    pub fn id(&self) -> impl fmt::Display + '_ {
        Hex(&self.id)
    }

    /// The trace as 17 bytes (id, flags), for a resume token.
    pub fn to_bytes(self) -> [u8; 17] {
        let mut out = [0; 17];
        out[..16].copy_from_slice(&self.id);
        out[16] = self.flags;
        out
    }

    /// The trace of `to_bytes`'s bytes (`None` for bytes no trace has).
    pub fn from_bytes(bytes: [u8; 17]) -> Option<Trace> {
        let id: [u8; 16] = bytes[..16].try_into().expect("16 of 17 bytes");
        (id != [0; 16] && bytes[16] & !SAMPLED == 0).then_some(Trace {
            id,
            flags: bytes[16],
        })
    }
}

/// `N` bytes from `2N` lowercase hex digits (uppercase is invalid in trace context).
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn parse(value: &str) -> Option<String> {
        Trace::continued(std::iter::once(value.as_bytes())).map(|t| t.id().to_string())
    }

    #[test]
    fn valid_traceparents_are_continued_and_invalid_ones_are_not() {
        let table: &[(&str, bool)] = &[
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
            ),
            // A later version, with and without fields of its own.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                true,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
                true,
            ),
            // Version 00 is exactly 55 characters.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
                false,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            // Uppercase, all-zero ids, wrong separators, short fields, garbage.
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                false,
            ),
            ("", false),
            ("00-zz", false),
        ];
        for (value, continued) in table {
            let got = parse(value);
            assert_eq!(got.is_some(), *continued, "{value}");
            if let Some(id) = got {
                assert_eq!(id, ID);
            }
        }
        // Two values: ambiguous, not continued.
        let one = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_bytes();
        assert_eq!(Trace::continued([one, one].into_iter()), None);
        assert_eq!(Trace::continued(std::iter::empty()), None);
    }

    #[test]
    fn each_upstream_connection_is_a_new_span_of_the_same_trace() {
        let trace = Trace::continued(std::iter::once(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".as_bytes(),
        ))
        .unwrap();
        // The parent id is holdfast's span; of the flags, only `sampled` is passed on.
        assert_eq!(
            trace.traceparent([0xab; 8]),
            format!("00-{ID}-abababababababab-01")
        );
        assert_eq!(
            trace.traceparent([0; 8]),
            format!("00-{ID}-0000000000000001-01")
        );
        // What holdfast sends, it would continue itself.
        assert_eq!(parse(&trace.traceparent([7; 8])), Some(ID.to_owned()));
    }

    #[test]
    fn a_started_trace_is_sampled_and_never_all_zero() {
        let trace = Trace::start([0; 16]);
        assert_eq!(
            trace.traceparent([1; 8]),
            "00-00000000000000000000000000000001-0101010101010101-01"
        );
        assert_eq!(Trace::start([0x11; 16]).id().to_string(), "11".repeat(16));
    }

    #[test]
    fn a_trace_round_trips_through_bytes_and_odd_bytes_are_no_trace() {
        let trace = Trace::start([9; 16]);
        assert_eq!(Trace::from_bytes(trace.to_bytes()), Some(trace));
        assert_eq!(Trace::from_bytes([0; 17]), None);
        let mut odd = trace.to_bytes();
        odd[16] = 0x80;
        assert_eq!(Trace::from_bytes(odd), None);
    }
}
