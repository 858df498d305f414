//! The subscriber table and the Block policy's gate.
//!
//! **Ownership.** A slot belongs to whoever holds its lock: an
//! open-file-description lock on its byte of the control file
//! ([`slot_lock_byte`]). The kernel drops it when the owner dies, in any pid
//! namespace that shares the file. So "dead" is "its lock can be taken", and
//! taking the lock *is* claiming the slot: a join can never race a reap,
//! because the reaper takes the same lock before it frees anything. The
//! state word's generation, bumped on every claim, tells owners apart over
//! time (no `(slot, generation)` pair is handed out twice); `pid` and start
//! time are labels for tools only.
//!
//! **The gate.** The writer may write below `limit + capacity`, where `limit`
//! is the lowest position any gating slot still needs. It recomputes the
//! limit only when space seems short, publishes it for joiners, and keeps
//! its own copy (SYNC: `join-limit`, `release-position`, `hold-evict`; see
//! the table in [`super`]). The limit is a record boundary found from slot
//! positions and boundaries the writer noted, never by walking records
//! (`WriterCore::refresh_gate`). Subscribers release in batches
//! (`ReaderCore::finish`), so a slot's position may lag what its owner has
//! read by up to an eighth of the ring; a writer held back says where in
//! `Producer::space_wanted`, and a caught-up subscriber has released all.
//!
//! **Liveness.** A blocked writer probes only the slot that holds the gate,
//! at most once per [`LIVENESS_INTERVAL`] (a probe that finds a dead owner
//! allows the next one at once): a crashed subscriber holds a blocked
//! publisher back for at most about that long. A slot the publisher joined
//! for a registered subscriber ([`SLOT_PREJOINED`]) lives while that
//! registration's lock is held; a durable slot ([`SLOT_ORPHANED`]) outlives
//! its owner for its lease.
//!
//! **Untrusted memory.** Subscribers of a ring share the control file: a slot
//! position read here is clamped to a record-aligned value at most the
//! published tail. A forged position can hold the writer back (like a slow
//! subscriber: subscribers trust each other for flow control), never make it
//! overwrite what another slot has not released.

use std::{io, time::Duration};

use super::{records, Geometry, View};
use crate::{
    layout::{
        slot_lock_byte, Slot, RECORD_ALIGN, SLOT_ACTIVE, SLOT_CLAIMING, SLOT_EVICTED, SLOT_FREE,
        SLOT_ORPHANED, SLOT_PREJOINED, SLOT_STATE_MASK, SLOT_UNTETHERED, UNKNOWN_SEQ,
    },
    sync::{fence, load_acquire_ro, Ordering},
};

/// How often a blocked writer re-checks whether the subscriber holding it
/// back is still alive.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(20);

const LIVENESS_INTERVAL_NS: u64 = LIVENESS_INTERVAL.as_nanos() as u64;

/// Writer-local bookkeeping for liveness probes and untethered eviction.
#[derive(Debug, Default)]
pub(crate) struct GateState {
    /// When the last probe found its slot alive (the view's clock).
    last_probe_ns: Option<u64>,
    /// (slot, state word, position, since): who has held the writer back, since when.
    blocked_by: Option<(usize, u64, u64, u64)>,
    /// Subscribers evicted or reaped by this writer.
    pub(crate) evictions: u64,
}

/// The state word with the same generation and another state.
#[inline]
fn with_state(word: u64, state: u64) -> u64 {
    (word & !SLOT_STATE_MASK) | state
}

/// The state word of the next claim after `word`: generation + 1.
#[inline]
fn next_claim(word: u64, state: u64) -> u64 {
    (((word >> 8).wrapping_add(1)) << 8) | state
}

/// The position a slot holds the writer at, if it gates, sanitized.
fn gating_position(slot: &Slot, state: u64, tail: u64) -> Option<u64> {
    let position = match state & SLOT_STATE_MASK {
        // SYNC: release-position. Acquire: the subscriber's reads of
        // everything below its position happen before our overwrite.
        SLOT_ACTIVE | SLOT_PREJOINED | SLOT_ORPHANED => slot.position.load(Ordering::Acquire),
        // SYNC: hold-evict. An evicted subscriber still pins the sample it
        // holds, an untethered one the bytes it pinned; Acquire pairs with
        // its Release store of `held = 0`.
        SLOT_EVICTED | SLOT_UNTETHERED if slot.held.load(Ordering::Acquire) != 0 => {
            slot.position.load(Ordering::Acquire)
        }
        _ => return None,
    };
    // Untrusted (see the module docs): record-aligned, at most the tail.
    Some((position & !(RECORD_ALIGN - 1)).min(tail))
}

