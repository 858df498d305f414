//! The reader side of a ring: find the next committed record by its stamp,
//! validate its framing, and release consumed space.
//!
//! A reader spins on the stamp word of the record it waits for, not on a
//! shared tail: one cache line per small message crosses the cores.

use super::{
    gate::{self, SlotClaim, SlotStatus},
    Geometry, Policy, View,
};
use crate::{
    layout::{data_stamp, padding_stamp, record_size, split_meta, RECORD_HEADER, STAMP_FLAGS},
    sync::{fence, Ordering},
};

/// A committed data record, validated against the ring's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordRef {
    /// Absolute position of the record header.
    pub(crate) position: u64,
    /// Ring offset of the payload.
    pub(crate) payload_offset: u64,
    /// Payload length.
    pub(crate) len: u32,
    /// The writer's sequence number for it.
    pub(crate) seq: u32,
    /// Position just after the record.
    pub(crate) end: u64,
}

/// What the next read finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// A record is ready.
    Record(RecordRef),
    /// Nothing new yet.
    Empty,
    /// Messages were lost before the next record (overwrite policy, or after
    /// an eviction): exact counts.
    Gap { messages: u64, bytes: u64 },
}

/// Why a ring cannot be read any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFault {
    /// The ring's bytes break the record format at `position`.
    Corrupt { position: u64, what: &'static str },
    /// The writer evicted this subscriber for lag (untethered eviction).
    Evicted,
    /// This subscriber's slot was taken away (declared dead, or a foreign write).
    SlotLost,
}

/// One subscriber's cursor over a ring.
#[derive(Debug)]
pub(crate) struct ReaderCore<V: View> {
    pub(crate) view: V,
    geo: Geometry,
    pub(crate) claim: Option<SlotClaim>,
    /// Next position to read.
    position: u64,
    /// Sequence number expected next (None until the first record).
    expected_seq: Option<u32>,
    /// Bytes skipped by laps since the last reported gap.
    lost_bytes: u64,
    /// True while a sample is held under the hold-evict protocol.
    holding: bool,
}

impl<V: View> ReaderCore<V> {
    /// Joins the ring's subscriber table. `None` if every slot is taken.
    pub(crate) fn join(
        view: V,
        at: gate::JoinAt,
        pid: u64,
        start_time: u64,
        now_ns: u64,
    ) -> Option<Self> {
        Self::join_as(view, at, true, pid, start_time, now_ns)
    }

    /// Joins tethered (the normal subscriber) or untethered (gates the writer
    /// only while pinning; see [`gate::pin`]).
    pub(crate) fn join_as(
        view: V,
        at: gate::JoinAt,
        tethered: bool,
        pid: u64,
        start_time: u64,
        now_ns: u64,
    ) -> Option<Self> {
        let geo = *view.geometry();
        let (claim, position) = gate::join(&view, at, tethered, pid, start_time, now_ns)?;
        let mut reader = Self {
            view,
            geo,
            claim: Some(claim),
            position,
            expected_seq: None,
            lost_bytes: 0,
            holding: false,
        };
        reader.expected_seq = reader.sequence_at_start();
        Some(reader)
    }

    /// The sequence number of the record at our start position: from its
    /// header, or from the hint the writer leaves beside a cleared stamp.
    /// Needed so that a reader lapped before its first read still counts its
    /// loss exactly. `None` if the writer raced past us meanwhile.
    fn sequence_at_start(&mut self) -> Option<u32> {
        let mask = self.geo.mask();
        let mut pos = self.position;
        for _ in 0..2 {
            let off = pos & mask;
            // SYNC: commit (Acquire), as in `peek`.
            let stamp = self.view.word(off).load(Ordering::Acquire);
            // Relaxed: ordered after the Acquire above (or validated below).
            let (_, seq) = split_meta(self.view.word(off + 8).load(Ordering::Relaxed));
            if stamp == padding_stamp(pos) {
                pos += self.geo.capacity - off;
                continue;
            }
            if stamp != data_stamp(pos) && stamp != 0 {
                return None;
            }
            // SYNC: head-advance: a writer overwriting `pos` moved head first.
            fence(Ordering::Acquire);
            let head = self.view.control().head.load(Ordering::Relaxed);
            return (head <= self.position).then_some(seq);
        }
        None
    }

