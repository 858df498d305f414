//! MSG_ZEROCOPY completion bookkeeping, sans-IO.
//!
//! With `MSG_ZEROCOPY` the kernel keeps reading the sent pages after
//! `sendmsg` returns; the ring space they live in may be reused only after the
//! kernel says it is done (Linux `Documentation/networking/msg_zerocopy.rst`).
//! The kernel numbers the zero-copy send calls of a socket with a 32-bit
//! counter that starts at 0 and wraps; a call gets an id only if it sent at
//! least one byte (a call that fails, e.g. with `ENOBUFS` or `EAGAIN` before
//! sending anything, gives its id back). Completions arrive on the socket's
//! error queue as inclusive ranges `[lo, hi]` of ids, usually coalesced and in
//! order, but out of order after retransmission or teardown.
//!
//! [`ZcTracker`] mirrors that counter. For every send call it records the
//! ring position up to which the ring may be released once that call, and all
//! calls before it, are complete. [`ZcTracker::released_position`] is that
//! position: the bridge releases ring space at `min(peer ACK, released)`
//! (see `PRIOR-ART.md` §4.5), so the kernel never reads recycled memory.
//! Plain (copying) sends are complete when they return, but cannot release
//! beyond zero-copy sends still in flight before them.
//!
//! The tracker also carries the fallback policy: zero-copy only pays above
//! roughly 10 KB per send, and when completions come back flagged
//! `SO_EE_CODE_ZEROCOPY_COPIED` (the kernel took a deferred copy: always on
//! loopback and veth) the kernel documentation advises to stop passing
//! `MSG_ZEROCOPY` on that socket. After [`ZcPolicy::copied_ids_before_plain`]
//! consecutive copied ids the tracker switches the socket to plain sends and
//! counts the switch.
//!
//! # Example
//!
//! ```
//! use shmbus_bridge::proto::zc::{ZcPolicy, ZcTracker};
//!
//! let mut t = ZcTracker::new(ZcPolicy::default(), 0);
//! let id0 = t.on_zerocopy_send(Some(65536))?;
//! let id1 = t.on_zerocopy_send(Some(131072))?;
//! t.on_plain_send(140000)?; // complete at once, but after id0 and id1
//! assert_eq!(t.released_position(), 0);
//! t.on_completion(id1, id1, false)?; // out of order: nothing released yet
//! assert_eq!(t.released_position(), 0);
//! t.on_completion(id0, id0, false)?;
//! assert_eq!(t.released_position(), 140000);
//! # Ok::<(), shmbus_bridge::proto::zc::ZcError>(())
//! ```

use std::collections::VecDeque;

/// Most zero-copy sends the tracker keeps in flight. Far below 2^31, so
/// wrapping id arithmetic is unambiguous. The socket layer reaps completions
/// or sends plainly before reaching it.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// Default for [`ZcPolicy::min_zerocopy_bytes`].
pub const DEFAULT_MIN_ZEROCOPY_BYTES: usize = 16 * 1024;

/// Default for [`ZcPolicy::copied_ids_before_plain`].
pub const DEFAULT_COPIED_IDS_BEFORE_PLAIN: u32 = 32;

/// When to use zero-copy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZcPolicy {
    /// Sends with a payload smaller than this use a plain send: below roughly
    /// 10 KB the page pinning and notification cost more than the copy.
    /// Default [`DEFAULT_MIN_ZEROCOPY_BYTES`].
    pub min_zerocopy_bytes: usize,
    /// After this many consecutive completed ids flagged COPIED, switch the
    /// socket to plain sends for good. `None` never switches. Default
    /// [`DEFAULT_COPIED_IDS_BEFORE_PLAIN`].
    pub copied_ids_before_plain: Option<u32>,
}

impl Default for ZcPolicy {
    fn default() -> Self {
        Self {
            min_zerocopy_bytes: DEFAULT_MIN_ZEROCOPY_BYTES,
            copied_ids_before_plain: Some(DEFAULT_COPIED_IDS_BEFORE_PLAIN),
        }
    }
}

/// Counters, for metrics ("is zero-copy actually used?").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZcStats {
    /// Send calls made with `MSG_ZEROCOPY` that got an id.
    pub zerocopy_sends: u64,
    /// Plain send calls recorded (including fallbacks).
    pub plain_sends: u64,
    /// Completion notifications processed.
    pub notifications: u64,
    /// Ids completed, copied or not.
    pub completed_ids: u64,
    /// Ids whose completion was flagged COPIED (deferred copy, no gain).
    pub copied_ids: u64,
    /// Ids completed without COPIED: real zero-copy transmissions.
    pub zerocopy_ids: u64,
    /// Zero-copy calls refused with `ENOBUFS` and retried as plain sends.
    pub enobufs_fallbacks: u64,
    /// Times zero-copy was switched off because completions came back COPIED.
    pub switched_to_plain: u64,
}

