//! The byte layout of a ring: two files, a data file and a control file.
//!
//! ```text
//! data file `<id>.ring` (written by the publisher only; subscribers map it read-only)
//! offset 0            SegmentHeader   immutable after creation; `magic` written last
//! offset PAGE         Producer        every word only the publisher writes: tail, head,
//!                                     limit, published, the futex word, writer state, counters
//! offset 2 * PAGE     ring data       `capacity` bytes (a power of two)
//!
//! control file `<id>.ctl` (shared read-write by the publisher and its subscribers)
//! offset 0            ControlHeader   magic, version, slot count, the ring's id
//! offset 128          Waiters         sleeping-reader count, wake-armed word, the publisher's space futex
//! offset 256          Slot[n]         one 128-byte line per subscriber
//! lock byte 0         held by the publisher (open-file-description lock)
//! lock byte k + 1     held by the owner of slot k
//! ```
//!
//! Everything is little-endian; the header records the endianness and the
//! segment is refused on a host of the other kind (and the crate does not
//! build for one). Layout version 1 (one file per ring) is refused with an
//! error naming both versions.
//!
//! # The wake-up handshake in the layout
//!
//! `SegmentHeader::flags` says how the writer publishes ([`FLAG_WAKE_MEMBARRIER`]:
//! registered for `membarrier`, compiler fence only; [`FLAG_WAKE_FENCE`]:
//! SeqCst fence; neither: sleepers use short timed slices) and
//! `Waiters::wake_armed` coalesces wake-ups (see `shm::futex`). Both were
//! added within layout version 2 without a bump: a peer that predates them
//! writes no wake flag and never arms, and the other side then still
//! delivers everything, at worst one sleep slice late.
//!
//! # Records
//!
//! A record is a 16-byte header followed by the payload, padded to 16 bytes:
//!
//! ```text
//! word 0 (u64)  commit stamp: position | COMMITTED [| PADDING | GAP]; 0 = not written
//! word 1 (u64)  payload length (low 32 bits) | low 32 bits of the sequence number (high 32)
//! ```
//!
//! Three kinds, told apart by the stamp's flag bits (`ring::records` owns
//! the rules; every reader and the writer's own walks call it):
//!
//! - **data** (`COMMITTED`): a message; length at most the ring's
//!   `max_message`; carries its own sequence number.
//! - **padding** (`COMMITTED | PADDING`): fills to the ring's end (length =
//!   bytes to the end minus the header, 0 allowed). A record never wraps:
//!   when it does not fit before the end, padding fills up to the end and
//!   the record starts at offset 0 of the next lap. Carries the next
//!   record's sequence number.
//! - **gap** (`COMMITTED | GAP`): messages lost upstream, written by a
//!   replica writer whose source lost data. Its payload length is `0` or at
//!   least [`GAP_PAYLOAD`] (any size that does not cross the ring's end, so
//!   one gap record can cover a byte range the source lost, at the same
//!   positions): from 8 bytes, the first 8 are the lost-message count (a
//!   u64) and the rest is filler readers skip; length 0 (a 16-byte record)
//!   is a filler with count 0. A gap record with count 0 is skipped
//!   without reporting anything. Its sequence field is the first lost
//!   message's; the next record's number is that plus the count (a count
//!   that overflows 64 bits is corrupt). Gap records are new in layout
//!   version 2 and that version is not released yet, so their widening to
//!   byte ranges needed no version bump.
//!
//! Positions are absolute byte offsets (`u64`, never wrap in practice);
//! the stamp carries the record's own position, so a stale header from an
//! earlier lap never matches. Sequence numbers are 64-bit: a reader
//! extends the stored low half with the publisher's `published` counter
//! (see `ring::records::extend_sequence`), exact while a ring holds fewer
//! than 2^31 records, which [`MAX_CAPACITY`] guarantees (between records
//! separated by a gap record, readers carry the exact number across it).

#[cfg(not(target_pointer_width = "64"))]
compile_error!("shmbus needs a 64-bit target: ring positions and offsets are u64 mapped as usize");
#[cfg(not(target_endian = "little"))]
compile_error!("shmbus needs a little-endian target: the ring layout is little-endian");

use crate::sync::{AtomicU32, AtomicU64};

