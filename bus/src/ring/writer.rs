//! The writer side of a ring: reserve, commit, publish. Wait-free except for
//! the Block policy's gate, which only costs a scan when space seems short.

use super::{gate::GateState, Geometry, Policy, View};
use crate::{
    layout::{
        data_stamp, meta_word, padding_stamp, record_size, split_meta, RECORD_ALIGN, RECORD_HEADER,
        STAMP_COMMITTED, STAMP_FLAGS, STAMP_PADDING, WRITER_CLOSED,
    },
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
    /// Local copy of `Control::head`.
    head: u64,
    /// The gate this writer honours (its copy of `Control::limit`).
    limit: u64,
    /// Sequence number of the next record.
    seq: u32,
    /// Records published so far.
    published: u64,
    pub(crate) gate: GateState,
}

impl<V: View> WriterCore<V> {
    /// Takes over a freshly initialized ring (all positions 0).
    pub(crate) fn new(view: V) -> Self {
        let geo = *view.geometry();
        Self {
            view,
            geo,
            write: 0,
            tail: 0,
            head: 0,
            limit: 0,
            seq: 0,
            published: 0,
            gate: GateState::default(),
        }
    }

    /// Takes over a freshly initialized ring whose positions start at
    /// `start` (a replica continuing a remote stream; `Control` was
    /// initialized to `start` by the creator).
    pub(crate) fn new_at(view: V, start: u64) -> Self {
        Self {
            write: start,
            tail: start,
            head: start,
            limit: start,
            ..Self::new(view)
        }
    }

    /// Reserves `len` bytes of whole records (a replica chunk) at the write
    /// position: same gate and head rules as [`Self::reserve`].
    pub(crate) fn reserve_raw(&mut self, len: u64) -> Result<u64, ReserveFail> {
        let cap = self.geo.capacity;
        if len == 0 || len > cap / 2 || len % 16 != 0 {
            return Err(ReserveFail::TooLarge);
        }
        let end = self.write + len;
        if self.geo.policy == Policy::Block && end > self.limit + cap {
            self.refresh_gate(end);
            if end > self.limit + cap {
                return Err(ReserveFail::Full);
            }
        }
        let touch_end = match self.geo.policy {
            Policy::Overwrite => end + RECORD_HEADER,
            Policy::Block => (end + RECORD_HEADER).min(self.limit + cap),
        };
        self.advance_head(touch_end);
        Ok(self.write)
    }

    /// Validates and publishes `len` bytes of records received into the ring
    /// at the write position. The first record's stamp arrives separately
    /// (`first_stamp`) so that no reader sees it before validation; every
    /// other stamp and all meta words are already in the ring. Returns the
    /// number of data records, or the position and reason of the first
    /// framing error (then nothing is published).
    pub(crate) fn commit_raw(
        &mut self,
        first_stamp: u64,
        len: u64,
    ) -> Result<u32, (u64, &'static str)> {
        let cap = self.geo.capacity;
        let mask = self.geo.mask();
        let start = self.write;
        let end = start + len;
        let mut pos = start;
        let mut records = 0u32;
        let mut last_seq = None;
        while pos < end {
            let off = pos & mask;
            let stamp = if pos == start {
                first_stamp
            } else {
                // Relaxed: this thread received these bytes itself.
                self.view.word(off).load(Ordering::Relaxed)
            };
            let (rec_len, seq) = split_meta(self.view.word(off + 8).load(Ordering::Relaxed));
            let size = if stamp == data_stamp(pos) {
                if u64::from(rec_len) > self.geo.max_message {
                    return Err((pos, "record longer than the ring's maximum message"));
                }
                if let Some(prev) = last_seq {
                    if seq != u32::wrapping_add(prev, 1) {
                        return Err((pos, "record sequence numbers are not consecutive"));
                    }
                }
                last_seq = Some(seq);
                records += 1;
                record_size(u64::from(rec_len))
            } else if stamp == padding_stamp(pos) {
                if u64::from(rec_len) + RECORD_HEADER != cap - off {
                    return Err((pos, "padding does not end at the ring's end"));
                }
                cap - off
            } else {
                return Err((pos, "record stamp does not match its position"));
            };
            if off + size > cap {
                return Err((pos, "record crosses the ring's end"));
            }
            if pos + size > end {
                return Err((pos, "record extends past the end of the chunk"));
            }
            pos += size;
        }
        if let Some(seq) = last_seq {
            self.seq = seq.wrapping_add(1);
        }
        if end + RECORD_HEADER <= self.limit + cap || self.geo.policy == Policy::Overwrite {
            let next = end & mask;
            // Relaxed: ordered before the first stamp's Release below.
            self.view
                .word(next + 8)
                .store(meta_word(0, self.seq), Ordering::Relaxed);
            self.view.word(next).store(0, Ordering::Relaxed);
        }
        // SYNC: commit. The whole chunk becomes visible with its first stamp.
        self.view
            .word(start & mask)
            .store(first_stamp, Ordering::Release);
        self.write = end;
        self.published = self.published.wrapping_add(u64::from(records));
        self.publish_raw();
        Ok(records)
    }