/// A bookkeeping inconsistency (a kernel report that does not match what was
/// sent, or a caller bug). The connection's state cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZcError {
    /// A completion names ids that are not in flight (never sent, or already completed).
    #[error("zero-copy completion [{lo}, {hi}] names ids not in flight (in flight: {in_flight} from id {front})")]
    UnknownIds {
        /// Range start.
        lo: u32,
        /// Range end (inclusive).
        hi: u32,
        /// Oldest id in flight.
        front: u32,
        /// Number of ids in flight.
        in_flight: usize,
    },
    /// A release position lower than an earlier one.
    #[error("release position {position} is below the previous one {previous}; positions must not go backwards")]
    PositionRegressed {
        /// The new position.
        position: u64,
        /// The highest position recorded before.
        previous: u64,
    },
    /// Too many zero-copy sends in flight.
    #[error("{MAX_IN_FLIGHT} zero-copy sends in flight; reap completions or send plainly")]
    TooManyInFlight,
}

/// Outcome of [`ZcTracker::on_completion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Ids covered by the notification.
    pub ids: u64,
    /// Whether they were flagged COPIED.
    pub copied: bool,
    /// [`ZcTracker::released_position`] after processing it.
    pub released_position: u64,
    /// Whether this notification made the tracker switch to plain sends.
    pub switched_to_plain: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    done: bool,
    /// Position released once this id and all before it are complete; `None`
    /// for intermediate calls of a partially sent slice.
    release_to: Option<u64>,
}

/// Tracks zero-copy sends of one socket and the ring position they pin.
#[derive(Debug, Clone)]
pub struct ZcTracker {
    policy: ZcPolicy,
    stats: ZcStats,
    /// Entry `i` is id `front_id + i` (wrapping).
    in_flight: VecDeque<InFlight>,
    front_id: u32,
    released: u64,
    /// Highest position handed to any `on_*_send`, to enforce monotonicity.
    last_recorded: u64,
    consecutive_copied: u64,
    zerocopy_enabled: bool,
}

