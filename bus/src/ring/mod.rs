//! The single-writer byte ring: the algorithm, independent of where its memory lives.
//!
//! [`WriterCore`] and [`ReaderCore`] run over a [`View`]: the mapped segment in
//! production ([`crate::shm::segment`]), a heap copy in unit and loom tests
//! ([`heap`]). See [`crate::layout`] for the record format.
//!
//! # Synchronization pairs
//!
//! Every ordering in this module belongs to one of these pairs; the code
//! labels each side with its `SYNC:` name.
//!
//! | name | release side | acquire side | what it orders |
//! |---|---|---|---|
//! | `commit` | writer stores a record's stamp (Release) | reader loads the stamp it waits for (Acquire) | the record's meta word, payload and the cleared next stamp are visible to the reader |
//! | `tail-publish` | writer stores `tail` (Release) | reader/bridge/joiner loads `tail` (Acquire) | every stamp below `tail` is visible |
//! | `release-position` | subscriber stores its slot `position` (Release) | writer's gate scan loads it (Acquire) | the subscriber's reads of released bytes happen before the writer overwrites them |
//! | `head-advance` | writer stores `head`, then `fence(Release)`, then overwrites | overwrite-mode reader copies, `fence(Acquire)`, loads `head` | a reader that saw any overwritten byte sees the advanced `head` and discards its copy (seqlock) |
//! | `join-limit` | writer stores `limit`, `fence(SeqCst)`, scans slots | joiner stores its slot ACTIVE, `fence(SeqCst)`, loads `limit` | either the writer's scan sees the joiner, or the joiner starts at or after the writer's limit (Dekker) |
//! | `hold-evict` | writer CASes a slot to EVICTED, `fence(SeqCst)`, loads `held` | subscriber stores `held`, `fence(SeqCst)`, loads `state` | an evicted subscriber never reads bytes the writer may overwrite (Dekker) |
//! | `notify` | writer stores `tail`, `fence(SeqCst)`, loads `waiters` | reader bumps `waiters`, `fence(SeqCst)`, re-checks for data | no missed wake-up: one of the two sees the other (Dekker) |

pub(crate) mod gate;
#[cfg(any(test, loom))]
pub(crate) mod heap;
#[cfg(all(test, loom))]
mod loom_tests;
pub(crate) mod reader;
#[cfg(all(test, not(loom)))]
mod tests;
pub(crate) mod writer;

use std::time::Duration;

use crate::{
    layout::{Control, Slot},
    sync::{AtomicU32, AtomicU64},
};

/// Flow-control policy of a ring, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Reliable: the publisher never overwrites what an active subscriber has
    /// not released; it waits or reports `Full`.
    Block,
    /// Lossy: the publisher never waits; lapped subscribers are told exactly
    /// how many messages and bytes they lost.
    Overwrite,
}

/// The geometry and policy of a ring, validated once and then trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Ring data bytes, a power of two.
    pub(crate) capacity: u64,
    /// Largest payload.
    pub(crate) max_message: u64,
    /// Flow control.
    pub(crate) policy: Policy,
    /// Untethered eviction delay; `None` = never evict a live subscriber.
    pub(crate) evict_after: Option<Duration>,
}

impl Geometry {
    /// `capacity - 1`: maps a position to its ring offset.
    #[inline]
    pub(crate) fn mask(&self) -> u64 {
        self.capacity - 1
    }
}

/// Where a ring's shared state lives.
///
/// # Safety
///
/// Implementors guarantee that:
/// - `control` and `slots` stay valid for the life of the view;
/// - `word(off)` is valid for every `off` that is a multiple of 8 below
///   `geometry().capacity`;
/// - `write_payload`/`read_payload` touch only the ring data bytes named.
pub(crate) unsafe trait View {
    /// The writer-owned words and notify line.
    fn control(&self) -> &Control;
    /// The subscriber table.
    fn slots(&self) -> &[Slot];
    /// The validated geometry.
    fn geometry(&self) -> &Geometry;
    /// The 8-byte ring word at offset `off` (`off % 8 == 0`, `off < capacity`).
    fn word(&self, off: u64) -> &AtomicU64;
    /// Copies `src` into the ring at offset `off`.
    ///
    /// # Safety
    ///
    /// - only the single writer calls this;
    /// - `off..off + src.len()` lies inside a reserved, not yet committed record.
    unsafe fn write_payload(&self, off: u64, src: &[u8]);
    /// Copies ring bytes at `off` into `dst` with reads that tolerate a
    /// concurrent writer (the caller validates the copy afterwards).
    ///
    /// # Safety
    ///
    /// - `off..off + dst.len()` lies inside the ring data.
    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]);
    /// Blocks while `*word == expected`, until woken or `timeout` passes.
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread blocked in `futex_wait` on `word`.
    fn futex_wake(&self, word: &AtomicU32);
    /// Whether the process `pid` that started at `start_time` still runs.
    /// Must be positive proof of death to return false (never a timer).
    fn process_alive(&self, pid: u64, start_time: u64) -> bool;
}
