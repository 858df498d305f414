//! A subscriber's accounting, per ring and per message-level publisher.
//!
//! Per ring (one publisher incarnation, or one replica epoch of a remote
//! one): sequences strictly increase, and every jump is explained exactly by
//! the losses reported since the previous message (`TopicEvent::Lost`), or,
//! when the mode allows it, by a rejoin at the newest message after an
//! eviction (counted as skipped). Per publisher, across rings (replica
//! epochs after a bridge restart): no sequence is received twice, and what
//! was received, reported lost or skipped forms intervals the checker
//! expects to be one.

use std::collections::BTreeMap;

use super::lines::RingLine;

/// Which gaps a subscriber may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Block without eviction: no loss, no eviction.
    Tethered,
    /// Block with untethered eviction: evictions, each followed by a jump
    /// to the newest message (not counted by the library, counted here).
    Untethered,
    /// Overwrite (or an untethered bridge export): losses, each exactly
    /// reported.
    Lossy,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tethered" => Ok(Self::Tethered),
            "untethered" => Ok(Self::Untethered),
            "lossy" => Ok(Self::Lossy),
            _ => Err(format!("mode {s:?}: tethered, untethered or lossy")),
        }
    }
}

/// One ring's state.
#[derive(Debug, Default, Clone)]
struct RingState {
    line: RingLine,
    /// Losses reported since the last message.
    lost_since: u64,
    /// An eviction since the last message: the next one may jump ahead.
    rejoined: bool,
    gone: bool,
    /// Changed since the last snapshot.
    dirty: bool,
}

/// Sorted disjoint `[lo, hi]` intervals of accounted sequences.
#[derive(Debug, Default, Clone)]
pub struct Intervals {
    spans: BTreeMap<u64, u64>,
}

impl Intervals {
    /// Adds `[lo, hi]`; returns how many of its sequences were already in.
    pub fn add(&mut self, lo: u64, hi: u64) -> u64 {
        let mut overlap = 0;
        let (mut lo2, mut hi2) = (lo, hi);
        let touching: Vec<(u64, u64)> = self
            .spans
            .range(..=hi.saturating_add(1))
            .filter(|&(_, &e)| e.saturating_add(1) >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            let (ol, oh) = (s.max(lo), e.min(hi));
            if ol <= oh {
                overlap += oh - ol + 1;
            }
            lo2 = lo2.min(s);
            hi2 = hi2.max(e);
            self.spans.remove(&s);
        }
        self.spans.insert(lo2, hi2);
        overlap
    }

    /// `(lo, hi, sequences covered)`, if any.
    pub fn summary(&self) -> Option<(u64, u64, u64)> {
        let lo = *self.spans.keys().next()?;
        let hi = *self.spans.values().next_back()?;
        Some((lo, hi, self.spans.iter().map(|(s, e)| e - s + 1).sum()))
    }
}

/// All of a subscriber's accounting.
#[derive(Debug)]
pub struct SeqTrack {
    mode: Mode,
    rings: BTreeMap<String, RingState>,
    publishers: BTreeMap<u32, Intervals>,
    /// Stream stem ([`stem`]) -> message-level publisher.
    stem_publisher: BTreeMap<String, u32>,
    /// Losses of rings that ended without a message (a replica epoch
    /// holding only a gap record), per stream stem: they explain a hole of
    /// the stream, whose position only the neighbouring epochs tell.
    orphan_lost: BTreeMap<String, u64>,
}

/// The stream a ring belongs to: a replica ring's id is
/// `<peer>.<publisher ring>.<epoch>`; the stem drops the epoch. A local
/// ring is its own stem.
pub fn stem(ring: &str) -> &str {
    match ring.rsplit_once('.') {
        Some((head, epoch)) if head.contains('.') && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            head
        }
        _ => ring,
    }
}

