//! [`RingReader`]: one subscriber's handle on one publisher's ring.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    layout::WRITER_OPEN,
    ring::{
        gate::{JoinAt, JoinError, JoinRequest, SlotStatus},
        reader::{Peek, ReadFault, ReaderCore, RecordRef},
        Policy, View,
    },
    shm::{
        fs::Access,
        futex::{SleepEnd, Sleeper},
        liveness::ProcessId,
        registry::Registration,
        segment::{self, Mapping, SegmentInfo},
        wait::{self, Deadline, WaitStrategy},
    },
    sync::{load_acquire_ro, Ordering},
    Error,
};

/// Where a new subscriber starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartAt {
    /// Only messages published after joining.
    #[default]
    Latest,
    /// The oldest message still in the ring (history for late joiners).
    Oldest,
}

/// What a read found.
#[derive(Debug)]
pub enum ReadEvent<'a> {
    /// A message, borrowed in place (Block policy) or validated copy (Overwrite).
    Message(Message<'a>),
    /// Nothing new yet.
    Empty,
    /// Messages were lost before the next one (overwrite, or after eviction).
    Gap {
        /// Messages lost.
        messages: u64,
        /// Ring bytes lost (records and padding).
        bytes: u64,
    },
    /// The publisher is gone (closed or dead) and everything it committed has
    /// been read.
    Closed,
}

/// How many empty polls pass between liveness checks of the publisher.
const LIVENESS_POLLS: u32 = 1 << 14;

/// How long a ring may say CLOSED while its publisher still holds its lock
/// (the moment between a publisher's close and the release of its files)
/// before a reader reports the word as corrupt.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How to open a ring for reading; see [`RingReader::open_with`].
///
/// # Examples
///
/// A subscriber registered in a topic before its publisher exists is joined
/// to the publisher's ring from its first record:
///
/// ```
/// use shmbus_bus::{ReaderOptions, ReadEvent, Registration, RingConfig, RingReader, RingWriter};
/// let topic = std::env::temp_dir().join(format!("shmbus-doc-early-{}", std::process::id()));
/// std::fs::create_dir_all(&topic).unwrap();
/// let me = Registration::register_in(&topic, false).unwrap();
///
/// let path = topic.join("p.ring");
/// let mut w = RingWriter::create(&path, &RingConfig::default()).unwrap();
/// w.try_write(b"first").unwrap(); // before the subscriber opened the ring
///
/// let options = ReaderOptions { registration: Some(&me), ..ReaderOptions::default() };
/// let mut r = RingReader::open_with(&path, &options).unwrap();
/// match r.try_read().unwrap() {
///     ReadEvent::Message(m) => assert_eq!(m.payload(), b"first"),
///     other => panic!("{other:?}"),
/// }
/// # drop((r, w, me)); std::fs::remove_dir_all(&topic).unwrap();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ReaderOptions<'a> {
    /// Where to start (a pre-joined slot starts at the ring's first record).
    pub start: StartAt,
    /// How long to wait for the ring's creator to finish initializing it.
    pub init_wait: Duration,
    /// Accept files of the owner's group (a bus shared in group mode), not
    /// only the caller's own.
    pub group: bool,
    /// The subscriber's registration in the topic: its pre-joined slot, if
    /// the publisher made one, is adopted (everything from the first record).
    pub registration: Option<&'a Registration>,
}

impl Default for ReaderOptions<'_> {
    fn default() -> Self {
        Self {
            start: StartAt::Latest,
            init_wait: segment::INIT_WAIT,
            group: false,
            registration: None,
        }
    }
}

/// Maps a failed join to the bus error.
pub(crate) fn join_error(path: &Path, e: JoinError) -> Error {
    match e {
        JoinError::Corrupt(what) => Error::corrupt(segment::control_path_of(path), what),
        JoinError::Io(e) => Error::io(segment::control_path_of(path), e),
        // Handled inside the join (it looks at the next slot); never here.
        JoinError::Raced => Error::NoFreeSlot(path.to_path_buf()),
    }
}