    /// `publish` for replica chunks (whose records carry the remote sequence).
    fn publish_raw(&mut self) {
        let ctrl = self.view.control();
        // SYNC: tail-publish.
        ctrl.tail.store(self.write, Ordering::Release);
        // Relaxed: a statistic.
        ctrl.published.store(self.published, Ordering::Relaxed);
        self.tail = self.write;
        self.notify();
    }

    /// The position the next record will be written at.
    pub(crate) fn write_position(&self) -> u64 {
        self.write
    }

    /// The last published tail.
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// Records published so far.
    pub(crate) fn published(&self) -> u64 {
        self.published
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
        if self.geo.policy == Policy::Block && end > self.limit + cap {
            // Records committed in this batch count for nobody until published,
            // and subscribers cannot release what they cannot see.
            self.publish();
            self.refresh_gate(end);
            if end > self.limit + cap {
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
            let gate_room = (self.limit + cap).saturating_sub(start + RECORD_HEADER);
            room = room.min(gate_room & !(RECORD_ALIGN - 1)).max(len);
        }
        let end = start + record_size(room);
        // Everything this record may touch, including the next stamp it
        // clears (never past the gate: a stamp there is not cleared).
        let touch_end = match self.geo.policy {
            Policy::Overwrite => end + RECORD_HEADER,
            Policy::Block => (end + RECORD_HEADER).min(self.limit + cap),
        };
        self.advance_head(touch_end);
        if start != self.write {
            self.write_padding(start);
        }
        Ok(Reserved {
            position: start,
            len: room,
        })
    }

    /// Moves `head` past every record the bytes below `touch_end` overwrite.
    fn advance_head(&mut self, touch_end: u64) {
        let cap = self.geo.capacity;
        if touch_end <= self.head + cap {
            return;
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
        let mask = self.geo.mask();
        let mut head = self.head;
        while head < target {
            let off = head & mask;
            // Relaxed: these are this writer's own earlier stores.
            let stamp = self.view.word(off).load(Ordering::Relaxed);
            let meta = self.view.word(off + 8).load(Ordering::Relaxed);
            let size = if stamp == data_stamp(head) {
                record_size(u64::from(split_meta(meta).0))
            } else if stamp == padding_stamp(head) {
                cap - off
            } else {
                // Not a record we wrote (someone else wrote our data pages):
                // no intact history before the new record.
                head = self.write;
                break;
            };
            head += size;
        }
        self.head = head;
        // SYNC: head-advance. Release so a joiner that loads `head` (Acquire)
        // sees the stamps of the records from there on; the fence orders this
        // store before the overwriting stores that follow, for overwrite-mode
        // readers that validate their copies against `head` (seqlock).
        self.view.control().head.store(head, Ordering::Release);
        fence(Ordering::Release);
    }

    /// Fills `write..start` (up to the end of the ring) with a padding record.
    fn write_padding(&mut self, start: u64) {
        let mask = self.geo.mask();
        let off = self.write & mask;
        let len = start - self.write - RECORD_HEADER;
        // Relaxed: published by the stamp's Release below.
        self.view
            .word(off + 8)
            .store(meta_word(len as u32, 0), Ordering::Relaxed);
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

    /// Commits a reservation with its final payload length (`len <= r.len`).
    /// Readers may see it at once; `tail` moves at the next [`Self::publish`].
    pub(crate) fn commit(&mut self, r: Reserved, len: u64) {
        debug_assert!(len <= r.len && r.position == self.write);
        let mask = self.geo.mask();
        let cap = self.geo.capacity;
        let off = r.position & mask;
        let end = r.position + record_size(len);
        self.view
            .word(off + 8)
            .store(meta_word(len as u32, self.seq), Ordering::Relaxed);
        // Clear the stamp where the next record will start, so a reader that
        // reaches it never takes stale bytes for a commit. Skipped only when
        // the ring is exactly full: then that word is the oldest unread
        // record's genuine (older) stamp.
        if self.geo.policy == Policy::Overwrite || end + RECORD_HEADER <= self.limit + cap {
            // Relaxed: ordered before the stamp below by its Release. The meta
            // word carries the next record's sequence number, so a joiner
            // that starts there knows it (exact loss counts from the start).
            let next = end & mask;
            self.view
                .word(next + 8)
                .store(meta_word(0, self.seq.wrapping_add(1)), Ordering::Relaxed);
            self.view.word(next).store(0, Ordering::Relaxed);
        }
        // SYNC: commit. Pairs with the reader's Acquire load of this stamp:
        // the meta word, the payload and the cleared next stamp are visible.
        self.view
            .word(off)
            .store(data_stamp(r.position), Ordering::Release);
        self.write = end;
        self.seq = self.seq.wrapping_add(1);
    }

    /// Makes everything committed visible through `tail` and wakes sleepers.
    pub(crate) fn publish(&mut self) {
        if self.write == self.tail {
            return;
        }
        let ctrl = self.view.control();
        // SYNC: tail-publish. Pairs with Acquire loads of `tail` by readers,
        // joiners and the bridge: every stamp below it is visible to them.
        ctrl.tail.store(self.write, Ordering::Release);
        self.published += u64::from(self.seq.wrapping_sub(self.published as u32));
        // Relaxed: a statistic, nobody orders anything by it.
        ctrl.published.store(self.published, Ordering::Relaxed);
        self.tail = self.write;
        self.notify();
    }

    /// SYNC: notify. The fence orders the `tail` store before the `waiters`
    /// load; the reader fences between its `waiters` increment and its
    /// re-check. One of the two sees the other, so no wake-up is missed.
    fn notify(&self) {
        let ctrl = self.view.control();
        fence(Ordering::SeqCst);
        // Relaxed: the fence above provides the ordering.
        if ctrl.waiters.load(Ordering::Relaxed) != 0 {
            // Release: a woken reader that loads the futex word (Acquire) sees the new tail.
            ctrl.futex.fetch_add(1, Ordering::Release);
            self.view.futex_wake(&ctrl.futex);
        }
    }

    /// Publishes what is pending and marks the ring closed: readers drain it
    /// and then learn the publisher is gone.
    pub(crate) fn close(&mut self) {
        self.publish();
        let ctrl = self.view.control();
        // Release: a reader that sees CLOSED (Acquire) also sees the final tail.
        ctrl.writer_state.store(WRITER_CLOSED, Ordering::Release);
        // Release: wake-ups carry the close like they carry new data.
        ctrl.futex.fetch_add(1, Ordering::Release);
        self.view.futex_wake(&ctrl.futex);
    }

    /// Recomputes the gate from the subscriber table (see [`super::gate`]).
    pub(crate) fn refresh_gate(&mut self, needed_end: u64) {
        let cap = self.geo.capacity;
        let lowest = needed_end.saturating_sub(cap);
        // Aim past the need by an eighth of the ring so refreshes are rare,
        // but stop at a record boundary: the limit must be one (a joiner may
        // start there, and an unclear stamp at `limit + cap` must be genuine).
        let target = self.boundary_at_or_after(lowest + cap / 8);
        let limit = super::gate::refresh_limit(
            &self.view,
            &mut self.gate,
            &self.geo,
            self.tail,
            lowest,
            target,
        );
        self.limit = limit;
    }

    /// The first record boundary at or after `target`, walking this writer's
    /// own intact records from `head`; the published tail at the most.
    fn boundary_at_or_after(&self, target: u64) -> u64 {
        let cap = self.geo.capacity;
        let mask = self.geo.mask();
        let mut pos = self.head;
        while pos < target && pos < self.tail {
            let off = pos & mask;
            // Relaxed: this writer's own earlier stores.
            let stamp = self.view.word(off).load(Ordering::Relaxed);
            let meta = self.view.word(off + 8).load(Ordering::Relaxed);
            pos += if stamp == data_stamp(pos) {
                record_size(u64::from(split_meta(meta).0))
            } else if stamp == padding_stamp(pos) {
                cap - off
            } else {
                return self.tail;
            };
        }
        pos.min(self.tail)
    }
}

// Keep the flag constants referenced so a layout change is noticed here.
const _: () = assert!(STAMP_FLAGS & (STAMP_COMMITTED | STAMP_PADDING) == 3);
