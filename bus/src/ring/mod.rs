//! The single-writer byte ring: the algorithm, independent of where its memory lives.
//!
//! [`writer::WriterCore`] and [`reader::ReaderCore`] run over a [`View`]: a
//! mapped pair of ring files in production ([`crate::shm::segment`]), heap
//! memory in unit and loom tests ([`heap`]). [`records`] owns the record
//! format's rules, [`gate`] the subscriber table (join, leave, liveness,
//! eviction, the Block policy's gate). See [`crate::layout`] for the bytes.
//!
//! # Synchronization pairs
//!
//! Every ordering in this module belongs to one of these pairs; the code
//! labels each side with its `SYNC:` name. Loads of the publisher's data file
//! (stamps, `tail`, `head`, `limit`, `published`, the futex word) are Relaxed
//! followed by `fence(Acquire)` in readers, because readers map that file
//! read-only ([`crate::sync::load_acquire_ro`]).
//!
//! | name | release side | acquire side | what it orders |
//! |---|---|---|---|
//! | `commit` | writer stores a record's stamp (Release) | reader loads the stamp it waits for (Acquire) | the record's meta word, payload and the cleared next stamp are visible to the reader |
//! | `tail-publish` | writer stores `tail` (Release) | reader/bridge/joiner loads `tail` (Acquire) | every stamp below `tail` is visible |
//! | `release-position` | subscriber stores its slot `position` (Release) | writer's gate scan loads it (Acquire) | the subscriber's reads of released bytes happen before the writer overwrites them |
//! | `head-advance` | writer stores `head`, then `fence(Release)`, then overwrites | overwrite-mode reader or observer copies, `fence(Acquire)`, loads `head` | a reader that saw any overwritten byte sees the advanced `head` and discards its copy (seqlock) |
//! | `join-limit` | writer stores `limit`, `fence(SeqCst)`, scans slots | joiner stores its slot ACTIVE, `fence(SeqCst)`, loads `limit` | either the writer's scan sees the joiner, or the joiner starts at or after the writer's limit (Dekker) |
//! | `hold-evict` | writer CASes a slot to EVICTED, `fence(SeqCst)`, loads `held` | subscriber stores `held`, `fence(SeqCst)`, loads `state` | an evicted subscriber never reads bytes the writer may overwrite (Dekker) |
//! | `wake-handshake` | writer stores `tail`, then a compiler fence (Membarrier ring; loom: an RMW of the barrier word) or `fence(SeqCst)` (Fence ring), loads `waiters`/`wake_armed` | sleeper bumps `waiters`, stores `wake_armed`, then `membarrier(GLOBAL_EXPEDITED)` (loom: an RMW of the barrier word) or `fence(SeqCst)`, re-checks for data | no missed wake-up: one of the two sees the other (Dekker; asymmetric argument in `shm::membarrier`) |
//! | `wake-coalesce` | writer swaps `wake_armed` 1 → 0, bumps the futex word (Release), wakes | sleeper loads the futex word (Acquire), then arms | the swap that takes a sleeper's arm bumps the word after the sleeper read it, so its sleep ends; at most one wake per sleep |
//! | `slot-claim` | claimer holds the slot's lock, stores the slot's fields, stores its state (Release) | writer's scan loads the state (Acquire) | a slot's fields are its current owner's; the lock makes the claim exclusive (no CAS race with a reaper: reaping takes the same lock) |
//!
//! # Protocols and the models that check them
//!
//! Each protocol of the core, the invariant it keeps, the pairs above that
//! carry it, and the loom model (`loom_tests.rs`) that fails when one of
//! them is weakened (`ci/loom-mutants.sh` checks that mechanically;
//! `docs/loom.md` has the details and the mutation table).
//!
//! | protocol | invariant | carried by | model |
//! |---|---|---|---|
//! | publish / consume | a reader that sees a stamp sees the record's meta, payload and the cleared next stamp; stale bytes of an earlier lap are never a commit | `commit`, `tail-publish` | `loom_publish_consume_visibility_and_wrap` |
//! | wrap with padding | a record that does not fit is preceded by a padding record; the reader skips it and reads offset 0 | `commit` (padding) | `loom_wrap_with_padding_record`, `loom_wrap_with_long_padding_record` |
//! | join | a joiner starts where the writer will not overwrite; what it reads is intact, in order, without a gap | `join-limit`, `slot-claim`, `tail-publish`, `head-advance` | `loom_join_races_the_gate` |
//! | release / leave | the writer overwrites only what every gating slot has released or left | `release-position`, `slot-claim` | `loom_leave_races_the_gate` |
//! | batched release | a subscriber releases only records it finished (a held sample is at or above its released position); finished records are released every eighth of the ring, as soon as the record the writer says it waits for is finished (`space_wanted`, a Relaxed hint), and always before a peek reports `Empty`, so a waiting writer never waits on a reader that waits for it | `release-position` | `loom_batched_release_empty_unblocks_the_writer`, `loom_batched_release_hint_and_held_record`, `loom_batched_reader_and_joiner_against_the_gate` |
//! | gate refresh | the writer's limit is a record boundary, found without reading the ring: the lowest released slot position (subscribers release and join only at boundaries), or, when nobody holds it that low, the first boundary past its aim that it noted when it wrote it (`writer::Marks`), `head` or `tail` | `release-position`, `join-limit` | `loom_join_races_the_gate`, `loom_batched_reader_and_joiner_against_the_gate` |
//! | claim vs reaper, crashed owner | taking the slot's lock is claiming it: a live owner's slot is never reaped; a dead owner's (dying at any call into its view) is, and never blocks the writer for good | the lock, `slot-claim`, `release-position` | `loom_crashed_owner_before_its_claim`, `loom_crashed_owner_after_its_claim` |
//! | registry pre-join, adoption | a pre-joined subscriber receives everything from the ring's first record; a pre-joined slot whose registration is gone is reaped | `slot-claim`, `release-position` | `loom_prejoined_slots_adopted_or_dropped` |
//! | durable lease and reattach | a durable slot keeps gating after its owner dies; a reattach resumes exactly after the released position; after the lease the slot is reaped | `release-position` (the resumed slot keeps gating) | `loom_durable_slot_reattaches_without_loss`, `loom_durable_lease_expires` |
//! | untethered eviction | a held sample is never overwritten, also after an eviction; the only fault is `Evicted` | `hold-evict`, `release-position` | `loom_eviction_never_overwrites_a_held_record`, `loom_evicted_holder_releases_its_sample` |
//! | untethered pin | bytes pinned and found committed are not overwritten while read | `join-limit` (pin), `hold-evict` (unhold) | `loom_untethered_pin_protects_what_it_reads` |
//! | Overwrite seqlock, observers | a copy is accepted only if `head` did not pass it; losses are counted exactly | `head-advance`, `commit`, `tail-publish` | `loom_overwrite_seqlock_copies`, `loom_observer_copies`, `loom_observer_gap_record_lapped` |
//! | futex wake-up (symmetric) | a sleeper is never left asleep with data published | `wake-handshake` | `loom_no_missed_wakeup`, `loom_wake_fence_handshake` |
//! | futex wake-up (asymmetric, coalesced) | the same with membarrier on the sleeper's side only; two sleepers, wakes coalesced, none lost; at most one wake per sleep | `wake-handshake`, `wake-coalesce` | `loom_wake_membarrier_handshake`, `loom_wake_coalesced_two_sleepers` |
//! | replica raw commit, gap record | a raw chunk becomes visible with its first stamp; a gap record reports exactly its count | `commit` (raw, gap), `tail-publish` | `loom_replica_commit_raw_and_gap` |
//! | replica skip | a skip's gap records (a count piece, fillers, padding) report exactly the count once, at the same positions as the source; the writer's limit never moves back, so room it promised (`room_until`) stays its own while subscribers join | `commit` (skip pieces), `tail-publish`, `join-limit` | `loom_replica_skip_across_the_lap_end`, `loom_join_races_the_gate` |

