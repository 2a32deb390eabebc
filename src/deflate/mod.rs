//! permessage-deflate (RFC 7692), negotiated on each hop on its own: `negotiate` decides
//! (pure), `Context` compresses and inflates one connection's messages.
//!
//! Memory is the cost to manage, so a context is allocated on first use and given back
//! when it may be: a compressor may always forget its history (the peer's decompressor
//! just finds no back-references to it), so an idle connection's compressor is dropped;
//! a decompressor must keep its window while the peer may refer to it (context takeover).
//! Without takeover, messages are compressed and inflated with one context per worker
//! thread, reset for each message, and a connection holds none.

pub mod negotiate;

mod context;

pub use context::{Context, Counters, InflateError};

/// Compression settings (`[websocket.compression]`, without the per-hop switches), RFC
/// 7692's parameter names: `server_*` is the server's end of a hop (holdfast's on the
/// client hop, the upstream's on the upstream hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// zlib level, 0-9.
    pub level: u8,
    /// Messages shorter than this go uncompressed (RSV1 clear).
    pub min_size: usize,
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            level: 6,
            min_size: 64,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
        }
    }
}

/// What one connection negotiated, from holdfast's end of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The window holdfast compresses with (9-15).
    pub send_window: u8,
    /// Whether holdfast's compressor may keep its history between messages.
    pub send_takeover: bool,
    /// The window holdfast inflates with: at least the peer's (9-15).
    pub recv_window: u8,
    /// Whether the peer's messages may refer to earlier ones.
    pub recv_takeover: bool,
}
