//! The sans-IO protocol core: framing, the handshake and MSG_ZEROCOPY
//! completion bookkeeping.
//!
//! Nothing here touches a socket or reads a clock (the one exception is
//! [`handshake::Nonce::random`], a convenience that asks the OS for random
//! bytes; the state machine itself takes the nonce as input). Everything is
//! driven by feeding bytes or events in and taking bytes or decisions out,
//! so it is tested deterministically without sockets or sleeps.

pub mod frame;
pub mod handshake;
pub mod stream;
pub mod zc;
