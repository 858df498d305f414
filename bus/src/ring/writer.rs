//! The writer side of a ring: reserve, commit, publish. Wait-free except for
//! the Block policy's gate, which only costs a scan when space seems short.
//!
//! The writer reads back only its own records (to advance `head`); those
//! live in the publisher's own file, but a same-user process can still
//! damage them, so even they are checked: a bad one is
//! [`ReserveFail::Corrupt`] naming the record, never a wrong `head`.

use super::{
    gate::GateState,
    records::{self, StampKind},
    Geometry, Policy, View,
};
use crate::{
    layout::{
        data_stamp, gap_stamp, meta_word, padding_stamp, record_size, GAP_PAYLOAD,
        MAX_RECORD_PAYLOAD, RECORD_ALIGN, RECORD_HEADER, WRITER_CLOSED,
    },
    shm::membarrier::{self, WakeHandshake},
    sync::{fence, Ordering},
};

/// A reserved, not yet committed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    /// Absolute position of the record header.
    pub(crate) position: u64,
    /// Payload bytes available to the caller.
    pub(crate) len: u64,
}

impl Reserved {
    /// Ring offset of the payload's first byte.
    #[inline]
    pub(crate) fn payload_offset(&self, mask: u64) -> u64 {
        (self.position & mask) + RECORD_HEADER
    }
}

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveFail {
    /// The payload is larger than the ring's maximum message size.
    TooLarge,
    /// Block policy: subscribers have not released enough space.
    Full,
    /// The writer's own records were damaged at `position`.
    Corrupt { position: u64, what: &'static str },
}

/// How [`crate::ReplicaWriter::try_skip_to`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Done: the write position is the skip's target and the next sequence
    /// number the one asked for; local subscribers see exactly `lost`
    /// messages lost.
    Done {
        /// Messages reported lost to local subscribers.
        lost: u64,
    },
    /// Local subscribers hold the space now; nothing was written. Retry
    /// after they move (see [`crate::ReplicaWriter::room_until`]).
    NoRoom,
    /// No gap records of this ring can cover the range with this count
    /// (longer than the ring, or a count and no piece of 32 bytes or more
    /// to carry it); nothing was written. The caller publishes the count
    /// with [`crate::ReplicaWriter::try_write_gap`] and starts a new ring at
    /// the target.
    Unrepresentable,
}

/// Why a skip was refused (the caller's arguments, or damaged records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipFail {
    /// The target or the sequence number is not one this writer can go to.
    Invalid(&'static str),
    /// The writer's own records were damaged at `position`.
    Corrupt { position: u64, what: &'static str },
}

/// What one gap-record piece of a skip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// A padding record (only a piece that ends at the ring's end).
    Padding,
    /// A gap record carrying `count` (0: a filler).
    Gap { count: u64 },
}

/// The single writer of a ring.
#[derive(Debug)]
pub(crate) struct WriterCore<V: View> {
    pub(crate) view: V,
    geo: Geometry,
    /// Next write position; records in `tail..write` are committed but not yet published.
    write: u64,
    /// Last published tail.
    tail: u64,
    /// Local copy of `Producer::head`.
    head: u64,
    /// The gate this writer honours. Private: the shared copy is published
    /// for joiners only and never read back.
    limit: u64,
    /// Sequence number of the next record (64-bit).
    seq: u64,
    /// The sequence number published so far (`Producer::published`).
    published: u64,
    /// False for a replica that has not received a record yet: its first
    /// record sets the numbering.
    seq_known: bool,
    /// How `notify` closes the store-load race with sleepers (the ring's
    /// header says the same to them).
    handshake: WakeHandshake,
    pub(crate) gate: GateState,
    /// Recent record boundaries this writer wrote (see [`Marks`]).
    marks: Marks,
    /// The last value stored in `Producer::space_wanted`.
    wanted: u64,
    /// `write` when the gate last held this writer back.
    blocked_at: Option<u64>,
}

/// How many recent record boundaries a writer remembers.
const MARKS: usize = 64;

/// Record boundaries a writer remembers so that a gate refresh finds a
/// boundary near its aim without walking records: each record end at least
/// `stride` (a thirty-second of the ring) past the previous mark is noted
/// (one compare per commit). Sixty-four marks a thirty-second of the ring
/// apart cover two rings of history, more than `head..tail` ever spans.
#[derive(Debug)]
struct Marks {
    at: [u64; MARKS],
    /// Marks ever noted; the newest is `at[(count - 1) % MARKS]`.
    count: usize,
    /// The next boundary at or past this is noted.
    next: u64,
    stride: u64,
}

impl Marks {
    fn new(start: u64, capacity: u64) -> Self {
        let mut marks = Self {
            at: [0; MARKS],
            count: 0,
            next: start,
            stride: (capacity / 32).max(RECORD_ALIGN),
        };
        marks.note(start);
        marks
    }

