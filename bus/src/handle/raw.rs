//! Raw ring access for forwarding: [`RawReader`] hands out committed ring
//! bytes (records and padding, exactly as in the ring) and [`ReplicaWriter`]
//! takes such bytes into a local ring at the same positions. The bridge
//! sends one to the other: the wire format is the ring format.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    layout::{data_stamp, padding_stamp, record_size, split_meta, WRITER_CLOSED},
    ring::{
        gate::{JoinAt, SlotStatus},
        reader::ReaderCore,
        writer::{ReserveFail, WriterCore},
        View,
    },
    shm::liveness::ProcessId,
    shm::segment::{self, Mapping, RingConfig, SegmentInfo},
    shm::wait::{self, Deadline, WaitStrategy},
    sync::Ordering,
    Error, StartAt,
};

/// A run of whole records found by [`RawReader::next_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawChunk {
    /// Records in `start..end` (`end > start`), `records` of them with data.
    Records {
        /// First byte (a record boundary).
        start: u64,
        /// One past the last byte (a record boundary).
        end: u64,
        /// Data records in the range (padding not counted).
        records: u32,
    },
    /// Nothing committed after `start` yet.
    Empty,
    /// The writer has overwritten `start`; the oldest intact record is at `head`.
    Lapped {
        /// Oldest intact position.
        head: u64,
    },
}

/// Reads a ring's committed bytes without interpreting payloads.
///
/// Tethered, it is an ordinary subscriber: the publisher never overwrites
/// what it has not released ([`Self::release_to`]). Untethered, the publisher
/// ignores it except while it pins bytes ([`Self::pin`]): then it may lose
/// data (a [`RawChunk::Lapped`]) but never holds the publisher back for long.
#[derive(Debug)]
pub struct RawReader {
    core: ReaderCore<Arc<Mapping>>,
}

impl RawReader {
    /// Opens the ring at `path` and joins its subscriber table.
    ///
    /// # Errors
    ///
    /// As [`crate::RingReader::open`].
    pub fn open(path: &Path, start: StartAt, tethered: bool) -> Result<Self, Error> {
        let map = segment::open(path)?;
        let me = ProcessId::current().map_err(|e| Error::io("/proc/self/stat", e))?;
        let at = match start {
            StartAt::Latest => JoinAt::Latest,
            StartAt::Oldest => JoinAt::Oldest,
        };
        let core = ReaderCore::join_as(map, at, tethered, u64::from(me.pid), me.start_time, 0)
            .ok_or_else(|| Error::NoFreeSlot(path.to_path_buf()))?;
        Ok(Self { core })
    }

    /// The segment's validated header.
    pub fn info(&self) -> &SegmentInfo {
        self.core.view.info()
    }

    /// The position this reader joined at (or last sought to).
    pub fn start_position(&self) -> u64 {
        self.core.position()
    }

    /// The published tail.
    pub fn tail(&self) -> u64 {
        // SYNC: tail-publish (Acquire): every stamp below it is visible.
        self.core.view.control().tail.load(Ordering::Acquire)
    }

    /// The oldest intact record's position.
    pub fn head(&self) -> u64 {
        // SYNC: head-advance (Acquire).
        self.core.view.control().head.load(Ordering::Acquire)
    }

    /// True once the publisher closed the ring or died.
    pub fn publisher_gone(&self) -> bool {
        // Acquire: pairs with the writer's Release store of CLOSED (after its final tail).
        self.core
            .view
            .control()
            .writer_state
            .load(Ordering::Acquire)
            == WRITER_CLOSED
            || !self.info().publisher.is_alive()
    }

    /// Whether this reader still owns its slot.
    ///
    /// # Errors
    ///
    /// [`Error::Evicted`], [`Error::SlotLost`].
    pub fn check_slot(&self) -> Result<(), Error> {
        match self.core.slot_status() {
            SlotStatus::Active => Ok(()),
            SlotStatus::Evicted => Err(Error::Evicted),
            SlotStatus::Lost => Err(Error::SlotLost),
        }
    }

