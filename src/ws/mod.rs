//! WebSocket side of the proxy.
pub mod close;
