//! The WebSocket frame format (RFC 6455 §5), as pure functions: header parsing with every
//! check a receiver owes its peer, header encoding, masking and incremental UTF-8
//! validation. `conn.rs` does the I/O around them.

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte masking key.
pub const MAX_HEADER: usize = 14;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Which end of the connection this is: a server receives masked frames and sends them
/// unmasked; a client the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: usize,
    /// Header length (where the payload starts).
    pub header_len: usize,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Header and payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.len
    }
}

/// Parses the frame header at the start of `buf` (`Ok(None)`: not all of it is there yet)
/// and checks everything that can be checked before the payload: reserved bits and opcodes
/// (no extension negotiated), control frame rules, masking for `role`, and `max_frame` — a
/// frame over it is refused before a byte of its payload is buffered.
pub fn parse_header(buf: &[u8], role: Role, max_frame: usize) -> Result<Option<Header>, WsError> {
    parse_with(buf, role, max_frame, false)
}

/// `parse_header` on a connection that negotiated permessage-deflate (`deflate`): RSV1 may
/// then be set on the first frame of a data message, and only there (RFC 7692 §6).
pub fn parse_with(
    buf: &[u8],
    role: Role,
    max_frame: usize,
    deflate: bool,
) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (extended, short) = match b1 & 0x7f {
        126 => (2, 0),
        127 => (8, 0),
        n => (0, n),
    };
    let header_len = 2 + extended + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let protocol = |e| Err(WsError::Protocol(e));
    let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
    if b0 & 0x30 != 0 || (rsv1 && !(deflate && matches!(opcode, TEXT | BINARY))) {
        return protocol(ProtocolError::NonZeroReservedBits);
    }
    let len = match extended {
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        8 => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
        _ => u64::from(short),
    };
    match opcode {
        CONTINUATION | TEXT | BINARY => {}
        CLOSE | PING | PONG => {
            if !fin {
                return protocol(ProtocolError::FragmentedControlFrame);
            }
            if len > 125 {
                return protocol(ProtocolError::ControlFrameTooBig);
            }
        }
        3..=7 => return protocol(ProtocolError::UnknownDataFrameType(opcode)),
        _ => return protocol(ProtocolError::UnknownControlFrameType(opcode)),
    }
    match (role, masked) {
        (Role::Server, false) => return protocol(ProtocolError::UnmaskedFrameFromClient),
        (Role::Client, true) => return protocol(ProtocolError::MaskedFrameFromServer),
        _ => {}
    }
    // A frame must also fit in memory with its header, whatever the limit says (a limit of
    // `usize::MAX` would otherwise let `header_len + len` overflow).
    if len > max_frame as u64 || len > (isize::MAX as u64 - MAX_HEADER as u64) {
        return Err(too_big(len, max_frame));
    }
    let mask = masked.then(|| buf[header_len - 4..header_len].try_into().expect("4 bytes"));
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        mask,
        len: len as usize,
        header_len,
    }))
}

/// The error for a frame or message over its limit (closed with 1009).
pub fn too_big(size: u64, max: usize) -> WsError {
    WsError::Capacity(CapacityError::MessageTooLong {
        size: usize::try_from(size).unwrap_or(usize::MAX),
        max_size: max,
    })
}

/// The error for a message with RSV1 set that is not valid deflate data: what RSV1 claimed
/// is untrue, a protocol error (1002).
pub fn bad_compressed_data() -> WsError {
    WsError::Protocol(ProtocolError::NonZeroReservedBits)
}

/// The error for data frames out of sequence.
pub fn out_of_sequence(opcode: u8) -> WsError {
    WsError::Protocol(if opcode == CONTINUATION {
        ProtocolError::UnexpectedContinueFrame
    } else if opcode == TEXT {
        ProtocolError::ExpectedFragment(Data::Text)
    } else {
        ProtocolError::ExpectedFragment(Data::Binary)
    })
}

/// Appends a final frame's header for `len` payload bytes (masked with `mask` if given).
pub fn encode_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let (bytes, n) = header_bytes(opcode, len, mask);
    out.extend_from_slice(&bytes[..n]);
}

/// RSV1 in a frame's first byte: the message is compressed.
pub const RSV1: u8 = 0x40;

