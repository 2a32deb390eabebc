//! Envelopes: every frame on a resumable client's hop starts with one ASCII byte saying
//! what it carries (docs/RESUME.md §2). Pure: parsing what a client sent, and the bytes of
//! what holdfast sends.

/// What one envelope carries, borrowed from the frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// `d`: an application message (of the frame's type).
    Data(&'a [u8]),
    /// `p`: a replayed opening message (client → holdfast, after a move).
    Replay(&'a [u8]),
    /// `a`: the peer has received this many `d` messages in the session.
    Ack(u64),
}

/// A frame from the client that is not a valid envelope: the connection is closed 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("an empty frame carries no envelope")]
    Empty,
    #[error("unknown envelope kind {0:#04x}")]
    UnknownKind(u8),
    #[error("an acknowledgement must be a text frame with a decimal count")]
    BadAck,
    #[error("holdfast's envelopes cannot come from a client")]
    Reversed,
}

pub const DATA: u8 = b'd';
pub const REPLAY: u8 = b'p';
pub const ACK: u8 = b'a';
pub const HELLO: u8 = b'h';
pub const TOKEN: u8 = b't';
pub const MOVE: u8 = b'm';

/// The longest acknowledgement count (u64::MAX has 20 digits).
const MAX_ACK_DIGITS: usize = 20;

/// Reads an envelope a client sent in a frame of type text (`text`) or binary.
pub fn parse(payload: &[u8], text: bool) -> Result<Envelope<'_>, EnvelopeError> {
    let (&kind, rest) = payload.split_first().ok_or(EnvelopeError::Empty)?;
    match kind {
        DATA => Ok(Envelope::Data(rest)),
        REPLAY => Ok(Envelope::Replay(rest)),
        ACK => {
            let digits = text
                && !rest.is_empty()
                && rest.len() <= MAX_ACK_DIGITS
                && rest.iter().all(u8::is_ascii_digit);
            if !digits {
                return Err(EnvelopeError::BadAck);
            }
            // Digits only, at most 20 of them: parsing fails only past u64::MAX.
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Envelope::Ack)
                .ok_or(EnvelopeError::BadAck)
        }
        HELLO | TOKEN | MOVE => Err(EnvelopeError::Reversed),
        other => Err(EnvelopeError::UnknownKind(other)),
    }
}

/// An acknowledgement's payload: `a` and the count.
pub fn ack(count: u64) -> String {
    format!("a{count}")
}

/// A control envelope's payload: `kind` and its text (hello and move JSON, a token).
pub fn control(kind: u8, body: &str) -> String {
    let mut out = String::with_capacity(1 + body.len());
    out.push(kind as char);
    out.push_str(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_envelopes_parse_or_are_refused_with_a_reason() {
        let table: Vec<(&[u8], bool, Result<Envelope<'_>, EnvelopeError>)> = vec![
            (b"dhello", true, Ok(Envelope::Data(b"hello"))),
            (b"d", false, Ok(Envelope::Data(b""))),
            (b"d\x00\xff", false, Ok(Envelope::Data(b"\x00\xff"))),
            (b"pauth", true, Ok(Envelope::Replay(b"auth"))),
            (b"a0", true, Ok(Envelope::Ack(0))),
            (b"a1200", true, Ok(Envelope::Ack(1200))),
            (b"a18446744073709551615", true, Ok(Envelope::Ack(u64::MAX))),
            (b"a18446744073709551616", true, Err(EnvelopeError::BadAck)),
            (b"a184467440737095516150", true, Err(EnvelopeError::BadAck)),
            (b"a", true, Err(EnvelopeError::BadAck)),
            (b"a-1", true, Err(EnvelopeError::BadAck)),
            (b"a 12", true, Err(EnvelopeError::BadAck)),
            (b"a12", false, Err(EnvelopeError::BadAck)),
            (b"", true, Err(EnvelopeError::Empty)),
            (b"x", true, Err(EnvelopeError::UnknownKind(b'x'))),
            (b"hello", true, Err(EnvelopeError::Reversed)),
            (b"m{}", true, Err(EnvelopeError::Reversed)),
            (b"t...", true, Err(EnvelopeError::Reversed)),
        ];
        for (payload, text, want) in table {
            assert_eq!(
                parse(payload, text),
                want,
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn holdfast_envelopes_are_text_with_their_kind_first() {
        assert_eq!(ack(1200), "a1200");
        assert_eq!(control(MOVE, "{}"), "m{}");
        assert_eq!(parse(ack(7).as_bytes(), true), Ok(Envelope::Ack(7)));
    }
}