    /// Notes `pos`, a record boundary of this writer's (a record's end).
    #[inline]
    fn note(&mut self, pos: u64) {
        if pos >= self.next {
            self.at[self.count % MARKS] = pos;
            self.count += 1;
            self.next = pos + self.stride;
        }
    }

    /// The oldest remembered boundary in `from..=to`, if any.
    fn first_in(&self, from: u64, to: u64) -> Option<u64> {
        let oldest = self.count.saturating_sub(MARKS);
        (oldest..self.count)
            .map(|i| self.at[i % MARKS])
            .find(|&m| m >= from)
            .filter(|&m| m <= to)
    }
}

impl<V: View> WriterCore<V> {
    /// Takes over a freshly initialized ring (all positions 0).
    pub(crate) fn new(view: V) -> Self {
        Self::new_at(view, 0, Some(0))
    }

    /// Takes over a freshly initialized ring whose positions start at
    /// `start` and sequence numbers at `seq` (a replica continuing a remote
    /// stream; the producer page was initialized to these by the creator).
    /// `seq: None`: the first received record sets the numbering.
    pub(crate) fn new_at(view: V, start: u64, seq: Option<u64>) -> Self {
        let geo = *view.geometry();
        let handshake = view.wake_handshake();
        // Relaxed: the ring is not visible yet (or, in production, the
        // creator stored the same values before publishing the ring).
        view.producer()
            .published
            .store(seq.unwrap_or(0), Ordering::Relaxed);
        view.word(start + 8).store(
            seq.map_or(crate::layout::NO_SEQ_HINT, |seq| meta_word(0, seq)),
            Ordering::Relaxed,
        );
        Self {
            view,
            geo,
            write: start,
            tail: start,
            head: start,
            limit: start,
            seq: seq.unwrap_or(0),
            published: seq.unwrap_or(0),
            seq_known: seq.is_some(),
            handshake,
            gate: GateState::default(),
            marks: Marks::new(start, geo.capacity),
            wanted: 0,
            blocked_at: None,
        }
    }

    /// Sets the wake-up handshake (loom models; production takes it from
    /// the view, which read it from the ring's header).
    #[cfg(any(test, loom))]
    pub(crate) fn set_handshake(&mut self, handshake: WakeHandshake) {
        self.handshake = handshake;
    }

    /// Reserves `len` bytes of whole records (a replica chunk) at the write
    /// position: same gate and head rules as [`Self::reserve_up_to`].
    pub(crate) fn reserve_raw(&mut self, len: u64) -> Result<u64, ReserveFail> {
        let cap = self.geo.capacity;
        if len == 0 || len > cap / 2 || len % RECORD_ALIGN != 0 {
            return Err(ReserveFail::TooLarge);
        }
        let end = self.write + len;
        // `within_gate`: a chunk ending exactly at a gate inside a record
        // would leave a stale word where its next stamp goes.
        if self.geo.policy == Policy::Block && !self.within_gate(end) {
            self.refresh_gate(end);
            if !self.within_gate(end) {
                return Err(ReserveFail::Full);
            }
        }
        let touch_end = match self.geo.policy {
            Policy::Overwrite => end + RECORD_HEADER,
            Policy::Block => (end + RECORD_HEADER).min(self.limit + cap),
        };
        self.advance_head(touch_end)?;
        Ok(self.write)
    }

    /// Validates and publishes `len` bytes of records received into the ring
    /// at the write position. The first record's header (stamp and meta
    /// word) arrives separately so that no reader sees it before validation;
    /// every other stamp and meta word is already in the ring. Returns the
    /// number of data records, or the position and reason of the first
    /// framing error (then nothing is published).
    pub(crate) fn commit_raw(
        &mut self,
        first_stamp: u64,
        first_meta: u64,
        len: u64,
    ) -> Result<u32, (u64, &'static str)> {
        let mask = self.geo.mask();
        let start = self.write;
        let end = start + len;
        let mut pos = start;
        let mut records = 0u32;
        // The replica continues the source's numbering: the first record
        // of a fresh replica sets the sequence number (extended from ours).
        let mut seq = self.seq;
        let mut first = !self.seq_known;
        while pos < end {
            let off = pos & mask;
            let stamp = if pos == start {
                first_stamp
            } else {
                // Relaxed: this thread received these bytes itself.
                self.view.word(off).load(Ordering::Relaxed)
            };
            let meta = if pos == start {
                first_meta
            } else {
                // Relaxed: as above.
                self.view.word(off + 8).load(Ordering::Relaxed)
            };
            let kind = records::classify(stamp, pos);
            let header =
                records::check_header(&self.geo, pos, kind, meta).map_err(|what| (pos, what))?;
            if pos + header.size > end {
                return Err((pos, "record extends past the end of the chunk"));
            }
            match kind {
                StampKind::Data | StampKind::Gap => {
                    let record_seq = if first {
                        records::extend_sequence(header.seq_low, seq)
                    } else {
                        seq
                    };
                    if record_seq as u32 != header.seq_low {
                        return Err((pos, "record sequence numbers are not consecutive"));
                    }
                    first = false;
                    seq = if kind == StampKind::Gap {
                        let count = if records::gap_has_count(&header) {
                            // Relaxed: received by this thread.
                            self.view.word(off + RECORD_HEADER).load(Ordering::Relaxed)
                        } else {
                            0
                        };
                        records::after_gap(record_seq, count).map_err(|what| (pos, what))?
                    } else {
                        records += 1;
                        records::after_gap(record_seq, 1).map_err(|what| (pos, what))?
                    };
                }
                _ => {}
            }
            pos += header.size;
        }
        // The chunk's end is a boundary (validated above); its inner ones
        // are not noted: a mark only needs to be near the gate's aim.
        self.marks.note(end);
        self.seq = seq;
        self.seq_known |= !first;
        self.clear_next_stamp(end);
        // Relaxed: published by the first stamp's Release below.
        self.view
            .word((start & mask) + 8)
            .store(first_meta, Ordering::Relaxed);
        // SYNC: commit. The whole chunk becomes visible with its first stamp.
        self.view
            .word(start & mask)
            .store(first_stamp, Ordering::Release);
        self.write = end;
        self.publish();
        Ok(records)
    }