    /// The next position this reader will read.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Finds the next record without consuming it. Padding is skipped.
    pub(crate) fn peek(&mut self) -> Result<Peek, ReadFault> {
        let cap = self.geo.capacity;
        let mask = self.geo.mask();
        loop {
            let pos = self.position;
            let off = pos & mask;
            // SYNC: commit. Acquire pairs with the writer's Release store of
            // this stamp: meta, payload and the cleared next stamp are visible.
            let stamp = self.view.word(off).load(Ordering::Acquire);
            if stamp == data_stamp(pos) {
                // Relaxed: ordered after the Acquire above.
                let meta = self.view.word(off + 8).load(Ordering::Relaxed);
                let (len, seq) = split_meta(meta);
                let size = record_size(u64::from(len));
                if u64::from(len) > self.geo.max_message || off + size > cap {
                    return self.fault_or_lap(pos, "record length out of bounds");
                }
                let record = RecordRef {
                    position: pos,
                    payload_offset: off + RECORD_HEADER,
                    len,
                    seq,
                    end: pos + size,
                };
                // Overwrite: the meta word may be torn by a lapping writer;
                // the sequence is checked after the copy is validated.
                return Ok(match self.geo.policy {
                    Policy::Block => self.check_sequence(record),
                    Policy::Overwrite => Peek::Record(record),
                });
            }
            if stamp == padding_stamp(pos) {
                let (len, _) = split_meta(self.view.word(off + 8).load(Ordering::Relaxed));
                if u64::from(len) + RECORD_HEADER != cap - off {
                    return self.fault_or_lap(pos, "padding does not end at the ring's end");
                }
                self.position = pos + (cap - off);
                continue;
            }
            if stamp & !STAMP_FLAGS < pos || stamp == 0 {
                // Not written yet: cleared, or a genuine older stamp. This is
                // the spin path; under Block without eviction it touches no
                // other shared line.
                if self.geo.evict_after.is_some() {
                    match self.slot_status() {
                        SlotStatus::Active => {}
                        SlotStatus::Evicted => return Err(ReadFault::Evicted),
                        SlotStatus::Lost => return Err(ReadFault::SlotLost),
                    }
                }
                if self.geo.policy == Policy::Block {
                    return Ok(Peek::Empty);
                }
                // Overwrite: a lapping writer may have left payload bytes
                // that look older; the tail tells.
                // SYNC: tail-publish (Acquire).
                if self.view.control().tail.load(Ordering::Acquire) <= pos {
                    return Ok(Peek::Empty);
                }
            }
            // A newer stamp or foreign bytes: lapped, or corrupt.
            match self.not_ready_slow(pos)? {
                Some(peek) => return Ok(peek),
                None => continue,
            }
        }
    }

    /// Turns a sequence jump into a reported gap (once), else the record.
    fn check_sequence(&mut self, record: RecordRef) -> Peek {
        let expected = *self.expected_seq.get_or_insert(record.seq);
        if record.seq != expected || self.lost_bytes != 0 {
            let messages = u64::from(record.seq.wrapping_sub(expected));
            let bytes = std::mem::take(&mut self.lost_bytes);
            self.expected_seq = Some(record.seq);
            if messages != 0 || bytes != 0 {
                return Peek::Gap { messages, bytes };
            }
        }
        Peek::Record(record)
    }

