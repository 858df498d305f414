//! [`RingStatus`]: a snapshot of a ring taken without joining it, for tools
//! (`shmbus ls`, `stat`, `doctor`) and tests.

use std::{path::Path, sync::Arc};

use crate::{
    layout::{
        SLOT_ACTIVE, SLOT_CLAIMING, SLOT_EVICTED, SLOT_FREE, SLOT_ORPHANED, SLOT_PREJOINED,
        SLOT_STATE_MASK, SLOT_UNTETHERED, WRITER_CLOSED,
    },
    ring::{
        records::{self, StampKind},
        View,
    },
    shm::{
        fs::Access,
        segment::{self, Mapping, SegmentInfo},
    },
    sync::{load_acquire_ro, load_acquire_ro32, Ordering},
    Error,
};

/// What a subscriber slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// A subscriber that gates the publisher.
    Active,
    /// Evicted for lag (untethered eviction); gates only while holding a sample.
    Evicted,
    /// Being claimed right now.
    Claiming,
    /// An untethered reader (gates only while it pins bytes).
    Untethered,
    /// Joined by the publisher for a registered subscriber that has not
    /// opened the ring yet.
    Prejoined,
    /// A durable slot whose owner died, kept for its lease.
    Orphaned,
}

/// One subscriber slot, as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStatus {
    /// Slot index.
    pub slot: usize,
    /// The claim's generation (unique per slot over the ring's life).
    pub generation: u64,
    /// What the slot is doing.
    pub kind: SlotKind,
    /// Everything before this position is released.
    pub position: u64,
    /// Bytes between the position and the published tail.
    pub lag_bytes: u64,
    /// Records between the position and the published tail, if they could
    /// be counted (the walk stops at anything it cannot validate).
    pub lag_messages: Option<u64>,
    /// It holds a sample (or pins bytes).
    pub held: bool,
    /// A durable slot.
    pub durable: bool,
    /// Its owner's process id, as the owner saw it (a label: it may be in
    /// another pid namespace).
    pub pid: u64,
    /// Whether its owner is alive: its lock is held (pre-joined and orphaned
    /// slots: their registration or lease decides, reported as alive while
    /// they still gate).
    pub alive: bool,
}

/// A snapshot of a ring: its header, the publisher's counters and every
/// subscriber slot in use. Taken without joining the ring or holding its
/// publisher back; every word is validated like a reader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStatus {
    /// The validated header.
    pub info: SegmentInfo,
    /// Published tail.
    pub tail: u64,
    /// Oldest intact record.
    pub head: u64,
    /// Records published (the next sequence number).
    pub published: u64,
    /// The publisher closed the ring.
    pub closed: bool,
    /// The publisher holds its lock.
    pub publisher_alive: bool,
    /// Subscribers evicted or reaped so far.
    pub evictions: u64,
    /// Sends that found the ring full (waited for space, or failed).
    pub full_events: u64,
    /// Nanoseconds the publisher spent waiting for space.
    pub blocked_ns: u64,
    /// Readers counted as sleeping.
    pub waiters: u32,
    /// Slots in use.
    pub subscribers: Vec<SubscriberStatus>,
}

impl RingStatus {
    /// Reads the status of the ring at `path` (its data file).
    ///
    /// # Errors
    ///
    /// As [`crate::RingReader::open`] for the files and headers;
    /// [`Error::Corrupt`] naming the field if the publisher's positions or
    /// state are invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bus::{RingConfig, RingReader, RingStatus, RingWriter, StartAt};
    /// let dir = std::env::temp_dir().join(format!("shmbus-doc-status-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("p.ring");
    /// let mut w = RingWriter::create(&path, &RingConfig::default()).unwrap();
    /// let r = RingReader::open(&path, StartAt::Latest).unwrap();
    /// w.try_write(b"one").unwrap();
    /// let status = RingStatus::read(&path).unwrap();
    /// assert_eq!(status.published, 1);
    /// assert_eq!(status.subscribers.len(), 1);
    /// assert_eq!(status.subscribers[0].lag_messages, Some(1));
    /// assert!(status.publisher_alive && status.subscribers[0].alive);
    /// # drop((w, r)); std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn read(path: &Path) -> Result<Self, Error> {
        let map = segment::open_with(path, segment::INIT_WAIT, Access::Group)?;
        status(&map)
    }
}