impl SeqTrack {
    /// A tracker allowing the gaps of `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            rings: BTreeMap::new(),
            publishers: BTreeMap::new(),
            stem_publisher: BTreeMap::new(),
            orphan_lost: BTreeMap::new(),
        }
    }

    fn ring(&mut self, ring: &str) -> &mut RingState {
        let st = self.rings.entry(ring.to_string()).or_default();
        if st.line.ring.is_empty() {
            st.line.ring = ring.to_string();
        }
        st.dirty = true;
        st
    }

    /// A message `(publisher, seq)` read from `ring`. Returns the
    /// violations it shows (kind, detail).
    pub fn on_message(&mut self, ring: &str, publisher: u32, seq: u64) -> Vec<(String, String)> {
        let mut bad = Vec::new();
        self.stem_publisher
            .insert(stem(ring).to_string(), publisher);
        let st = self.ring(ring);
        if st.gone {
            bad.push(("after-gone".into(), format!("{ring}: seq {seq} after gone")));
        }
        if st.line.received > 0 && st.line.publisher != publisher {
            bad.push((
                "publisher-id".into(),
                format!(
                    "{ring} carried publisher {}, now {publisher}",
                    st.line.publisher
                ),
            ));
        }
        st.line.publisher = publisher;
        let accounted_from = match st.line.last {
            Some(last) => {
                let want = last + 1 + st.lost_since;
                if seq == want {
                } else if st.rejoined && seq > want {
                    st.line.evict_skipped += seq - want;
                } else {
                    bad.push((
                        "order".into(),
                        format!(
                            "{ring}: publisher {publisher} seq {seq} after {last} with {} reported lost (expected {want})",
                            st.lost_since
                        ),
                    ));
                }
                last + 1
            }
            None => {
                st.line.first = Some(seq);
                st.line.lost_before_first = st.lost_since;
                seq.saturating_sub(st.lost_since)
            }
        };
        st.line.last = Some(seq);
        st.line.received += 1;
        st.line.pending_lost = 0;
        st.lost_since = 0;
        st.rejoined = false;
        let lo = accounted_from.min(seq);
        let dup = self.publishers.entry(publisher).or_default().add(lo, seq);
        // Only `seq` itself can be a duplicate receipt; an overlap of the
        // accounted range before it is a loss counted twice.
        if dup > 0 {
            bad.push((
                "duplicate".into(),
                format!("{ring}: publisher {publisher} seq {seq}: {dup} sequence(s) of [{lo}, {seq}] already accounted"),
            ));
        }
        bad
    }

    /// `messages` reported lost on `ring`. Returns violations.
    pub fn on_lost(&mut self, ring: &str, messages: u64) -> Vec<(String, String)> {
        let mode = self.mode;
        let st = self.ring(ring);
        let mut bad = Vec::new();
        if messages == 0 {
            // The library's signal for "evicted before the ring was found".
            st.rejoined = true;
            st.line.evictions += 1;
            if mode != Mode::Untethered {
                bad.push(("evicted".into(), format!("{ring}: evicted ({mode:?})")));
            }
            return bad;
        }
        st.line.lost += messages;
        st.line.pending_lost += messages;
        st.lost_since += messages;
        if mode != Mode::Lossy {
            bad.push((
                "lost".into(),
                format!("{ring}: {messages} message(s) lost ({mode:?})"),
            ));
        }
        bad
    }

    /// An eviction from `ring` (the library rejoined at its newest message).
    pub fn on_evicted(&mut self, ring: &str) -> Vec<(String, String)> {
        let mode = self.mode;
        let st = self.ring(ring);
        st.rejoined = true;
        st.line.evictions += 1;
        if mode == Mode::Untethered {
            Vec::new()
        } else {
            vec![("evicted".into(), format!("{ring}: evicted ({mode:?})"))]
        }
    }

    /// `ring`'s publisher is gone and the ring drained.
    pub fn on_gone(&mut self, ring: &str) -> Vec<(String, String)> {
        let st = self.ring(ring);
        if st.gone {
            return vec![("gone-twice".into(), format!("{ring}: gone twice"))];
        }
        st.gone = true;
        // A loss reported at the end of a ring (a replica closed by a gap
        // longer than it) covers the sequences after its last message.
        st.line.evicted_at_end = st.rejoined;
        let (publisher, last, tail) = (st.line.publisher, st.line.last, st.lost_since);
        match last {
            Some(last) if tail > 0 => {
                self.publishers
                    .entry(publisher)
                    .or_default()
                    .add(last + 1, last + tail);
            }
            None if tail > 0 => {
                *self.orphan_lost.entry(stem(ring).to_string()).or_default() += tail;
            }
            _ => {}
        }
        Vec::new()
    }

    /// The rings changed since the last call, stamped `t`.
    pub fn take_dirty(&mut self, t: u64) -> Vec<RingLine> {
        self.rings
            .values_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                s.line.t = t;
                s.line.clone()
            })
            .collect()
    }

    /// Every ring's state, stamped `t`.
    pub fn all_rings(&mut self, t: u64) -> Vec<RingLine> {
        for s in self.rings.values_mut() {
            s.dirty = true;
        }
        self.take_dirty(t)
    }

    /// Per publisher: `(publisher, lo, hi, missing)`: the span accounted
    /// for and how many sequences inside it are missing beyond what
    /// message-less rings of its streams reported lost.
    pub fn unions(&self) -> Vec<(u32, u64, u64, u64)> {
        self.publishers
            .iter()
            .filter_map(|(&p, i)| {
                let (lo, hi, covered) = i.summary()?;
                let orphans: u64 = self
                    .orphan_lost
                    .iter()
                    .filter(|(s, _)| self.stem_publisher.get(*s) == Some(&p))
                    .map(|(_, n)| n)
                    .sum();
                let missing = (hi - lo + 1).saturating_sub(covered);
                Some((p, lo, hi, missing.saturating_sub(orphans)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_losses_are_clean_and_miscounted_ones_are_not() {
        let mut t = SeqTrack::new(Mode::Lossy);
        assert!(t.on_lost("r", 2).is_empty());
        assert!(t.on_message("r", 7, 2).is_empty());
        assert!(t.on_message("r", 7, 3).is_empty());
        assert!(t.on_lost("r", 3).is_empty());
        assert!(t.on_message("r", 7, 7).is_empty());
        // One more missing than reported.
        assert!(t.on_lost("r", 1).is_empty());
        let bad = t.on_message("r", 7, 10);
        assert_eq!(bad[0].0, "order", "{bad:?}");
        let line = &t.all_rings(1)[0];
        assert_eq!(
            (line.first, line.last, line.received),
            (Some(2), Some(10), 4)
        );
        assert_eq!((line.lost, line.lost_before_first), (6, 2));
        // The miscount is reported once, as the order violation above.
        assert_eq!(t.unions(), vec![(7, 0, 10, 0)]);
    }

    #[test]
    fn tethered_refuses_losses_evictions_duplicates_and_reordering() {
        let mut t = SeqTrack::new(Mode::Tethered);
        assert!(t.on_message("r", 1, 0).is_empty());
        assert_eq!(t.on_lost("r", 1)[0].0, "lost");
        assert_eq!(t.on_evicted("r")[0].0, "evicted");
        let mut t = SeqTrack::new(Mode::Tethered);
        assert!(t.on_message("r", 1, 0).is_empty());
        assert_eq!(t.on_message("r", 1, 2)[0].0, "order");
        assert_eq!(t.on_message("r", 1, 1)[0].0, "order");
        // The same sequence from a second ring (a replica epoch): duplicate.
        assert_eq!(t.on_message("r2", 1, 2)[0].0, "duplicate");
        assert!(t.on_gone("r").is_empty());
        assert_eq!(t.on_gone("r")[0].0, "gone-twice");
        assert_eq!(t.on_message("r", 1, 3)[0].0, "after-gone");
    }

    #[test]
    fn untethered_counts_what_a_rejoin_skipped() {
        let mut t = SeqTrack::new(Mode::Untethered);
        assert!(t.on_message("r", 4, 0).is_empty());
        assert!(t.on_evicted("r").is_empty());
        assert!(t.on_message("r", 4, 50).is_empty());
        assert!(t.on_message("r", 4, 51).is_empty());
        assert_eq!(
            t.on_message("r", 4, 53)[0].0,
            "order",
            "a jump without eviction"
        );
        let line = &t.all_rings(1)[0];
        assert_eq!((line.evictions, line.evict_skipped), (1, 49));
    }

    #[test]
    fn replica_epochs_join_into_one_interval() {
        let mut t = SeqTrack::new(Mode::Tethered);
        for s in 0..5 {
            assert!(t.on_message("epoch1", 9, s).is_empty());
        }
        for s in 5..8 {
            assert!(t.on_message("epoch2", 9, s).is_empty());
        }
        assert_eq!(t.unions(), vec![(9, 0, 7, 0)]);
        assert_eq!(t.take_dirty(3).len(), 2);
        assert!(t.take_dirty(4).is_empty());
        // An epoch closed by a gap longer than the ring: the loss comes at
        // its end, and the next epoch starts after it.
        let mut t = SeqTrack::new(Mode::Lossy);
        assert!(t.on_message("epoch1", 9, 0).is_empty());
        assert!(t.on_lost("epoch1", 10).is_empty());
        assert!(t.on_message("epoch2", 9, 11).is_empty());
        assert_eq!(
            t.unions(),
            vec![(9, 0, 11, 10)],
            "the hole until epoch1 is gone"
        );
        assert!(t.on_gone("epoch1").is_empty());
        assert_eq!(t.unions(), vec![(9, 0, 11, 0)]);
        // An epoch holding only a gap record (no message): its loss explains
        // the hole between its neighbours.
        let mut t = SeqTrack::new(Mode::Lossy);
        assert!(t.on_message("exp.c9-1.2-0.0", 9, 0).is_empty());
        assert!(t.on_gone("exp.c9-1.2-0.0").is_empty());
        assert!(t.on_lost("exp.c9-1.2-0.1", 5).is_empty());
        assert!(t.on_message("exp.c9-1.2-0.2", 9, 6).is_empty());
        assert_eq!(t.unions(), vec![(9, 0, 6, 5)]);
        assert!(t.on_gone("exp.c9-1.2-0.1").is_empty());
        assert_eq!(t.unions(), vec![(9, 0, 6, 0)]);
        assert_eq!(stem("exp.c9-1.2-0.1"), "exp.c9-1.2-0");
        assert_eq!(stem("c9-1.2-0"), "c9-1.2-0");
    }
}
