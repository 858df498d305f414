//! Raw ring access for forwarding: [`RawReader`] hands out committed ring
//! bytes (records and padding, exactly as in the ring) and [`ReplicaWriter`]
//! takes such bytes into a local ring at the same positions. The bridge
//! sends one to the other: the wire format is the ring format.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    handle::reader::join_error,
    layout::{GAP_PAYLOAD, WRITER_CLOSED},
    ring::{
        gate::{JoinAt, JoinRequest, SlotStatus},
        reader::ReaderCore,
        records::{self, StampKind},
        writer::{ReserveFail, Skip, SkipFail, WriterCore},
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
        /// Data records in the range (padding and gap records not counted).
        records: u32,
        /// The publisher's 64-bit sequence number of the range's first
        /// data or gap record (for a gap record: its first lost message);
        /// if the range holds only padding, the number its next record
        /// gets. Extended from the record's stored low half with the
        /// publisher's `published` counter: exact while fewer than 2^31
        /// messages lie between them.
        first_seq: u64,
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
    /// `max_len` bytes — except that a first record longer than `max_len`
    /// comes alone (a chunk always holds at least one record, so a bound on
    /// chunks never refuses a message the ring accepted).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the records or the publisher's positions break
    /// the format;
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
        // Low half of the first numbered record's sequence number (the
        // first padding's, which carries the next record's, until then).
        let mut first_low = None;
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
            let over_limit = pos + header.size - start > max_len;
            if over_limit && pos > start {
                break;
            }
            let numbered = matches!(kind, StampKind::Data | StampKind::Gap);
            match first_low {
                Some((_, true)) => {}
                Some((_, false)) if !numbered => {}
                _ => first_low = Some((header.seq_low, numbered)),
            }
            if kind == StampKind::Data {
                records += 1;
            }
            pos += header.size;
            if over_limit {
                break;
            }
        }
        if pos > tail {
            return Err(self.corrupt(pos, "tail: not at a record boundary"));
        }
        // Untethered and unpinned, the writer may have lapped the walk.
        if self.head() > start {
            return Ok(RawChunk::Lapped { head: self.head() });
        }
        let hint = self.published_hint();
        let first_seq = first_low.map_or(hint, |(low, _)| records::extend_sequence(low, hint));
        Ok(RawChunk::Records {
            start,
            end: pos,
            records,
            first_seq,
        })
    }

    /// The publisher's `published` counter: a hint for extending sequence
    /// numbers (any value is safe: extension wraps, never fails).
    fn published_hint(&self) -> u64 {
        // Relaxed: a hint within 2^31 of the records near the tail (see
        // `records::extend_sequence`), no ordering needed.
        self.core.view.producer().published.load(Ordering::Relaxed)
    }

    /// The sequence number the publisher's next message will get: what a
    /// GAP says when the ring holds nothing after its end. From the header
    /// word the publisher leaves where its next record goes (the next
    /// number, beside a cleared stamp or in the record being written
    /// there), extended with its `published` counter; when that word is
    /// an older record's (the ring is exactly full), the counter alone.
    /// Read from shared memory: any value comes out, never a panic; exact
    /// for an honest publisher unless the ring is exactly full while the
    /// publisher is between its tail and counter stores.
    pub fn next_sequence(&self) -> u64 {
        let tail = self.tail();
        let off = tail & self.core.geometry().mask();
        // SYNC: commit (Acquire): the meta word beside the stamp is the
        // one written with it (or before it, by the record ending at tail).
        let stamp = load_acquire_ro(self.core.view.word(off));
        // Relaxed: ordered after the Acquire above.
        let meta = self.core.view.word(off + 8).load(Ordering::Relaxed);
        let hint = self.published_hint();
        let own = stamp == 0
            || matches!(
                records::classify(stamp, tail),
                StampKind::Data | StampKind::Gap | StampKind::Padding
            );
        if !own || meta == crate::layout::NO_SEQ_HINT {
            return hint;
        }
        let (_, low) = crate::layout::split_meta(meta);
        records::extend_sequence(low, hint)
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

    /// Lets go of the slot the way a crashed owner does: nothing in the
    /// table changes, and the slot's lock goes when this reader (its open
    /// file description) is dropped. A durable slot then keeps gating for
    /// its lease and a restarted owner with the same key reattaches where
    /// this one had released (a clean restart is as lossless as a crash);
    /// a plain slot is freed by the publisher's next probe. After this the
    /// reader no longer owns a slot: drop it.
    pub fn detach(&mut self) {
        self.core.forget_slot();
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
    /// [`Error::Timeout`], [`Error::Corrupt`]; [`Error::InvalidConfig`] if
    /// the count would take the sequence number to 2^64 - 1 or beyond.
    pub fn write_gap(
        &mut self,
        count: u64,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let deadline = Deadline::after(timeout);
        while !self.try_write_gap(count)? {
            if deadline.passed() {
                return Err(Error::Timeout);
            }
            backoff(wait);
        }
        Ok(())
    }

    /// [`Self::write_gap`] without waiting: `Ok(false)` when local
    /// subscribers hold the space now (nothing written).
    ///
    /// # Errors
    ///
    /// As [`Self::write_gap`], except [`Error::Timeout`].
    pub fn try_write_gap(&mut self, count: u64) -> Result<bool, Error> {
        let seq = self.core.next_sequence();
        if seq.checked_add(count).is_none_or(|next| next == u64::MAX) {
            return Err(Error::InvalidConfig(format!(
                "{}: a gap of {count} messages after sequence number {seq} overflows the sequence numbers",
                self.info().path.display()
            )));
        }
        match self.core.reserve_up_to(GAP_PAYLOAD, 0) {
            Ok(r) => {
                self.core.commit_gap(r, count);
                self.core.publish();
                Ok(true)
            }
            Err(ReserveFail::Full) => Ok(false),
            Err(ReserveFail::TooLarge) => Err(Error::TooLarge {
                len: GAP_PAYLOAD,
                max: self.core.geometry().max_message,
            }),
            Err(ReserveFail::Corrupt { position, what }) => Err(self.corrupt(position, what)),
        }
    }

    /// Writes one message numbered `seq` (a copy of `payload`) at the
    /// write position, as the publisher it mirrors wrote it, after a gap
    /// record for the messages numbered between [`Self::next_sequence`]
    /// and `seq` (local subscribers see exactly that many lost). For
    /// streams that arrive message by message rather than as ring bytes
    /// (the Zenoh gateway). Never waits: `Ok(false)` when local
    /// subscribers hold the space now; a gap record may then already be
    /// written, and calling again with the same `seq` and payload writes
    /// the message only (the gap is not counted twice).
    ///
    /// A replica whose numbering is unknown (made by [`Self::create`])
    /// takes `seq` as its next number: nothing is reported lost.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a payload over the ring's `max_message`;
    /// [`Error::InvalidConfig`] if `seq` is below [`Self::next_sequence`]
    /// or is 2^64 - 1; [`Error::Corrupt`] if this writer's own records
    /// were damaged.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bus::{Observed, ReplicaWriter, RingConfig, RingObserver, StartAt};
    /// let dir = std::env::temp_dir().join(format!("shmbus-doc-msg-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("r.ring");
    /// let mut replica = ReplicaWriter::create_numbered(&path, &RingConfig::default(), 0, 10).unwrap();
    /// let mut reader = RingObserver::open(&path, StartAt::Oldest).unwrap();
    /// assert!(replica.try_write_message(10, b"a").unwrap());
    /// assert!(replica.try_write_message(13, b"b").unwrap()); // 11 and 12 lost
    /// assert_eq!(reader.try_read().unwrap(), Observed::Message { sequence: 10, payload: b"a" });
    /// assert_eq!(reader.try_read().unwrap(), Observed::Gap { messages: 2, bytes: 0 });
    /// assert_eq!(reader.try_read().unwrap(), Observed::Message { sequence: 13, payload: b"b" });
    /// # drop((replica, reader)); std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn try_write_message(&mut self, seq: u64, payload: &[u8]) -> Result<bool, Error> {
        let max = self.core.geometry().max_message;
        if payload.len() as u64 > max {
            return Err(Error::TooLarge {
                len: payload.len() as u64,
                max,
            });
        }
        if seq == u64::MAX {
            return Err(self.bad_sequence(seq, "is 2^64 - 1 (it would have no successor)"));
        }
        match self.core.known_sequence() {
            None => {
                if !matches!(self.try_skip_to(self.position(), seq)?, Skip::Done { .. }) {
                    return Err(self.bad_sequence(seq, "cannot start the numbering"));
                }
            }
            Some(next) if seq < next => {
                return Err(self.bad_sequence(seq, "is below the next sequence number"))
            }
            Some(next) if seq > next => {
                if !self.try_write_gap(seq - next)? {
                    return Ok(false);
                }
            }
            Some(_) => {}
        }
        let len = payload.len() as u64;
        match self.core.reserve_up_to(len, len) {
            Ok(r) => {
                self.core.write_payload(&r, payload);
                self.core.commit(r, len);
                self.core.publish();
                Ok(true)
            }
            Err(ReserveFail::Full) => Ok(false),
            Err(ReserveFail::TooLarge) => Err(Error::TooLarge { len, max }),
            Err(ReserveFail::Corrupt { position, what }) => Err(self.corrupt(position, what)),
        }
    }

    fn bad_sequence(&self, seq: u64, what: &str) -> Error {
        Error::InvalidConfig(format!(
            "{}: message sequence number {seq} {what}",
            self.info().path.display()
        ))
    }

    /// Moves the write position to `to` (16-aligned, at or after
    /// [`Self::position`], at most a ring further) and the next sequence
    /// number to `next_seq`, publishing gap records over the bytes between:
    /// local subscribers see exactly `lost = next_seq - next_sequence()`
    /// messages lost (while the numbering is unknown: lost 0, and it
    /// becomes `next_seq`), then the records received from `to` on. This
    /// is how a replica takes a GAP(from, to, next_seq) of its source in
    /// the same ring. Never waits.
    ///
    /// The range is covered by at most two records: one from the position
    /// to `min(to, end of this lap)` and, if `to` is in the next lap, one
    /// from that lap's start to `to`. The count goes in the first of them
    /// that has 32 bytes or more; a countless piece that ends at the
    /// ring's end is padding, any other a gap record with count 0, which
    /// readers skip without reporting anything.
    ///
    /// [`Skip::Unrepresentable`] (nothing written) when `to - position` is
    /// more than the capacity (on an Overwrite ring: at least the
    /// capacity), or the count is nonzero and no piece can carry it, in
    /// particular when `to == position` (then use [`Self::try_write_gap`],
    /// and continue at `to` in a new replica if `to` differs). `to ==
    /// position` with `next_seq == next_sequence()` is `Done { lost: 0 }`
    /// and writes nothing. [`Skip::NoRoom`] (nothing written) when local
    /// subscribers hold the space now: retry after they move
    /// ([`Self::room_until`] tells when `to` fits).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `to` is below the position or not
    /// 16-aligned, `next_seq` is below [`Self::next_sequence`] or is
    /// 2^64 - 1; [`Error::Corrupt`] if this writer's own records were
    /// damaged.
    pub fn try_skip_to(&mut self, to: u64, next_seq: u64) -> Result<Skip, Error> {
        let position = self.position();
        self.core
            .try_skip_to(to, next_seq)
            .map_err(|fail| match fail {
                SkipFail::Invalid(what) => Error::InvalidConfig(format!(
                    "{}: cannot skip from {position} to {to} with next sequence number {next_seq}: {what}",
                    self.info().path.display()
                )),
                SkipFail::Corrupt { position, what } => self.corrupt(position, what),
            })
    }

    /// The sequence number the next record gets; `None` while unknown (a
    /// replica made with [`Self::create`], before its first record or skip).
    pub fn next_sequence(&self) -> Option<u64> {
        self.core.known_sequence()
    }

    /// Refreshes the gate and returns the position up to which
    /// [`Self::reserve`] / [`Self::try_reserve`] of whole records, and
    /// [`Self::try_skip_to`], succeed without waiting: a promise that holds
    /// until this writer writes, whatever local subscribers do meanwhile
    /// (a subscriber that joins starts where this room does not reach), and
    /// later calls never return less. `u64::MAX` on an Overwrite ring (it
    /// never waits). For per-stream credit: the sender may send up to here.
    ///
    /// The refresh asks for half a ring of room: only when less than that
    /// is free does it count as the writer being held back (it then probes
    /// the subscriber in the way for liveness and, if the ring evicts
    /// laggards, starts or continues its eviction clock).
    pub fn room_until(&mut self) -> u64 {
        self.core.room_until()
    }

    fn corrupt(&self, position: u64, what: &str) -> Error {
        Error::corrupt(&self.info().path, format!("at position {position}: {what}"))
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
    /// [`Error::TooLarge`], [`Error::Timeout`], [`Error::Corrupt`].
    pub fn reserve(
        &mut self,
        len: u64,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<ReplicaChunk<'_>, Error> {
        let deadline = Deadline::after(timeout);
        loop {
            if self.reserve_now(len)?.is_some() {
                break;
            }
            if deadline.passed() {
                return Err(Error::Timeout);
            }
            backoff(wait);
        }
        Ok(self.chunk_at(len))
    }

    /// [`Self::reserve`] without waiting: `Ok(None)` when local subscribers
    /// hold the space now. Succeeds whenever `position + len` is at most
    /// what [`Self::room_until`] returned (and nothing was written since).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`], [`Error::Corrupt`].
    pub fn try_reserve(&mut self, len: u64) -> Result<Option<ReplicaChunk<'_>>, Error> {
        Ok(self.reserve_now(len)?.map(|_| self.chunk_at(len)))
    }

    /// One reservation attempt: `Ok(Some(start))`, `Ok(None)` if full.
    fn reserve_now(&mut self, len: u64) -> Result<Option<u64>, Error> {
        match self.core.reserve_raw(len) {
            Ok(start) => Ok(Some(start)),
            Err(ReserveFail::Full) => Ok(None),
            Err(ReserveFail::TooLarge) => Err(Error::TooLarge {
                len,
                max: self.core.geometry().capacity / 2,
            }),
            Err(ReserveFail::Corrupt { position, what }) => Err(self.corrupt(position, what)),
        }
    }

    /// The chunk just reserved at the write position.
    fn chunk_at(&mut self, len: u64) -> ReplicaChunk<'_> {
        ReplicaChunk {
            start: self.core.write_position(),
            writer: self,
            len,
            first_header: [0; 16],
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