/// The header of a final frame as bytes: the array and how much of it is the header.
pub fn header_bytes(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    h[0] = 0x80 | opcode;
    let mut n = match len {
        0..=125 => {
            h[1] = mask_bit | len as u8;
            2
        }
        126..=0xffff => {
            h[1] = mask_bit | 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = mask_bit | 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        h[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    (h, n)
}

/// XORs `data` with the masking key (masking and unmasking are the same operation), 32
/// bytes at a time.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    // 32 bytes at a time against the key repeated: a loop of known length over arrays,
    // which the compiler turns into a few vector instructions (an 8-byte word loop took
    // ~80 instructions for a 64-byte message).
    let pattern: [u8; 32] = std::array::from_fn(|i| key[i & 3]);
    let mut blocks = data.chunks_exact_mut(32);
    for block in &mut blocks {
        for (byte, k) in block.iter_mut().zip(&pattern) {
            *byte ^= k;
        }
    }
    // The rest (under 32 bytes) starts at a multiple of 32, so at key index 0.
    for (byte, k) in blocks.into_remainder().iter_mut().zip(&pattern) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8], role: Role) -> Result<Option<Header>, WsError> {
        parse_header(bytes, role, 1 << 20)
    }

    fn is_protocol(r: Result<Option<Header>, WsError>) -> bool {
        matches!(r, Err(WsError::Protocol(_)))
    }

    #[test]
    fn headers_parse_with_every_length_form() {
        let mut out = Vec::new();
        for len in [0usize, 5, 125, 126, 65_535, 65_536, 300_000] {
            out.clear();
            encode_header(&mut out, BINARY, len, Some([1, 2, 3, 4]));
            let parsed = header(&out, Role::Server).unwrap().unwrap();
            assert_eq!(parsed.len, len);
            assert_eq!(parsed.header_len, out.len());
            assert_eq!(parsed.mask, Some([1, 2, 3, 4]));
            assert!(parsed.fin && parsed.opcode == BINARY);
            // Every proper prefix is incomplete, never an error.
            for cut in 0..out.len() {
                assert_eq!(header(&out[..cut], Role::Server).unwrap(), None);
            }
        }
    }

    #[test]
    fn receivers_enforce_the_rfc() {
        // Masking: clients must mask, servers must not.
        assert!(is_protocol(header(&[0x81, 0x00], Role::Server)));
        assert!(is_protocol(header(&[0x81, 0x80, 0, 0, 0, 0], Role::Client)));
        assert!(header(&[0x81, 0x00], Role::Client).unwrap().is_some());
        // Reserved bits and opcodes.
        assert!(is_protocol(header(&[0xC1, 0x00], Role::Client)));
        // RSV1 with permessage-deflate: on a data message's first frame only.
        let deflate = |bytes: &[u8]| parse_with(bytes, Role::Client, 1 << 20, true);
        assert!(deflate(&[0xC1, 0x00]).unwrap().unwrap().rsv1);
        assert!(deflate(&[0x42, 0x00]).unwrap().unwrap().rsv1);
        assert!(!deflate(&[0x81, 0x00]).unwrap().unwrap().rsv1);
        for bad in [
            [0xC0, 0x00],
            [0xC9, 0x00],
            [0xC8, 0x00],
            [0xA1, 0x00],
            [0x91, 0x00],
        ] {
            assert!(
                matches!(deflate(&bad), Err(WsError::Protocol(_))),
                "{bad:x?}"
            );
        }
        assert!(is_protocol(header(&[0x83, 0x00], Role::Client)));
        assert!(is_protocol(header(&[0x8B, 0x00], Role::Client)));
        // Control frames: final, at most 125 bytes.
        assert!(is_protocol(header(&[0x09, 0x00], Role::Client)));
        assert!(is_protocol(header(&[0x89, 126, 0, 126], Role::Client)));
        // Over the frame limit: a capacity error before any payload.
        let mut big = Vec::new();
        encode_header(&mut big, BINARY, 2 << 20, None);
        assert!(matches!(
            header(&big, Role::Client),
            Err(WsError::Capacity(_))
        ));
        // Whatever the limit, a length that cannot be held with its header is too big.
        let mut huge_len = vec![0x82, 127];
        huge_len.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert!(matches!(
            parse_header(&huge_len, Role::Client, usize::MAX),
            Err(WsError::Capacity(_))
        ));
        // A 64-bit length with the top bit set is just too big.
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            header(&huge, Role::Client),
            Err(WsError::Capacity(_))
        ));
    }

    #[test]
    fn masking_round_trips_at_every_length() {
        let key = [0x12, 0x34, 0x56, 0x78];
        // Every mix of whole 32-byte blocks and a shorter tail.
        for len in 0..140 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut data = original.clone();
            apply_mask(&mut data, key);
            for (i, (m, o)) in data.iter().zip(&original).enumerate() {
                assert_eq!(*m, o ^ key[i % 4], "byte {i} of {len}");
            }
            apply_mask(&mut data, key);
            assert_eq!(data, original);
        }
    }
}
