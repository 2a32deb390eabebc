//! How a side of a session ends and what that means for the other side, as pure
//! functions: a codec error read as a `Fault`, the close pipeline (hold, rewrite, a verdict
//! for a faulty peer), and close frames to and from `Close`. The session executes these
//! decisions; the codes and rewrite rules come from `crate::close`.

use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::close::{
    ABNORMAL, Close, Direction, GOING_AWAY, INTERNAL_ERROR, INVALID_PAYLOAD, MESSAGE_TOO_BIG,
    NO_STATUS, POLICY_VIOLATION, PROTOCOL_ERROR, RewriteRule, WireClose, rewrite, to_wire,
};

/// How a peer failed, read off a codec error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Vanished,
    Protocol,
    TooBig,
    InvalidUtf8,
}

impl Fault {
    pub fn of(error: &WsError) -> Fault {
        match error {
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Io(_)
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Fault::Vanished,
            WsError::Capacity(_) | WsError::WriteBufferFull(_) => Fault::TooBig,
            WsError::Utf8(_) => Fault::InvalidUtf8,
            _ => Fault::Protocol,
        }
    }
}

impl From<Fault> for ClientEnd {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Vanished => ClientEnd::Vanished,
            Fault::Protocol => ClientEnd::ProtocolError,
            Fault::TooBig => ClientEnd::TooBig,
            Fault::InvalidUtf8 => ClientEnd::InvalidUtf8,
        }
    }
}

impl From<Fault> for UpstreamEnd {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Vanished => UpstreamEnd::Vanished,
            Fault::Protocol => UpstreamEnd::ProtocolError,
            Fault::TooBig => UpstreamEnd::TooBig,
            Fault::InvalidUtf8 => UpstreamEnd::InvalidUtf8,
        }
    }
}

impl ClientEnd {
    /// The client's end when reading from or writing to it failed with `error`.
    pub fn failed(error: &WsError) -> Self {
        Fault::of(error).into()
    }
}

impl UpstreamEnd {
    /// The upstream's end when reading from or writing to it failed with `error`.
    pub fn failed(error: &WsError) -> Self {
        Fault::of(error).into()
    }
}

/// A received close frame as a `Close` (an empty frame is the pseudo-code 1005).
pub fn close_of(frame: Option<CloseFrame>) -> Close {
    match frame {
        Some(f) => Close::new(u16::from(f.code), f.reason.as_str()),
        None => Close::new(NO_STATUS, ""),
    }
}

/// A close that passed `close::to_wire` as a message to send.
pub fn close_message(wire: WireClose) -> Message {
    Message::Close(wire.map(|c| CloseFrame {
        code: CloseCode::from(c.code),
        reason: c.reason.into(),
    }))
}

/// The code of a close message as sent (`Some(None)`: an empty close frame; `None`: not a
/// close).
pub fn wire_code(message: &Message) -> Option<Option<u16>> {
    match message {
        Message::Close(frame) => Some(frame.as_ref().map(|f| u16::from(f.code))),
        _ => None,
    }
}

/// How the upstream side of a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEnd {
    /// A close frame arrived; an empty one is code 1005.
    Closed(Close),
    /// TCP ended (or reset) without a close frame.
    Vanished,
    /// The upstream broke the protocol (bad frame, disallowed close code, …).
    ProtocolError,
    /// The upstream sent a message or frame over `max_message_size` / `max_frame_size`.
    TooBig,
    /// The upstream sent a text message that is not UTF-8.
    InvalidUtf8,
    /// The upstream stopped reading: a send did not complete within two ping intervals.
    Stalled,
}

impl UpstreamEnd {
    /// The code this end is reported as (metrics, logs, rewrite matching).
    pub fn as_close(&self) -> Close {
        match self {
            UpstreamEnd::Closed(close) => close.clone(),
            UpstreamEnd::Vanished => Close::new(ABNORMAL, ""),
            // Upstream misbehaviour is not the client's fault: never 1002 to the client.
            UpstreamEnd::ProtocolError => Close::new(INTERNAL_ERROR, "upstream protocol error"),
            UpstreamEnd::TooBig => Close::new(INTERNAL_ERROR, "upstream message too big"),
            UpstreamEnd::InvalidUtf8 => Close::new(INTERNAL_ERROR, "upstream sent invalid UTF-8"),
            UpstreamEnd::Stalled => Close::new(INTERNAL_ERROR, "upstream stopped reading"),
        }
    }