    /// The sequence number the next record gets, `None` while a replica
    /// has not learnt its numbering yet.
    pub(crate) fn known_sequence(&self) -> Option<u64> {
        self.seq_known.then_some(self.seq)
    }

    /// The position up to which records fit without waiting (Block: the
    /// gate plus a ring; Overwrite: unbounded, `u64::MAX`), after a gate
    /// refresh that asks for half a ring of room (the largest replica
    /// chunk): only when less than that is free does the refresh count as
    /// held back (liveness probe, untethered eviction, `space_wanted`).
    ///
    /// A promise: until this writer writes, a reservation ending at or
    /// before it succeeds without a refresh, and the limit never moves back
    /// (`gate::refresh_limit`), so later calls return at least as much.
    /// Joiners start at or after the published limit (`join-limit`).
    pub(crate) fn room_until(&mut self) -> u64 {
        if self.geo.policy == Policy::Overwrite {
            return u64::MAX;
        }
        let cap = self.geo.capacity;
        self.publish();
        self.refresh_gate((self.write + cap / 2).max(self.limit + cap));
        // Not `limit + cap`: a chunk may end there only when `limit` is a
        // record boundary (`within_gate`). Still never moves back: for one
        // limit the word it reads stays until this writer laps it, and a
        // later limit is at least a record alignment further on.
        self.gate_end()
    }

    /// Publishes gap records so that the write position becomes `to` and
    /// the next sequence number `next_seq`: at most two records, one up to
    /// `min(to, end of this lap)` and one from the next lap's start to
    /// `to`; the count (`next_seq - next_sequence`, 0 while the numbering
    /// is unknown) goes in the first piece of 32 bytes or more; a countless
    /// piece that ends at the ring's end is padding, any other a filler
    /// (a gap record with count 0, which readers skip silently).
    pub(crate) fn try_skip_to(&mut self, to: u64, next_seq: u64) -> Result<Skip, SkipFail> {
        let cap = self.geo.capacity;
        let pos = self.write;
        if to < pos || !records::is_record_aligned(to) {
            return Err(SkipFail::Invalid(
                "skip target is below the write position or not 16-aligned",
            ));
        }
        if next_seq == u64::MAX {
            return Err(SkipFail::Invalid(
                "next sequence number is 2^64 - 1 (it would have no successor)",
            ));
        }
        let lost = match self.known_sequence() {
            Some(seq) if next_seq < seq => {
                return Err(SkipFail::Invalid(
                    "next sequence number is below the writer's next sequence number",
                ))
            }
            Some(seq) => next_seq - seq,
            None => 0,
        };
        if to == pos {
            // No bytes to put a count in.
            if lost != 0 {
                return Ok(Skip::Unrepresentable);
            }
            self.learn_sequence(next_seq);
            return Ok(Skip::Done { lost: 0 });
        }
        // Overwrite: a whole ring would clear the first piece's own stamp
        // as the stamp after the last (Block never clears at `limit + cap`).
        let longest = match self.geo.policy {
            Policy::Block => cap,
            Policy::Overwrite => cap - RECORD_ALIGN,
        };
        if to - pos > longest {
            return Ok(Skip::Unrepresentable);
        }
        let lap_end = pos + (cap - (pos & self.geo.mask()));
        let first = to.min(lap_end) - pos;
        let second = to - pos - first;
        // A header's length field is 32 bits.
        let fits = |size: u64| size == 0 || size - RECORD_HEADER <= MAX_RECORD_PAYLOAD;
        if !fits(first) || !fits(second) {
            return Ok(Skip::Unrepresentable);
        }
        let carrier = match lost {
            0 => None,
            _ if first >= 2 * RECORD_HEADER => Some(0),
            _ if second >= 2 * RECORD_HEADER => Some(1),
            _ => return Ok(Skip::Unrepresentable),
        };
        if self.geo.policy == Policy::Block && !self.within_gate(to) {
            self.publish();
            self.refresh_gate(to);
            if !self.within_gate(to) {
                return Ok(Skip::NoRoom);
            }
        }
        let touch_end = match self.geo.policy {
            Policy::Overwrite => to + RECORD_HEADER,
            Policy::Block => (to + RECORD_HEADER).min(self.limit + cap),
        };
        self.advance_head(touch_end).map_err(|e| match e {
            ReserveFail::Corrupt { position, what } => SkipFail::Corrupt { position, what },
            // `advance_head` fails only on damage.
            ReserveFail::TooLarge | ReserveFail::Full => SkipFail::Corrupt {
                position: pos,
                what: "head advance failed",
            },
        })?;
        self.learn_sequence(next_seq);
        for (index, size) in [first, second].into_iter().enumerate() {
            if size == 0 {
                continue;
            }
            let piece = if carrier == Some(index) {
                Piece::Gap { count: lost }
            } else if self.write + size == lap_end {
                Piece::Padding
            } else {
                Piece::Gap { count: 0 }
            };
            self.write_piece(size, piece);
        }
        // The count piece moved the numbering on; without one it already was.
        self.seq = next_seq;
        self.publish();
        Ok(Skip::Done { lost })
    }

