//! The reader side of a ring: find the next committed record by its stamp,
//! validate its framing, and release consumed space.
//!
//! A reader spins on the stamp word of the record it waits for, not on a
//! shared tail: one cache line per small message crosses the cores. Every
//! word it reads from the publisher's file is untrusted and checked by
//! [`super::records`] before it is used; a bad one is a [`ReadFault::Corrupt`]
//! naming the field.

use super::{
    gate::{self, Adopted, JoinError, JoinRequest, SlotClaim, SlotStatus},
    records::{self, StampKind},
    Geometry, Policy, View,
};
use crate::{
    layout::{RECORD_HEADER, WRITER_CLOSED, WRITER_OPEN},
    sync::{fence, load_acquire_ro, load_acquire_ro32, Ordering},
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
    /// The writer's 64-bit sequence number for it.
    pub(crate) seq: u64,
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
    /// Messages were lost before the next record (overwrite policy, after an
    /// eviction, or a gap record from upstream): exact counts.
    Gap { messages: u64, bytes: u64 },
}

/// Why a ring cannot be read any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFault {
    /// A word of the ring breaks the format at `position`; `what` names it.
    Corrupt { position: u64, what: &'static str },
    /// The writer evicted this subscriber for lag (untethered eviction).
    Evicted,
    /// This subscriber's slot was taken away (a foreign write).
    SlotLost,
}

/// One subscriber's cursor over a ring.
#[derive(Debug)]
pub(crate) struct ReaderCore<V: View> {
    pub(crate) view: V,
    geo: Geometry,
    claim: Option<SlotClaim>,
    /// Next position to read.
    position: u64,
    /// Sequence number expected next (None until known).
    expected_seq: Option<u64>,
    /// Bytes skipped by laps since the last reported gap.
    lost_bytes: u64,
    /// True while a sample is held under the hold-evict protocol.
    holding: bool,
    /// The position last stored in our slot (SYNC: release-position): the
    /// writer's gate sees this one, not `position`. Batched release keeps
    /// `released <= position`; everything below `position` is finished.
    released: u64,
    /// Unprompted batch: publish progress once `position - released`
    /// reaches this many bytes (see [`ReaderCore::finish`]).
    batch: u64,
}

/// The unprompted release batch of a ring of `capacity` bytes: an eighth of
/// it. The writer's own gate refresh aims an eighth of the ring past its
/// need, so its limit moves in steps of that size anyway; a larger batch
/// would cost a subscriber that stops reading (without reaching `Empty`)
/// more of the writer's space, a smaller one more slot-line transfers.
pub(crate) fn default_batch(capacity: u64) -> u64 {
    capacity / 8
}

impl<V: View> ReaderCore<V> {
    fn with_claim(view: V, claim: Option<SlotClaim>, position: u64) -> Self {
        let geo = *view.geometry();
        let mut reader = Self {
            view,
            geo,
            claim,
            position,
            expected_seq: None,
            lost_bytes: 0,
            holding: false,
            // `activate` (or `prejoin`) stored this position in the slot.
            released: position,
            batch: default_batch(geo.capacity),
        };
        reader.expected_seq = reader.sequence_at_start();
        reader
    }

    /// Joins the ring's subscriber table. `Ok(None)` if every slot is taken
    /// by a live owner.
    pub(crate) fn join(view: V, req: &JoinRequest) -> Result<Option<Self>, JoinError> {
        Ok(gate::join(&view, req)?
            .map(|(claim, position)| Self::with_claim(view, Some(claim), position)))
    }