/// A subscriber's cursor over one ring.
///
/// # Examples
///
/// See [`crate::RingWriter`].
#[derive(Debug)]
pub struct RingReader {
    core: ReaderCore<Arc<Mapping>>,
    /// 16-byte aligned copy buffer for the Overwrite policy.
    scratch: Vec<u128>,
    empty_polls: u32,
    closed: bool,
    /// A gap found by a probe, reported by the next `try_read`.
    pending_gap: Option<(u64, u64)>,
    /// Overwrite policy: a record a probe copied and validated into `scratch`.
    pending_copy: Option<RecordRef>,
    /// When the ring was first seen CLOSED while its publisher held its lock.
    closed_seen: Option<Instant>,
    /// Longest single sleep (see [`Self::set_max_sleep`]).
    max_sleep: Duration,
    /// How this reader's sleeps ended.
    sleep_stats: SleepStats,
    /// Block policy: the record a probe found, handed out by the next
    /// `try_read` without looking at the ring again (peeking is idempotent,
    /// so it is exactly what a second peek would find).
    peeked: Option<RecordRef>,
    /// Block policy without eviction, nothing pending: `try_read` goes
    /// straight to the ring (one flag instead of four checks).
    fast: bool,
}

/// How a reader's sleeps (blocking waits on the ring's futex) ended; see
/// [`RingReader::sleep_stats`].
///
/// A sleep that ends by its timeout while a message is already there means
/// a wake-up was missed (or came late): with the default handshake that
/// never happens (tests run millions of sleeps with a 10 s slice and count
/// it), so `timeouts_with_data` stays 0 unless the ring's writer did not
/// register the handshake (then sleeps are short timed slices by design).
///
/// # Examples
///
/// ```
/// use shmbus_bus::{RingConfig, RingReader, RingWriter, StartAt};
/// let dir = std::env::temp_dir().join(format!("shmbus-doc-stats-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("p.ring");
/// let w = RingWriter::create(&path, &RingConfig::default()).unwrap();
/// let r = RingReader::open(&path, StartAt::Latest).unwrap();
/// assert_eq!(r.sleep_stats().sleeps, 0);
/// # drop((r, w)); std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SleepStats {
    /// Times the reader registered to sleep (after its spins found nothing).
    pub sleeps: u64,
    /// Of those, the re-check after registering found news: no sleep.
    pub ready_at_recheck: u64,
    /// Of those, the sleep was ended by a wake-up (or the futex word had
    /// changed already).
    pub woken: u64,
    /// Of those, the sleep ran to its timeout.
    pub timeouts: u64,
    /// Of the timeouts, a message (or the end of the stream) was there
    /// when the sleep ended: a missed or late wake-up.
    pub timeouts_with_data: u64,
}

impl RingReader {
    /// Opens the ring at `path` and joins its subscriber table.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotInitialized`], [`Error::NotASegment`],
    /// [`Error::VersionMismatch`], [`Error::SizeMismatch`], [`Error::Corrupt`],
    /// [`Error::NoFreeSlot`], [`Error::Io`].
    pub fn open(path: &Path, start: StartAt) -> Result<Self, Error> {
        Self::open_with(
            path,
            &ReaderOptions {
                start,
                ..ReaderOptions::default()
            },
        )
    }

    /// Like [`Self::open`], waiting at most `init_wait` (instead of
    /// [`crate::INIT_WAIT`]) for the segment's creator to finish initializing
    /// it. With a zero wait, a half-made segment gives `NotInitialized` at once.
    ///
    /// # Errors
    ///
    /// As [`Self::open`].
    pub fn open_waiting(path: &Path, start: StartAt, init_wait: Duration) -> Result<Self, Error> {
        Self::open_with(
            path,
            &ReaderOptions {
                start,
                init_wait,
                ..ReaderOptions::default()
            },
        )
    }

