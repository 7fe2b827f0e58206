//! peer-tree signalling: the protocol (PROTOCOL.md beside this crate), the
//! placement model, the server that owns trees, and the client that sources
//! and relays use.
//!
//! Layering: `tree` is a pure data structure with no I/O; `server` owns
//! sockets and trees but knows nothing of media; `client` is what media code
//! links against. The server is behind the `server` feature (on by
//! default), so a crate that needs only the client can leave it out.

pub mod client;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
mod tls;
pub mod tree;
