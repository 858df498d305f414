//! The public handles: each binds a ring core to a mapped segment.
//!
//! - [`writer`]: [`crate::RingWriter`] and its [`crate::Loan`].
//! - [`reader`]: [`crate::RingReader`], one subscriber's cursor.
//! - [`observer`]: [`crate::RingObserver`], slot-less validated copies.
//! - [`inspect`]: [`crate::RingStatus`], a ring's snapshot for tools.
//! - [`reactor`]: [`crate::WaitRegistration`], [`crate::Doorbell`]: one
//!   thread waiting for many readers (async reactors).
//! - [`raw`]: [`crate::RawReader`] and [`crate::ReplicaWriter`], ring bytes
//!   out and in for the bridge.

pub(crate) mod inspect;
pub(crate) mod observer;
pub(crate) mod raw;
pub(crate) mod reactor;
pub(crate) mod reader;
pub(crate) mod writer;