    /// Finds the whole records from `start` (a record boundary) up to the
    /// tail, at most `max_len` bytes (at least one record if it fits).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the records break the format, or a single record
    /// is longer than `max_len`.
    pub fn next_chunk(&self, start: u64, max_len: u64) -> Result<RawChunk, Error> {
        let tail = self.tail();
        if start >= tail {
            return Ok(RawChunk::Empty);
        }
        if self.head() > start {
            return Ok(RawChunk::Lapped { head: self.head() });
        }
        let geo = self.core.geometry();
        let (cap, mask) = (geo.capacity, geo.mask());
        let mut pos = start;
        let mut records = 0;
        while pos < tail {
            let off = pos & mask;
            // SYNC: commit (Acquire).
            let stamp = self.core.view.word(off).load(Ordering::Acquire);
            // Relaxed: ordered after the Acquire above.
            let (len, _) = split_meta(self.core.view.word(off + 8).load(Ordering::Relaxed));
            let size = if stamp == data_stamp(pos) && u64::from(len) <= geo.max_message {
                record_size(u64::from(len))
            } else if stamp == padding_stamp(pos) {
                cap - off
            } else if self.head() > pos {
                return Ok(RawChunk::Lapped { head: self.head() });
            } else {
                return Err(self.corrupt(pos, "record stamp or length invalid"));
            };
            if off + size > cap {
                return Err(self.corrupt(pos, "record crosses the ring's end"));
            }
            if pos + size - start > max_len {
                if pos == start {
                    return Err(self.corrupt(pos, "record longer than the chunk limit"));
                }
                break;
            }
            if stamp & crate::layout::STAMP_PADDING == 0 {
                records += 1;
            }
            pos += size;
        }
        // Untethered and unpinned, the writer may have lapped the walk.
        if self.head() > start {
            return Ok(RawChunk::Lapped { head: self.head() });
        }
        Ok(RawChunk::Records {
            start,
            end: pos,
            records,
        })
    }

    fn corrupt(&self, pos: u64, what: &str) -> Error {
        Error::corrupt(&self.info().path, format!("at position {pos}: {what}"))
    }

    /// The ring bytes of `start..end`: one slice, or two when the range wraps.
    ///
    /// # Safety
    ///
    /// - `start..end` is a range returned by [`Self::next_chunk`];
    /// - it stays protected from the publisher while the slices (or a kernel
    ///   send of them) are in use: not released (tethered) or pinned at or
    ///   below `start` (untethered).
    pub unsafe fn slices(&self, start: u64, end: u64) -> (&[u8], &[u8]) {
        let geo = self.core.geometry();
        let (cap, mask) = (geo.capacity, geo.mask());
        let off = start & mask;
        let len = end - start;
        let first = len.min(cap - off);
        // SAFETY: in bounds (first <= cap - off; the rest < cap as len <= cap);
        // protected from writes per the caller.
        unsafe {
            (
                self.core.view.data_slice(off, first as usize),
                self.core.view.data_slice(0, (len - first) as usize),
            )
        }
    }

    /// Tethered: lets the publisher reuse everything before `position`.
    pub fn release_to(&mut self, position: u64) {
        self.core.release_to(position);
    }

    /// Untethered: pins the bytes from `position` on. Returns the first
    /// position safe to read, which is later than `position` if the publisher
    /// may already be overwriting there.
    pub fn pin(&mut self, position: u64) -> u64 {
        self.core.pin(position)
    }

    /// Untethered: drops the pin.
    pub fn unpin(&mut self) {
        self.core.unpin();
    }

    /// Waits until the tail passes `position`, the publisher goes, or the
    /// timeout (or one sleep, at most [`wait::MAX_SLEEP`]) ends.
    pub fn wait_beyond(
        &self,
        position: u64,
        strategy: WaitStrategy,
        timeout: Option<Duration>,
    ) -> bool {
        let ctrl = self.core.view.control();
        wait::wait_until(&[ctrl], strategy, Deadline::after(timeout), || {
            // Relaxed: hints; the caller re-reads the tail with Acquire.
            ctrl.tail.load(Ordering::Relaxed) > position
                || ctrl.writer_state.load(Ordering::Relaxed) == WRITER_CLOSED
        })
    }
}