    /// A replica that did not know its numbering takes `next_seq` (no
    /// record with a number was written yet, so nothing is renumbered).
    /// The counter readers extend sequence numbers with is stored now,
    /// before any stamp that follows (whose Release publishes it).
    fn learn_sequence(&mut self, next_seq: u64) {
        if self.seq_known {
            return;
        }
        self.seq = next_seq;
        self.seq_known = true;
        self.published = next_seq;
        // Relaxed: a hint (see `publish`), published by the next stamp.
        self.view
            .producer()
            .published
            .store(next_seq, Ordering::Relaxed);
    }

    /// Writes one piece of a skip at the write position: `size` bytes (a
    /// multiple of 16, at least 16; the caller checked the room and that
    /// the length fits a header), committed like a record.
    fn write_piece(&mut self, size: u64, piece: Piece) {
        let pos = self.write;
        let off = pos & self.geo.mask();
        let len = size - RECORD_HEADER;
        let end = pos + size;
        // Relaxed: published by the stamp's Release below.
        self.view
            .word(off + 8)
            .store(meta_word(len as u32, self.seq), Ordering::Relaxed);
        let stamp = match piece {
            Piece::Padding => padding_stamp(pos),
            Piece::Gap { count } => {
                if len >= GAP_PAYLOAD {
                    // Relaxed: as above. A filler of 32 bytes or more has a
                    // count word too: 0.
                    self.view
                        .word(off + RECORD_HEADER)
                        .store(count, Ordering::Relaxed);
                }
                self.seq += count;
                gap_stamp(pos)
            }
        };
        self.clear_next_stamp(end);
        // SYNC: commit (skip piece: padding or gap record).
        self.view.word(off).store(stamp, Ordering::Release);
        self.write = end;
        self.marks.note(end);
    }

    /// The position the next record will be written at.
    pub(crate) fn write_position(&self) -> u64 {
        self.write
    }

