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

use http::header::{self, HeaderMap, HeaderValue};

use crate::config;
use crate::deflate;
use crate::metrics::{Hop, Metrics};
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

/// permessage-deflate on the client hop (`[websocket.compression] client`): the first offer
/// in the client's `Sec-WebSocket-Extensions` that holdfast honours, as the 101's header
/// value and the connection's context. `None`: the session goes uncompressed.
pub fn client_deflate(
    headers: &HeaderMap,
    config: &config::Config,
    metrics: &Metrics,
) -> Option<(HeaderValue, deflate::Context)> {
    let compression = &config.websocket.compression;
    if !compression.client {
        return None;
    }
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (response, params) = deflate::negotiate::accept(offers, &compression.settings)?;
    let value = HeaderValue::from_str(&response).expect("the response is built from ASCII");
    let counters = metrics.deflate_counters(Hop::Client);
    Some((
        value,
        deflate::Context::new(params, &compression.settings, counters),
    ))
}