impl ZcTracker {
    /// A tracker for a fresh socket (kernel counter at 0) whose stream starts
    /// at ring position `start_position`.
    pub fn new(policy: ZcPolicy, start_position: u64) -> Self {
        Self {
            policy,
            stats: ZcStats::default(),
            in_flight: VecDeque::new(),
            front_id: 0,
            released: start_position,
            last_recorded: start_position,
            consecutive_copied: 0,
            zerocopy_enabled: true,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ZcPolicy {
        &self.policy
    }

    /// Replaces the policy (before the first send, e.g. from configuration).
    pub fn set_policy(&mut self, policy: ZcPolicy) {
        self.policy = policy;
    }

    /// Counters.
    pub fn stats(&self) -> &ZcStats {
        &self.stats
    }

    /// Whether zero-copy is still enabled for this socket.
    pub fn zerocopy_enabled(&self) -> bool {
        self.zerocopy_enabled
    }

    /// Whether a send with `payload_len` bytes of ring payload should use
    /// `MSG_ZEROCOPY`: enabled, large enough, and room to track it.
    pub fn wants_zerocopy(&self, payload_len: usize) -> bool {
        self.zerocopy_enabled
            && payload_len >= self.policy.min_zerocopy_bytes
            && self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// Switches zero-copy off for this socket (e.g. `SO_ZEROCOPY` refused).
    /// Sends already in flight are still tracked.
    pub fn disable_zerocopy(&mut self) {
        self.zerocopy_enabled = false;
    }

    /// The id the kernel will give the next successful zero-copy send call.
    pub fn next_id(&self) -> u32 {
        // in_flight.len() <= MAX_IN_FLIGHT < 2^32.
        self.front_id.wrapping_add(self.in_flight.len() as u32)
    }

    /// Zero-copy send calls not yet completed (including ones completed out
    /// of order behind an older incomplete one).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Highest ring position up to which every send is complete: ring space
    /// below it is no longer read by the kernel.
    pub fn released_position(&self) -> u64 {
        self.released
    }

    /// Highest position recorded by any send.
    pub fn sent_position(&self) -> u64 {
        self.last_recorded
    }

    fn check_position(&mut self, position: u64) -> Result<(), ZcError> {
        if position < self.last_recorded {
            return Err(ZcError::PositionRegressed {
                position,
                previous: self.last_recorded,
            });
        }
        self.last_recorded = position;
        Ok(())
    }

    /// Records a successful (`> 0` bytes) `MSG_ZEROCOPY` send call and returns
    /// the id the kernel assigned to it. `release_to` is the ring position
    /// released when it completes, `None` for a call that sent only part of a
    /// slice (the call that finishes the slice carries the position).
    ///
    /// # Errors
    ///
    /// [`ZcError::PositionRegressed`] or [`ZcError::TooManyInFlight`]; nothing
    /// is recorded then.
    pub fn on_zerocopy_send(&mut self, release_to: Option<u64>) -> Result<u32, ZcError> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(ZcError::TooManyInFlight);
        }
        if let Some(p) = release_to {
            self.check_position(p)?;
        }
        let id = self.next_id();
        self.in_flight.push_back(InFlight {
            done: false,
            release_to,
        });
        self.stats.zerocopy_sends += 1;
        Ok(id)
    }

    /// Records a plain send that finished a slice ending at `release_to`.
    /// It needs no completion, but the position is released only after the
    /// zero-copy sends before it complete.
    ///
    /// # Errors
    ///
    /// [`ZcError::PositionRegressed`].
    pub fn on_plain_send(&mut self, release_to: u64) -> Result<(), ZcError> {
        self.check_position(release_to)?;
        self.stats.plain_sends += 1;
        match self.in_flight.back_mut() {
            Some(last) => last.release_to = Some(release_to),
            None => self.released = self.released.max(release_to),
        }
        Ok(())
    }

    /// Counts a plain send call that did not finish a slice (the finishing
    /// call records the position).
    pub fn on_partial_plain_send(&mut self) {
        self.stats.plain_sends += 1;
    }

    /// Counts a zero-copy call refused with `ENOBUFS` (retried plainly).
    pub fn on_enobufs(&mut self) {
        self.stats.enobufs_fallbacks += 1;
    }

    /// Processes a completion notification for ids `lo..=hi` (wrapping).
    ///
    /// # Errors
    ///
    /// [`ZcError::UnknownIds`] if any id in the range is not in flight or was
    /// already completed; nothing is changed then.
    pub fn on_completion(&mut self, lo: u32, hi: u32, copied: bool) -> Result<Completion, ZcError> {
        let unknown = || ZcError::UnknownIds {
            lo,
            hi,
            front: self.front_id,
            in_flight: self.in_flight.len(),
        };
        let count = u64::from(hi.wrapping_sub(lo)) + 1;
        let start = u64::from(lo.wrapping_sub(self.front_id));
        let len = self.in_flight.len() as u64;
        if start >= len || count > len - start {
            return Err(unknown());
        }
        // Both fit in usize: they are below in_flight.len().
        let range = start as usize..(start + count) as usize;
        if self.in_flight.range(range.clone()).any(|e| e.done) {
            return Err(unknown());
        }
        for e in self.in_flight.range_mut(range) {
            e.done = true;
        }
        while let Some(front) = self.in_flight.front() {
            if !front.done {
                break;
            }
            if let Some(p) = front.release_to {
                self.released = self.released.max(p);
            }
            self.in_flight.pop_front();
            self.front_id = self.front_id.wrapping_add(1);
        }
        self.stats.notifications += 1;
        self.stats.completed_ids += count;
        let mut switched = false;
        if copied {
            self.stats.copied_ids += count;
            self.consecutive_copied += count;
            if let Some(limit) = self.policy.copied_ids_before_plain {
                if self.zerocopy_enabled && self.consecutive_copied >= u64::from(limit) {
                    self.zerocopy_enabled = false;
                    self.stats.switched_to_plain += 1;
                    switched = true;
                }
            }
        } else {
            self.stats.zerocopy_ids += count;
            self.consecutive_copied = 0;
        }
        Ok(Completion {
            ids: count,
            copied,
            released_position: self.released,
            switched_to_plain: switched,
        })
    }

    /// A tracker for a socket whose kernel counter is at `first_id` (for
    /// tests of the wrap-around; a real socket starts at 0).
    #[cfg(test)]
    fn with_first_id(policy: ZcPolicy, start_position: u64, first_id: u32) -> Self {
        let mut t = Self::new(policy, start_position);
        t.front_id = first_id;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;

    fn never_switch() -> ZcPolicy {
        ZcPolicy {
            min_zerocopy_bytes: 1,
            copied_ids_before_plain: None,
        }
    }

    #[test]
    fn in_order_completion_releases_progressively() {
        let mut t = ZcTracker::new(never_switch(), 100);
        assert_eq!(t.released_position(), 100);
        let ids: Vec<u32> = (1..=4)
            .map(|i| t.on_zerocopy_send(Some(100 + i * 10)).unwrap())
            .collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(t.on_completion(0, 1, false).unwrap().released_position, 120);
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.on_completion(2, 3, false).unwrap().released_position, 140);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.stats().completed_ids, 4);
        assert_eq!(t.stats().zerocopy_ids, 4);
        assert_eq!(t.stats().notifications, 2);
    }