    /// The last published tail.
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// The sequence number of the next record (= records published so far
    /// on a ring that started at 0 and had no gaps).
    pub(crate) fn next_sequence(&self) -> u64 {
        self.seq
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Where a record with `len` payload bytes would start and end, counting
    /// the padding record needed when it does not fit before the ring's end.
    fn placement(&self, len: u64) -> (u64, u64) {
        let size = record_size(len);
        let to_end = self.geo.capacity - (self.write & self.geo.mask());
        let start = if size <= to_end {
            self.write
        } else {
            self.write + to_end
        };
        (start, start + size)
    }

    /// Reserves a record with room for `len` payload bytes.
    ///
    /// Under the Block policy this fails with `Full` when subscribers hold the
    /// space; the caller decides whether to wait ([`Self::refresh_gate`] runs
    /// liveness and eviction checks).
    #[cfg(any(test, loom))]
    pub(crate) fn reserve(&mut self, len: u64) -> Result<Reserved, ReserveFail> {
        self.reserve_up_to(len, len)
    }

    /// Reserves room for at least `len` payload bytes and, if it is free now
    /// without waiting or wrapping, up to `want` (for serializers that learn
    /// their output size only by writing).
    pub(crate) fn reserve_up_to(&mut self, len: u64, want: u64) -> Result<Reserved, ReserveFail> {
        if len > self.geo.max_message {
            return Err(ReserveFail::TooLarge);
        }
        let cap = self.geo.capacity;
        let (start, end) = self.placement(len);
        if self.geo.policy == Policy::Block && !self.within_gate(end) {
            // Records committed in this batch count for nobody until published,
            // and subscribers cannot release what they cannot see.
            self.publish();
            self.refresh_gate(end);
            if !self.within_gate(end) {
                return Err(ReserveFail::Full);
            }
        }
        // Extend to `want` within the ring's end, the maximum message and
        // (Block) the current gate.
        let mut room = want
            .max(len)
            .min(self.geo.max_message)
            .min(cap - (start & self.geo.mask()) - RECORD_HEADER);
        if self.geo.policy == Policy::Block {
            // The stamp load in `gate_end` only when the last header's worth
            // of room could matter (it never takes more than a header off).
            let loose = (self.limit + cap).saturating_sub(start + RECORD_HEADER);
            let gate_room = if loose >= room + RECORD_HEADER {
                loose
            } else {
                self.gate_end().saturating_sub(start + RECORD_HEADER)
            };
            room = room.min(gate_room & !(RECORD_ALIGN - 1)).max(len);
        }
        let end = start + record_size(room);
        // Everything this record may touch, including the next stamp it
        // clears (never past the gate: a stamp there is not cleared).
        let touch_end = match self.geo.policy {
            Policy::Overwrite => end + RECORD_HEADER,
            Policy::Block => (end + RECORD_HEADER).min(self.limit + cap),
        };
        self.advance_head(touch_end)?;
        if start != self.write {
            self.write_padding(start);
        }
        Ok(Reserved {
            position: start,
            len: room,
        })
    }

    /// Whether a record ending at `end` fits under the Block gate. The
    /// common case needs no load: [`Self::gate_end`] is at most a header
    /// short of `limit + capacity`.
    fn within_gate(&self, end: u64) -> bool {
        end + RECORD_HEADER <= self.limit + self.geo.capacity || end <= self.gate_end()
    }

    /// How far a record placed by [`Self::reserve_up_to`] may end under the
    /// Block gate: `limit + capacity`, or a header less when the word there
    /// (the one at `limit`, a lap ago) is not the stamp of a record at
    /// `limit`. A slot may hold the gate inside a record (an untethered
    /// export pins byte positions; a hostile slot may forge one); a record
    /// ending exactly at the gate leaves that word uncleared where the next
    /// stamp goes (`clear_next_stamp` must not touch held bytes), and
    /// readers would take the stale payload bytes for a foreign stamp
    /// (`Corrupt`). Found by kill chaos (issue 13).
    fn gate_end(&self) -> u64 {
        let end = self.limit + self.geo.capacity;
        if self.limit >= self.write {
            return end; // nothing of this lap at `limit` yet
        }
        // Relaxed: a word only this writer stores (the data file is
        // read-only to everyone else), last stored by this thread.
        let stamp = self
            .view
            .word(self.limit & self.geo.mask())
            .load(Ordering::Relaxed);
        match records::classify(stamp, self.limit) {
            StampKind::Data | StampKind::Padding | StampKind::Gap => end,
            _ => end - RECORD_HEADER,
        }
    }

    /// Moves `head` past every record the bytes below `touch_end` overwrite.
    fn advance_head(&mut self, touch_end: u64) -> Result<(), ReserveFail> {
        let cap = self.geo.capacity;
        if touch_end <= self.head + cap {
            return Ok(());
        }
        // Advance a sixteenth of the ring past the need, so most records find
        // `head` already far enough: one walk and one store per stretch
        // instead of per record. Under Block never past the gate, which every
        // subscriber has released (so no reader's record is declared gone).
        let mut target = touch_end - cap + cap / 16;
        if self.geo.policy == Policy::Block {
            target = target.min(self.limit.max(touch_end - cap));
        }
        let target = target.min(self.write.max(touch_end - cap));
        let mut head = self.head;
        while head < target {
            let size = self.own_record_size(head)?;
            head += size;
        }
        self.head = head;
        // SYNC: head-advance. Release so a joiner that loads `head` (Acquire)
        // sees the stamps of the records from there on; the fence orders this
        // store before the overwriting stores that follow, for lappable
        // readers that validate their copies against `head` (seqlock).
        self.view.producer().head.store(head, Ordering::Release);
        fence(Ordering::Release);
        Ok(())
    }

    /// The size of this writer's own committed record at `pos`, checked.
    fn own_record_size(&self, pos: u64) -> Result<u64, ReserveFail> {
        let off = pos & self.geo.mask();
        // Relaxed: these are this writer's own earlier stores.
        let stamp = self.view.word(off).load(Ordering::Relaxed);
        let meta = self.view.word(off + 8).load(Ordering::Relaxed);
        let kind = records::classify(stamp, pos);
        match records::check_header(&self.geo, pos, kind, meta) {
            Ok(h) if pos + h.size <= self.write => Ok(h.size),
            Ok(_) => Err(ReserveFail::Corrupt {
                position: pos,
                what: "record length reaches past the writer's position",
            }),
            Err(what) => Err(ReserveFail::Corrupt {
                position: pos,
                what: if kind == StampKind::Data
                    || kind == StampKind::Padding
                    || kind == StampKind::Gap
                {
                    what
                } else {
                    "stamp of a written record was changed"
                },
            }),
        }
    }

    /// Fills `write..start` (up to the end of the ring) with a padding record.
    fn write_padding(&mut self, start: u64) {
        let mask = self.geo.mask();
        let off = self.write & mask;
        let len = start - self.write - RECORD_HEADER;
        // Relaxed: published by the stamp's Release below. The padding
        // carries the next record's sequence number too: a joiner that read
        // the cleared stamp here may read this meta word (Relaxed), and must
        // find the same number the cleared stamp's hint gave.
        self.view
            .word(off + 8)
            .store(meta_word(len as u32, self.seq), Ordering::Relaxed);
        // The next record starts at offset 0; clear its stale stamp first
        // (with the sequence hint, as in `commit`).
        self.view
            .word(8)
            .store(meta_word(0, self.seq), Ordering::Relaxed);
        self.view.word(0).store(0, Ordering::Relaxed);
        // SYNC: commit (padding).
        self.view
            .word(off)
            .store(padding_stamp(self.write), Ordering::Release);
        self.write = start;
        self.marks.note(start);
    }

    /// Copies `payload` into a reservation (test and raw-bytes path; the
    /// client serializes in place through the segment's own accessor).
    pub(crate) fn write_payload(&mut self, r: &Reserved, payload: &[u8]) {
        assert!(payload.len() as u64 <= r.len, "payload exceeds reservation");
        // SAFETY: `r` is this writer's current reservation, so the bytes lie
        // inside the ring, are not yet committed, and no reader reads them.
        unsafe {
            self.view
                .write_payload(r.payload_offset(self.geo.mask()), payload)
        };
    }

    /// Clears the stamp where the next record will start (at `end`), so a
    /// reader that reaches it never takes stale bytes for a commit, and
    /// leaves the next sequence number beside it. Skipped only when the ring
    /// is exactly full: then that word is the oldest unread record's genuine
    /// (older) stamp.
    fn clear_next_stamp(&self, end: u64) {
        if self.geo.policy == Policy::Overwrite
            || end + RECORD_HEADER <= self.limit + self.geo.capacity
        {
            // Relaxed: ordered before the caller's stamp by its Release. The
            // meta word carries the next record's sequence number, so a
            // joiner that starts there knows it (exact loss counts from the
            // start).
            let next = end & self.geo.mask();
            self.view
                .word(next + 8)
                .store(meta_word(0, self.seq), Ordering::Relaxed);
            self.view.word(next).store(0, Ordering::Relaxed);
        }
    }

    /// Commits a reservation with its final payload length (`len <= r.len`).
    /// Readers may see it at once; `tail` moves at the next [`Self::publish`].
    pub(crate) fn commit(&mut self, r: Reserved, len: u64) {
        debug_assert!(len <= r.len && r.position == self.write);
        let off = r.position & self.geo.mask();
        let end = r.position + record_size(len);
        // Relaxed: published by the stamp's Release below.
        self.view
            .word(off + 8)
            .store(meta_word(len as u32, self.seq), Ordering::Relaxed);
        self.seq += 1;
        self.clear_next_stamp(end);
        // SYNC: commit. Pairs with the reader's Acquire load of this stamp:
        // the meta word, the payload and the cleared next stamp are visible.
        self.view
            .word(off)
            .store(data_stamp(r.position), Ordering::Release);
        self.write = end;
        self.marks.note(end);
    }

    /// Commits a gap record: `count` messages were lost before the next
    /// record (a replica whose source lost data). Readers report it as a gap
    /// with exactly that count; the sequence numbers skip it.
    pub(crate) fn commit_gap(&mut self, r: Reserved, count: u64) {
        debug_assert!(r.len >= GAP_PAYLOAD && r.position == self.write);
        let off = r.position & self.geo.mask();
        let end = r.position + record_size(GAP_PAYLOAD);
        // Relaxed: published by the stamp's Release below.
        self.view
            .word(off + RECORD_HEADER)
            .store(count, Ordering::Relaxed);
        self.view
            .word(off + 8)
            .store(meta_word(GAP_PAYLOAD as u32, self.seq), Ordering::Relaxed);
        self.seq = self.seq.saturating_add(count);
        self.clear_next_stamp(end);
        // SYNC: commit (gap record).
        self.view
            .word(off)
            .store(gap_stamp(r.position), Ordering::Release);
        self.write = end;
        self.marks.note(end);
    }

    /// Makes everything committed visible through `tail` and wakes sleepers.
    pub(crate) fn publish(&mut self) {
        if self.write == self.tail {
            return;
        }
        let producer = self.view.producer();
        // SYNC: tail-publish. Pairs with Acquire loads of `tail` by readers,
        // joiners and the bridge: every stamp below it is visible to them.
        producer.tail.store(self.write, Ordering::Release);
        if self.published != self.seq {
            self.published = self.seq;
            // Relaxed: a hint for extending sequence numbers, which tolerates
            // any staleness below 2^31 records.
            producer.published.store(self.published, Ordering::Relaxed);
        }
        self.tail = self.write;
        self.notify();
    }

    /// Wakes sleepers after a `tail` store, at most once per sleep of each
    /// (protocol and proofs: `shm::futex`).
    fn notify(&self) {
        match self.handshake {
            WakeHandshake::Membarrier => {
                // SYNC: wake-handshake (asymmetric). Only a compiler fence
                // between the `tail` store above and the `waiters` load
                // below: a sleeper's membarrier forces a full barrier on
                // this CPU at an instruction boundary, before the store
                // (then we see its `waiters`/`wake_armed` stores) or after
                // it (then its re-check sees `tail`). Loom: see membarrier.
                membarrier::light_barrier();
            }
            WakeHandshake::Fence => {
                // SYNC: wake-handshake (symmetric). Pairs with the sleeper's
                // fence(SeqCst) in `futex::barrier`: one of the two sees the other.
                fence(Ordering::SeqCst);
            }
        }
        let w = self.view.waiters();
        // Relaxed: ordered after the `tail` store by the handshake above.
        // Nobody counted: one load, no wake.
        if w.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        // Relaxed: as above. SYNC: wake-coalesce. Wake only when this swap
        // takes a sleeper's arm; publishes while a wake is in flight find 0.
        if w.wake_armed.load(Ordering::Relaxed) != 0 && w.wake_armed.swap(0, Ordering::Relaxed) != 0
        {
            let futex = &self.view.producer().futex;
            // SYNC: wake-coalesce. Release: a sleeper whose prepare loads
            // this bump (Acquire) armed after our swap, so its arm is not
            // the one we took; and a woken reader sees the new tail.
            futex.fetch_add(1, Ordering::Release);
            self.view.futex_wake(futex);
        }
    }

    /// Publishes what is pending and marks the ring closed: readers drain it
    /// and then learn the publisher is gone.
    pub(crate) fn close(&mut self) {
        self.publish();
        let producer = self.view.producer();
        // Release: a reader that sees CLOSED (Acquire) also sees the final tail.
        producer
            .writer_state
            .store(WRITER_CLOSED, Ordering::Release);
        // Release: wake-ups carry the close like they carry new data.
        producer.futex.fetch_add(1, Ordering::Release);
        self.view.futex_wake(&producer.futex);
    }

    /// Recomputes the gate from the subscriber table (see [`super::gate`]).
    ///
    /// The limit comes from slot positions alone: the lowest position a
    /// gating slot released, or `target` if that is higher. Both are record
    /// boundaries without a walk over records, as the limit must be (a
    /// joiner may start there, and the stamp at `limit + capacity`, which
    /// [`Self::clear_next_stamp`] leaves alone when the ring is exactly
    /// full, must be the genuine older stamp of the record at `limit`):
    /// - a slot position is one: subscribers release only the ends of
    ///   records they read (batched or not), and join at `tail`, `head`,
    ///   the published limit or a position a previous owner released;
    ///   the scan clamps a forged one to at most `tail` (see [`super::gate`]);
    /// - `target`, the aim past the need, is a boundary this writer noted
    ///   when it wrote it ([`Marks`]), or `head` or `tail`.
    ///
    /// When the ring stays full, the position it waits for is stored in
    /// `Producer::space_wanted` (a hint for batched release: subscribers
    /// below it release sooner).
    pub(crate) fn refresh_gate(&mut self, needed_end: u64) {
        let cap = self.geo.capacity;
        let lowest = needed_end.saturating_sub(cap);
        // Aim past the need by an eighth of the ring so refreshes are rare.
        let target = self.boundary_at_or_after(lowest + cap / 8);
        let limit = super::gate::refresh_limit(
            &self.view,
            &mut self.gate,
            &self.geo,
            self.tail,
            lowest,
            target,
            self.limit,
        );
        self.limit = limit;
        if limit < lowest {
            self.want_space(lowest);
        }
    }

    /// Tells subscribers that the gate holds this writer back below
    /// `lowest` (`Producer::space_wanted`): a subscriber releases as soon as
    /// it finishes the record that reaches the wanted position, instead of
    /// at its next batch. A writer held back again within an eighth of the
    /// ring of the last time (a publisher that keeps the ring full) asks
    /// for a sixty-fourth of the ring more than it needs, so that it and a
    /// fast subscriber exchange the slot line once per that many bytes, not
    /// once per record; the first time it asks for exactly what it needs.
    fn want_space(&mut self, lowest: u64) {
        let cap = self.geo.capacity;
        let again = self
            .blocked_at
            .is_some_and(|at| self.write < at.saturating_add(cap / 8));
        self.blocked_at = Some(self.write);
        let wanted = if again {
            (lowest + cap / 64).min(self.tail)
        } else {
            lowest
        };
        if wanted > self.wanted {
            self.wanted = wanted;
            // Relaxed: a hint that makes subscribers release sooner; none
            // waits for it (a subscriber that caught up releases anyway).
            self.view
                .producer()
                .space_wanted
                .store(wanted, Ordering::Relaxed);
        }
    }

    /// A record boundary at or after `target` (at most the published tail)
    /// without reading the ring: `head` if `target` is not past it, else the
    /// oldest boundary this writer noted in `target..=tail`, else the tail.
    /// At most a mark stride (a thirty-second of the ring) past `target`
    /// while marks cover it.
    fn boundary_at_or_after(&self, target: u64) -> u64 {
        if target <= self.head {
            return self.head.min(self.tail);
        }
        self.marks.first_in(target, self.tail).unwrap_or(self.tail)
    }
}

#[cfg(all(test, not(loom)))]
mod gate_refresh_tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ring::{
        gate::{JoinAt, JoinRequest},
        heap::{self, HeapSegment},
        reader::{Peek, ReaderCore},
    };

