//! The subscriber table: joining and leaving, the writer's gate, eviction.
//!
//! The writer honours a cached gate `limit` (it writes only below
//! `limit + capacity`) and recomputes it from the table only when space seems
//! short. A joiner and the writer meet with two Dekker-style handshakes
//! (`join-limit`, `hold-evict`, see the table in [`super`]).
//!
//! Liveness: a slot whose owner process is provably dead (pid + start time
//! from `/proc`, immune to pid reuse) is freed by the writer the next time it
//! is blocked, at most [`LIVENESS_INTERVAL`] after the previous check, so a
//! crashed subscriber holds a blocked publisher back for at most that long.

use std::time::{Duration, Instant};

use super::{Geometry, View};
use crate::{
    layout::{
        Slot, SLOT_ACTIVE, SLOT_CLAIMING, SLOT_EVICTED, SLOT_FREE, SLOT_STATE_MASK, SLOT_UNTETHERED,
    },
    sync::{fence, Ordering},
};

/// How often a blocked writer re-checks whether the subscribers holding it
/// back are still alive.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(20);

/// Writer-local bookkeeping for liveness checks and untethered eviction.
#[derive(Debug, Default)]
pub(crate) struct GateState {
    last_liveness_check: Option<Instant>,
    /// (slot, state word, position, since): who has held the writer back, since when.
    blocked_by: Option<(usize, u64, u64, Instant)>,
    /// Subscribers evicted or reaped by this writer.
    pub(crate) evictions: u64,
}

/// The lowest position any subscriber still needs, and which slot it is.
fn scan<V: View>(view: &V, tail: u64) -> (u64, Option<(usize, u64, u64)>) {
    let mut gate = tail;
    let mut who = None;
    for (i, slot) in view.slots().iter().enumerate() {
        // Acquire pairs with the joiner's Release store of ACTIVE (its
        // position store is visible) and with the leaver's Release store of
        // FREE (its reads happen before we overwrite).
        let state = slot.state.load(Ordering::Acquire);
        let position = match state & SLOT_STATE_MASK {
            // SYNC: release-position. Acquire: the subscriber's reads of
            // everything below its position happen before our overwrite.
            SLOT_ACTIVE => slot.position.load(Ordering::Acquire),
            // SYNC: hold-evict. An evicted subscriber still pins the sample it
            // holds, an untethered one the bytes it pinned; Acquire pairs with
            // its Release store of `held = 0`.
            SLOT_EVICTED | SLOT_UNTETHERED if slot.held.load(Ordering::Acquire) != 0 => {
                slot.position.load(Ordering::Acquire)
            }
            _ => continue,
        };
        if position < gate {
            gate = position;
            who = Some((i, state, position));
        }
    }
    (gate, who)
}

