//! holdfast: a WebSocket-aware reverse proxy.
pub mod config;
pub mod tls;
pub mod ws;