    /// Opens the ring at `path` with `options`: adopts the slot the
    /// publisher pre-joined for `options.registration` if there is one (then
    /// reading starts at the ring's first record), else joins a free slot or
    /// the slot of a dead subscriber.
    ///
    /// # Errors
    ///
    /// As [`Self::open`]; [`Error::Evicted`] if the publisher evicted the
    /// pre-joined slot for lag before it was adopted (open again to join at
    /// `options.start`).
    pub fn open_with(path: &Path, options: &ReaderOptions<'_>) -> Result<Self, Error> {
        let access = if options.group {
            Access::Group
        } else {
            Access::Owner
        };
        let mut map = segment::open_with(path, options.init_wait, access)?;
        let me = ProcessId::current().map_err(|e| Error::io("/proc/self/stat", e))?;
        let req = JoinRequest {
            at: match options.start {
                StartAt::Latest => JoinAt::Latest,
                StartAt::Oldest => JoinAt::Oldest,
            },
            tethered: true,
            durable: None,
            pid: u64::from(me.pid),
            start_time: me.start_time,
        };
        if let Some(reg) = options.registration {
            match ReaderCore::adopt(map, &req, u64::from(reg.index()), reg.generation())
                .map_err(|e| join_error(path, e))?
            {
                Ok(core) => return Ok(Self::with_core(core)),
                Err((_, true)) => return Err(Error::Evicted),
                Err((m, false)) => map = m,
            }
        }
        let core = ReaderCore::join(map, &req)
            .map_err(|e| join_error(path, e))?
            .ok_or_else(|| Error::NoFreeSlot(path.to_path_buf()))?;
        Ok(Self::with_core(core))
    }

    fn with_core(core: ReaderCore<Arc<Mapping>>) -> Self {
        let geo = *core.geometry();
        Self {
            core,
            scratch: Vec::new(),
            empty_polls: 0,
            closed: false,
            pending_gap: None,
            pending_copy: None,
            closed_seen: None,
            max_sleep: wait::MAX_SLEEP,
            sleep_stats: SleepStats::default(),
            peeked: None,
            fast: geo.policy == Policy::Block && geo.evict_after.is_none(),
        }
    }

