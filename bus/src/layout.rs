//! The byte layout of a ring segment: one file, four regions.
//!
//! ```text
//! offset 0        SegmentHeader   immutable after creation; `magic` written last
//! offset 1024     Control         writer-owned words (tail, head, limit, ...), notify line
//! offset 2048     Slot[n]         one 128-byte line per subscriber
//! data_offset     ring data       page-aligned, `capacity` bytes (a power of two)
//! ```
//!
//! Everything is little-endian; the header records the endianness and the
//! segment is refused on a host of the other kind. Subscribers map the first
//! three regions read-write and the ring data read-only.
//!
//! # Records
//!
//! A record is a 16-byte header followed by the payload, padded to 16 bytes:
//!
//! ```text
//! word 0 (u64)  commit stamp: position | COMMITTED [| PADDING]; 0 = not written
//! word 1 (u64)  payload length (low 32 bits) | message sequence number (high 32 bits)
//! ```
//!
//! A record never wraps: when it does not fit before the end of the ring, a
//! padding record (stamp with `PADDING`, length = bytes to the end) fills up
//! to the end and the record starts at offset 0 of the next lap. Positions are
//! absolute byte offsets (`u64`, never wrap in practice); the stamp carries the
//! record's own position, so a stale header from an earlier lap never matches.

use crate::sync::{AtomicU32, AtomicU64};

/// "shmbus\0\x01" as a little-endian u64: identifies a ring segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"shmbus\x00\x01");
/// Bumped on any change to this file's layout.
pub const LAYOUT_VERSION: u32 = 1;
/// Stored by the creator; reads back differently on a host of the other endianness.
pub const ENDIAN_TAG: u32 = 0x0102_0304;

/// Offset of [`Control`] in the segment.
pub const CONTROL_OFFSET: usize = 1024;
/// Offset of the first [`Slot`] in the segment.
pub const SLOTS_OFFSET: usize = 2048;
/// Size of one subscriber slot.
pub const SLOT_SIZE: usize = 128;
/// Most subscriber slots a segment may have.
pub const MAX_SLOTS: u32 = 1024;
/// Ring data starts on a page boundary (also the unit memmap2 offsets need).
pub const PAGE: usize = 4096;
/// Longest type name stored in the header.
pub const TYPE_NAME_MAX: usize = 256;

/// Size of a record header; also the alignment of every record and payload.
pub const RECORD_ALIGN: u64 = 16;
/// Header bytes in front of every payload.
pub const RECORD_HEADER: u64 = 16;
/// Smallest ring.
pub const MIN_CAPACITY: u64 = 4096;
/// Largest ring (1 TiB): keeps every offset computation far from overflow.
pub const MAX_CAPACITY: u64 = 1 << 40;

/// Commit-stamp bit: the record at this position is complete.
pub const STAMP_COMMITTED: u64 = 0x1;
/// Commit-stamp bit: the record is padding up to the end of the ring.
pub const STAMP_PADDING: u64 = 0x2;
/// The stamp bits that are not part of the position.
pub const STAMP_FLAGS: u64 = RECORD_ALIGN - 1;

/// Ring policy stored in the header.
pub const POLICY_BLOCK: u32 = 1;
/// See [`POLICY_BLOCK`].
pub const POLICY_OVERWRITE: u32 = 2;

/// Header flag: the ring is a replica written by a bridge (never re-exported).
pub const FLAG_REPLICA: u32 = 0x1;

/// `Control::writer_state`: the publisher is (as far as it knows) alive.
pub const WRITER_OPEN: u32 = 1;
/// `Control::writer_state`: the publisher closed the ring; nothing more will come.
pub const WRITER_CLOSED: u32 = 2;

/// Slot states (low 8 bits of `Slot::state`; the rest is a generation count
/// bumped on every claim so a stale CAS can never free a re-used slot).
pub const SLOT_FREE: u64 = 0;
/// The slot belongs to a live subscriber whose position gates the writer.
pub const SLOT_ACTIVE: u64 = 1;
/// The subscriber was evicted for lag; it gates only while it holds a sample.
pub const SLOT_EVICTED: u64 = 2;
/// The slot is being claimed: its owner is filling in pid and position.
/// The writer ignores it (except to reclaim it from a dead owner).
pub const SLOT_CLAIMING: u64 = 3;
/// An untethered reader (a bridge exporting with a retention budget): it
/// gates the writer only while it pins bytes (`held != 0`), at `position`.
pub const SLOT_UNTETHERED: u64 = 4;
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

/// Packs word 1 of a record header.
#[inline]
pub const fn meta_word(len: u32, seq: u32) -> u64 {
    (len as u64) | ((seq as u64) << 32)
}

/// Unpacks word 1 of a record header into (length, sequence).
#[inline]
pub const fn split_meta(meta: u64) -> (u32, u32) {
    (meta as u32, (meta >> 32) as u32)
}

/// Where the regions of a segment with `slots` subscriber slots start.
#[inline]
pub const fn data_offset(slots: u32) -> usize {
    let end = SLOTS_OFFSET + slots as usize * SLOT_SIZE;
    (end + PAGE - 1) & !(PAGE - 1)
}