fn status(map: &Arc<Mapping>) -> Result<RingStatus, Error> {
    let geo = *map.geometry();
    let producer = map.producer();
    let tail_before = load_acquire_ro(&producer.tail);
    let head = load_acquire_ro(&producer.head);
    let tail = load_acquire_ro(&producer.tail);
    records::check_span(&geo, tail_before, head, tail)
        .map_err(|what| Error::corrupt(&map.info().path, what))?;
    let closed = match load_acquire_ro32(&producer.writer_state) {
        crate::layout::WRITER_OPEN => false,
        WRITER_CLOSED => true,
        _ => {
            return Err(Error::corrupt(
                &map.info().path,
                "writer_state is neither open nor closed",
            ))
        }
    };
    let now = map.now_ns();
    let mut subscribers = Vec::new();
    for (index, slot) in map.slots().iter().enumerate() {
        // Relaxed: a snapshot for display; every value is checked below.
        let state = slot.state.load(Ordering::Relaxed);
        let kind = match state & SLOT_STATE_MASK {
            SLOT_FREE => continue,
            SLOT_ACTIVE => SlotKind::Active,
            SLOT_EVICTED => SlotKind::Evicted,
            SLOT_CLAIMING => SlotKind::Claiming,
            SLOT_UNTETHERED => SlotKind::Untethered,
            SLOT_PREJOINED => SlotKind::Prejoined,
            SLOT_ORPHANED => SlotKind::Orphaned,
            _ => {
                return Err(Error::corrupt(
                    &map.info().control_path,
                    format!(
                        "slot {index} state: unknown value {:#x}",
                        state & SLOT_STATE_MASK
                    ),
                ))
            }
        };
        // Relaxed: as above.
        let position = slot.position.load(Ordering::Relaxed);
        let lag_bytes = tail.saturating_sub(position);
        let alive = match kind {
            SlotKind::Prejoined => map.registry_alive(
                slot.reg_index.load(Ordering::Relaxed),
                slot.reg_generation.load(Ordering::Relaxed),
            ),
            SlotKind::Orphaned => {
                now.saturating_sub(slot.orphaned_at.load(Ordering::Relaxed))
                    < slot.lease_ns.load(Ordering::Relaxed)
            }
            _ => map.slot_locked(index),
        };
        subscribers.push(SubscriberStatus {
            slot: index,
            generation: state >> 8,
            kind,
            position,
            lag_bytes,
            lag_messages: count_records(map, position, tail),
            held: slot.held.load(Ordering::Relaxed) != 0,
            durable: slot.durable_key.load(Ordering::Relaxed) != 0,
            pid: slot.pid.load(Ordering::Relaxed),
            alive,
        });
    }
    Ok(RingStatus {
        info: map.info().clone(),
        tail,
        head,
        // Relaxed: counters for display.
        published: producer.published.load(Ordering::Relaxed),
        closed,
        publisher_alive: map.publisher_alive(),
        evictions: producer.evictions.load(Ordering::Relaxed),
        full_events: producer.full_events.load(Ordering::Relaxed),
        blocked_ns: producer.blocked_ns.load(Ordering::Relaxed),
        waiters: map.waiters().waiters.load(Ordering::Relaxed),
        subscribers,
    })
}

/// Data records in `from..to`, walking validated headers; `None` if the walk
/// meets anything it cannot validate (a record being overwritten meanwhile,
/// a position that is not a record boundary, a damaged ring).
fn count_records(map: &Arc<Mapping>, from: u64, to: u64) -> Option<u64> {
    let geo = map.geometry();
    if !records::is_record_aligned(from) || from > to || to - from > geo.capacity {
        return None;
    }
    let mut pos = from;
    let mut count = 0;
    while pos < to {
        let off = pos & geo.mask();
        let stamp = load_acquire_ro(map.word(off));
        // Relaxed: ordered after the Acquire above.
        let meta = map.word(off + 8).load(Ordering::Relaxed);
        let kind = records::classify(stamp, pos);
        let header = records::check_header(geo, pos, kind, meta).ok()?;
        if kind == StampKind::Data {
            count += 1;
        }
        pos += header.size;
    }
    (pos == to).then_some(count)
}
