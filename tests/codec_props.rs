//! Properties of the WebSocket frame functions (`holdfast::codec::frame`, `::utf8`): header
//! encoding and parsing round-trip for every opcode, length form and masking; masking is its
//! own inverse; no bytes make the parser panic; UTF-8 validation fed in pieces agrees with
//! `std::str::from_utf8` on the whole.

use holdfast::codec::Role;
use holdfast::codec::frame::{
    BINARY, CLOSE, CONTINUATION, Header, MAX_HEADER, PING, PONG, TEXT, apply_mask, encode_header,
    header_bytes, parse_header,
};
use holdfast::codec::utf8::validate as validate_utf8;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::ProtocolError;

fn opcode() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG])
}

/// Lengths around each edge of the three length forms (7-bit, 16-bit, 64-bit), anywhere in
/// each form, and the largest values a 64-bit length can carry.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![
            0usize,
            1,
            124,
            125,
            126,
            127,
            65_534,
            65_535,
            65_536,
            65_537,
            u32::MAX as usize,
            usize::MAX / 2,
            usize::MAX - 1,
            usize::MAX,
        ]),
        0usize..=125,
        126usize..=65_535,
        65_536usize..=usize::MAX,
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Server), Just(Role::Client)]
}

/// The role that receives a frame masked like this: servers receive masked frames.
fn receiver(mask: Option<[u8; 4]>) -> Role {
    if mask.is_some() {
        Role::Server
    } else {
        Role::Client
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

/// An encoded header with FIN cleared if `fin` is false (the encoder writes final frames).
fn encoded(opcode: u8, fin: bool, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(&mut out, opcode, len, mask);
    if !fin {
        out[0] &= 0x7f;
    }
    out
}

/// The longest payload a frame may declare whatever the limit: it must fit in memory with
/// its header.
const LONGEST: usize = isize::MAX as usize - MAX_HEADER;

proptest! {
    // Header properties are cheap: many cases, still well under a second in a debug build.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Both encoders write the same bytes, in the shortest length form, and parsing them in
    /// the receiving role gives every field back.
    #[test]
    fn headers_round_trip(
        opcode in opcode(),
        fin in any::<bool>(),
        len in length(),
        mask in any::<Option<[u8; 4]>>(),
    ) {
        let bytes = encoded(opcode, fin, len, mask);
        let (array, n) = header_bytes(opcode, len, mask);
        prop_assert_eq!(&array[..n], &encoded(opcode, true, len, mask)[..]);
        let length_bytes = match len {
            0..=125 => 0,
            126..=65_535 => 2,
            _ => 8,
        };
        let mask_bytes = if mask.is_some() { 4 } else { 0 };
        prop_assert_eq!(bytes.len(), 2 + length_bytes + mask_bytes);
        prop_assert!(bytes.len() <= MAX_HEADER);

        let parsed = parse_header(&bytes, receiver(mask), usize::MAX);
        if is_control(opcode) && !fin {
            prop_assert!(
                matches!(parsed, Err(WsError::Protocol(ProtocolError::FragmentedControlFrame))),
                "{:?}", parsed
            );
        } else if is_control(opcode) && len > 125 {
            prop_assert!(
                matches!(parsed, Err(WsError::Protocol(ProtocolError::ControlFrameTooBig))),
                "{:?}", parsed
            );
        } else if len > LONGEST {
            prop_assert!(matches!(parsed, Err(WsError::Capacity(_))), "{:?}", parsed);
        } else {
            let expected = Header { fin, rsv1: false, opcode, mask, len, header_len: bytes.len() };
            prop_assert_eq!(parsed.unwrap(), Some(expected));
        }
    }

    /// A header cut anywhere is incomplete, never an error, whatever it goes on to say (and
    /// whichever role reads it).
    #[test]
    fn every_proper_prefix_is_incomplete(
        opcode in opcode(),
        fin in any::<bool>(),
        len in length(),
        mask in any::<Option<[u8; 4]>>(),
        reader in role(),
        max_frame in any::<usize>(),
    ) {
        let bytes = encoded(opcode, fin, len, mask);
        for cut in 0..bytes.len() {
            let parsed = parse_header(&bytes[..cut], reader, max_frame);
            prop_assert!(matches!(parsed, Ok(None)), "cut at {}: {:?}", cut, parsed);
        }
    }

    /// The wrong masking for the role and a length over `max_frame` are refused; anything
    /// else valid is accepted (at the limit exactly, too).
    #[test]
    fn masking_and_frame_limit_are_enforced(
        opcode in prop::sample::select(vec![CONTINUATION, TEXT, BINARY]),
        len in length(),
        mask in any::<Option<[u8; 4]>>(),
        slack in prop_oneof![Just(0usize), 0usize..1000, any::<usize>()],
    ) {
        let bytes = encoded(opcode, true, len, mask);
        let wrong = match receiver(mask) {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        prop_assert!(matches!(
            parse_header(&bytes, wrong, usize::MAX),
            Err(WsError::Protocol(
                ProtocolError::UnmaskedFrameFromClient | ProtocolError::MaskedFrameFromServer
            ))
        ));
        let at_limit = len.saturating_add(slack);
        if len > LONGEST {
            // Too big whatever the limit says.
            prop_assert!(matches!(
                parse_header(&bytes, receiver(mask), at_limit),
                Err(WsError::Capacity(_))
            ));
            return Ok(());
        }
        prop_assert!(parse_header(&bytes, receiver(mask), at_limit).unwrap().is_some());
        if len > 0 {
            let below = len - 1 - slack.min(len - 1);
            prop_assert!(matches!(
                parse_header(&bytes, receiver(mask), below),
                Err(WsError::Capacity(_))
            ));
        }
    }

    /// Masking twice gives the data back, and masking is a byte-wise XOR with the key
    /// repeated from the first byte (whatever the length: whole 32-byte blocks and a tail).
    #[test]
    fn masking_is_an_involution_and_a_plain_xor(
        data in prop::collection::vec(any::<u8>(), 0..300),
        key in any::<[u8; 4]>(),
    ) {
        let mut masked = data.clone();
        apply_mask(&mut masked, key);
        let naive: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        prop_assert_eq!(&masked, &naive);
        apply_mask(&mut masked, key);
        prop_assert_eq!(masked, data);
    }

    /// No bytes make the parser panic, in either role, at any limit; what it accepts obeys
    /// every rule it claims to check.
    #[test]
    fn parsing_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..24),
        reader in role(),
        max_frame in prop_oneof![Just(0usize), 0usize..70_000, any::<usize>()],
    ) {
        let Ok(Some(h)) = parse_header(&bytes, reader, max_frame) else {
            return Ok(());
        };
        prop_assert!(h.header_len <= bytes.len() && h.header_len <= MAX_HEADER);
        prop_assert_eq!(bytes[0] & 0x70, 0, "reserved bits");
        prop_assert!([CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG].contains(&h.opcode));
        prop_assert!(!h.is_control() || (h.fin && h.len <= 125));
        prop_assert_eq!(h.mask.is_some(), reader == Role::Server);
        prop_assert!(h.len <= max_frame);
    }
}

/// Valid UTF-8 cut anywhere (between any bytes, inside characters too) and validated piece
/// by piece: the pieces that are not the end may stop inside a character, and the whole is
/// accepted.
fn validate_in_pieces(data: &[u8], cuts: &[usize]) -> Result<usize, (usize, WsError)> {
    let mut valid = 0;
    for &cut in cuts {
        valid = validate_utf8(&data[..cut], valid, false).map_err(|e| (cut, e))?;
    }
    validate_utf8(data, valid, true).map_err(|e| (data.len(), e))
}

/// Sorted cut points inside `len` bytes, from arbitrary fractions.
fn cut_points(len: usize, fractions: &[u16]) -> Vec<usize> {
    let mut cuts: Vec<usize> = fractions
        .iter()
        .map(|f| len * usize::from(*f) / usize::from(u16::MAX))
        .collect();
    cuts.sort_unstable();
    cuts
}

/// A byte that, inserted anywhere into valid UTF-8, leaves it invalid: a continuation byte
/// (one more than the lead bytes announce) or one that never occurs in UTF-8.
fn never_fits() -> impl Strategy<Value = u8> {
    prop_oneof![0x80u8..=0xbf, Just(0xc0u8), Just(0xc1u8), 0xf5u8..=0xff]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_utf8_in_any_pieces_is_accepted(
        text in any::<String>(),
        fractions in prop::collection::vec(any::<u16>(), 0..8),
    ) {
        let data = text.as_bytes();
        let cuts = cut_points(data.len(), &fractions);
        let mut valid = 0;
        for &cut in &cuts {
            let now = validate_utf8(&data[..cut], valid, false);
            prop_assert!(now.is_ok(), "cut at {}: {:?}", cut, now);
            valid = now.unwrap();
            // Everything up to a cut is checked except a character the cut splits.
            prop_assert!(valid <= cut && cut - valid < 4 && text.is_char_boundary(valid));
        }
        prop_assert_eq!(validate_in_pieces(data, &cuts).unwrap(), data.len());
    }

    /// An invalid byte is refused by the first piece that shows it is invalid, and never by a
    /// piece before it arrives; a character cut off at the end is refused at the end.
    #[test]
    fn invalid_utf8_is_rejected_at_or_before_the_end(
        text in any::<String>(),
        at in any::<prop::sample::Index>(),
        bad in never_fits(),
        cut_off_end in any::<bool>(),
        fractions in prop::collection::vec(any::<u16>(), 0..8),
    ) {
        let mut data = text.into_bytes();
        if cut_off_end {
            // A multi-byte character without its last byte.
            data.extend_from_slice(&"€".as_bytes()[..2]);
        } else {
            data.insert(at.index(data.len() + 1), bad);
        }
        let start = std::str::from_utf8(&data).expect_err("made invalid").valid_up_to();
        // Where the input is known to be bad: the shortest piece from `start` on that std
        // calls invalid rather than cut short (`F0 91` is only bad once a `C0` follows).
        // None: only the end shows it (a character cut off).
        let known_bad_at = (start + 1..=data.len()).find(|&end| {
            std::str::from_utf8(&data[start..end]).is_err_and(|e| e.error_len().is_some())
        });
        let cuts = cut_points(data.len(), &fractions);
        let rejected_at = match validate_in_pieces(&data, &cuts) {
            Ok(n) => panic!("accepted {n} bytes of invalid UTF-8: {data:02x?}"),
            Err((cut, _)) => cut,
        };
        // Not before the bad sequence has arrived...
        prop_assert!(rejected_at > start, "rejected at {} before {}", rejected_at, start);
        // ... and by the first piece that shows it (a cut-off end: only at the end).
        let must_by = match known_bad_at {
            Some(at) => cuts.iter().copied().find(|&c| c >= at).unwrap_or(data.len()),
            None => data.len(),
        };
        prop_assert!(rejected_at <= must_by, "rejected at {}, due by {}", rejected_at, must_by);
    }
}
