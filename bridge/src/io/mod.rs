//! The syscall layer: everything that touches sockets or the kernel.
//!
//! [`zerocopy`] wraps a connected TCP socket with `MSG_ZEROCOPY` sends and
//! error-queue completion parsing, feeding the sans-IO
//! [`ZcTracker`](crate::proto::zc::ZcTracker). [`frame_reader`] reads frames
//! with DATA payloads going straight to their destination. [`socket`] has
//! small helpers (reset without close, poll). Linux only.

pub mod frame_reader;
pub(crate) mod random;
#[cfg(target_os = "linux")]
pub mod socket;
#[cfg(target_os = "linux")]
pub mod zerocopy;