/// The immutable description of a segment, at offset 0.
///
/// Written once by the creator before `magic`; read once by openers after
/// `magic` (Acquire), copied and validated: nothing here is trusted or
/// re-read afterwards.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    /// [`MAGIC`]; stored last with Release (SYNC: segment-init, paired with
    /// the Acquire load in `segment::open`).
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: AtomicU32,
    /// [`ENDIAN_TAG`] as written by the creator.
    pub endian: AtomicU32,
    /// Offset of the ring data (page-aligned).
    pub data_offset: AtomicU64,
    /// Ring data bytes, a power of two.
    pub capacity: AtomicU64,
    /// Largest payload a record may carry.
    pub max_message: AtomicU64,
    /// Number of subscriber slots.
    pub slot_count: AtomicU32,
    /// [`POLICY_BLOCK`] or [`POLICY_OVERWRITE`].
    pub policy: AtomicU32,
    /// [`FLAG_REPLICA`], ...
    pub flags: AtomicU32,
    /// Reserved, zero.
    pub reserved0: AtomicU32,
    /// Untethered eviction: evict a subscriber that holds the writer back
    /// this long (nanoseconds); 0 = never evict a live subscriber.
    pub evict_after_ns: AtomicU64,
    /// Publisher's process id.
    pub publisher_pid: AtomicU64,
    /// Publisher's process start time (clock ticks since boot, from /proc).
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

/// Writer-owned words and the notify line, at [`CONTROL_OFFSET`].
///
/// Each group sits on its own 128-byte line so readers polling one do not
/// steal the others from the writer.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Control {
    /// End of the committed records (a record boundary). Writer-only; stored
    /// with Release after the records' commit stamps (SYNC: tail-publish).
    pub tail: AtomicU64,
    /// Start of the oldest intact record. Writer-only; advanced *before* the
    /// writer overwrites the record (SYNC: head-advance).
    pub head: AtomicU64,
    /// The gate the writer currently honours: it writes below `limit + capacity`
    /// only. Writer-only (SYNC: join-limit).
    pub limit: AtomicU64,
    /// Number of records published (the next message sequence number).
    pub published: AtomicU64,
    _pad0: [u8; 128 - 32],
    /// Futex word: bumped by the writer when it wakes sleepers (SYNC: notify).
    pub futex: AtomicU32,
    /// Number of readers about to sleep or sleeping on `futex`.
    pub waiters: AtomicU32,
    /// Futex word the writer sleeps on while the ring is full; bumped by a
    /// subscriber that releases space while `space_waiters != 0`.
    pub space_futex: AtomicU32,
    /// Nonzero while the writer sleeps for space.
    pub space_waiters: AtomicU32,
    _pad1: [u8; 112],
    /// [`WRITER_OPEN`] / [`WRITER_CLOSED`]. On its own, rarely written line
    /// so that idle readers can poll it without disturbing the writer.
    pub writer_state: AtomicU32,
    _pad2: [u8; 4],
    /// Subscribers evicted (dead or lagging), counter.
    pub evictions: AtomicU64,
    /// Times the writer found the ring full, counter.
    pub full_events: AtomicU64,
    _pad3: [u8; 104],
}

/// One subscriber's line in the table, at `SLOTS_OFFSET + i * SLOT_SIZE`.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Slot {
    /// `generation << 8 | state` ([`SLOT_FREE`], [`SLOT_ACTIVE`], [`SLOT_EVICTED`]).
    pub state: AtomicU64,
    /// Everything before this position is released by the subscriber. Written
    /// by the subscriber with Release, read by the writer's gate scan with
    /// Acquire (SYNC: release-position).
    pub position: AtomicU64,
    /// Owner's process id.
    pub pid: AtomicU64,
    /// Owner's process start time (ticks since boot); with `pid` this names
    /// the process even if the pid is reused.
    pub start_time: AtomicU64,
    /// Nonzero while the subscriber holds a borrowed sample (only used when
    /// untethered eviction is on; SYNC: hold-evict).
    pub held: AtomicU64,
    /// Last time the subscriber advanced, CLOCK_MONOTONIC nanoseconds.
    pub heartbeat: AtomicU64,
    _pad: [u8; 80],
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<SegmentHeader>() <= CONTROL_OFFSET);
    assert!(size_of::<Control>() == 384);
    assert!(CONTROL_OFFSET + size_of::<Control>() <= SLOTS_OFFSET);
    assert!(size_of::<Slot>() == SLOT_SIZE);
    assert!(align_of::<Slot>() == 128 && align_of::<Control>() == 128);
    assert!(STAMP_FLAGS == 0xf);
};

#[cfg(any(test, loom))]
impl Control {
    /// A zeroed control block on the heap (tests and loom models).
    pub(crate) fn new_zeroed() -> Self {
        Self {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            published: AtomicU64::new(0),
            _pad0: [0; 96],
            futex: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            space_futex: AtomicU32::new(0),
            space_waiters: AtomicU32::new(0),
            _pad1: [0; 112],
            writer_state: AtomicU32::new(WRITER_OPEN),
            _pad2: [0; 4],
            evictions: AtomicU64::new(0),
            full_events: AtomicU64::new(0),
            _pad3: [0; 104],
        }
    }
}

#[cfg(any(test, loom))]
impl Slot {
    /// A free slot on the heap (tests and loom models).
    pub(crate) fn new_free() -> Self {
        Self {
            state: AtomicU64::new(SLOT_FREE),
            position: AtomicU64::new(0),
            pid: AtomicU64::new(0),
            start_time: AtomicU64::new(0),
            held: AtomicU64::new(0),
            heartbeat: AtomicU64::new(0),
            _pad: [0; 80],
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
            split_meta(meta_word(1234, 0xdead_beef)),
            (1234, 0xdead_beef)
        );
    }

    #[test]
    fn data_offset_is_page_aligned() {
        assert_eq!(data_offset(0), PAGE);
        assert_eq!(data_offset(16), PAGE);
        assert_eq!(data_offset(64), 12288);
        assert_eq!(data_offset(64) % PAGE, 0);
    }
}