    #[test]
    fn plain_sends_release_at_once_or_after_pending_zerocopy() {
        let mut t = ZcTracker::new(never_switch(), 0);
        t.on_plain_send(10).unwrap();
        assert_eq!(t.released_position(), 10);
        let id = t.on_zerocopy_send(Some(20)).unwrap();
        t.on_plain_send(30).unwrap();
        t.on_plain_send(40).unwrap();
        assert_eq!(t.released_position(), 10);
        t.on_completion(id, id, false).unwrap();
        assert_eq!(t.released_position(), 40);
        assert_eq!(t.stats().plain_sends, 3);
    }

    #[test]
    fn partial_sends_release_only_with_the_finishing_call() {
        let mut t = ZcTracker::new(never_switch(), 0);
        let a = t.on_zerocopy_send(None).unwrap();
        let b = t.on_zerocopy_send(Some(1000)).unwrap();
        t.on_completion(a, a, false).unwrap();
        assert_eq!(t.released_position(), 0);
        t.on_completion(b, b, false).unwrap();
        assert_eq!(t.released_position(), 1000);
        // A slice finished by a plain call after a zero-copy partial call.
        let c = t.on_zerocopy_send(None).unwrap();
        t.on_plain_send(2000).unwrap();
        assert_eq!(t.released_position(), 1000);
        t.on_completion(c, c, false).unwrap();
        assert_eq!(t.released_position(), 2000);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_oldest() {
        let mut t = ZcTracker::new(never_switch(), 0);
        for i in 1..=5 {
            t.on_zerocopy_send(Some(i * 100)).unwrap();
        }
        t.on_completion(2, 4, false).unwrap();
        assert_eq!(t.released_position(), 0);
        assert_eq!(t.in_flight(), 5);
        t.on_completion(0, 0, false).unwrap();
        assert_eq!(t.released_position(), 100);
        // Id 1 completes the run 1..=4 (2..=4 were already done).
        t.on_completion(1, 1, false).unwrap();
        assert_eq!(t.released_position(), 500);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn bad_completions_are_rejected_without_changes() {
        let mut t = ZcTracker::new(never_switch(), 0);
        for i in 1..=3 {
            t.on_zerocopy_send(Some(i)).unwrap();
        }
        // Beyond what was sent.
        assert!(matches!(
            t.on_completion(2, 3, false),
            Err(ZcError::UnknownIds { .. })
        ));
        // Reversed range (wraps to almost 2^32 ids).
        assert!(matches!(
            t.on_completion(2, 1, false),
            Err(ZcError::UnknownIds { .. })
        ));
        t.on_completion(1, 1, false).unwrap();
        // Duplicate.
        assert!(matches!(
            t.on_completion(1, 2, false),
            Err(ZcError::UnknownIds { .. })
        ));
        t.on_completion(0, 0, false).unwrap();
        // Already popped.
        assert!(matches!(
            t.on_completion(0, 0, false),
            Err(ZcError::UnknownIds { .. })
        ));
        assert_eq!(t.released_position(), 2);
        assert_eq!(t.stats().completed_ids, 2);
        // Positions must not go backwards.
        assert!(matches!(
            t.on_zerocopy_send(Some(1)),
            Err(ZcError::PositionRegressed {
                position: 1,
                previous: 3
            })
        ));
        assert!(t.on_plain_send(2).is_err());
    }

    #[test]
    fn ids_wrap_around_u32() {
        let mut t = ZcTracker::with_first_id(never_switch(), 0, u32::MAX - 2);
        let ids: Vec<u32> = (1..=6)
            .map(|i| t.on_zerocopy_send(Some(i)).unwrap())
            .collect();
        assert_eq!(ids, [u32::MAX - 2, u32::MAX - 1, u32::MAX, 0, 1, 2]);
        // One coalesced range across the wrap.
        let c = t.on_completion(u32::MAX - 1, 1, true).unwrap();
        assert_eq!(c.ids, 4);
        assert_eq!(t.released_position(), 0);
        t.on_completion(u32::MAX - 2, u32::MAX - 2, true).unwrap();
        assert_eq!(t.released_position(), 5);
        t.on_completion(2, 2, true).unwrap();
        assert_eq!(t.released_position(), 6);
        assert_eq!(t.next_id(), 3);
    }

    #[test]
    fn copied_completions_switch_to_plain_once() {
        let policy = ZcPolicy {
            min_zerocopy_bytes: 1000,
            copied_ids_before_plain: Some(4),
        };
        let mut t = ZcTracker::new(policy, 0);
        assert!(!t.wants_zerocopy(999));
        assert!(t.wants_zerocopy(1000));
        for i in 1..=8 {
            t.on_zerocopy_send(Some(i)).unwrap();
        }
        // A real zero-copy completion resets the streak.
        assert!(!t.on_completion(0, 2, true).unwrap().switched_to_plain);
        assert!(!t.on_completion(3, 3, false).unwrap().switched_to_plain);
        assert!(!t.on_completion(4, 6, true).unwrap().switched_to_plain);
        assert!(t.zerocopy_enabled());
        assert!(t.on_completion(7, 7, true).unwrap().switched_to_plain);
        assert!(!t.zerocopy_enabled());
        assert!(!t.wants_zerocopy(1 << 20));
        assert_eq!(t.stats().switched_to_plain, 1);
        assert_eq!(t.stats().copied_ids, 7);
        assert_eq!(t.stats().zerocopy_ids, 1);
        assert_eq!(t.released_position(), 8);
    }

    /// Random interleavings of zero-copy sends, plain sends, partial sends
    /// and (possibly out-of-order, coalesced) completions, starting near the
    /// u32 wrap, checked against a simple model.
    #[test]
    fn random_schedules_match_model() {
        let mut rng = Rng::new(7);
        let rounds = if cfg!(miri) { 10 } else { 300 };
        for round in 0..rounds {
            let first_id = u32::MAX - rng.below(64) as u32;
            let mut t = ZcTracker::with_first_id(never_switch(), 0, first_id);
            // Model: every call in order, with (id if zc, release_to, done).
            let mut model: Vec<(Option<u32>, Option<u64>, bool)> = Vec::new();
            let mut pos = 0u64;
            for _ in 0..200 {
                match rng.below(5) {
                    0 | 1 => {
                        pos += 1 + rng.below(1000) as u64;
                        let id = t.on_zerocopy_send(Some(pos)).unwrap();
                        model.push((Some(id), Some(pos), false));
                    }
                    2 => {
                        let id = t.on_zerocopy_send(None).unwrap();
                        model.push((Some(id), None, false));
                    }
                    3 => {
                        pos += 1 + rng.below(1000) as u64;
                        t.on_plain_send(pos).unwrap();
                        model.push((None, Some(pos), true));
                    }
                    _ => {
                        // Complete a random run of consecutive pending ids.
                        let pending: Vec<usize> = model
                            .iter()
                            .enumerate()
                            .filter(|(_, m)| m.0.is_some() && !m.2)
                            .map(|(i, _)| i)
                            .collect();
                        if pending.is_empty() {
                            continue;
                        }
                        let a = rng.below(pending.len());
                        let mut b = a;
                        // Extend while the ids stay consecutive.
                        while b + 1 < pending.len()
                            && rng.below(3) != 0
                            && model[pending[b + 1]].0.unwrap()
                                == model[pending[b]].0.unwrap().wrapping_add(1)
                        {
                            b += 1;
                        }
                        let lo = model[pending[a]].0.unwrap();
                        let hi = model[pending[b]].0.unwrap();
                        t.on_completion(lo, hi, rng.below(2) == 0).unwrap();
                        for &i in &pending[a..=b] {
                            model[i].2 = true;
                        }
                    }
                }
                let expected = model
                    .iter()
                    .take_while(|m| m.2)
                    .filter_map(|m| m.1)
                    .max()
                    .unwrap_or(0);
                assert_eq!(t.released_position(), expected, "round {round}");
            }
            // Drain everything: the whole stream is released.
            let pending: Vec<u32> = model
                .iter()
                .filter(|m| m.0.is_some() && !m.2)
                .map(|m| m.0.unwrap())
                .collect();
            for id in pending {
                t.on_completion(id, id, false).unwrap();
            }
            assert_eq!(t.in_flight(), 0);
            assert_eq!(t.released_position(), pos);
        }
    }
}