/// "shmbus\0\x01" as a little-endian u64: identifies a ring data file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"shmbus\x00\x01");
/// "shmbctl\x01" as a little-endian u64: identifies a ring control file.
pub const CTL_MAGIC: u64 = u64::from_le_bytes(*b"shmbctl\x01");
/// Bumped on any change to this file's layout. Version 1 was one file per ring.
/// (Not bumped for gap records covering byte ranges: gap records are new in
/// version 2, which is not released yet.)
pub const LAYOUT_VERSION: u32 = 2;
/// Stored by the creator; reads back differently on a host of the other endianness.
pub const ENDIAN_TAG: u32 = 0x0102_0304;

/// Memory page; the regions of the data file start on page boundaries.
pub const PAGE: usize = 4096;
/// Offset of [`Producer`] in the data file.
pub const PRODUCER_OFFSET: usize = PAGE;
/// Offset of the ring data in the data file.
pub const DATA_OFFSET: usize = 2 * PAGE;
/// Offset of [`Waiters`] in the control file.
pub const WAITERS_OFFSET: usize = 128;
/// Offset of the first [`Slot`] in the control file.
pub const SLOTS_OFFSET: usize = 256;
/// Size of one subscriber slot.
pub const SLOT_SIZE: usize = 128;
/// Most subscriber slots a ring may have.
pub const MAX_SLOTS: u32 = 1024;
/// Longest type name stored in the header.
pub const TYPE_NAME_MAX: usize = 256;

/// Size of a record header; also the alignment of every record and payload.
pub const RECORD_ALIGN: u64 = 16;
/// Header bytes in front of every payload.
pub const RECORD_HEADER: u64 = 16;
/// Payload bytes of a gap record's count (a u64). A gap record's payload
/// is 0 bytes (a filler, count 0) or at least this many (the count, then
/// filler); see the module docs.
pub const GAP_PAYLOAD: u64 = 8;
/// Smallest ring.
pub const MIN_CAPACITY: u64 = 4096;
/// Largest ring (16 GiB): a ring then holds fewer than 2^31 records (16 bytes
/// each at least), which keeps 64-bit sequence numbers exact from their
/// stored low halves, and every offset computation far from overflow.
pub const MAX_CAPACITY: u64 = 1 << 34;
/// Largest payload a record header can describe (its length field is 32 bits).
pub const MAX_RECORD_PAYLOAD: u64 = u32::MAX as u64 - RECORD_ALIGN;

/// Commit-stamp bit: the record at this position is complete.
pub const STAMP_COMMITTED: u64 = 0x1;
/// Commit-stamp bit: the record is padding up to the end of the ring.
pub const STAMP_PADDING: u64 = 0x2;
/// Commit-stamp bit: the record reports messages lost upstream (a gap record).
pub const STAMP_GAP: u64 = 0x4;
/// The stamp bits that are not part of the position.
pub const STAMP_FLAGS: u64 = RECORD_ALIGN - 1;

/// Ring policy stored in the header.
pub const POLICY_BLOCK: u32 = 1;
/// See [`POLICY_BLOCK`].
pub const POLICY_OVERWRITE: u32 = 2;

/// Header flag: the ring is a replica written by a bridge (never re-exported).
pub const FLAG_REPLICA: u32 = 0x1;
/// Header flag: the ring's writer registered with
/// `membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)` before the ring
/// became visible and publishes with only a compiler fence before its
/// `waiters` load: sleepers issue the heavy barrier
/// ([`crate::WakeHandshake::Membarrier`]).
pub const FLAG_WAKE_MEMBARRIER: u32 = 0x2;
/// Header flag: the ring's writer fences (SeqCst) between its `tail` store
/// and its `waiters` load: sleepers fence too ([`crate::WakeHandshake::Fence`]).
/// With neither wake flag (a writer that says nothing, e.g. an older tool),
/// sleepers fence *and* sleep in short timed slices, so a missed wake-up
/// costs at most one slice. Both flags at once: the header is corrupt.
pub const FLAG_WAKE_FENCE: u32 = 0x4;

/// `Producer::writer_state`: the publisher is (as far as it knows) alive.
pub const WRITER_OPEN: u32 = 1;
/// `Producer::writer_state`: the publisher closed the ring; nothing more will come.
pub const WRITER_CLOSED: u32 = 2;