/// The lowest position any subscriber still needs (at most `tail`), and
/// which slot it is: (index, state word, position).
fn scan<V: View>(view: &V, tail: u64) -> (u64, Option<(usize, u64, u64)>) {
    let mut gate = tail;
    let mut who = None;
    for (i, slot) in view.slots().iter().enumerate() {
        // SYNC: slot-claim. Acquire pairs with the claimer's Release store
        // of its state: its position store is visible.
        let state = slot.state.load(Ordering::Acquire);
        if let Some(position) = gating_position(slot, state, tail) {
            if position < gate || who.is_none() && position == gate {
                gate = position;
                who = Some((i, state, position));
            }
        }
    }
    (gate, who)
}

/// Recomputes the writer's limit, publishes it for joiners (SYNC:
/// join-limit) and returns it.
///
/// `lowest` is the limit the writer needs for its next record; `target` (a
/// record boundary at or after `lowest`, at most `tail`) is as far as the
/// limit may go when nobody holds it back: a smaller limit keeps more
/// history for late joiners, a larger one means fewer scans. When blocked,
/// the slot holding the gate is probed for liveness and, if configured,
/// evicted for lag.
///
/// `floor` is the writer's current limit: the limit never moves back below
/// it, so room the writer was promised stays its own (a replica writer
/// hands that room out as credit). Every position a scan can find below
/// the current limit belongs to a slot that will not read there: a joiner
/// or pinner between its slot store and its load of the published limit
/// (by `join-limit`, it loads this limit or a later one, which never moves
/// back, and starts there), an evicted subscriber that backs off
/// (`hold-evict`), or a forged position (which may only hold the writer
/// back, never make it overwrite another slot's bytes).
pub(crate) fn refresh_limit<V: View>(
    view: &V,
    gate: &mut GateState,
    geo: &Geometry,
    tail: u64,
    lowest: u64,
    target: u64,
    floor: u64,
) -> u64 {
    let clamp = |g: u64| if g >= lowest { g.min(target) } else { g }.max(floor);
    let producer = view.producer();
    loop {
        let (g, mut who) = scan(view, tail);
        let mut limit = clamp(g);
        loop {
            // Release: a joiner that reads this limit (Acquire) then reads a
            // tail at least this large (the limit never passes the tail).
            producer.limit.store(limit, Ordering::Release);
            // SYNC: join-limit. Either this re-scan sees a joiner's ACTIVE
            // slot, or the joiner's load of `limit` sees the store above.
            fence(Ordering::SeqCst);
            let (g2, who2) = scan(view, tail);
            let l2 = clamp(g2);
            if l2 >= limit {
                break;
            }
            limit = l2;
            who = who2;
        }
        if limit >= lowest {
            gate.blocked_by = None;
            return limit;
        }
        // Blocked: is the slot in the way dead? Has it lagged too long?
        let changed = probe_holder(view, gate, who) || evict_laggard(view, gate, geo, who);
        if !changed {
            return limit;
        }
    }
}

/// Probes the slot holding the gate (rate-limited); frees it if its owner is
/// provably dead. Returns whether the gate may have moved.
fn probe_holder<V: View>(view: &V, gate: &mut GateState, who: Option<(usize, u64, u64)>) -> bool {
    let Some((index, state, _)) = who else {
        return false;
    };
    let now = view.now_ns();
    if gate
        .last_probe_ns
        .is_some_and(|t| now.saturating_sub(t) < LIVENESS_INTERVAL_NS)
    {
        return false;
    }
    let freed = reap_if_dead(view, index, state, now);
    // A probe that found a dead owner allows the next probe at once (the
    // next slot in the way may be dead too); a live one waits an interval.
    gate.last_probe_ns = (!freed).then_some(now);
    if freed {
        gate.evictions += 1;
        // Relaxed: a statistic.
        view.producer().evictions.fetch_add(1, Ordering::Relaxed);
    }
    freed
}