    /// Sets the longest single sleep of this reader's blocking waits (default
    /// [`crate::MAX_SLEEP`]): after each, it checks the publisher's liveness
    /// (a crashed publisher wakes nobody). A longer slice means fewer
    /// wake-ups of an idle subscriber and a later notice of a crashed
    /// publisher; the wake-up of new data does not depend on it. On a ring
    /// whose writer did not register the handshake, sleeps stay short
    /// (1 ms) whatever this says.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bus::{RingConfig, RingReader, RingWriter, StartAt};
    /// use std::time::Duration;
    /// let dir = std::env::temp_dir().join(format!("shmbus-doc-slice-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("p.ring");
    /// let w = RingWriter::create(&path, &RingConfig::default()).unwrap();
    /// let mut r = RingReader::open(&path, StartAt::Latest).unwrap();
    /// r.set_max_sleep(Duration::from_secs(1));
    /// assert_eq!(r.max_sleep(), Duration::from_secs(1));
    /// # drop((r, w)); std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn set_max_sleep(&mut self, max_sleep: Duration) {
        self.max_sleep = max_sleep.max(Duration::from_micros(1));
    }

    /// The longest single sleep of this reader (see [`Self::set_max_sleep`]).
    pub fn max_sleep(&self) -> Duration {
        self.max_sleep
    }

    /// How this reader's sleeps ended so far (see [`SleepStats`]).
    pub fn sleep_stats(&self) -> SleepStats {
        self.sleep_stats
    }

    /// The slot this reader owns: (index, generation). No (index,
    /// generation) pair of a ring is ever handed out twice.
    pub fn slot(&self) -> Option<(usize, u64)> {
        self.core.claim().map(|c| (c.index, c.generation()))
    }

    /// The segment's validated header.
    pub fn info(&self) -> &SegmentInfo {
        self.core.view.info()
    }

    /// The next position this reader will read.
    pub fn position(&self) -> u64 {
        self.core.position()
    }

    /// Reads the next message without waiting.
    ///
    /// A message is borrowed in place (Block policy): the publisher cannot
    /// overwrite it until the [`Message`] is dropped. Dropping it finishes
    /// the message; finished messages are released to the publisher in
    /// batches (every eighth of the ring, sooner while the publisher waits
    /// for space, and always before a read finds the ring empty), so the
    /// slot position tools show may lag the messages read by that much.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the ring breaks the record format (this ring
    /// cannot be read further), [`Error::Evicted`], [`Error::SlotLost`].
    #[inline]
    pub fn try_read(&mut self) -> Result<ReadEvent<'_>, Error> {
        if self.fast {
            // Block policy, no eviction: one peek (or the probe's), no hold.
            let record = match self.peeked.take() {
                Some(record) => record,
                None => match self.core.peek() {
                    Ok(Peek::Record(record)) => record,
                    Ok(Peek::Empty) => return self.empty(),
                    Ok(Peek::Gap { messages, bytes }) => {
                        return Ok(ReadEvent::Gap { messages, bytes })
                    }
                    Err(f) => return Err(self.fault(f)),
                },
            };
            self.empty_polls = 0;
            return Ok(ReadEvent::Message(Message {
                reader: self,
                record,
                copied: false,
                release: true,
            }));
        }
        self.try_read_slow()
    }

    /// `Empty`, or `Closed` once the publisher is gone.
    #[cold]
    #[inline(never)]
    fn empty(&mut self) -> Result<ReadEvent<'_>, Error> {
        Ok(if self.check_closed()? {
            ReadEvent::Closed
        } else {
            ReadEvent::Empty
        })
    }

    /// Overwrite policy, untethered eviction, a pending gap or the end.
    #[inline(never)]
    fn try_read_slow(&mut self) -> Result<ReadEvent<'_>, Error> {
        if self.core.geometry().policy == Policy::Overwrite && !self.probe()? {
            return Ok(ReadEvent::Empty);
        }
        if let Some((messages, bytes)) = self.pending_gap.take() {
            self.fast = self.is_fast();
            return Ok(ReadEvent::Gap { messages, bytes });
        }
        if let Some(record) = self.pending_copy.take() {
            self.empty_polls = 0;
            return Ok(ReadEvent::Message(Message {
                reader: self,
                record,
                copied: true,
                release: true,
            }));
        }
        if self.closed {
            return Ok(ReadEvent::Closed);
        }
        // Block policy: read in place (peeking is idempotent, so a `probe`
        // before this found the same record).
        let peeked = self.peeked.take();
        let peek = match peeked {
            Some(record) => Peek::Record(record),
            None => self.peek()?,
        };
        match peek {
            Peek::Record(record) => {
                self.empty_polls = 0;
                self.core.begin_hold().map_err(|f| self.fault(f))?;
                Ok(ReadEvent::Message(Message {
                    reader: self,
                    record,
                    copied: false,
                    release: true,
                }))
            }
            Peek::Gap { messages, bytes } => Ok(ReadEvent::Gap { messages, bytes }),
            Peek::Empty => self.empty(),
        }
    }

    /// Whether `try_read` may take its fast path now.
    fn is_fast(&self) -> bool {
        let geo = self.core.geometry();
        geo.policy == Policy::Block
            && geo.evict_after.is_none()
            && self.pending_gap.is_none()
            && self.pending_copy.is_none()
            && !self.closed
    }

    /// Overwrite policy: copies `record` out and validates the copy. `true`
    /// if it left a message or a gap to report, `false` if lapped meanwhile.
    fn copy_out(&mut self, record: RecordRef) -> Result<bool, Error> {
        let words = (record.len as usize).div_ceil(16);
        if self.scratch.len() < words {
            self.scratch.resize(words, 0);
        }
        // SAFETY: `scratch` holds at least `len` bytes; u128 has no invalid
        // bit patterns, so viewing it as bytes is sound.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                self.scratch.as_mut_ptr().cast::<u8>(),
                record.len as usize,
            )
        };
        let copied = self.core.copy_validated(&record, dst);
        Ok(match copied.map_err(|f| self.fault(f))? {
            Peek::Record(record) => {
                self.pending_copy = Some(record);
                true
            }
            Peek::Gap { messages, bytes } => {
                self.pending_gap = Some((messages, bytes));
                true
            }
            // Lapped while copying: the next peek continues from `head`.
            Peek::Empty => false,
        })
    }

    /// Reads the next message, waiting with `wait` for at most `timeout`
    /// (`None`: forever). Never returns [`ReadEvent::Empty`].
    ///
    /// # Errors
    ///
    /// As [`Self::try_read`], plus [`Error::Timeout`].
    pub fn read(
        &mut self,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<ReadEvent<'_>, Error> {
        let deadline = Deadline::after(timeout);
        while !self.probe()? {
            if deadline.passed() {
                return Err(Error::Timeout);
            }
            self.wait_ready(wait, deadline);
        }
        self.try_read()
    }

    /// True if [`Self::try_read`] would return something other than
    /// `Empty`. Consumes nothing: a gap it finds is kept for `try_read` (or
    /// [`Self::take_gap`]) to report. Lets callers that poll several rings pick
    /// one before borrowing it for a message.
    ///
    /// # Errors
    ///
    /// As [`Self::try_read`].
    pub fn probe(&mut self) -> Result<bool, Error> {
        if self.pending_gap.is_some() || self.pending_copy.is_some() || self.closed {
            return Ok(true);
        }
        if self.peeked.is_some() {
            return Ok(true);
        }
        loop {
            match self.peek()? {
                Peek::Record(record) => match self.core.geometry().policy {
                    Policy::Block => {
                        self.peeked = Some(record);
                        return Ok(true);
                    }
                    Policy::Overwrite => {
                        if self.copy_out(record)? {
                            return Ok(true);
                        }
                    }
                },
                Peek::Gap { messages, bytes } => {
                    self.pending_gap = Some((messages, bytes));
                    self.fast = false;
                    return Ok(true);
                }
                Peek::Empty => return self.check_closed(),
            }
        }
    }

    /// Takes a gap found by [`Self::probe`]: `(messages, bytes)` lost.
    pub fn take_gap(&mut self) -> Option<(u64, u64)> {
        let gap = self.pending_gap.take();
        self.fast = self.is_fast();
        gap
    }

    /// True once [`ReadEvent::Closed`] was seen: the publisher is gone and
    /// everything it committed has been read.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A handle that can wait for this reader's next message from another
    /// thread (e.g. a blocking task of an async runtime). It watches the
    /// position the reader is at now.
    pub fn ready_probe(&self) -> ReadyProbe {
        ReadyProbe {
            map: self.core.view.clone(),
            position: self.core.position(),
            max_sleep: self.max_sleep,
        }
    }

    /// Reads up to `max` messages in place and hands each payload to `f`,
    /// then releases them all with one store. Returns what it found.
    ///
    /// # Errors
    ///
    /// As [`Self::try_read`]; messages handed to `f` before the error count.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<Drained, Error> {
        let mut out = Drained::default();
        // A probed record is what the first peek below finds again.
        self.peeked = None;
        if self.fast {
            // Block policy without eviction: records stay put until released,
            // so walk them in place with no per-message bookkeeping.
            while out.messages < max {
                match self.peek()? {
                    Peek::Record(record) => {
                        // SAFETY: committed, unreleased (as in `Message::payload`).
                        let payload = unsafe {
                            self.core
                                .view
                                .data_slice(record.payload_offset, record.len as usize)
                        };
                        f(payload.unwrap_or_default());
                        self.core.advance_to(record.end, record.seq + 1);
                        out.messages += 1;
                    }
                    Peek::Gap { messages, bytes } => {
                        // Saturating: the counts come from shared memory.
                        out.lost_messages = out.lost_messages.saturating_add(messages);
                        out.lost_bytes = out.lost_bytes.saturating_add(bytes);
                    }
                    Peek::Empty => break,
                }
            }
            self.core.release();
            if out.messages == 0 {
                out.closed = self.check_closed()?;
            }
            return Ok(out);
        }
        while out.messages < max {
            match self.try_read()? {
                ReadEvent::Message(mut m) => {
                    f(m.payload());
                    m.release = false;
                    out.messages += 1;
                }
                ReadEvent::Gap { messages, bytes } => {
                    // Saturating: the counts come from shared memory.
                    out.lost_messages = out.lost_messages.saturating_add(messages);
                    out.lost_bytes = out.lost_bytes.saturating_add(bytes);
                }
                ReadEvent::Empty => break,
                ReadEvent::Closed => {
                    out.closed = true;
                    break;
                }
            }
        }
        self.core.release();
        Ok(out)
    }

    fn peek(&mut self) -> Result<Peek, Error> {
        self.core.peek().map_err(|f| self.fault(f))
    }

    fn fault(&self, f: ReadFault) -> Error {
        match f {
            ReadFault::Corrupt { position, what } => {
                Error::corrupt(&self.info().path, format!("at position {position}: {what}"))
            }
            ReadFault::Evicted => Error::Evicted,
            ReadFault::SlotLost => Error::SlotLost,
        }
    }

    /// True once the publisher is gone and the ring is drained.
    ///
    /// Gone means its lock is free: the `writer_state` word saying CLOSED
    /// only makes the reader look at once, and a CLOSED that outlasts
    /// [`CLOSE_GRACE`] while the lock is held is reported as corrupt (a
    /// forged word, or a child forked without exec still holding the
    /// publisher's file), never taken for the end of the stream. Every
    /// [`LIVENESS_POLLS`] empty polls (and after every wait slice without
    /// news) the reader also checks that a published tail past its position
    /// has a record there: a position forged inside a record is reported,
    /// not waited on forever.
    fn check_closed(&mut self) -> Result<bool, Error> {
        if self.closed {
            return Ok(true);
        }
        self.empty_polls = self.empty_polls.wrapping_add(1);
        let marked = self.core.writer_closed().map_err(|f| self.fault(f))?;
        let periodic = self.empty_polls % LIVENESS_POLLS == 0;
        if !marked && !periodic {
            return Ok(false);
        }
        let alive = self.core.view.publisher_alive();
        if marked && alive {
            let since = *self.closed_seen.get_or_insert_with(Instant::now);
            if since.elapsed() > CLOSE_GRACE {
                return Err(Error::corrupt(
                    &self.info().path,
                    "writer_state: closed while the publisher still holds its lock (a forged word, or a child forked without exec holds the publisher's file)",
                ));
            }
        }
        // Anything past our position must be readable (see above); the
        // publisher may also have committed more before it went.
        match self.core.verify_empty().map_err(|f| self.fault(f))? {
            Peek::Empty if !alive => {
                self.closed = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Checks the publisher's liveness now (normally done every few thousand
    /// empty polls and on every sleep).
    pub fn publisher_alive(&self) -> bool {
        // Relaxed: a hint; `try_read` confirms with Acquire. Liveness is the
        // publisher's lock: it works across pid namespaces.
        self.core
            .view
            .producer()
            .writer_state
            .load(Ordering::Relaxed)
            == WRITER_OPEN
            && self.core.view.publisher_alive()
    }

    /// Makes the next empty read check whether the publisher is still alive
    /// (normally done every few thousand empty polls). Call it after a wait
    /// that found nothing, so a crashed publisher is noticed promptly.
    pub fn check_publisher_soon(&mut self) {
        self.empty_polls = LIVENESS_POLLS - 1;
    }

    /// Whether a read would find something (a message, a gap, an error or
    /// the end), without consuming anything. Cheap: one stamp load.
    pub fn is_ready(&self) -> bool {
        self.closed || self.core.poll_ready()
    }

    /// Waits until [`Self::is_ready`], the deadline, or one sleep ends.
    fn wait_ready(&mut self, wait: WaitStrategy, deadline: Deadline) -> bool {
        let sleeper = self.sleeper();
        let waited = wait::wait_until(&[sleeper], wait, deadline, self.max_sleep, || {
            self.core.poll_ready()
        });
        if let Some(end) = waited.slept {
            self.sleep_stats.count(end, waited.ready);
        }
        if !waited.ready {
            // A sleep ended without news: is the publisher still there?
            self.check_publisher_soon();
        }
        waited.ready
    }

    /// This reader's place in the ring's sleep/wake handshake.
    pub(crate) fn sleeper(&self) -> Sleeper<'_> {
        self.core.view.sleeper(self.core.claim().map(|c| c.index))
    }

    /// Committed, unread ring bytes: `(position, tail)` (for the bridge).
    pub fn unread_range(&self) -> (u64, u64) {
        // SYNC: tail-publish (Acquire): the records below it are committed.
        let tail = load_acquire_ro(&self.core.view.producer().tail);
        (self.core.position(), tail)
    }

    /// Subscriber slot status check: `Ok` while this reader still owns its slot.
    ///
    /// # Errors
    ///
    /// [`Error::Evicted`] or [`Error::SlotLost`].
    pub fn check_slot(&self) -> Result<(), Error> {
        match self.core.slot_status() {
            SlotStatus::Active => Ok(()),
            SlotStatus::Evicted => Err(Error::Evicted),
            SlotStatus::Lost => Err(Error::SlotLost),
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        if !self.core.view.in_creator_process() {
            // A forked child: the slot and its lock are the parent's.
            self.core.forget_slot();
            return;
        }
        self.core.leave();
        // Last one out of a ring whose publisher is gone removes it (the
        // lock test makes "last" exact: whoever unlocks last sees no lock).
        let _ = crate::shm::sweep::remove_if_unread(&self.core.view);
    }
}

/// Waits until any of `readers` is ready (see [`RingReader::is_ready`]), the
/// timeout passes, or one sleep (at most [`wait::MAX_SLEEP`]) ends. Returns
/// whether one is ready. Under [`WaitStrategy::Block`] it sleeps on all the
/// rings' futexes at once.
pub fn wait_any(readers: &[&RingReader], wait: WaitStrategy, timeout: Option<Duration>) -> bool {
    let sleepers: Vec<Sleeper<'_>> = readers.iter().map(|r| r.sleeper()).collect();
    let max_sleep = readers
        .iter()
        .map(|r| r.max_sleep)
        .min()
        .unwrap_or(wait::MAX_SLEEP);
    wait::wait_until(&sleepers, wait, Deadline::after(timeout), max_sleep, || {
        readers.iter().any(|r| r.is_ready())
    })
    .ready
}

impl SleepStats {
    fn count(&mut self, end: SleepEnd, ready_after: bool) {
        self.sleeps += 1;
        match end {
            SleepEnd::Ready => self.ready_at_recheck += 1,
            SleepEnd::Woken => self.woken += 1,
            SleepEnd::TimedOut => {
                self.timeouts += 1;
                if ready_after {
                    self.timeouts_with_data += 1;
                }
            }
        }
    }
}

/// Waits for a ring's next message without borrowing its reader; see
/// [`RingReader::ready_probe`] and [`wait_probes`].
#[derive(Debug, Clone)]
pub struct ReadyProbe {
    map: Arc<Mapping>,
    position: u64,
    max_sleep: Duration,
}

impl ReadyProbe {
    fn is_ready(&self) -> bool {
        // Relaxed: hints; the reader re-reads with Acquire.
        let stamp = self.map.word(self.position).load(Ordering::Relaxed);
        let producer = self.map.producer();
        crate::ring::records::classify(stamp, self.position)
            != crate::ring::records::StampKind::NotYet
            || producer.tail.load(Ordering::Relaxed) > self.position
            || producer.writer_state.load(Ordering::Relaxed) != WRITER_OPEN
    }

    fn sleeper(&self) -> Sleeper<'_> {
        self.map.sleeper(None)
    }
}

/// Waits until any probe's ring has news, the timeout passes, or one sleep
/// (at most [`wait::MAX_SLEEP`]) ends. Returns whether one is ready.
pub fn wait_probes(probes: &[ReadyProbe], wait: WaitStrategy, timeout: Option<Duration>) -> bool {
    let sleepers: Vec<Sleeper<'_>> = probes.iter().map(ReadyProbe::sleeper).collect();
    let max_sleep = probes
        .iter()
        .map(|p| p.max_sleep)
        .min()
        .unwrap_or(wait::MAX_SLEEP);
    wait::wait_until(&sleepers, wait, Deadline::after(timeout), max_sleep, || {
        probes.iter().any(ReadyProbe::is_ready)
    })
    .ready
}

/// What [`RingReader::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Messages handed to the callback.
    pub messages: usize,
    /// Messages lost to overwrites before them.
    pub lost_messages: u64,
    /// Bytes lost to overwrites before them.
    pub lost_bytes: u64,
    /// The publisher is gone and the ring is drained.
    pub closed: bool,
}

