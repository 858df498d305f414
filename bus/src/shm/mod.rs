//! The operating-system layer: segment files and their mappings, futexes
//! and waiting, liveness, names on disk, and removing stale rings.
//!
//! Nothing here knows the ring algorithm beyond the [`crate::ring::View`] it
//! implements over a mapping.

pub(crate) mod futex;
#[cfg(not(loom))]
pub(crate) mod liveness;
#[cfg(not(loom))]
pub(crate) mod paths;
#[cfg(not(loom))]
pub(crate) mod segment;
#[cfg(not(loom))]
pub(crate) mod sweep;
#[cfg(not(loom))]
pub(crate) mod wait;