/// The registration a slot waits for: a pre-joined slot, or one evicted
/// for lag before its subscriber adopted it (its registration fields are
/// still set; a claim clears them, generation 0 meaning none). Such a slot
/// has no lock owner yet, so a free lock proves nothing: it belongs to its
/// registration while that lives, and must stay until adopted so that the
/// subscriber learns of the eviction instead of silently joining later.
fn waiting_registration(slot: &Slot, state: u64) -> Option<(u64, u64)> {
    let kind = state & SLOT_STATE_MASK;
    // Relaxed: ordered after the caller's Acquire load of `state`.
    let generation = slot.reg_generation.load(Ordering::Relaxed);
    let waits = kind == SLOT_PREJOINED || (kind == SLOT_EVICTED && generation != 0);
    // Relaxed: as above.
    waits.then(|| (slot.reg_index.load(Ordering::Relaxed), generation))
}

/// Frees slot `index` (seen in `state`) if its owner is provably dead: a
/// registration gone, a lease expired, or its lock free. A dead durable
/// slot becomes [`SLOT_ORPHANED`] instead (it keeps gating for its lease).
/// Returns whether the slot was freed.
pub(crate) fn reap_if_dead<V: View>(view: &V, index: usize, state: u64, now: u64) -> bool {
    let slot = &view.slots()[index];
    if let Some((reg, generation)) = waiting_registration(slot, state) {
        if view.registry_alive(reg, generation) {
            return false;
        }
    }
    match state & SLOT_STATE_MASK {
        SLOT_FREE => return false,
        SLOT_ORPHANED => {
            // Relaxed: as above.
            let since = slot.orphaned_at.load(Ordering::Relaxed);
            let lease = slot.lease_ns.load(Ordering::Relaxed);
            if now.saturating_sub(since) < lease {
                return false;
            }
        }
        _ => {}
    }
    // Taking the lock proves the owner is gone (for a pre-joined or orphaned
    // slot: that nobody is adopting it right now) and keeps claimers out
    // while we change the slot.
    let byte = slot_lock_byte(index);
    if !matches!(view.try_lock(byte), Ok(true)) {
        return false;
    }
    // Acquire: the dead owner's last writes are ordered before our reuse.
    let current = slot.state.load(Ordering::Acquire);
    let freed = if current != state {
        false // changed hands meanwhile: the next scan sees it as it is now
    } else if current & SLOT_STATE_MASK != SLOT_ORPHANED
        && current & SLOT_STATE_MASK != SLOT_PREJOINED
        // Relaxed: the slot's own field, ordered after the state load.
        && slot.durable_key.load(Ordering::Relaxed) != 0
    {
        orphan(slot, current, now);
        false
    } else {
        take_back_sleeping(view, slot);
        // Release: a later claimer (after our unlock) sees a clean slot.
        slot.state
            .compare_exchange(
                current,
                with_state(current, SLOT_FREE),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    };
    view.unlock(byte);
    freed
}

/// Marks a durable slot whose owner died as orphaned at `now`.
fn orphan(slot: &Slot, current: u64, now: u64) {
    // Relaxed: published by the Release CAS below.
    slot.orphaned_at.store(now, Ordering::Relaxed);
    // Release: readers of ORPHANED see `orphaned_at`. Relaxed failure: the
    // slot changed meanwhile; the next probe looks again.
    let _ = slot.state.compare_exchange(
        current,
        with_state(current, SLOT_ORPHANED),
        Ordering::Release,
        Ordering::Relaxed,
    );
}

/// A reader killed while asleep left its count in `waiters`: take it back
/// (the caller holds the slot's lock, so its owner is gone).
fn take_back_sleeping<V: View>(view: &V, slot: &Slot) {
    // Relaxed: a count for wake-ups; a stale value costs one extra wake or a
    // sleep bounded by the waiter's timeout, never a lost message.
    if slot.sleeping.swap(0, Ordering::Relaxed) != 0 {
        let waiters = &view.waiters().waiters;
        let _ = waiters.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Untethered eviction: evicts the subscriber that has held the writer back,
/// without moving, for longer than `geo.evict_after`.
fn evict_laggard<V: View>(
    view: &V,
    gate: &mut GateState,
    geo: &Geometry,
    who: Option<(usize, u64, u64)>,
) -> bool {
    let (Some(after), Some((index, state, position))) = (geo.evict_after, who) else {
        gate.blocked_by = None;
        return false;
    };
    if !matches!(state & SLOT_STATE_MASK, SLOT_ACTIVE | SLOT_PREJOINED) {
        return false;
    }
    let now = view.now_ns();
    let after_ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
    match gate.blocked_by {
        Some((i, s, p, since)) if (i, s, p) == (index, state, position) => {
            if now.saturating_sub(since) < after_ns {
                return false;
            }
        }
        _ => {
            gate.blocked_by = Some((index, state, position, now));
            if after_ns != 0 {
                return false;
            }
        }
    }
    gate.blocked_by = None;
    let slot = &view.slots()[index];
    // AcqRel: Acquire so the subscriber's last releases are seen; Release so
    // it sees EVICTED with our fence below. Relaxed failure: it moved.
    if slot
        .state
        .compare_exchange(
            state,
            with_state(state, SLOT_EVICTED),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    // SYNC: hold-evict. Orders the EVICTED store before the next scan's load
    // of `held`; the subscriber fences between its `held` store and its state
    // load. So either it sees EVICTED and backs off, or we see it holding.
    fence(Ordering::SeqCst);
    gate.evictions += 1;
    // Relaxed: a statistic.
    view.producer().evictions.fetch_add(1, Ordering::Relaxed);
    true
}

/// A subscriber's claim on a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotClaim {
    pub(crate) index: usize,
    /// The state word (with its generation) this subscriber owns.
    pub(crate) state: u64,
}

impl SlotClaim {
    /// The claim's generation (unique per slot over the ring's life).
    pub(crate) fn generation(&self) -> u64 {
        self.state >> 8
    }
}

/// What a subscriber finds in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotStatus {
    /// Still ours and active.
    Active,
    /// The writer evicted us for lag.
    Evicted,
    /// The slot is not ours any more (a foreign write: subscribers share the
    /// control file).
    Lost,
}

/// Where a joining subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinAt {
    /// The current tail: only records published from now on.
    Latest,
    /// The oldest record the writer has not reclaimed.
    Oldest,
}

/// What kind of slot a join asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JoinRequest {
    /// Where to start.
    pub(crate) at: JoinAt,
    /// Tethered (gates the writer) or untethered (gates only while pinning).
    pub(crate) tethered: bool,
    /// Durable: `(key, lease)`; the slot outlives its owner for the lease and
    /// a new owner with the same key reattaches where it was.
    pub(crate) durable: Option<(u64, u64)>,
    /// Labels for tools.
    pub(crate) pid: u64,
    /// Labels for tools.
    pub(crate) start_time: u64,
}