    /// The stamp at `pos` is neither ours nor older: decide between lapped,
    /// evicted and corrupt. `Ok(None)` means "retry at the new position".
    fn not_ready_slow(&mut self, pos: u64) -> Result<Option<Peek>, ReadFault> {
        let ctrl = self.view.control();
        // SYNC: tail-publish (Acquire): every stamp below `tail` is visible.
        let tail = ctrl.tail.load(Ordering::Acquire);
        // SYNC: commit (Acquire).
        let stamp = self
            .view
            .word(pos & self.geo.mask())
            .load(Ordering::Acquire);
        if stamp == data_stamp(pos) || stamp == padding_stamp(pos) {
            return Ok(None);
        }
        // SYNC: head-advance (Acquire): if the writer has overwritten `pos`,
        // its head store came first.
        let head = ctrl.head.load(Ordering::Acquire);
        if head > pos {
            return self.lapped(head).map(|()| None);
        }
        if tail > pos {
            return Err(ReadFault::Corrupt {
                position: pos,
                what: "published record has no valid commit stamp",
            });
        }
        if stamp & !STAMP_FLAGS < pos || stamp == 0 {
            return Ok(Some(Peek::Empty));
        }
        // Beyond the tail the writer leaves only cleared or older stamps.
        Err(ReadFault::Corrupt {
            position: pos,
            what: "unpublished position holds a foreign stamp",
        })
    }

    /// For waiters: an empty ring whose tail is past our position is corrupt
    /// (or we were lapped); `peek` alone does not look at the tail.
    pub(crate) fn verify_empty(&mut self) -> Result<Peek, ReadFault> {
        match self.peek()? {
            Peek::Empty => match self.not_ready_slow(self.position)? {
                Some(peek) => Ok(peek),
                None => self.peek(),
            },
            other => Ok(other),
        }
    }

    /// The writer has overwritten `self.position`: jump to `head`.
    fn lapped(&mut self, head: u64) -> Result<(), ReadFault> {
        if self.geo.policy == Policy::Block {
            // Under Block only an evicted (or reaped) subscriber can be lapped.
            return Err(self.slot_fault());
        }
        self.lost_bytes += head - self.position;
        self.position = head;
        Ok(())
    }

    fn fault_or_lap(&mut self, pos: u64, what: &'static str) -> Result<Peek, ReadFault> {
        if self.geo.policy == Policy::Overwrite {
            // Torn by a lapping writer? Then `head` has moved past us.
            fence(Ordering::Acquire);
            let head = self.view.control().head.load(Ordering::Relaxed);
            if head > pos {
                self.lapped(head)?;
                return self.peek();
            }
        }
        Err(ReadFault::Corrupt {
            position: pos,
            what,
        })
    }

    fn slot_fault(&self) -> ReadFault {
        match self.claim.map(|c| gate::status(&self.view, &c)) {
            Some(SlotStatus::Evicted) => ReadFault::Evicted,
            _ => ReadFault::SlotLost,
        }
    }

    /// Whether `peek` would find anything but `Empty` (or the writer closed),
    /// without changing state: one stamp load on the fast path. For waiters.
    pub(crate) fn poll_ready(&self) -> bool {
        let pos = self.position;
        // Relaxed: a hint; `peek` re-loads with Acquire.
        let stamp = self
            .view
            .word(pos & self.geo.mask())
            .load(Ordering::Relaxed);
        if stamp == data_stamp(pos) || stamp == padding_stamp(pos) {
            return true;
        }
        if stamp != 0 && stamp & !STAMP_FLAGS >= pos {
            return true; // lapped or corrupt: `peek` reports it
        }
        let ctrl = self.view.control();
        // Relaxed: hints, confirmed by `peek` and the closed check.
        if ctrl.writer_state.load(Ordering::Relaxed) == crate::layout::WRITER_CLOSED {
            return true;
        }
        if self.geo.policy == Policy::Overwrite && ctrl.tail.load(Ordering::Relaxed) > pos {
            return true;
        }
        self.geo.evict_after.is_some() && self.slot_status() != SlotStatus::Active
    }