/// Recomputes the writer's limit and publishes it (SYNC: join-limit).
///
/// `lowest` is the limit the writer needs for its next record; `target` (a
/// record boundary at or after `lowest`) is as far as the limit may go when
/// nobody holds it back: a smaller limit keeps more history for late joiners,
/// a larger one means fewer scans. The result is always a record boundary.
pub(crate) fn refresh_limit<V: View>(
    view: &V,
    gate: &mut GateState,
    geo: &Geometry,
    tail: u64,
    lowest: u64,
    target: u64,
) -> u64 {
    let clamp = |g: u64| if g >= lowest { g.min(target) } else { g };
    let ctrl = view.control();
    let mut reaped_once = false;
    loop {
        let (g, mut who) = scan(view, tail);
        let mut limit = clamp(g);
        loop {
            // Relaxed: the SeqCst fence below orders it before the re-scan,
            // and the joiner's fence orders its load after its ACTIVE store.
            ctrl.limit.store(limit, Ordering::Relaxed);
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
        if limit >= lowest || reaped_once {
            return limit;
        }
        // Blocked: free slots of dead subscribers, evict laggards if configured.
        reaped_once = true;
        let changed = reap_dead(view, gate) | evict_laggard(view, gate, geo, who);
        if !changed {
            return limit;
        }
    }
}

/// Frees the slots of subscribers whose process is provably dead.
/// Rate-limited to one pass per [`LIVENESS_INTERVAL`].
pub(crate) fn reap_dead<V: View>(view: &V, gate: &mut GateState) -> bool {
    let now = Instant::now();
    if gate
        .last_liveness_check
        .is_some_and(|t| now.duration_since(t) < LIVENESS_INTERVAL)
    {
        return false;
    }
    gate.last_liveness_check = Some(now);
    let mut changed = false;
    for slot in view.slots() {
        // Acquire: pairs with the claimer's Release of ACTIVE, so pid and
        // start time are the owner's, not a previous owner's.
        let state = slot.state.load(Ordering::Acquire);
        if state & SLOT_STATE_MASK == SLOT_FREE {
            continue;
        }
        // Relaxed: ordered after the state load above.
        let pid = slot.pid.load(Ordering::Relaxed);
        let start = slot.start_time.load(Ordering::Relaxed);
        if view.process_alive(pid, start) {
            continue;
        }
        // A dead process reads nothing more, so its slot can be freed at once.
        // The CAS on the whole word (generation included) fails if the slot
        // changed hands meanwhile. Relaxed failure: we just skip the slot.
        if free_slot(slot, state) {
            changed = true;
            gate.evictions += 1;
            // Relaxed: a statistic.
            view.control().evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
    changed
}

fn free_slot(slot: &Slot, state: u64) -> bool {
    let free = (state & !SLOT_STATE_MASK) | SLOT_FREE;
    // AcqRel: Acquire so the dead owner's last writes are ordered before our
    // reuse; Release so a later claimer sees a clean slot.
    slot.state
        .compare_exchange(state, free, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
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
    if state & SLOT_STATE_MASK != SLOT_ACTIVE {
        return false;
    }
    let now = Instant::now();
    match gate.blocked_by {
        Some((i, s, p, since)) if (i, s, p) == (index, state, position) => {
            if now.duration_since(since) < after {
                return false;
            }
        }
        _ => {
            gate.blocked_by = Some((index, state, position, now));
            if !after.is_zero() {
                return false;
            }
        }
    }
    gate.blocked_by = None;
    let slot = &view.slots()[index];
    let evicted = (state & !SLOT_STATE_MASK) | SLOT_EVICTED;
    // AcqRel / Relaxed failure: as in `free_slot`.
    if slot
        .state
        .compare_exchange(state, evicted, Ordering::AcqRel, Ordering::Relaxed)
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
    view.control().evictions.fetch_add(1, Ordering::Relaxed);
    true
}

/// A subscriber's claim on a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotClaim {
    pub(crate) index: usize,
    /// The ACTIVE state word (with its generation) this subscriber owns.
    pub(crate) state: u64,
}

/// What a subscriber finds in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotStatus {
    /// Still ours and active.
    Active,
    /// The writer evicted us for lag.
    Evicted,
    /// The slot was taken from us (freed as dead or by a foreign process).
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

/// Claims a free slot and activates it at a safe start position.
/// Returns `None` when every slot is taken.
pub(crate) fn join<V: View>(
    view: &V,
    at: JoinAt,
    tethered: bool,
    pid: u64,
    start_time: u64,
    now_ns: u64,
) -> Option<(SlotClaim, u64)> {
    let ctrl = view.control();
    for (index, slot) in view.slots().iter().enumerate() {
        // Relaxed: the CAS below re-checks it.
        let state = slot.state.load(Ordering::Relaxed);
        if state & SLOT_STATE_MASK != SLOT_FREE {
            continue;
        }
        let generation = (state >> 8).wrapping_add(1) << 8;
        let claiming = generation | SLOT_CLAIMING;
        // Acquire: orders our field stores after any previous owner's use.
        // Relaxed failure: try the next slot.
        if slot
            .state
            .compare_exchange(state, claiming, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SYNC: tail-publish / head-advance (Acquire): the stamps from there on are visible.
        let wanted = match at {
            JoinAt::Latest => ctrl.tail.load(Ordering::Acquire),
            JoinAt::Oldest => ctrl.head.load(Ordering::Acquire),
        };
        // Relaxed: published by the Release store of ACTIVE below.
        slot.pid.store(pid, Ordering::Relaxed);
        slot.start_time.store(start_time, Ordering::Relaxed);
        slot.held.store(0, Ordering::Relaxed);
        slot.heartbeat.store(now_ns, Ordering::Relaxed);
        slot.position.store(wanted, Ordering::Relaxed);
        let active = generation
            | if tethered {
                SLOT_ACTIVE
            } else {
                SLOT_UNTETHERED
            };
        // Release: pairs with the writer's Acquire state load in its scan.
        slot.state.store(active, Ordering::Release);
        // SYNC: join-limit (see `refresh_limit`).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence.
        let limit = ctrl.limit.load(Ordering::Relaxed);
        let position = if limit > wanted {
            // The writer may already be overwriting below `limit`: start there
            // (a record boundary: a subscriber position or a published tail).
            // Release: SYNC: release-position.
            slot.position.store(limit, Ordering::Release);
            limit
        } else {
            wanted
        };
        return Some((
            SlotClaim {
                index,
                state: active,
            },
            position,
        ));
    }
    None
}

/// Releases everything below `position` (SYNC: release-position).
#[inline]
pub(crate) fn release<V: View>(view: &V, claim: &SlotClaim, position: u64) {
    // Release: our reads of the released bytes happen before the writer's
    // overwrite, which follows its Acquire load of this position.
    view.slots()[claim.index]
        .position
        .store(position, Ordering::Release);
    let ctrl = view.control();
    // Relaxed, no fence: the writer sleeps for space with a short timeout, so
    // a missed wake-up costs it at most that; our hot path stays one load.
    if ctrl.space_waiters.load(Ordering::Relaxed) != 0 {
        // Release: the writer's Acquire load of the futex word then sees our position.
        ctrl.space_futex.fetch_add(1, Ordering::Release);
        view.futex_wake(&ctrl.space_futex);
    }
}

/// Gives the slot back.
pub(crate) fn leave<V: View>(view: &V, claim: &SlotClaim) {
    let slot = &view.slots()[claim.index];
    let free = (claim.state & !SLOT_STATE_MASK) | SLOT_FREE;
    // Release (success): our reads happen before the writer, which loads the
    // state with Acquire, reuses the space. Relaxed failure: the slot is no
    // longer ours (evicted or reaped); then there is nothing to give back,
    // except an evicted slot, which we free from its EVICTED state.
    if slot
        .state
        .compare_exchange(claim.state, free, Ordering::Release, Ordering::Relaxed)
        .is_err()
    {
        let evicted = (claim.state & !SLOT_STATE_MASK) | SLOT_EVICTED;
        slot.held.store(0, Ordering::Release);
        let _ = slot
            .state
            .compare_exchange(evicted, free, Ordering::Release, Ordering::Relaxed);
    }
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
    // Relaxed: ordered by the fence.
    let limit = view.control().limit.load(Ordering::Relaxed);
    position.max(limit)
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
    } else if state == (claim.state & !SLOT_STATE_MASK) | SLOT_EVICTED {
        SlotStatus::Evicted
    } else {
        SlotStatus::Lost
    }
}