    /// What holdfast itself sends to the upstream when the upstream is at fault.
    pub fn verdict_for_upstream(&self) -> Option<Close> {
        match self {
            UpstreamEnd::ProtocolError => Some(Close::new(PROTOCOL_ERROR, "protocol error")),
            UpstreamEnd::TooBig => Some(Close::new(MESSAGE_TOO_BIG, "message too big")),
            UpstreamEnd::InvalidUtf8 => Some(Close::new(INVALID_PAYLOAD, "invalid UTF-8")),
            UpstreamEnd::Closed(_) | UpstreamEnd::Vanished | UpstreamEnd::Stalled => None,
        }
    }
}

/// The part of the configuration the close pipeline reads.
#[derive(Debug, Clone, Copy)]
pub struct CloseRules<'a> {
    /// `restart.hold`, and whether this session can hold at all right now.
    pub hold: bool,
    pub restart_codes: &'a [u16],
    pub on_disconnect: bool,
    pub rewrites: &'a [RewriteRule],
}

/// What to do when the upstream side ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamDecision {
    /// SPEC §3.3: keep the client, reconnect upstream. Nothing reaches the client.
    Hold,
    /// Close the client with `close` (rewritten; policy context and `to_wire` still to apply).
    Forward { original: u16, close: Close },
}

/// SPEC §3.2 steps 1–2: hold, or rewrite for the client. Step 3 (policy context for 1008)
/// and step 4 (`to_wire`) follow in the session, in that order.
pub fn on_upstream_end(end: &UpstreamEnd, rules: &CloseRules<'_>) -> UpstreamDecision {
    let restart = match end {
        // A policy close is about this client: another upstream would close it again.
        UpstreamEnd::Closed(close) if close.code == POLICY_VIOLATION => false,
        UpstreamEnd::Closed(close) => rules.restart_codes.contains(&close.code),
        UpstreamEnd::Vanished => rules.on_disconnect,
        _ => false,
    };
    if rules.hold && restart {
        return UpstreamDecision::Hold;
    }
    let received = end.as_close();
    let original = received.code;
    // A 1002 from the upstream is about frames holdfast sent it, never the client's doing
    // (tungstenite also reports a disallowed close code from the peer as 1002).
    let received = if received.code == PROTOCOL_ERROR {
        Close::new(INTERNAL_ERROR, "upstream protocol error")
    } else {
        received
    };
    UpstreamDecision::Forward {
        original,
        close: rewrite(received, Direction::ToClient, rules.rewrites),
    }
}

/// How the client side of a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEnd {
    Closed(Close),
    Vanished,
    /// The client stopped reading: a send did not complete within two ping intervals.
    Stalled,
    ProtocolError,
    TooBig,
    InvalidUtf8,
}

/// What each side is sent when the client side ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEndDecision {
    /// holdfast's own verdict to the client (1002/1007/1009), if the client was at fault.
    pub to_client: Option<WireClose>,
    /// What happened on the client side, as a code: its close code, 1006 when it vanished,
    /// 1002/1009/1007 for its faults (for logs and the `original` metric label).
    pub original: u16,
    pub to_upstream: WireClose,
}