/// Slot states (low 8 bits of `Slot::state`; the rest is a generation count
/// bumped on every claim, so a stale CAS never acts on a re-used slot and no
/// (slot, generation) pair is ever handed out twice).
pub const SLOT_FREE: u64 = 0;
/// The slot belongs to a live subscriber whose position gates the writer.
pub const SLOT_ACTIVE: u64 = 1;
/// The subscriber was evicted for lag; it gates only while it holds a sample.
pub const SLOT_EVICTED: u64 = 2;
/// The slot is being claimed by the holder of its lock: the writer ignores it.
pub const SLOT_CLAIMING: u64 = 3;
/// An untethered reader (a bridge exporting with a retention budget): it
/// gates the writer only while it pins bytes (`held != 0`), at `position`.
pub const SLOT_UNTETHERED: u64 = 4;
/// Joined by the publisher at creation on behalf of a registered subscriber
/// (`reg_index`, `reg_generation`): gates from the first record; alive while
/// that registration's lock is held; adopted by the subscriber when it opens
/// the ring.
pub const SLOT_PREJOINED: u64 = 5;
/// A durable slot whose owner died: still gates at `position` until
/// `orphaned_at + lease_ns`, so a restarted owner reattaches without loss.
pub const SLOT_ORPHANED: u64 = 6;
/// Mask of the state bits in `Slot::state`.
pub const SLOT_STATE_MASK: u64 = 0xff;

/// The commit stamp of a data record at `position`.
#[inline]
pub const fn data_stamp(position: u64) -> u64 {
    position | STAMP_COMMITTED
}

/// The commit stamp of a padding record at `position`.
#[inline]
pub const fn padding_stamp(position: u64) -> u64 {
    position | STAMP_COMMITTED | STAMP_PADDING
}

/// The commit stamp of a gap record at `position`.
#[inline]
pub const fn gap_stamp(position: u64) -> u64 {
    position | STAMP_COMMITTED | STAMP_GAP
}

/// Rounds `n` up to the record alignment.
#[inline]
pub const fn align_record(n: u64) -> u64 {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// Bytes a record with a `len`-byte payload occupies in the ring.
#[inline]
pub const fn record_size(len: u64) -> u64 {
    RECORD_HEADER + align_record(len)
}

/// Packs word 1 of a record header: the length and the low half of the sequence.
#[inline]
pub const fn meta_word(len: u32, seq: u64) -> u64 {
    (len as u64) | ((seq as u32 as u64) << 32)
}

/// Unpacks word 1 of a record header into (length, low 32 bits of the sequence).
#[inline]
pub const fn split_meta(meta: u64) -> (u32, u32) {
    (meta as u32, (meta >> 32) as u32)
}

/// Bytes of a control file with `slots` subscriber slots (whole pages).
#[inline]
pub const fn control_file_len(slots: u32) -> usize {
    let end = SLOTS_OFFSET + slots as usize * SLOT_SIZE;
    (end + PAGE - 1) & !(PAGE - 1)
}

/// The lock byte of the publisher in the control file.
pub const PUBLISHER_LOCK_BYTE: u64 = 0;

/// The lock byte of slot `index` in the control file.
#[inline]
pub const fn slot_lock_byte(index: usize) -> u64 {
    index as u64 + 1
}

/// The immutable description of a ring, at offset 0 of its data file.
///
/// Written once by the creator before `magic`; read once by openers after
/// `magic` (Acquire), copied and validated: nothing here is trusted or
/// re-read afterwards.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    /// [`MAGIC`]; stored last with Release (SYNC: segment-init, paired with
    /// the Acquire load in `shm::segment::read_header`).
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: AtomicU32,
    /// [`ENDIAN_TAG`] as written by the creator.
    pub endian: AtomicU32,
    /// Offset of the ring data ([`DATA_OFFSET`]).
    pub data_offset: AtomicU64,
    /// Ring data bytes, a power of two.
    pub capacity: AtomicU64,
    /// Largest payload a record may carry.
    pub max_message: AtomicU64,
    /// Number of subscriber slots in the control file.
    pub slot_count: AtomicU32,
    /// [`POLICY_BLOCK`] or [`POLICY_OVERWRITE`].
    pub policy: AtomicU32,
    /// [`FLAG_REPLICA`], ...
    pub flags: AtomicU32,
    /// Reserved, zero.
    pub reserved0: AtomicU32,
    /// A random number naming this ring; its control file carries the same,
    /// so a data file is never paired with another ring's control file.
    pub ring_id: AtomicU64,
    /// Untethered eviction: evict a subscriber that holds the writer back
    /// this long (nanoseconds); 0 = never evict a live subscriber.
    pub evict_after_ns: AtomicU64,
    /// Publisher's process id (a label for tools; liveness is by lock).
    pub publisher_pid: AtomicU64,
    /// Publisher's process start time (a label for tools).
    pub publisher_start: AtomicU64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: AtomicU64,
    /// Fingerprint of the message type (0 = untyped bytes).
    pub type_fingerprint: AtomicU64,
    /// Length of `type_name`.
    pub type_name_len: AtomicU32,
    /// Reserved, zero.
    pub reserved1: AtomicU32,
    /// UTF-8 type name, `type_name_len` bytes used.
    pub type_name: [AtomicU64; TYPE_NAME_MAX / 8],
}

