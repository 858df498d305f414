//! The per-connection protocol machines, sans-IO: which frame is legal
//! when, and what each side does about it. [`import::ImportSession`] is the
//! receiver half.
//!
//! Nothing here touches a socket, a ring or a clock: the caller passes ring
//! progress in and carries the decisions out.

pub mod import;