/// The client's close is rewritten (`to_upstream` rules) and passed on; a client that broke
/// the protocol gets the matching code and the upstream hears that the client went away.
pub fn on_client_end(end: &ClientEnd, rewrites: &[RewriteRule]) -> ClientEndDecision {
    let (to_client, received) = match end {
        // The client's 1002 is about holdfast's frames, never the upstream's (and tungstenite
        // reports a disallowed close code from the client as 1002): the upstream hears 1001.
        ClientEnd::Closed(close) if close.code == PROTOCOL_ERROR => {
            (None, Close::new(GOING_AWAY, "client protocol error"))
        }
        ClientEnd::Closed(close) => (None, close.clone()),
        ClientEnd::Vanished => (None, Close::new(GOING_AWAY, "client went away")),
        ClientEnd::Stalled => (None, Close::new(GOING_AWAY, "client stopped reading")),
        ClientEnd::ProtocolError => (
            Some(Close::new(PROTOCOL_ERROR, "protocol error")),
            Close::new(GOING_AWAY, "client protocol error"),
        ),
        ClientEnd::TooBig => (
            Some(Close::new(MESSAGE_TOO_BIG, "message too big")),
            Close::new(GOING_AWAY, "client message too big"),
        ),
        ClientEnd::InvalidUtf8 => (
            Some(Close::new(INVALID_PAYLOAD, "invalid UTF-8")),
            Close::new(GOING_AWAY, "client sent invalid UTF-8"),
        ),
    };
    let original = match end {
        ClientEnd::Closed(close) => close.code,
        ClientEnd::Vanished | ClientEnd::Stalled => ABNORMAL,
        ClientEnd::ProtocolError => PROTOCOL_ERROR,
        ClientEnd::TooBig => MESSAGE_TOO_BIG,
        ClientEnd::InvalidUtf8 => INVALID_PAYLOAD,
    };
    ClientEndDecision {
        to_client: to_client.map(to_wire),
        original,
        to_upstream: to_wire(rewrite(received, Direction::ToUpstream, rewrites)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_end_decisions() {
        let rewrites = [RewriteRule::new(
            Direction::ToClient,
            4000..=4099,
            1008,
            None,
        )];
        let holding = CloseRules {
            hold: true,
            restart_codes: &[1012, 4500, 1008],
            on_disconnect: true,
            rewrites: &rewrites,
        };
        let passing = CloseRules {
            hold: false,
            ..holding
        };
        let no_disconnect = CloseRules {
            on_disconnect: false,
            ..holding
        };
        let closed = |code| UpstreamEnd::Closed(Close::new(code, "why"));
        let fwd = |original, code: u16, reason: &str| UpstreamDecision::Forward {
            original,
            close: Close::new(code, reason),
        };
        let table = [
            (closed(1012), holding, UpstreamDecision::Hold),
            (closed(4500), holding, UpstreamDecision::Hold),
            (UpstreamEnd::Vanished, holding, UpstreamDecision::Hold),
            (closed(1012), passing, fwd(1012, 1012, "why")),
            (UpstreamEnd::Vanished, passing, fwd(1006, 1006, "")),
            (UpstreamEnd::Vanished, no_disconnect, fwd(1006, 1006, "")),
            (closed(4001), holding, fwd(4001, 1008, "why")),
            (closed(1000), holding, fwd(1000, 1000, "why")),
            (closed(1008), holding, fwd(1008, 1008, "why")),
            (
                closed(1002),
                holding,
                fwd(1002, 1011, "upstream protocol error"),
            ),
            (
                UpstreamEnd::ProtocolError,
                holding,
                fwd(1011, 1011, "upstream protocol error"),
            ),
            (
                UpstreamEnd::TooBig,
                holding,
                fwd(1011, 1011, "upstream message too big"),
            ),
            (
                UpstreamEnd::Stalled,
                holding,
                fwd(1011, 1011, "upstream stopped reading"),
            ),
        ];
        for (end, rules, want) in table {
            assert_eq!(on_upstream_end(&end, &rules), want, "{end:?}");
        }
    }

    #[test]
    fn upstream_faults_are_answered_on_the_upstream_side() {
        assert_eq!(
            UpstreamEnd::ProtocolError
                .verdict_for_upstream()
                .map(|c| c.code),
            Some(1002)
        );
        assert_eq!(
            UpstreamEnd::TooBig.verdict_for_upstream().map(|c| c.code),
            Some(1009)
        );
        assert_eq!(
            UpstreamEnd::InvalidUtf8
                .verdict_for_upstream()
                .map(|c| c.code),
            Some(1007)
        );
        assert_eq!(UpstreamEnd::Vanished.verdict_for_upstream(), None);
    }

    #[test]
    fn client_end_decisions() {
        let rewrites = [RewriteRule::new(
            Direction::ToUpstream,
            4000..=4999,
            1000,
            Some("bye"),
        )];
        let table = [
            (
                ClientEnd::Closed(Close::new(4002, "app")),
                None,
                Some(Close::new(1000, "bye")),
            ),
            (
                ClientEnd::Closed(Close::new(1000, "done")),
                None,
                Some(Close::new(1000, "done")),
            ),
            (ClientEnd::Closed(Close::new(1005, "")), None, None),
            (
                ClientEnd::Closed(Close::new(1002, "Protocol violation")),
                None,
                Some(Close::new(1001, "client protocol error")),
            ),
            (
                ClientEnd::TooBig,
                Some(Some(Close::new(1009, "message too big"))),
                Some(Close::new(1001, "client message too big")),
            ),
            (
                ClientEnd::InvalidUtf8,
                Some(Some(Close::new(1007, "invalid UTF-8"))),
                Some(Close::new(1001, "client sent invalid UTF-8")),
            ),
            (
                ClientEnd::ProtocolError,
                Some(Some(Close::new(1002, "protocol error"))),
                Some(Close::new(1001, "client protocol error")),
            ),
            (
                ClientEnd::Vanished,
                None,
                Some(Close::new(1001, "client went away")),
            ),
        ];
        for (end, to_client, to_upstream) in table {
            let d = on_client_end(&end, &rewrites);
            assert_eq!(d.to_client, to_client, "{end:?}");
            assert_eq!(d.to_upstream, to_upstream, "{end:?}");
        }
    }
}