/// Why a join failed.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// A word read from shared memory is invalid; names the field.
    Corrupt(&'static str),
    /// Taking a lock failed (not "held by another": an OS error).
    Io(io::Error),
    /// The slot's state changed under the claim (the writer evicted its
    /// dead owner at that moment); the slot was left alone, try again.
    Raced,
}

/// A joined slot: the claim and the first position to read.
pub(crate) type Joined = (SlotClaim, u64);

/// Joins the table: reattaches to this owner's durable slot if it has one,
/// else claims a free slot, else takes over the slot of a dead owner.
/// `Ok(None)` when every slot belongs to a live owner.
pub(crate) fn join<V: View>(view: &V, req: &JoinRequest) -> Result<Option<Joined>, JoinError> {
    if let Some((key, _)) = req.durable {
        if let Some(joined) = reattach(view, req, key)? {
            return Ok(Some(joined));
        }
    }
    let now = view.now_ns();
    for free_pass in [true, false] {
        for (index, slot) in view.slots().iter().enumerate() {
            // Relaxed: a hint; the decision is made under the lock.
            let hint = slot.state.load(Ordering::Relaxed) & SLOT_STATE_MASK == SLOT_FREE;
            if hint != free_pass {
                continue;
            }
            let byte = slot_lock_byte(index);
            if !view.try_lock(byte).map_err(JoinError::Io)? {
                continue; // a live owner (or another claimer, or a reaper)
            }
            // Acquire: a dead owner's (or reaper's) writes come before ours.
            let current = slot.state.load(Ordering::Acquire);
            if !claimable(view, slot, current, now) {
                view.unlock(byte);
                continue;
            }
            take_back_sleeping(view, slot);
            match activate(view, index, current, req, WantAt::Join(req.at)) {
                Err(JoinError::Raced) => continue,
                other => return other.map(Some),
            }
        }
    }
    Ok(None)
}