/// One message read from a ring. Consumed (and, for a single read, released
/// to the publisher) when dropped.
#[derive(Debug)]
pub struct Message<'a> {
    reader: &'a mut RingReader,
    record: RecordRef,
    copied: bool,
    /// Release to the publisher on drop (false inside a batch).
    release: bool,
}

impl Message<'_> {
    /// The payload bytes: in place in the ring (Block policy) or a validated
    /// copy (Overwrite policy). 16-byte aligned.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        if self.copied {
            // SAFETY: `scratch` holds at least `len` initialized bytes (the
            // validated copy made by `try_read`).
            unsafe {
                std::slice::from_raw_parts(
                    self.reader.scratch.as_ptr().cast::<u8>(),
                    self.record.len as usize,
                )
            }
        } else {
            // Block policy: the record is committed and not released, so the
            // writer does not overwrite it while `self` borrows the reader
            // (our slot position, or our hold when evicted, gates it).
            // SAFETY: unchanged while borrowed (above).
            let payload = unsafe {
                self.reader
                    .core
                    .view
                    .data_slice(self.record.payload_offset, self.record.len as usize)
            };
            // `peek` validated the range against the ring's bounds, and
            // `data_slice` checks it again (release builds too).
            payload.unwrap_or_default()
        }
    }

    /// The record's absolute ring position.
    pub fn position(&self) -> u64 {
        self.record.position
    }

    /// The publisher's sequence number for this message (64-bit: never
    /// wraps in practice).
    pub fn sequence(&self) -> u64 {
        self.record.seq
    }
}

impl Drop for Message<'_> {
    #[inline]
    fn drop(&mut self) {
        let (end, next) = (self.record.end, self.record.seq + 1);
        if !self.release {
            self.reader.core.advance_to(end, next);
        } else if self.reader.fast {
            // Finished: released in a batch (see `ReaderCore::finish`).
            self.reader.core.finish(end, next);
        } else {
            // Eviction (a hold to end), Overwrite: release now, as before.
            self.reader.core.consume_to(end, next);
        }
    }
}

/// What `handle::reactor` uses of a probe.
impl ReadyProbe {
    /// Whether the watched position has news.
    pub(crate) fn ready(&self) -> bool {
        self.is_ready()
    }

    /// The ring's mapping.
    pub(crate) fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// The probe's place in the sleep/wake handshake (no slot flag).
    pub(crate) fn handshake_sleeper(&self) -> Sleeper<'_> {
        self.sleeper()
    }
}