    /// Under untethered eviction, announces that a sample is about to be
    /// borrowed in place (SYNC: hold-evict). Without eviction it is a no-op.
    pub(crate) fn begin_hold(&mut self) -> Result<(), ReadFault> {
        if self.geo.evict_after.is_none() || self.holding {
            return Ok(());
        }
        let claim = self.claim.ok_or(ReadFault::SlotLost)?;
        match gate::hold(&self.view, &claim) {
            SlotStatus::Active => {
                self.holding = true;
                Ok(())
            }
            SlotStatus::Evicted => Err(ReadFault::Evicted),
            SlotStatus::Lost => Err(ReadFault::SlotLost),
        }
    }

    /// Consumes records up to `end` (exclusive) and releases them to the writer.
    pub(crate) fn consume_to(&mut self, end: u64, next_seq: u32) {
        self.position = end;
        self.expected_seq = Some(next_seq);
        self.release();
    }

    /// Consumes records up to `end` without releasing them yet (batches).
    pub(crate) fn advance_to(&mut self, end: u64, next_seq: u32) {
        self.position = end;
        self.expected_seq = Some(next_seq);
    }

    /// Releases everything consumed so far and ends any hold.
    pub(crate) fn release(&mut self) {
        if let Some(claim) = &self.claim {
            gate::release(&self.view, claim, self.position);
            if self.holding {
                gate::unhold(&self.view, claim);
                self.holding = false;
            }
        }
    }

    /// Copies the record's payload out with reads that tolerate a concurrent
    /// writer, then confirms the writer had not started overwriting it.
    /// Returns `Record` with a good copy, `Gap` if messages were lost before
    /// it (the record is read again next time), or `Empty` if the copy may be
    /// torn (the reader was lapped; the next peek continues from `head`).
    pub(crate) fn copy_validated(&mut self, record: &RecordRef, dst: &mut [u8]) -> Peek {
        debug_assert_eq!(dst.len(), record.len as usize);
        // SAFETY: `record` was validated by `peek`: the payload range lies
        // inside the ring data.
        unsafe { self.view.read_payload(record.payload_offset, dst) };
        // SYNC: head-advance. If any byte copied (or the meta word) came from
        // a newer lap, the writer's head store before it is visible after
        // this fence.
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence.
        let head = self.view.control().head.load(Ordering::Relaxed);
        if head > record.position {
            // Lapped while copying: the record is lost too.
            self.lost_bytes += head - self.position;
            self.position = head;
            return Peek::Empty;
        }
        self.check_sequence(*record)
    }

    /// Sets the released position directly (raw readers: the bridge).
    pub(crate) fn release_to(&mut self, position: u64) {
        if let Some(claim) = &self.claim {
            gate::release(&self.view, claim, position);
        }
    }

    /// Untethered readers: pins from `position`; returns the first safe position.
    pub(crate) fn pin(&mut self, position: u64) -> u64 {
        match &self.claim {
            Some(claim) => gate::pin(&self.view, claim, position),
            None => position,
        }
    }

    /// Untethered readers: drops the pin.
    pub(crate) fn unpin(&mut self) {
        if let Some(claim) = &self.claim {
            gate::unhold(&self.view, claim);
        }
    }

    /// Whether this reader's slot is still its own.
    pub(crate) fn slot_status(&self) -> SlotStatus {
        match &self.claim {
            Some(claim) => gate::status(&self.view, claim),
            None => SlotStatus::Lost,
        }
    }

    /// Leaves the subscriber table (idempotent).
    pub(crate) fn leave(&mut self) {
        if let Some(claim) = self.claim.take() {
            gate::leave(&self.view, &claim);
        }
    }
}

impl<V: View> Drop for ReaderCore<V> {
    fn drop(&mut self) {
        self.leave();
    }
}