/// Whether the caller, holding the slot's lock, may take a slot found in
/// `state`: free, or left behind by a dead owner. A durable slot whose owner
/// died is orphaned instead (kept for its lease).
fn claimable<V: View>(view: &V, slot: &Slot, state: u64, now: u64) -> bool {
    if let Some((reg, generation)) = waiting_registration(slot, state) {
        return !view.registry_alive(reg, generation);
    }
    match state & SLOT_STATE_MASK {
        SLOT_FREE => true,
        SLOT_ORPHANED => {
            // Relaxed: as above.
            let since = slot.orphaned_at.load(Ordering::Relaxed);
            now.saturating_sub(since) >= slot.lease_ns.load(Ordering::Relaxed)
        }
        // Relaxed: as above.
        _ if slot.durable_key.load(Ordering::Relaxed) != 0 => {
            orphan(slot, state, now);
            false
        }
        // The lock was free, so the owner is gone.
        _ => true,
    }
}

/// Where an activated slot starts.
#[derive(Debug, Clone, Copy)]
enum WantAt {
    Join(JoinAt),
    /// Resume at a position a previous owner released up to.
    Resume(u64),
}

/// Fills a slot whose lock the caller holds and makes it gate, then finds
/// the first position that is safe to read (SYNC: slot-claim, join-limit).
/// On error the slot is freed and unlocked.
fn activate<V: View>(
    view: &V,
    index: usize,
    previous: u64,
    req: &JoinRequest,
    want: WantAt,
) -> Result<Joined, JoinError> {
    let slot = &view.slots()[index];
    let byte = slot_lock_byte(index);
    let geo = *view.geometry();
    let producer = view.producer();
    let fail = |what: &'static str| {
        // Release: nothing of ours is left for a later claimer to see (the
        // generation counts the failed claim too).
        slot.state.store(
            with_state(next_claim(previous, SLOT_FREE), SLOT_FREE),
            Ordering::Release,
        );
        view.unlock(byte);
        Err(JoinError::Corrupt(what))
    };
    // SYNC: tail-publish / head-advance (Acquire): the stamps from there on
    // are visible.
    // Tail, head, tail: see `records::check_span`.
    let tail_before = load_acquire_ro(&producer.tail);
    let head = load_acquire_ro(&producer.head);
    let tail = load_acquire_ro(&producer.tail);
    if let Err(what) = records::check_span(&geo, tail_before, head, tail) {
        return fail(what);
    }
    let wanted = match want {
        WantAt::Join(JoinAt::Latest) => tail,
        WantAt::Join(JoinAt::Oldest) => head.min(tail),
        // Not clamped to `tail`: the previous owner saw the records below
        // its position through their stamps, and the `tail` store that
        // followed them need not be visible here yet (a stale tail would
        // hand those records out again). The writer never writes past
        // `head + capacity` (`check_span`), so that bounds a forged position.
        WantAt::Resume(p) => p.clamp(head, head + geo.capacity),
    };
    // A slot we resume (a durable reattach, an adoption) still owes its
    // reader everything from its position: it gates there as ACTIVE (next
    // generation) while we refill it; sweep sees it by our lock. A CLAIMING
    // slot does not gate, and the writer could overwrite what it owes.
    let claiming = match want {
        WantAt::Resume(_)
            if matches!(
                previous & SLOT_STATE_MASK,
                SLOT_ACTIVE | SLOT_PREJOINED | SLOT_ORPHANED
            ) =>
        {
            next_claim(previous, SLOT_ACTIVE)
        }
        _ => next_claim(previous, SLOT_CLAIMING),
    };
    // A CAS, not a store: holding the lock keeps other claimers and reapers
    // out, but the writer's eviction CASes states without the lock; if one
    // lands between our look and now, the claim fails and the caller looks
    // again. Relaxed: the writer ignores CLAIMING, and for a resumed slot it
    // loads only the position (Release, below); everything else is
    // published by the Release store of the final state.
    if slot
        .state
        .compare_exchange(previous, claiming, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        view.unlock(byte);
        return Err(JoinError::Raced);
    }
    slot.pid.store(req.pid, Ordering::Relaxed);
    slot.start_time.store(req.start_time, Ordering::Relaxed);
    slot.held.store(0, Ordering::Relaxed);
    slot.sleeping.store(0, Ordering::Relaxed);
    slot.reg_index.store(0, Ordering::Relaxed);
    slot.reg_generation.store(0, Ordering::Relaxed);
    let (key, lease) = req.durable.unwrap_or((0, 0));
    slot.durable_key.store(key, Ordering::Relaxed);
    slot.lease_ns.store(lease, Ordering::Relaxed);
    slot.orphaned_at.store(0, Ordering::Relaxed);
    // SYNC: release-position. Release: a resumed slot gates meanwhile, and
    // the writer may load this position before our final state; it must
    // carry the previous owner's releases (loaded with Acquire) with it.
    slot.position.store(wanted, Ordering::Release);
    let active = with_state(
        claiming,
        if req.tethered {
            SLOT_ACTIVE
        } else {
            SLOT_UNTETHERED
        },
    );
    // SYNC: slot-claim. Release: pairs with the writer's Acquire state load
    // in its scan (our position is visible with the state).
    slot.state.store(active, Ordering::Release);
    // SYNC: join-limit (see `refresh_limit`).
    fence(Ordering::SeqCst);
    let limit = load_acquire_ro(&producer.limit);
    // The limit never passes the tail, which we read after it (Acquire).
    let tail_now = load_acquire_ro(&producer.tail);
    if !records::is_record_aligned(limit) || limit > tail_now {
        return fail("limit is not a record position within the tail");
    }
    // A start that is not a record (a forged tail, head or limit inside a
    // record) is caught by the reader's first empty wait: a published tail
    // past it with no record there is Corrupt (`ReaderCore::verify_empty`).
    let position = if limit > wanted {
        // The writer may already be overwriting below `limit`: start there
        // (a record boundary: a subscriber position or a published tail).
        // SYNC: release-position (Release).
        slot.position.store(limit, Ordering::Release);
        limit
    } else {
        wanted
    };
    Ok((
        SlotClaim {
            index,
            state: active,
        },
        position,
    ))
}

