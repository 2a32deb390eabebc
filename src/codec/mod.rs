//! The WebSocket codec, below the session: `frame` is the frame format as pure functions
//! (header parsing with every receiver check, encoding, masking), `utf8` the checks of text
//! payloads, and `conn` is one connection after its handshake (`WsConn`: a stream of
//! messages and a sink for them). It knows nothing of proxies: the session drives two of
//! these.

pub mod conn;
pub mod frame;
pub mod utf8;

pub use conn::{Data, Incoming, Inline, Limits, SMALL_INLINE, WsConn};
pub use frame::Role;
