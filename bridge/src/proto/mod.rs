//! The sans-IO protocol core: framing, the handshake, the per-connection
//! stream machines ([`session`]), stream positions and MSG_ZEROCOPY
//! completion bookkeeping.
//!
//! Nothing here touches a socket or reads a clock (the Noise library asks
//! the OS for its ephemeral keys' randomness; everything else is an input). Everything is
//! driven by feeding bytes or events in and taking bytes or decisions out,
//! so it is tested deterministically without sockets or sleeps.

pub mod frame;
pub mod handshake;
pub mod seal;
pub mod session;
pub mod stream;
pub mod zc;