/// Reattaches to the durable slot of `key` whose previous owner is gone.
fn reattach<V: View>(view: &V, req: &JoinRequest, key: u64) -> Result<Option<Joined>, JoinError> {
    for (index, slot) in view.slots().iter().enumerate() {
        // Relaxed: hints; confirmed under the lock.
        if slot.durable_key.load(Ordering::Relaxed) != key
            || slot.state.load(Ordering::Relaxed) & SLOT_STATE_MASK == SLOT_FREE
        {
            continue;
        }
        let byte = slot_lock_byte(index);
        if !view.try_lock(byte).map_err(JoinError::Io)? {
            continue; // its owner is alive: not ours to take
        }
        // Acquire: the previous owner's releases come before ours.
        let current = slot.state.load(Ordering::Acquire);
        // Relaxed: ordered after the state load; we hold the lock.
        let same = slot.durable_key.load(Ordering::Relaxed) == key;
        if current & SLOT_STATE_MASK == SLOT_FREE || !same {
            view.unlock(byte);
            continue;
        }
        // Acquire: the previous owner's release-position store.
        let resume = slot.position.load(Ordering::Acquire) & !(RECORD_ALIGN - 1);
        take_back_sleeping(view, slot);
        match activate(view, index, current, req, WantAt::Resume(resume)) {
            Err(JoinError::Raced) => continue,
            other => return other.map(Some),
        }
    }
    Ok(None)
}

/// How an adoption of a pre-joined slot ended.
#[derive(Debug)]
pub(crate) enum Adopted {
    /// The slot is ours now, reading from the returned position, where the
    /// record numbered `first_seq` is (if known).
    Joined {
        joined: Joined,
        first_seq: Option<u64>,
    },
    /// The writer evicted the pre-joined slot for lag (untethered eviction)
    /// before we opened the ring; it is freed.
    Evicted,
}

