//! The WebSocket side of the proxy, in connection order: `accept` (validate an upgrade,
//! open the upstream, answer 101, start the session), `handshake` (the handshake's pure
//! parts), `connect` (the upstream handshake over hyper, for the first dial and every
//! resume), `session` (the session task: relaying, holding, closing), `ends` (the close
//! pipeline's decisions, pure) and `woken` (polling only the branches that were woken).

pub mod accept;
pub mod connect;
pub mod ends;
pub mod handshake;
pub mod session;
pub mod woken;

pub use accept::accept;

use crate::config;
use crate::upstream;

/// An upstream WebSocket connection, over TCP or TLS.
pub type UpstreamWs = crate::codec::WsConn<upstream::UpstreamIo>;

/// What a peer may send (`websocket.max_message_size`, `websocket.max_frame_size`).
pub fn limits(ws: &config::WebSocket) -> crate::codec::Limits {
    crate::codec::Limits {
        max_message: ws.max_message_size,
        max_frame: ws.max_frame_size,
    }
}