pub(crate) mod gate;
#[cfg(any(test, loom))]
pub(crate) mod heap;
#[cfg(all(test, loom))]
mod loom_tests;
pub(crate) mod reader;
pub(crate) mod records;
#[cfg(all(test, not(loom)))]
mod tests;
pub(crate) mod writer;

use std::{io, time::Duration};

use crate::{
    layout::{Producer, Slot, Waiters},
    sync::{AtomicU32, AtomicU64},
};

/// Flow-control policy of a ring, fixed at creation.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{Error, Policy, ReadEvent, RingConfig, RingReader, RingWriter, StartAt};
///
/// # let dir = std::env::temp_dir().join(format!("shmbus-doc-policy-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let ring = |policy| RingConfig { capacity: 4096, max_message: 256, policy, ..RingConfig::default() };
///
/// // Block: a subscriber that does not read holds the writer back.
/// let mut block = RingWriter::create(&dir.join("block.ring"), &ring(Policy::Block))?;
/// let _idle = RingReader::open(&dir.join("block.ring"), StartAt::Latest)?;
/// let sent = (0..1000).take_while(|_| block.try_write(&[7; 100]).is_ok()).count();
/// assert!(sent < 1000 && matches!(block.try_write(&[7; 100]), Err(Error::Full)));
///
/// // Overwrite: the writer never waits; the slow subscriber learns what it lost.
/// let mut lossy = RingWriter::create(&dir.join("lossy.ring"), &ring(Policy::Overwrite))?;
/// let mut slow = RingReader::open(&dir.join("lossy.ring"), StartAt::Latest)?;
/// for _ in 0..1000 {
///     lossy.try_write(&[7; 100])?;
/// }
/// match slow.try_read()? {
///     ReadEvent::Gap { messages, .. } => assert!(messages > 0),
///     other => panic!("{other:?}"),
/// }
/// # drop((block, _idle, lossy, slow)); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), Error>(())
/// ```
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