    /// Adopts the slot the publisher joined for registration (`reg`, `generation`).
    /// `Ok(Err(view))` hands the view back when there is no such slot.
    #[allow(clippy::type_complexity)]
    pub(crate) fn adopt(
        view: V,
        req: &JoinRequest,
        reg: u64,
        generation: u64,
    ) -> Result<Result<Self, (V, bool)>, JoinError> {
        match gate::adopt(&view, req, reg, generation)? {
            Some(Adopted::Joined {
                joined: (claim, position),
                first_seq,
            }) => {
                let mut reader = Self::with_claim(view, Some(claim), position);
                // A pre-joined reader starts at the ring's first record: it
                // expects the number the ring started with, so whatever an
                // Overwrite ring lost before the adoption is counted.
                if first_seq.is_some() {
                    reader.expected_seq = first_seq;
                }
                Ok(Ok(reader))
            }
            Some(Adopted::Evicted) => Ok(Err((view, true))),
            None => Ok(Err((view, false))),
        }
    }

    /// A reader without a slot (observers): it never gates the writer, so
    /// it may be lapped on any policy and must copy records out.
    pub(crate) fn observer(view: V, at: gate::JoinAt) -> Result<Self, ReadFault> {
        let producer = view.producer();
        let tail_before = load_acquire_ro(&producer.tail);
        let head = load_acquire_ro(&producer.head);
        let tail = load_acquire_ro(&producer.tail);
        records::check_span(view.geometry(), tail_before, head, tail).map_err(|what| {
            ReadFault::Corrupt {
                position: tail,
                what,
            }
        })?;
        let position = match at {
            gate::JoinAt::Latest => tail,
            gate::JoinAt::Oldest => head.min(tail),
        };
        Ok(Self::with_claim(view, None, position))
    }

