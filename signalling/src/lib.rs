//! peer-tree signalling: the protocol (PROTOCOL.md beside this crate), the
//! placement model, the server that owns trees, and the client that sources
//! and relays use.
//!
//! Layering: `tree` is a pure data structure with no I/O; `server` owns
//! sockets and trees but knows nothing of media; `client` is what media code
//! links against.

pub mod client;
pub mod protocol;
pub mod server;
mod tls;
pub mod tree;