/// Adopts the slot the publisher joined at creation for our registration
/// (`reg_index`, `generation`). `Ok(None)` if there is none.
pub(crate) fn adopt<V: View>(
    view: &V,
    req: &JoinRequest,
    reg_index: u64,
    generation: u64,
) -> Result<Option<Adopted>, JoinError> {
    for (index, slot) in view.slots().iter().enumerate() {
        // Acquire: the creator's fields are visible (they were also published
        // by the segment's magic before the ring became visible).
        let state = slot.state.load(Ordering::Acquire);
        let kind = state & SLOT_STATE_MASK;
        // Relaxed: ordered after the Acquire above.
        if !matches!(kind, SLOT_PREJOINED | SLOT_EVICTED)
            || slot.reg_index.load(Ordering::Relaxed) != reg_index
            || slot.reg_generation.load(Ordering::Relaxed) != generation
        {
            continue;
        }
        let byte = slot_lock_byte(index);
        // A joiner may be looking at the slot under its lock for a moment.
        let mut locked = false;
        for _ in 0..1000 {
            if view.try_lock(byte).map_err(JoinError::Io)? {
                locked = true;
                break;
            }
            crate::sync::yield_now();
        }
        if !locked {
            continue;
        }
        // Acquire: as above.
        let current = slot.state.load(Ordering::Acquire);
        if current != state {
            view.unlock(byte);
            continue;
        }
        if kind == SLOT_EVICTED {
            // Release: a later claimer sees a clean slot.
            slot.held.store(0, Ordering::Release);
            slot.state
                .store(with_state(current, SLOT_FREE), Ordering::Release);
            view.unlock(byte);
            return Ok(Some(Adopted::Evicted));
        }
        // Acquire: the creator's position store.
        let start = slot.position.load(Ordering::Acquire);
        // Relaxed: the creator's, published with the ring.
        let first_seq = slot.first_seq.load(Ordering::Relaxed);
        return match activate(view, index, current, req, WantAt::Resume(start)) {
            // Evicted (for lag) under our hands: report it like an eviction.
            Err(JoinError::Raced) => Ok(Some(Adopted::Evicted)),
            Err(e) => Err(e),
            Ok(joined) => Ok(Some(Adopted::Joined {
                joined,
                // Counted from the ring's first record even if the writer
                // lapped it before the adoption (Overwrite): the first record
                // read then reports the exact loss.
                first_seq: (first_seq != UNKNOWN_SEQ).then_some(first_seq),
            })),
        };
    }
    Ok(None)
}

/// Joins registered subscribers to a ring that is not visible yet: one slot
/// each, gating from `start`. Returns how many were joined (at most the
/// number of slots).
pub(crate) fn prejoin<V: View>(
    view: &V,
    registrations: &[(u32, u64)],
    start: u64,
    first_seq: Option<u64>,
) -> usize {
    let mut joined = 0;
    for (slot, &(reg, generation)) in view.slots().iter().zip(registrations) {
        // Relaxed: nobody else sees the ring yet; the segment's magic
        // (Release) and its rename publish all of it.
        slot.reg_index.store(u64::from(reg), Ordering::Relaxed);
        slot.reg_generation.store(generation, Ordering::Relaxed);
        slot.first_seq
            .store(first_seq.unwrap_or(UNKNOWN_SEQ), Ordering::Relaxed);
        slot.position.store(start, Ordering::Relaxed);
        slot.state
            .store((1 << 8) | SLOT_PREJOINED, Ordering::Relaxed);
        joined += 1;
    }
    joined
}

/// Releases everything below `position` (SYNC: release-position).
#[inline]
pub(crate) fn release<V: View>(view: &V, claim: &SlotClaim, position: u64) {
    // Release: our reads of the released bytes happen before the writer's
    // overwrite, which follows its Acquire load of this position. We hold
    // the slot's lock, so the slot is still ours to write.
    view.slots()[claim.index]
        .position
        .store(position, Ordering::Release);
    let waiters = view.waiters();
    // Relaxed, no fence: the writer sleeps for space with a short timeout, so
    // a missed wake-up costs it at most that; our hot path stays one load.
    if waiters.space_waiters.load(Ordering::Relaxed) != 0 {
        // Release: the writer's Acquire load of the futex word then sees our position.
        waiters.space_futex.fetch_add(1, Ordering::Release);
        view.futex_wake(&waiters.space_futex);
    }
}