/// Where a ring's shared state lives, as seen by one handle.
///
/// Each handle (writer, reader) has its own view: in production its own open
/// file descriptions of the ring's files, so the liveness locks it takes are
/// its own (locks of one description never conflict with each other).
///
/// # Safety
///
/// Implementors guarantee that:
/// - `producer`, `waiters` and `slots` stay valid for the life of the view;
/// - `word(off)` is valid for *every* `off` (it masks the offset into the
///   ring, 8-aligned), so no caller can index past the mapping;
/// - `write_payload`/`read_payload` touch only the ring data bytes named.
pub(crate) unsafe trait View {
    /// The publisher's words (read-only memory for readers).
    fn producer(&self) -> &Producer;
    /// The waiting words (shared read-write).
    fn waiters(&self) -> &Waiters;
    /// The subscriber table.
    fn slots(&self) -> &[Slot];
    /// The validated geometry.
    fn geometry(&self) -> &Geometry;
    /// The 8-byte ring word at offset `off & (capacity - 1) & !7`.
    fn word(&self, off: u64) -> &AtomicU64;
    /// Copies `src` into the ring at offset `off`.
    ///
    /// # Safety
    ///
    /// - only the single writer calls this;
    /// - `off..off + src.len()` lies inside a reserved, not yet committed record.
    unsafe fn write_payload(&self, off: u64, src: &[u8]);
    /// Copies ring bytes at `off` into `dst` with per-word atomic (Relaxed)
    /// loads, which tolerate a concurrent writer: the caller validates the
    /// copy afterwards (seqlock) and orders it with `fence(Acquire)`.
    ///
    /// # Safety
    ///
    /// - `off` is 8-aligned and `off..off + dst.len()` rounded up to 8 bytes
    ///   lies inside the ring data.
    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]);
    /// Blocks while `*word == expected`, until woken or `timeout` passes.
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread blocked in `futex_wait` on `word`.
    fn futex_wake(&self, word: &AtomicU32);
    /// Tries to take this view's exclusive lock on `byte` of the control
    /// file: `Ok(true)` taken, `Ok(false)` held by someone else (alive).
    fn try_lock(&self, byte: u64) -> io::Result<bool>;
    /// Releases a lock this view took.
    fn unlock(&self, byte: u64);
    /// Whether a registered subscriber (registry entry `index` of
    /// `generation`) is still alive. A false "alive" is allowed (it only
    /// delays a reap); a false "dead" never.
    fn registry_alive(&self, index: u64, generation: u64) -> bool;
    /// A monotonic clock shared by all processes of the host (nanoseconds;
    /// loom models use a logical clock): leases and untethered eviction.
    fn now_ns(&self) -> u64;
    /// How the writer of this ring closes the wake-up handshake (what its
    /// header says). The default, the symmetric fence, is right for any
    /// view that does not know better (heap views; models set it explicitly).
    fn wake_handshake(&self) -> crate::shm::membarrier::WakeHandshake {
        crate::shm::membarrier::WakeHandshake::Fence
    }
}
