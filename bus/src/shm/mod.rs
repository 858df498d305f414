//! The operating-system layer: ring files and their mappings, futexes and
//! waiting, liveness locks, names on disk, the topic's subscriber registry
//! and directory listing, and removing stale rings.
//!
//! Nothing here knows the ring algorithm beyond the [`crate::ring::View`] it
//! implements over a mapping.

#[cfg(not(loom))]
pub(crate) mod fs;
pub(crate) mod futex;
#[cfg(not(loom))]
pub(crate) mod listing;
#[cfg(not(loom))]
pub(crate) mod liveness;
#[cfg(not(loom))]
pub(crate) mod lock;
pub(crate) mod membarrier;
#[cfg(not(loom))]
pub(crate) mod paths;
#[cfg(not(loom))]
pub(crate) mod registry;
#[cfg(not(loom))]
pub(crate) mod segment;
#[cfg(not(loom))]
pub(crate) mod sweep;
#[cfg(not(loom))]
pub(crate) mod wait;