/// Gives the slot back: frees it, then drops its lock.
pub(crate) fn leave<V: View>(view: &V, claim: &SlotClaim) {
    let slot = &view.slots()[claim.index];
    // Relaxed: our own flag; cleared before the state is freed (Release).
    slot.held.store(0, Ordering::Relaxed);
    // Release (success): our reads happen before the writer, which loads the
    // state with Acquire, reuses the space. Relaxed failure: evicted (then
    // free it from EVICTED) or taken by a foreign write (leave it alone).
    if slot
        .state
        .compare_exchange(
            claim.state,
            with_state(claim.state, SLOT_FREE),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_err()
    {
        let _ = slot.state.compare_exchange(
            with_state(claim.state, SLOT_EVICTED),
            with_state(claim.state, SLOT_FREE),
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
    view.unlock(slot_lock_byte(claim.index));
}

/// Pins the bytes from `position` on for an untethered reader and returns
/// the first position that is safe to read: the writer honours a limit and
/// may already overwrite below it (SYNC: join-limit, as for a joiner).
pub(crate) fn pin<V: View>(view: &V, claim: &SlotClaim, position: u64) -> u64 {
    let slot = &view.slots()[claim.index];
    // Relaxed: both published to the writer's scan by the fence below (its
    // scan loads `held` with Acquire after its own fence).
    slot.position.store(position, Ordering::Relaxed);
    slot.held.store(1, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    let limit = load_acquire_ro(&view.producer().limit);
    // Untrusted: only a record-aligned limit can be a start position.
    position.max(limit & !(RECORD_ALIGN - 1))
}

/// Marks the subscriber as holding a sample; returns the slot's status. Only
/// needed when untethered eviction is on (SYNC: hold-evict).
pub(crate) fn hold<V: View>(view: &V, claim: &SlotClaim) -> SlotStatus {
    let slot = &view.slots()[claim.index];
    // Relaxed: ordered before the state load by the fence.
    slot.held.store(1, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    let status = status_of(slot, claim);
    if status != SlotStatus::Active {
        // Release: pairs with the writer's Acquire load of `held` in `scan`.
        slot.held.store(0, Ordering::Release);
    }
    status
}

/// Ends a hold started by [`hold`].
pub(crate) fn unhold<V: View>(view: &V, claim: &SlotClaim) {
    // Release: our reads of the held sample happen before the writer's
    // overwrite (it loads `held` with Acquire in `scan`).
    view.slots()[claim.index].held.store(0, Ordering::Release);
}

/// The slot's current status, as seen by its owner.
pub(crate) fn status<V: View>(view: &V, claim: &SlotClaim) -> SlotStatus {
    status_of(&view.slots()[claim.index], claim)
}

fn status_of(slot: &Slot, claim: &SlotClaim) -> SlotStatus {
    // Relaxed: callers order it (the hold fence) or only need the latest value.
    let state = slot.state.load(Ordering::Relaxed);
    if state == claim.state {
        SlotStatus::Active
    } else if state == with_state(claim.state, SLOT_EVICTED) {
        SlotStatus::Evicted
    } else {
        SlotStatus::Lost
    }
}

/// Whether any slot may still need data: a live owner's lock, a live
/// registration's pre-joined slot, or an orphaned durable slot within its
/// lease. Used to decide whether a ring whose publisher is gone can go.
pub(crate) fn any_slot_needs_data<V: View>(view: &V, locked: impl Fn(usize) -> bool) -> bool {
    let now = view.now_ns();
    view.slots().iter().enumerate().any(|(index, slot)| {
        // Acquire: pairs with the claimer's Release (its fields are visible).
        let state = slot.state.load(Ordering::Acquire);
        if let Some((reg, generation)) = waiting_registration(slot, state) {
            // The subscriber has yet to read or to learn of its eviction.
            return view.registry_alive(reg, generation);
        }
        // Relaxed: ordered after the Acquire above.
        match state & SLOT_STATE_MASK {
            SLOT_FREE => false,
            SLOT_ORPHANED => {
                now.saturating_sub(slot.orphaned_at.load(Ordering::Relaxed))
                    < slot.lease_ns.load(Ordering::Relaxed)
            }
            _ => locked(index) || slot.durable_key.load(Ordering::Relaxed) != 0,
        }
    })
}