    /// The sequence number of the record at our start position: from its
    /// header, or from the hint the writer leaves beside a cleared stamp,
    /// extended to 64 bits with the publisher's `published` counter. Needed
    /// so that a reader lapped before its first read still counts its loss
    /// exactly. `None` if the writer raced past us meanwhile.
    fn sequence_at_start(&mut self) -> Option<u64> {
        let mask = self.geo.mask();
        let mut pos = self.position;
        for _ in 0..2 {
            let off = pos & mask;
            // SYNC: commit (Acquire), as in `peek`.
            let stamp = load_acquire_ro(self.view.word(off));
            // Relaxed: ordered after the Acquire above (or validated below).
            let meta = self.view.word(off + 8).load(Ordering::Relaxed);
            let kind = records::classify(stamp, pos);
            if kind == StampKind::Padding {
                pos += self.geo.capacity - off;
                continue;
            }
            // Only a cleared stamp carries the writer's hint beside it; an
            // older genuine stamp (the ring was exactly full) carries that
            // old record's number: then the first record read tells.
            if !matches!(kind, StampKind::Data | StampKind::Gap) && stamp != 0 {
                return None;
            }
            // A replica's first position before its first record: its
            // numbering is not known yet, the first record read sets it.
            if stamp == 0 && meta == crate::layout::NO_SEQ_HINT {
                return None;
            }
            // SYNC: head-advance: a writer overwriting `pos` moved head first.
            fence(Ordering::Acquire);
            let producer = self.view.producer();
            let head = producer.head.load(Ordering::Relaxed);
            let hint = producer.published.load(Ordering::Relaxed);
            let (_, low) = crate::layout::split_meta(meta);
            return (head <= self.position).then(|| records::extend_sequence(low, hint));
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

    /// The slot this reader owns, if any.
    pub(crate) fn claim(&self) -> Option<&SlotClaim> {
        self.claim.as_ref()
    }

    fn corrupt<T>(&self, position: u64, what: &'static str) -> Result<T, ReadFault> {
        Err(ReadFault::Corrupt { position, what })
    }

    /// Finds the next record without consuming it. Padding is skipped; a gap
    /// record is consumed and reported.
    ///
    /// `Empty` publishes any progress not released yet first: a reader that
    /// has caught up is about to wait for the writer, so the writer must
    /// never wait for it (the no-deadlock half of batched release, see
    /// [`Self::finish`]).
    pub(crate) fn peek(&mut self) -> Result<Peek, ReadFault> {
        let mask = self.geo.mask();
        loop {
            let pos = self.position;
            let off = pos & mask;
            // SYNC: commit. Acquire pairs with the writer's Release store of
            // this stamp: meta, payload and the cleared next stamp are visible.
            let stamp = load_acquire_ro(self.view.word(off));
            let kind = records::classify(stamp, pos);
            match kind {
                StampKind::Data | StampKind::Padding | StampKind::Gap => {
                    // Relaxed: ordered after the Acquire above.
                    let meta = self.view.word(off + 8).load(Ordering::Relaxed);
                    let header = match records::check_header(&self.geo, pos, kind, meta) {
                        Ok(h) => h,
                        Err(what) => return self.fault_or_lap(pos, what),
                    };
                    match kind {
                        StampKind::Padding => {
                            self.position = pos + header.size;
                            continue;
                        }
                        StampKind::Gap => {
                            if let Some(peek) = self.gap_record(pos, header)? {
                                return Ok(peek);
                            }
                            continue;
                        }
                        _ => {}
                    }
                    let record = RecordRef {
                        position: pos,
                        payload_offset: off + RECORD_HEADER,
                        len: header.len,
                        seq: u64::from(header.seq_low),
                        end: pos + header.size,
                    };
                    // Overwrite: the meta word may be torn by a lapping writer;
                    // the sequence is checked after the copy is validated.
                    return Ok(match self.geo.policy {
                        Policy::Block if self.claim.is_some() => self.check_sequence(record)?,
                        _ => Peek::Record(record),
                    });
                }
                StampKind::NotYet => {
                    // Not written yet: cleared, or a genuine older stamp. This
                    // is the spin path; under Block without eviction it touches
                    // no other shared line.
                    if self.geo.evict_after.is_some() && self.claim.is_some() {
                        match self.slot_status() {
                            SlotStatus::Active => {}
                            SlotStatus::Evicted => return Err(ReadFault::Evicted),
                            SlotStatus::Lost => return Err(ReadFault::SlotLost),
                        }
                    }
                    if self.geo.policy == Policy::Block && self.claim.is_some() {
                        return Ok(self.empty());
                    }
                    // Lappable readers: a lapping writer may have left payload
                    // bytes that look older; the tail tells.
                    // SYNC: tail-publish (Acquire).
                    if load_acquire_ro(&self.view.producer().tail) <= pos {
                        return Ok(self.empty());
                    }
                }
                StampKind::Other => {}
            }
            // A newer stamp or foreign bytes: lapped, or corrupt.
            match self.not_ready_slow(pos)? {
                Some(Peek::Empty) => return Ok(self.empty()),
                Some(peek) => return Ok(peek),
                None => continue,
            }
        }
    }

    /// `Empty`, after releasing any progress not released yet: a reader
    /// that caught up is about to wait for the writer, so the writer must
    /// never wait for it (see [`Self::finish`]).
    #[inline]
    fn empty(&mut self) -> Peek {
        if self.released != self.position {
            self.publish_progress();
        }
        Peek::Empty
    }

    /// A gap record at `pos`: reads its count (validated like a copy on
    /// lappable readers) and folds it into the next reported gap. Returns the
    /// gap to report, or `None` to go on reading.
    fn gap_record(&mut self, pos: u64, header: records::Header) -> Result<Option<Peek>, ReadFault> {
        let off = pos & self.geo.mask();
        // A filler (no count word) reports nothing of its own.
        let count = if records::gap_has_count(&header) {
            // Relaxed: ordered after the stamp's Acquire.
            self.view.word(off + RECORD_HEADER).load(Ordering::Relaxed)
        } else {
            0
        };
        if self.lappable() {
            // SYNC: head-advance, as in `copy_validated`.
            fence(Ordering::Acquire);
            let head = self.view.producer().head.load(Ordering::Relaxed);
            if head > pos {
                self.lapped(head)?;
                return Ok(None);
            }
        }
        let first_lost = match self.expected_seq {
            Some(e) if e as u32 == header.seq_low => e,
            _ => records::extend_sequence(header.seq_low, self.published_hint()),
        };
        if self.expected_seq.is_some_and(|e| first_lost < e) {
            // As for data records (`check_sequence`): numbering never goes
            // back, and moving the expected number back would re-number
            // (and re-count) messages already reported.
            return self.corrupt(pos, "gap record sequence number goes backwards");
        }
        let before = self.expected_seq.map_or(0, |e| first_lost - e);
        let next = match records::after_gap(first_lost, count) {
            Ok(next) => next,
            Err(what) => return self.corrupt(pos, what),
        };
        self.expected_seq = Some(next);
        self.position = pos + header.size;
        let messages = before.saturating_add(count);
        let bytes = std::mem::take(&mut self.lost_bytes);
        Ok((messages != 0 || bytes != 0).then_some(Peek::Gap { messages, bytes }))
    }

    /// Whether this reader can be lapped (it must copy and validate).
    fn lappable(&self) -> bool {
        self.geo.policy == Policy::Overwrite || self.claim.is_none()
    }

    fn published_hint(&self) -> u64 {
        // Relaxed: a hint within 2^31 of any record in the ring (see
        // `records::extend_sequence`), no ordering needed.
        self.view.producer().published.load(Ordering::Relaxed)
    }

    /// Turns a sequence jump into a reported gap (once), else the record
    /// with its full sequence number.
    fn check_sequence(&mut self, mut record: RecordRef) -> Result<Peek, ReadFault> {
        let low = record.seq as u32;
        let seq = match self.expected_seq {
            Some(e) if e as u32 == low => e,
            _ => records::extend_sequence(low, self.published_hint()),
        };
        record.seq = seq;
        let expected = *self.expected_seq.get_or_insert(seq);
        if seq < expected {
            return self.corrupt(record.position, "record sequence number goes backwards");
        }
        if seq == u64::MAX {
            // Its successor would not exist (a forged gap count put it there).
            return self.corrupt(record.position, "record sequence number overflows");
        }
        if seq != expected || self.lost_bytes != 0 {
            let messages = seq - expected;
            let bytes = std::mem::take(&mut self.lost_bytes);
            self.expected_seq = Some(seq);
            if messages != 0 || bytes != 0 {
                return Ok(Peek::Gap { messages, bytes });
            }
        }
        Ok(Peek::Record(record))
    }

    /// The stamp at `pos` is neither ours nor older: decide between lapped,
    /// evicted and corrupt. `Ok(None)` means "retry at the new position".
    fn not_ready_slow(&mut self, pos: u64) -> Result<Option<Peek>, ReadFault> {
        let producer = self.view.producer();
        // SYNC: tail-publish (Acquire): every stamp below `tail` is visible.
        let tail = load_acquire_ro(&producer.tail);
        // SYNC: commit (Acquire).
        let stamp = load_acquire_ro(self.view.word(pos & self.geo.mask()));
        let kind = records::classify(stamp, pos);
        if matches!(kind, StampKind::Data | StampKind::Padding | StampKind::Gap) {
            return Ok(None);
        }
        // SYNC: head-advance (Acquire): if the writer has overwritten `pos`,
        // its head store came first.
        let head = load_acquire_ro(&producer.head);
        // Validated against a tail read after it (see `check_span`).
        let tail_now = load_acquire_ro(&producer.tail);
        if let Err(what) = records::check_span(&self.geo, tail, head, tail_now) {
            return self.corrupt(pos, what);
        }
        if head > pos {
            return self.lapped(head).map(|()| None);
        }
        if tail > pos {
            return self.corrupt(pos, "tail: a published record has no valid commit stamp");
        }
        if kind == StampKind::NotYet {
            return Ok(Some(Peek::Empty));
        }
        // Beyond the tail the writer leaves only cleared or older stamps.
        self.corrupt(pos, "stamp: an unpublished position holds a foreign stamp")
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
        if !self.lappable() {
            // Under Block only an evicted (or reaped) subscriber can be lapped.
            return Err(self.slot_fault());
        }
        self.lost_bytes += head - self.position;
        self.position = head;
        Ok(())
    }

    fn fault_or_lap(&mut self, pos: u64, what: &'static str) -> Result<Peek, ReadFault> {
        if self.lappable() {
            // Torn by a lapping writer? Then `head` has moved past us.
            fence(Ordering::Acquire);
            let head = self.view.producer().head.load(Ordering::Relaxed);
            if head > pos {
                self.lapped(head)?;
                return self.peek();
            }
        }
        self.corrupt(pos, what)
    }

    fn slot_fault(&self) -> ReadFault {
        match self.claim.map(|c| gate::status(&self.view, &c)) {
            Some(SlotStatus::Evicted) => ReadFault::Evicted,
            _ => ReadFault::SlotLost,
        }
    }

    /// The publisher's state word, validated: `Ok(true)` if it closed the ring.
    pub(crate) fn writer_closed(&self) -> Result<bool, ReadFault> {
        // Acquire: pairs with the writer's Release store of CLOSED, after its
        // final tail store.
        match load_acquire_ro32(&self.view.producer().writer_state) {
            WRITER_OPEN => Ok(false),
            WRITER_CLOSED => Ok(true),
            _ => self.corrupt(self.position, "writer_state is neither open nor closed"),
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
        if records::classify(stamp, pos) != StampKind::NotYet {
            return true; // a record, a lap or garbage: `peek` reports it
        }
        let producer = self.view.producer();
        // Relaxed: hints, confirmed by `peek` and the closed check.
        if producer.writer_state.load(Ordering::Relaxed) != WRITER_OPEN {
            return true;
        }
        if self.lappable() && producer.tail.load(Ordering::Relaxed) > pos {
            return true;
        }
        self.geo.evict_after.is_some()
            && self.claim.is_some()
            && self.slot_status() != SlotStatus::Active
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
    pub(crate) fn consume_to(&mut self, end: u64, next_seq: u64) {
        self.position = end;
        self.expected_seq = Some(next_seq);
        self.release();
    }

    /// Consumes records up to `end` (exclusive), the reader having finished
    /// with them, and releases them to the writer in batches: when `batch`
    /// bytes are unreleased, at once when `end` reaches the position the
    /// writer says it waits for (its `space_wanted` word, past what we
    /// released), and in any case at the next `Empty` ([`Self::peek`]).
    ///
    /// The release-position pair, batched (the labelled Release store is in
    /// `gate::release`). Why a batched release is safe:
    /// - no overwrite of anything still read: the slot's position only ever
    ///   moves to `self.position`, and everything below it is finished
    ///   (a record is finished when its sample is dropped); a held sample
    ///   starts at or after `self.position`, so it stays at or above the
    ///   released position and the writer, which writes below
    ///   `released + capacity` of every gating slot, cannot reach it. A
    ///   released position that lags only makes the writer wait longer.
    ///   The store is the same Release store as an eager release: our reads
    ///   of every byte below it happen before the writer's overwrite.
    /// - no deadlock: a writer waits only on released positions. The reader
    ///   it waits on either has published records to read (then it releases
    ///   within `batch` bytes, and as soon as it finishes the record the
    ///   writer waits for if it sees `space_wanted`), or has read everything
    ///   published: its next peek finds `Empty` and releases before it
    ///   returns (the writer publishes its tail before it refreshes its
    ///   gate, so a waiting writer has nothing unpublished that the reader
    ///   could wait for). The hint is Relaxed: it only makes the release
    ///   come sooner, progress never depends on it.
    /// - a reader that holds a sample and stops holds the writer back by the
    ///   sample and the finished records before it that it has not released
    ///   (less than `batch` bytes, none the writer said it waited for when
    ///   they were finished): the same kind of hold as an eager release,
    ///   by at most `batch` bytes more.
    #[inline]
    pub(crate) fn finish(&mut self, end: u64, next_seq: u64) {
        self.position = end;
        self.expected_seq = Some(next_seq);
        if end.wrapping_sub(self.released) >= self.batch || self.writer_waits_for(end) {
            self.publish_progress();
        }
    }

    /// Whether the writer said it waits for a position past what we
    /// released and at most `end` (so releasing `end` lets it go on).
    /// Relaxed: a hint that only makes the release come sooner; progress
    /// never depends on it (see [`Self::finish`]). A forged value costs
    /// extra releases, nothing else.
    #[inline]
    fn writer_waits_for(&self, end: u64) -> bool {
        let wanted = self.view.producer().space_wanted.load(Ordering::Relaxed);
        wanted > self.released && wanted <= end
    }

    /// Publishes the read position to our slot (batched release), without
    /// ending a hold.
    fn publish_progress(&mut self) {
        if let Some(claim) = &self.claim {
            gate::release(&self.view, claim, self.position);
        }
        self.released = self.position;
    }

    /// Sets the unprompted release batch in bytes (0: release every record).
    #[cfg(all(test, loom))]
    pub(crate) fn set_release_batch(&mut self, bytes: u64) {
        self.batch = bytes;
    }

    /// Consumes records up to `end` without releasing them yet (batches).
    pub(crate) fn advance_to(&mut self, end: u64, next_seq: u64) {
        self.position = end;
        self.expected_seq = Some(next_seq);
    }

    /// Releases everything consumed so far and ends any hold.
    pub(crate) fn release(&mut self) {
        self.released = self.position;
        if let Some(claim) = &self.claim {
            gate::release(&self.view, claim, self.position);
            if self.holding {
                gate::unhold(&self.view, claim);
                self.holding = false;
            }
        }
    }

    /// Copies the record's payload out with per-word atomic loads, then
    /// confirms the writer had not started overwriting it (seqlock).
    /// Returns `Record` with a good copy, `Gap` if messages were lost before
    /// it (the record is read again next time), or `Empty` if the copy may be
    /// torn (the reader was lapped; the next peek continues from `head`).
    pub(crate) fn copy_validated(
        &mut self,
        record: &RecordRef,
        dst: &mut [u8],
    ) -> Result<Peek, ReadFault> {
        debug_assert_eq!(dst.len(), record.len as usize);
        // SAFETY: `record` was validated by `peek`: the payload (rounded up
        // to whole words) lies inside the record, inside the ring; its
        // offset is 16-aligned.
        unsafe { self.view.read_payload(record.payload_offset, dst) };
        // SYNC: head-advance. If any byte copied (or the meta word) came from
        // a newer lap, the writer's head store before it is visible after
        // this fence.
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence.
        let head = self.view.producer().head.load(Ordering::Relaxed);
        if head > record.position {
            // Lapped while copying: the record is lost too.
            self.lost_bytes += head - self.position;
            self.position = head;
            return Ok(Peek::Empty);
        }
        self.check_sequence(*record)
    }

    /// Sets the released position directly (raw readers: the bridge).
    pub(crate) fn release_to(&mut self, position: u64) {
        self.released = position;
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

    /// Forgets the slot without touching shared memory (a handle dropped in
    /// a forked child: the slot and its lock belong to the parent).
    pub(crate) fn forget_slot(&mut self) {
        self.claim = None;
    }
}

impl<V: View> Drop for ReaderCore<V> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(all(test, not(loom)))]
mod batched_release_tests {
    use super::*;
    use crate::ring::{
        gate::{JoinAt, JoinRequest},
        heap::{self, HeapSegment, HeapView},
        writer::{ReserveFail, WriterCore},
    };

    const CAP: u64 = 4096;

    fn setup() -> (WriterCore<HeapView>, ReaderCore<HeapView>) {
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
        let r = ReaderCore::join(heap::view(&seg), &req)
            .expect("no fault")
            .expect("a free slot");
        (WriterCore::new(heap::view(&seg)), r)
    }

    /// Writes one 16-byte message (a 32-byte record).
    fn write(w: &mut WriterCore<HeapView>) -> Result<(), ReserveFail> {
        let r = w.reserve(16)?;
        w.write_payload(&r, &[9; 16]);
        w.commit(r, 16);
        w.publish();
        Ok(())
    }

    /// Reads the next record and finishes it (batched release).
    fn read_finish(r: &mut ReaderCore<HeapView>) {
        match r.peek().expect("no fault") {
            Peek::Record(rec) => r.finish(rec.end, rec.seq + 1),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn slot_position(r: &ReaderCore<HeapView>) -> u64 {
        let index = r.claim().expect("joined").index;
        r.view.slots()[index].position.load(Ordering::Acquire)
    }

    #[test]
    fn finished_records_are_released_per_batch_and_before_empty() {
        let (mut w, mut r) = setup();
        for _ in 0..40 {
            write(&mut w).expect("room");
        }
        // Fewer than a batch (an eighth of the ring: 16 records): nothing
        // is stored in the slot yet.
        for _ in 0..10 {
            read_finish(&mut r);
        }
        assert_eq!(slot_position(&r), 0, "released before a batch");
        // The sixteenth record completes a batch: released at once.
        for _ in 10..16 {
            read_finish(&mut r);
        }
        assert_eq!(slot_position(&r), default_batch(CAP));
        // A record taken but not finished is never released, not even when
        // a peek sees it again.
        for _ in 16..39 {
            read_finish(&mut r);
        }
        let held = match r.peek().expect("no fault") {
            Peek::Record(rec) => rec,
            other => panic!("expected the last record, got {other:?}"),
        };
        assert!(slot_position(&r) <= held.position);
        assert_eq!(r.position(), held.position);
        r.finish(held.end, held.seq + 1);
        assert_ne!(slot_position(&r), r.position(), "a batch not reached yet");
        // Caught up: the peek that finds nothing releases everything first.
        assert_eq!(r.peek().expect("no fault"), Peek::Empty);
        assert_eq!(slot_position(&r), 40 * 32);
    }

    #[test]
    fn a_waiting_writer_gets_space_sooner_and_never_waits_on_an_empty_reader() {
        let (mut w, mut r) = setup();
        // Fill the ring: 128 records of 32 bytes.
        let mut written = 0;
        while write(&mut w).is_ok() {
            written += 1;
        }
        assert_eq!(written, CAP / 32);
        // The full ring told subscribers where it waits: the first record.
        assert_eq!(r_wanted(&w), 32);
        // Finishing that record releases it at once (far below a batch).
        read_finish(&mut r);
        assert_eq!(slot_position(&r), 32);
        write(&mut w).expect("room after the prompted release");
        // Held back again right away: the writer asks for a sixty-fourth
        // of the ring (two records) past its need, and gets it only then.
        assert_eq!(write(&mut w), Err(ReserveFail::Full));
        assert_eq!(r_wanted(&w), 64 + CAP / 64);
        read_finish(&mut r);
        assert_eq!(slot_position(&r), 32, "not yet what the writer asked for");
        read_finish(&mut r);
        read_finish(&mut r);
        assert_eq!(slot_position(&r), 128);
        for _ in 0..3 {
            write(&mut w).expect("room after the prompted release");
        }
        assert_eq!(write(&mut w), Err(ReserveFail::Full));
        // A reader that reads everything releases it all at Empty, however
        // far its batch: the writer can fill the ring again.
        while r.peek().expect("no fault") != Peek::Empty {
            read_finish(&mut r);
        }
        assert_eq!(slot_position(&r), r.position());
        for _ in 0..CAP / 32 {
            write(&mut w).expect("the whole ring is free");
        }
    }

    fn r_wanted(w: &WriterCore<HeapView>) -> u64 {
        w.view.producer().space_wanted.load(Ordering::Relaxed)
    }
}