/// Writes records received from elsewhere into a local ring, at the same
/// positions as in the ring they came from (so their stamps stay valid).
#[derive(Debug)]
pub struct ReplicaWriter {
    core: WriterCore<Arc<Mapping>>,
}

impl ReplicaWriter {
    /// Creates a replica ring at `path` whose positions start at `start`.
    /// The ring is marked as a replica (a bridge never exports it).
    ///
    /// # Errors
    ///
    /// As [`crate::RingWriter::create`].
    pub fn create(path: &Path, config: &RingConfig, start: u64) -> Result<Self, Error> {
        let config = RingConfig {
            replica: true,
            ..config.clone()
        };
        let map = segment::create_at(path, &config, start)?;
        Ok(Self {
            core: WriterCore::new_at(map, start),
        })
    }

    /// The segment's validated header.
    pub fn info(&self) -> &SegmentInfo {
        self.core.view.info()
    }

    /// The position the next chunk must start at.
    pub fn position(&self) -> u64 {
        self.core.write_position()
    }

    /// Reserves `len` bytes (whole records, 16-aligned, at most half the
    /// ring) at [`Self::position`], waiting for local subscribers to make room.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`], [`Error::Timeout`].
    pub fn reserve(
        &mut self,
        len: u64,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<ReplicaChunk<'_>, Error> {
        let deadline = Deadline::after(timeout);
        loop {
            match self.core.reserve_raw(len) {
                Ok(start) => {
                    return Ok(ReplicaChunk {
                        writer: self,
                        start,
                        len,
                        first_stamp: [0; 8],
                    })
                }
                Err(ReserveFail::TooLarge) => {
                    return Err(Error::TooLarge {
                        len,
                        max: self.core.geometry().capacity / 2,
                    })
                }
                Err(ReserveFail::Full) => {
                    if deadline.passed() {
                        return Err(Error::Timeout);
                    }
                    match wait {
                        WaitStrategy::BusySpin => std::hint::spin_loop(),
                        _ => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
            }
        }
    }
}

impl Drop for ReplicaWriter {
    fn drop(&mut self) {
        self.core.close();
        let _ = crate::shm::sweep::remove_if_unread(&self.core.view);
    }
}

/// Room for one chunk of records in a replica ring; fill it, then commit.
/// Dropping it without committing publishes nothing.
#[derive(Debug)]
pub struct ReplicaChunk<'a> {
    writer: &'a mut ReplicaWriter,
    start: u64,
    len: u64,
    first_stamp: [u8; 8],
}

impl ReplicaChunk<'_> {
    /// The chunk's first position.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Where to put the chunk's bytes, in order: the first 8 bytes (the first
    /// record's commit stamp, kept out of the ring until the chunk is
    /// validated), then the rest up to the ring's end, then the rest from the
    /// ring's start (empty unless the chunk wraps).
    pub fn buffers(&mut self) -> (&mut [u8; 8], &mut [u8], &mut [u8]) {
        let geo = self.writer.core.geometry();
        let (cap, mask) = (geo.capacity, geo.mask());
        let off = self.start & mask;
        let rest = self.len.saturating_sub(8);
        let first = rest.min(cap - off - 8);
        let map = &self.writer.core.view;
        // The ranges are inside the writable data mapping (off + 8 + first <=
        // cap; the wrapped part < cap) and do not overlap.
        // SAFETY: in bounds and disjoint (above); reserved by `reserve_raw`, and
        // unreadable by subscribers before commit (the stamp at `start` is unset).
        let (a, b) = unsafe {
            (
                map.data_mut(off + 8, first as usize),
                map.data_mut(0, (rest - first) as usize),
            )
        };
        (&mut self.first_stamp, a, b)
    }

    /// Validates the records and publishes them to local subscribers.
    /// Returns the number of data records.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the first framing error; nothing is
    /// published and the replica can take a correct chunk at the same position.
    pub fn commit(self) -> Result<u32, Error> {
        let stamp = u64::from_le_bytes(self.first_stamp);
        let start = self.start;
        self.writer
            .core
            .commit_raw(stamp, self.len)
            .map_err(|(pos, what)| {
                Error::corrupt(
                    &self.writer.core.view.info().path,
                    format!("received chunk at {start}: at position {pos}: {what}"),
                )
            })
    }
}
