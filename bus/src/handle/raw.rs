//! Raw ring access for forwarding: [`RawReader`] hands out committed ring
//! bytes (records and padding, exactly as in the ring) and [`ReplicaWriter`]
//! takes such bytes into a local ring at the same positions. The bridge
//! sends one to the other: the wire format is the ring format.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    handle::reader::join_error,
    layout::WRITER_CLOSED,
    ring::{
        gate::{JoinAt, JoinRequest, SlotStatus},
        reader::ReaderCore,
        records::{self, StampKind},
        writer::{ReserveFail, WriterCore},
        Policy, View,
    },
    shm::{
        liveness::ProcessId,
        segment::{self, Mapping, RingConfig, SegmentInfo, Start},
        wait::{self, Deadline, WaitStrategy},
    },
    sync::{load_acquire_ro, Ordering},
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
/// Durable ([`Self::open_durable`]), its slot outlives it for a lease, so a
/// restarted owner resumes where it was without loss.
///
/// Raw readers hand out ring bytes in place, so they refuse Overwrite rings
/// (whose bytes can change under a reader); read those with a
/// [`crate::RingReader`], which copies and validates.
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
        Self::open_inner(path, start, tethered, None)
    }

    /// Opens the ring at `path` with a durable, tethered slot named `key`
    /// (nonzero): if a previous owner with that key died, this reader
    /// reattaches at the position it had released up to (see
    /// [`Self::start_position`]); the slot keeps gating the publisher for
    /// `lease` after its owner dies, and the ring's files stay until it is
    /// reaped.
    ///
    /// # Errors
    ///
    /// As [`Self::open`]; [`Error::InvalidConfig`] for a zero key.
    pub fn open_durable(
        path: &Path,
        start: StartAt,
        key: u64,
        lease: Duration,
    ) -> Result<Self, Error> {
        if key == 0 {
            return Err(Error::InvalidConfig(
                "a durable slot's key must be nonzero".into(),
            ));
        }
        let lease = u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX);
        Self::open_inner(path, start, true, Some((key, lease)))
    }

    fn open_inner(
        path: &Path,
        start: StartAt,
        tethered: bool,
        durable: Option<(u64, u64)>,
    ) -> Result<Self, Error> {
        let map = segment::open(path)?;
        if map.info().policy == Policy::Overwrite {
            return Err(Error::InvalidConfig(format!(
                "{}: raw readers read in place and refuse Overwrite rings (use a RingReader, which copies)",
                path.display()
            )));
        }
        let me = ProcessId::current().map_err(|e| Error::io("/proc/self/stat", e))?;
        let req = JoinRequest {
            at: match start {
                StartAt::Latest => JoinAt::Latest,
                StartAt::Oldest => JoinAt::Oldest,
            },
            tethered,
            durable,
            pid: u64::from(me.pid),
            start_time: me.start_time,
        };
        let core = ReaderCore::join(map, &req)
            .map_err(|e| join_error(path, e))?
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
        load_acquire_ro(&self.core.view.producer().tail)
    }

    /// The oldest intact record's position.
    pub fn head(&self) -> u64 {
        // SYNC: head-advance (Acquire).
        load_acquire_ro(&self.core.view.producer().head)
    }

    /// True once the publisher is gone: its lock is free (it closed the ring
    /// and released its files, or died). The `writer_state` word alone is
    /// not believed: a same-user scribbler could forge it.
    pub fn publisher_gone(&self) -> bool {
        !self.core.view.publisher_alive()
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

    /// Finds the whole records from `start` (a record boundary this reader
    /// found earlier, or its start position) up to the tail, at most
    /// `max_len` bytes (at least one record if it fits).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the records or the publisher's positions break
    /// the format, or a single record is longer than `max_len`;
    /// [`Error::InvalidConfig`] if `start` is not a record position between
    /// the ring's head and tail.
    pub fn next_chunk(&self, start: u64, max_len: u64) -> Result<RawChunk, Error> {
        let geo = *self.core.geometry();
        let tail_before = self.tail();
        let head = self.head();
        let tail = self.tail();
        records::check_span(&geo, tail_before, head, tail)
            .map_err(|what| self.corrupt(tail, what))?;
        if !records::is_record_aligned(start) || start > tail {
            return Err(Error::InvalidConfig(format!(
                "{}: position {start} is not a record position at or below the tail {tail}",
                self.info().path.display()
            )));
        }
        if start == tail {
            return Ok(RawChunk::Empty);
        }
        if head > start {
            return Ok(RawChunk::Lapped { head });
        }
        let mut pos = start;
        let mut records = 0;
        while pos < tail {
            let off = pos & geo.mask();
            // SYNC: commit (Acquire).
            let stamp = load_acquire_ro(self.core.view.word(off));
            // Relaxed: ordered after the Acquire above.
            let meta = self.core.view.word(off + 8).load(Ordering::Relaxed);
            let kind = records::classify(stamp, pos);
            let header = match records::check_header(&geo, pos, kind, meta) {
                Ok(h) => h,
                Err(_) if self.head() > pos => return Ok(RawChunk::Lapped { head: self.head() }),
                Err(what) => return Err(self.corrupt(pos, what)),
            };
            if pos + header.size - start > max_len {
                if pos == start {
                    return Err(self.corrupt(pos, "record longer than the chunk limit"));
                }
                break;
            }
            if kind == StampKind::Data {
                records += 1;
            }
            pos += header.size;
        }
        if pos > tail {
            return Err(self.corrupt(pos, "tail: not at a record boundary"));
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
        let len = end.saturating_sub(start).min(cap);
        let first = len.min(cap - off);
        // SAFETY: protected from writes per the caller; `data_slice` checks
        // the bounds (first <= cap - off; the rest < cap as len <= cap).
        unsafe {
            (
                self.core
                    .view
                    .data_slice(off, first as usize)
                    .unwrap_or_default(),
                self.core
                    .view
                    .data_slice(0, (len - first) as usize)
                    .unwrap_or_default(),
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
        let view = &self.core.view;
        let producer = view.producer();
        let sleeper = view.sleeper(self.core.claim().map(|c| c.index));
        wait::wait_until(
            &[sleeper],
            strategy,
            Deadline::after(timeout),
            wait::MAX_SLEEP,
            || {
                // Relaxed: hints; the caller re-reads the tail with Acquire.
                producer.tail.load(Ordering::Relaxed) > position
                    || producer.writer_state.load(Ordering::Relaxed) == WRITER_CLOSED
            },
        )
        .ready
    }
}

impl Drop for RawReader {
    fn drop(&mut self) {
        if !self.core.view.in_creator_process() {
            // A forked child: the slot and its lock are the parent's.
            self.core.forget_slot();
            return;
        }
        self.core.leave();
        // Last one out of a ring whose publisher is gone removes it.
        let _ = crate::shm::sweep::remove_if_unread(&self.core.view);
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
        Self::create_inner(path, config, start, None)
    }

    /// Like [`Self::create`], for a stream whose next sequence number is
    /// known (`seq`); otherwise the first chunk's first record sets it.
    ///
    /// # Errors
    ///
    /// As [`Self::create`].
    pub fn create_numbered(
        path: &Path,
        config: &RingConfig,
        start: u64,
        seq: u64,
    ) -> Result<Self, Error> {
        Self::create_inner(path, config, start, Some(seq))
    }

    fn create_inner(
        path: &Path,
        config: &RingConfig,
        start: u64,
        seq: Option<u64>,
    ) -> Result<Self, Error> {
        let config = RingConfig {
            replica: true,
            ..config.clone()
        };
        let map = segment::create(
            path,
            &config,
            Start {
                position: start,
                seq,
            },
        )?;
        Ok(Self {
            core: WriterCore::new_at(map, start, seq),
        })
    }

    /// Publishes a gap record: `count` messages of the source stream were
    /// lost before the next chunk. Local subscribers see exactly that count
    /// as lost, in this same ring. Waits for room like [`Self::reserve`].
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::Corrupt`].
    pub fn write_gap(
        &mut self,
        count: u64,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let deadline = Deadline::after(timeout);
        loop {
            match self.core.reserve_up_to(crate::layout::GAP_PAYLOAD, 0) {
                Ok(r) => {
                    self.core.commit_gap(r, count);
                    self.core.publish();
                    return Ok(());
                }
                Err(ReserveFail::Full) => {
                    if deadline.passed() {
                        return Err(Error::Timeout);
                    }
                    backoff(wait);
                }
                Err(ReserveFail::TooLarge) => {
                    return Err(Error::TooLarge {
                        len: crate::layout::GAP_PAYLOAD,
                        max: self.core.geometry().max_message,
                    })
                }
                Err(ReserveFail::Corrupt { position, what }) => {
                    return Err(Error::corrupt(
                        &self.info().path,
                        format!("at position {position}: {what}"),
                    ))
                }
            }
        }
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
                        first_header: [0; 16],
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
                    backoff(wait);
                }
                Err(ReserveFail::Corrupt { position, what }) => {
                    return Err(Error::corrupt(
                        &self.info().path,
                        format!("at position {position}: {what}"),
                    ))
                }
            }
        }
    }
}

fn backoff(wait: WaitStrategy) {
    match wait {
        WaitStrategy::BusySpin => std::hint::spin_loop(),
        _ => std::thread::sleep(Duration::from_micros(200)),
    }
}

impl Drop for ReplicaWriter {
    fn drop(&mut self) {
        if !self.core.view.in_creator_process() {
            return; // a forked child: the ring is the parent's
        }
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
    first_header: [u8; 16],
}

impl ReplicaChunk<'_> {
    /// The chunk's first position.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Where to put the chunk's bytes, in order: the first 16 bytes (the
    /// first record's header: its commit stamp and its length/sequence word,
    /// kept out of the ring until the chunk is validated, so a reader waiting
    /// at the chunk's start never sees a word of it early — in particular not
    /// one that is still ciphertext), then the rest up to the ring's end, then
    /// the rest from the ring's start (empty unless the chunk wraps).
    pub fn buffers(&mut self) -> (&mut [u8; 16], &mut [u8], &mut [u8]) {
        let geo = self.writer.core.geometry();
        let (cap, mask) = (geo.capacity, geo.mask());
        let off = self.start & mask;
        let rest = self.len.saturating_sub(16);
        let first = rest.min(cap - off - 16);
        let map = &self.writer.core.view;
        // The ranges are inside the writable data mapping (off + 16 + first
        // <= cap; the wrapped part < cap) and do not overlap (reserve_raw caps
        // a chunk at half the ring).
        // SAFETY: in bounds and disjoint (above); reserved by `reserve_raw`, and
        // unreadable by subscribers before commit (the stamp at `start` is unset).
        let (a, b) = unsafe {
            (
                map.data_mut(off + 16, first as usize),
                map.data_mut(0, (rest - first) as usize),
            )
        };
        (&mut self.first_header, a, b)
    }

    /// Validates the records and publishes them to local subscribers.
    /// Returns the number of data records.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the first framing error; nothing is
    /// published and the replica can take a correct chunk at the same position.
    pub fn commit(self) -> Result<u32, Error> {
        let (stamp, meta) = self.first_header.split_at(8);
        let stamp = u64::from_le_bytes(stamp.try_into().unwrap_or_default());
        let meta = u64::from_le_bytes(meta.try_into().unwrap_or_default());
        let start = self.start;
        self.writer
            .core
            .commit_raw(stamp, meta, self.len)
            .map_err(|(pos, what)| {
                Error::corrupt(
                    &self.writer.core.view.info().path,
                    format!("received chunk at {start}: at position {pos}: {what}"),
                )
            })
    }
}