/// Every word only the publisher writes, at [`PRODUCER_OFFSET`] of the data
/// file. Subscribers map it read-only: they cannot move the publisher's
/// positions, and they read each word as untrusted input (validated).
///
/// Each group sits on its own 128-byte line so readers polling one do not
/// steal the others from the writer.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Producer {
    /// End of the committed records (a record boundary), stored with Release
    /// after the records' commit stamps (SYNC: tail-publish).
    pub tail: AtomicU64,
    /// Start of the oldest intact record, advanced *before* the writer
    /// overwrites the record (SYNC: head-advance).
    pub head: AtomicU64,
    /// The gate the writer honours, published for joiners (it writes below
    /// `limit + capacity` only; SYNC: join-limit). The writer decides with
    /// its own private copy and never reads this back.
    pub limit: AtomicU64,
    /// Records published (the sequence number of the next record, 64-bit).
    pub published: AtomicU64,
    _pad0: [u8; 128 - 32],
    /// Futex word: bumped by the writer when it wakes sleepers (SYNC: notify).
    pub futex: AtomicU32,
    _pad1: [u8; 124],
    /// [`WRITER_OPEN`] / [`WRITER_CLOSED`]. On its own, rarely written line
    /// so that idle readers can poll it without disturbing the writer.
    pub writer_state: AtomicU32,
    _pad2: [u8; 4],
    /// Subscribers evicted (dead or lagging), counter.
    pub evictions: AtomicU64,
    /// Times the writer found the ring full (once per send that had to wait
    /// or failed with `Full`), counter.
    pub full_events: AtomicU64,
    /// Nanoseconds the writer spent waiting for space, counter.
    pub blocked_ns: AtomicU64,
    /// The lowest slot position the writer waits for: stored (Relaxed, a
    /// hint) when a gate refresh finds the ring full, and only when it
    /// changes. A subscriber whose released position is below it releases
    /// its progress sooner (batched release, `ReaderCore::finish`). Never
    /// cleared: once every gating slot released past it, it names nobody.
    /// On this rarely written line so that readers load it from their cache.
    pub space_wanted: AtomicU64,
    _pad3: [u8; 88],
}

/// The control file's first line, at offset 0.
#[repr(C)]
#[derive(Debug)]
pub struct ControlHeader {
    /// [`CTL_MAGIC`]; stored last with Release (SYNC: segment-init).
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: AtomicU32,
    /// Number of slots; must equal the data header's.
    pub slot_count: AtomicU32,
    /// Must equal the data header's `ring_id`.
    pub ring_id: AtomicU64,
}

/// The shared words of waiting, at [`WAITERS_OFFSET`] of the control file.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Waiters {
    /// Number of readers about to sleep or sleeping on `Producer::futex`.
    pub waiters: AtomicU32,
    /// Futex word the writer sleeps on while the ring is full; bumped by a
    /// subscriber that releases space while `space_waiters != 0`.
    pub space_futex: AtomicU32,
    /// Nonzero while the writer sleeps for space.
    pub space_waiters: AtomicU32,
    /// Wake coalescing: a sleeper stores 1 here (after counting itself in
    /// `waiters`, before its barrier) each time it goes to sleep; the writer
    /// wakes only when it swaps a 1 for 0, so one `FUTEX_WAKE` serves every
    /// sleeper that armed before it, and publishes meanwhile wake nobody
    /// again. Untrusted like every word here: a forged 0 delays a sleeper by
    /// at most its sleep slice, a forged 1 costs the writer one extra wake.
    pub wake_armed: AtomicU32,
    _pad: [u8; 112],
}

