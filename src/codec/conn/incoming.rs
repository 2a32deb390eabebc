//! What a message is on its way through: `Data` (a data message's kind and payload,
//! borrowed), `Incoming` (a message as the relay reads it: small ones in the caller's
//! inline buffer) and `Payload` (a frame's payload, borrowed or owned).

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

use super::SMALL_INLINE;
use crate::codec::frame::{BINARY, TEXT};

/// A frame's payload, unmasked: borrowed from the stack buffer, or already owned.
pub(super) enum Payload<'a> {
    Slice(&'a [u8]),
    Owned(Bytes),
}

impl Payload<'_> {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Slice(s) => s,
            Payload::Owned(b) => b,
        }
    }

    pub(super) fn into_bytes(self) -> Bytes {
        match self {
            Payload::Slice(s) => Bytes::copy_from_slice(s),
            Payload::Owned(b) => b,
        }
    }
}

/// A data message's kind and payload, borrowed. A text payload is valid UTF-8 (it comes
/// from a `Message::Text` or was checked on receipt).
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    pub(super) text: bool,
    pub(super) payload: &'a [u8],
}

impl<'a> Data<'a> {
    /// The data of a text or binary message.
    pub fn of(message: &'a Message) -> Option<Self> {
        match message {
            Message::Text(t) => Some(Self {
                text: true,
                payload: t.as_bytes(),
            }),
            Message::Binary(b) => Some(Self {
                text: false,
                payload: b,
            }),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_text(&self) -> bool {
        self.text
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The same kind of message with the payload from `at` on (an envelope's contents).
    /// A text payload stays valid UTF-8 when what is cut off is ASCII.
    pub fn from(self, at: usize) -> Data<'a> {
        Data {
            text: self.text,
            payload: &self.payload[at.min(self.payload.len())..],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    pub(super) fn opcode(&self) -> u8 {
        if self.text { TEXT } else { BINARY }
    }

    /// An owned message with a copy of the payload.
    pub fn to_message(self) -> Message {
        if self.text {
            // Valid UTF-8 (see the type): the lossy conversion changes nothing and never fails.
            Message::text(String::from_utf8_lossy(self.payload).into_owned())
        } else {
            Message::Binary(Bytes::copy_from_slice(self.payload))
        }
    }
}

/// The caller's buffer that `poll_next_incoming` copies a small data message into.
pub type Inline = [u8; SMALL_INLINE];

/// A message as the relay reads it (`poll_next_incoming`): a small data message is in the
/// caller's `Inline` buffer, anything else is a `Message`. (Holding the bytes outside keeps
/// this value small: it is moved through every layer of polling.)
#[derive(Debug)]
pub enum Incoming {
    /// The first `len` bytes of the `Inline` buffer it was read with.
    Small {
        text: bool,
        len: usize,
    },
    Message(Message),
}

impl Incoming {
    /// The data of a data message (`None`: a control message); `inline` is the buffer it
    /// was read with.
    pub fn data<'a>(&'a self, inline: &'a Inline) -> Option<Data<'a>> {
        match self {
            Incoming::Small { text, len } => Some(Data {
                text: *text,
                payload: &inline[..*len],
            }),
            Incoming::Message(message) => Data::of(message),
        }
    }

    /// An owned message (a copy of a small one's payload, a reference to a `Message`'s).
    pub fn to_message(&self, inline: &Inline) -> Message {
        match self {
            Incoming::Message(message) => message.clone(),
            Incoming::Small { .. } => self.data(inline).expect("small is data").to_message(),
        }
    }

    pub fn into_message(self, inline: &Inline) -> Message {
        match self {
            Incoming::Message(message) => message,
            small => small.to_message(inline),
        }
    }
}