    const CAP: u64 = 8192;

    /// Record sizes from a fixed xorshift sequence (reproducible).
    fn lengths() -> impl Iterator<Item = u64> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x % 600)
        })
    }

    #[test]
    fn the_limit_is_always_a_record_boundary_without_a_walk() {
        let seg = HeapSegment::new(
            Geometry {
                capacity: CAP,
                max_message: 1024,
                policy: Policy::Block,
                evict_after: None,
            },
            2,
        );
        let req = JoinRequest {
            at: JoinAt::Latest,
            tethered: true,
            durable: None,
            pid: 1,
            start_time: 1,
        };
        let mut r = ReaderCore::join(heap::view(&seg), &req)
            .expect("no fault")
            .expect("a free slot");
        let mut w = WriterCore::new(heap::view(&seg));
        // Every position a record (data or padding) starts at, and tails.
        let mut boundaries = BTreeSet::from([0u64]);
        let mut lens = lengths();
        let mut reads = lengths();
        let mut limits = 0;
        for _ in 0..5000 {
            let len = lens.next().unwrap_or(0);
            match w.reserve(len) {
                Ok(res) => {
                    boundaries.insert(res.position);
                    w.commit(res, len);
                    w.publish();
                    boundaries.insert(w.write_position());
                }
                Err(ReserveFail::Full) => {
                    // Read a few records (batched), then let the writer retry.
                    for _ in 0..reads.next().unwrap_or(0) % 8 + 1 {
                        match r.peek().expect("no fault") {
                            Peek::Record(rec) => r.finish(rec.end, rec.seq + 1),
                            Peek::Empty => break,
                            Peek::Gap { .. } => panic!("gap under Block"),
                        }
                    }
                }
                Err(e) => panic!("{e:?}"),
            }
            let limit = w.view.producer().limit.load(Ordering::Relaxed);
            assert!(
                boundaries.contains(&limit),
                "limit {limit} is not a record boundary"
            );
            limits += 1;
        }
        assert!(limits > 0);
    }

    #[test]
    fn a_gate_refresh_reads_no_record() {
        // Two identical rings; in the second, every ring word the writer
        // wrote is scribbled over after the writes. A refresh that walked
        // the writer's records would fail or stop early there (the walk
        // gave the tail on damage); the limit from slot positions and
        // noted boundaries is the same in both.
        let mk = || {
            HeapSegment::new(
                Geometry {
                    capacity: CAP,
                    max_message: 1024,
                    policy: Policy::Block,
                    evict_after: None,
                },
                1,
            )
        };
        let (clean, damaged) = (mk(), mk());
        let mut limits = Vec::new();
        for seg in [&clean, &damaged] {
            let mut w = WriterCore::new(heap::view(seg));
            let mut lens = lengths();
            // No subscriber: the gate is the aim alone.
            for _ in 0..20 {
                let len = lens.next().unwrap_or(0);
                let res = w.reserve(len).expect("room");
                w.commit(res, len);
                w.publish();
            }
            if std::ptr::eq(seg, &damaged) {
                for off in (0..CAP).step_by(8) {
                    seg.word_store(off, 0xdead_beef_dead_beef);
                }
            }
            // A need that puts the aim (an eighth of the ring past it)
            // well inside the written records.
            let tail = w.tail();
            assert!(tail > 4096, "wrote {tail} bytes");
            w.refresh_gate(tail - 4096 + CAP);
            let limit = w.view.producer().limit.load(Ordering::Relaxed);
            assert!(limit < tail, "the aim is inside the records");
            assert!(limit >= tail - 4096 + CAP / 8, "at or past the aim");
            limits.push(limit);
        }
        assert_eq!(limits[0], limits[1]);
    }
}