/// One subscriber's line in the table, at `SLOTS_OFFSET + i * SLOT_SIZE` of
/// the control file.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Slot {
    /// `generation << 8 | state` ([`SLOT_FREE`], [`SLOT_ACTIVE`], ...).
    pub state: AtomicU64,
    /// Everything before this position is released by the subscriber. Written
    /// by the subscriber with Release, read by the writer's gate scan with
    /// Acquire (SYNC: release-position).
    pub position: AtomicU64,
    /// Nonzero while the subscriber holds a borrowed sample (only used when
    /// untethered eviction is on; SYNC: hold-evict) or pins bytes (untethered).
    pub held: AtomicU64,
    /// Nonzero while the owner counts itself in `Waiters::waiters` (so whoever
    /// reclaims the slot of a reader killed asleep takes its count back).
    pub sleeping: AtomicU64,
    /// Owner's process id (a label for tools; liveness is by lock).
    pub pid: AtomicU64,
    /// Owner's process start time (a label for tools).
    pub start_time: AtomicU64,
    /// [`SLOT_PREJOINED`]: the registry entry this slot was joined for.
    pub reg_index: AtomicU64,
    /// [`SLOT_PREJOINED`]: that entry's generation.
    pub reg_generation: AtomicU64,
    /// Durable slots: the owner's key (nonzero), so a restarted owner finds it.
    pub durable_key: AtomicU64,
    /// Durable slots: how long the slot outlives its owner, nanoseconds.
    pub lease_ns: AtomicU64,
    /// [`SLOT_ORPHANED`]: when the owner was found dead (the view's clock).
    pub orphaned_at: AtomicU64,
    /// [`SLOT_PREJOINED`]: the sequence number of the record at `position`
    /// (the ring's first), or [`UNKNOWN_SEQ`]; lets the adopter count what an
    /// Overwrite ring lost before it was adopted.
    pub first_seq: AtomicU64,
    _pad: [u8; 32],
}

/// The meta word beside a ring's first (cleared) stamp when its creator did
/// not know the first sequence number (a replica that learns it from its
/// first record): no record header can say this (its length exceeds any
/// `max_message`), so a reader starting there takes no hint from it.
pub const NO_SEQ_HINT: u64 = u64::MAX;

/// `Slot::first_seq` when the creator did not know it (a replica whose
/// first record sets its numbering).
pub const UNKNOWN_SEQ: u64 = u64::MAX;

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<SegmentHeader>() <= PAGE);
    assert!(size_of::<Producer>() == 384);
    assert!(size_of::<ControlHeader>() <= WAITERS_OFFSET);
    assert!(WAITERS_OFFSET + size_of::<Waiters>() <= SLOTS_OFFSET);
    assert!(size_of::<Slot>() == SLOT_SIZE);
    assert!(align_of::<Slot>() == 128 && align_of::<Producer>() == 128);
    assert!(STAMP_FLAGS == 0xf);
    assert!(MAX_CAPACITY / RECORD_HEADER < 1 << 31);
};

#[cfg(any(test, loom))]
impl Producer {
    /// A zeroed producer page on the heap (tests and loom models).
    pub(crate) fn new_zeroed() -> Self {
        Self {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            published: AtomicU64::new(0),
            _pad0: [0; 96],
            futex: AtomicU32::new(0),
            _pad1: [0; 124],
            writer_state: AtomicU32::new(WRITER_OPEN),
            _pad2: [0; 4],
            evictions: AtomicU64::new(0),
            full_events: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
            space_wanted: AtomicU64::new(0),
            _pad3: [0; 88],
        }
    }
}

#[cfg(any(test, loom))]
impl Waiters {
    /// Zeroed waiting words on the heap (tests and loom models).
    pub(crate) fn new_zeroed() -> Self {
        Self {
            waiters: AtomicU32::new(0),
            space_futex: AtomicU32::new(0),
            space_waiters: AtomicU32::new(0),
            wake_armed: AtomicU32::new(0),
            _pad: [0; 112],
        }
    }
}

#[cfg(any(test, loom))]
impl Slot {
    /// A free slot on the heap (tests and loom models).
    pub(crate) fn new_free() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            state: AtomicU64::new(SLOT_FREE),
            position: z(),
            held: z(),
            sleeping: z(),
            pid: z(),
            start_time: z(),
            reg_index: z(),
            reg_generation: z(),
            durable_key: z(),
            lease_ns: z(),
            orphaned_at: z(),
            first_seq: z(),
            _pad: [0; 32],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_aligned() {
        assert_eq!(record_size(0), 16);
        assert_eq!(record_size(1), 32);
        assert_eq!(record_size(16), 32);
        assert_eq!(record_size(17), 48);
    }

    #[test]
    fn meta_round_trips() {
        assert_eq!(
            split_meta(meta_word(1234, 0x7_dead_beef)),
            (1234, 0xdead_beef)
        );
    }

    #[test]
    fn control_file_is_whole_pages() {
        assert_eq!(control_file_len(1), PAGE);
        assert_eq!(control_file_len(30), PAGE);
        assert_eq!(control_file_len(31), 2 * PAGE);
        assert_eq!(control_file_len(MAX_SLOTS) % PAGE, 0);
    }
}
