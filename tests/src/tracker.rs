//! The subscriber-side verifier: every message's content, per-publisher
//! order (with exact accounting of reported losses), publishers gone or
//! broken, and the error log that becomes the [`Report`].

use std::collections::HashMap;

use shmbus::{Error, TopicEvent};

use crate::{
    msg::{verify, ArchivedTestMsg},
    report::{PublisherReport, Report, ReportError},
};

/// Verifies a stream of messages and events from one subscriber.
///
/// Publishers are keyed by the numeric id inside their messages; a ring id
/// (from [`shmbus::Sample::publisher`] or topic events) is tied to a numeric
/// id by the first message that names both. Losses reported for a ring before
/// that are held and applied then.
#[derive(Debug, Default)]
pub struct Tracker {
    strict_start: bool,
    report: Report,
    /// Next expected sequence number per publisher.
    next: HashMap<u32, u64>,
    /// Ring id -> numeric id.
    ring_of: HashMap<String, u32>,
    /// Losses of rings not yet tied to a numeric id.
    pending_lost: HashMap<String, u64>,
    /// Losses (and skipped messages) since the publisher's last message.
    lost_since: HashMap<u32, u64>,
}

impl Tracker {
    /// A tracker. With `strict_start`, each publisher's first message must be
    /// sequence 0 plus whatever was reported lost before it (the subscriber
    /// saw the publisher from its start).
    pub fn new(strict_start: bool) -> Self {
        Self {
            strict_start,
            ..Self::default()
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Records a problem.
    pub fn error(&mut self, kind: &str, ring: Option<&str>, detail: impl Into<String>) {
        self.report.errors.push(ReportError {
            kind: kind.to_string(),
            ring: ring.map(str::to_string),
            detail: detail.into(),
        });
    }

    /// Checks one received message: content, then order. `ring` is its ring
    /// id if known. Problems are recorded as errors. Returns `(publisher,
    /// seq)` as the message says.
    pub fn on_message(&mut self, ring: Option<&str>, m: &ArchivedTestMsg) -> (u32, u64) {
        let (id, seq) = self.check_content(ring, m);
        self.on_seq(ring, id, seq);
        (id, seq)
    }

    /// The content half of [`Self::on_message`]: returns `(publisher, seq)`.
    /// Callers that must drop the sample before taking the topic events that
    /// came with it (a `Lost` precedes the message it explains) call this,
    /// apply the events, then [`Self::on_seq`].
    pub fn check_content(&mut self, ring: Option<&str>, m: &ArchivedTestMsg) -> (u32, u64) {
        if let Err(detail) = verify(m) {
            self.error("content", ring, detail);
        }
        (m.publisher.to_native(), m.seq.to_native())
    }

    /// The order half of [`Self::on_message`].
    pub fn on_seq(&mut self, ring: Option<&str>, id: u32, seq: u64) {
        if let Some(ring) = ring {
            if self.report.gone.contains(ring) {
                self.error(
                    "after-gone",
                    Some(ring),
                    format!("seq {seq} arrived after the publisher was reported gone"),
                );
            }
            match self.ring_of.get(ring) {
                Some(&known) if known != id => self.error(
                    "publisher-id",
                    Some(ring),
                    format!("ring carried publisher {known}, now {id}"),
                ),
                Some(_) => {}
                None => {
                    self.ring_of.insert(ring.to_string(), id);
                    if let Some(n) = self.pending_lost.remove(ring) {
                        self.add_lost_to(id, n);
                    }
                }
            }
        }
        let entry = self.report.publishers.entry(id).or_insert(PublisherReport {
            id,
            ..PublisherReport::default()
        });
        if entry.ring.is_none() {
            entry.ring = ring.map(str::to_string);
        }
        entry.received += 1;
        entry.first.get_or_insert(seq);
        entry.last = Some(seq);
        let skipped = self.lost_since.remove(&id).unwrap_or(0);
        let expected = match self.next.get(&id) {
            Some(&n) => Some(n + skipped),
            None => self.strict_start.then_some(skipped),
        };
        if let Some(want) = expected {
            if seq != want {
                self.error(
                    "order",
                    ring,
                    format!("publisher {id}: got seq {seq}, expected {want} ({skipped} reported lost before it)"),
                );
            }
        }
        self.next.insert(id, seq + 1);
    }

    fn add_lost_to(&mut self, id: u32, n: u64) {
        self.report
            .publishers
            .entry(id)
            .or_insert(PublisherReport {
                id,
                ..PublisherReport::default()
            })
            .lost += n;
        *self.lost_since.entry(id).or_default() += n;
    }

    fn add_lost(&mut self, ring: &str, n: u64) {
        match self.ring_of.get(ring) {
            Some(&id) => self.add_lost_to(id, n),
            None => *self.pending_lost.entry(ring.to_string()).or_default() += n,
        }
    }

    /// Applies a topic event.
    pub fn on_event(&mut self, event: &TopicEvent) {
        match event {
            TopicEvent::PublisherJoined { .. } => {}
            TopicEvent::PublisherGone { publisher } => {
                if !self.report.gone.insert(publisher.clone()) {
                    self.error(
                        "gone-twice",
                        Some(publisher),
                        "PublisherGone reported twice",
                    );
                }
            }
            TopicEvent::Lost {
                publisher,
                messages,
                ..
            } => self.add_lost(publisher, *messages),
        }
    }

    /// Records an error returned by a receive ([`Error::Timeout`] is not one:
    /// callers handle it).
    pub fn on_error(&mut self, e: &Error) {
        match e {
            Error::InvalidMessage { publisher, .. } => {
                // The message was skipped: let the order check expect a hole.
                self.add_lost(publisher, 1);
                self.error("invalid-message", Some(publisher), e.to_string());
            }
            Error::TypeMismatch { .. } => self.error("type-mismatch", None, e.to_string()),
            Error::Evicted { publisher, .. } => {
                self.error("evicted", Some(publisher), e.to_string())
            }
            Error::Bus(bus) => {
                let kind = bus_kind(bus);
                let ring = bus_path(bus)
                    .and_then(shmbus_bus::publisher_id_of)
                    .map(str::to_string);
                if let Some(ring) = &ring {
                    self.report.broken.insert(ring.clone(), kind.to_string());
                }
                self.error(kind, ring.as_deref(), e.to_string());
            }
            other => self.error("other", None, other.to_string()),
        }
    }

    /// True once `publishers` rings are accounted for: reported gone, or
    /// dropped as unreadable.
    pub fn finished(&self, publishers: usize) -> bool {
        let broken_only = self
            .report
            .broken
            .keys()
            .filter(|r| !self.report.gone.contains(*r))
            .count();
        self.report.gone.len() + broken_only >= publishers
    }

    /// Final checks, then the report. With `count`, every readable publisher
    /// must account for exactly `count` messages (received + lost, sequences
    /// `0..count`); with `publishers`, that many rings must have been seen.
    pub fn finish(mut self, count: Option<u64>, publishers: Option<usize>) -> Report {
        let broken_ids: Vec<u32> = self
            .report
            .broken
            .keys()
            .filter_map(|r| self.ring_of.get(r).copied())
            .collect();
        if let Some(c) = count {
            let mut problems = Vec::new();
            for p in self.report.publishers.values() {
                if broken_ids.contains(&p.id) {
                    continue;
                }
                if p.received + p.lost != c || (p.received > 0 && p.last != Some(c - 1)) {
                    problems.push(format!(
                        "publisher {}: received {} + lost {} (last seq {:?}), expected {c} messages",
                        p.id, p.received, p.lost, p.last
                    ));
                }
            }
            for detail in problems {
                self.error("count", None, detail);
            }
        }
        if let Some(n) = publishers {
            let unmapped_broken = self
                .report
                .broken
                .keys()
                .filter(|r| !self.ring_of.contains_key(*r))
                .count();
            let seen = self.report.publishers.len() + unmapped_broken;
            if seen != n {
                self.error(
                    "publishers",
                    None,
                    format!("saw {seen} publishers, expected {n}"),
                );
            }
        }
        self.report.lost_unattributed = self.pending_lost.values().sum();
        self.report
    }
}

/// A short class name for a bus error.
pub fn bus_kind(e: &shmbus_bus::Error) -> &'static str {
    use shmbus_bus::Error as B;
    match e {
        B::NotFound(_) => "not-found",
        B::NotInitialized(_) => "not-initialized",
        B::NotASegment(_) => "not-a-segment",
        B::VersionMismatch { .. } => "version-mismatch",
        B::SizeMismatch { .. } => "size-mismatch",
        B::Corrupt { .. } => "corrupt",
        B::NoFreeSlot(_) => "no-free-slot",
        B::Io { .. } => "io",
        B::Evicted => "evicted",
        B::SlotLost => "slot-lost",
        _ => "other-bus",
    }
}

/// The file a bus error names, if any.
pub fn bus_path(e: &shmbus_bus::Error) -> Option<&std::path::Path> {
    use shmbus_bus::Error as B;
    match e {
        B::NotFound(p) | B::NotInitialized(p) | B::NotASegment(p) | B::NoFreeSlot(p) => Some(p),
        B::VersionMismatch { path, .. }
        | B::SizeMismatch { path, .. }
        | B::Corrupt { path, .. }
        | B::Io { path, .. } => Some(path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::TestMsg;

    fn check(t: &mut Tracker, ring: &str, m: &TestMsg) {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(m).unwrap();
        let a = rkyv::access::<ArchivedTestMsg, rkyv::rancor::Error>(&bytes).unwrap();
        t.on_message(Some(ring), a);
    }

    #[test]
    fn in_order_with_reported_losses_is_clean() {
        let mut t = Tracker::new(true);
        t.on_event(&TopicEvent::Lost {
            publisher: "r1".into(),
            messages: 2,
            bytes: 64,
        });
        check(&mut t, "r1", &TestMsg::new(1, 2, 5));
        check(&mut t, "r1", &TestMsg::new(1, 3, 5));
        t.on_event(&TopicEvent::Lost {
            publisher: "r1".into(),
            messages: 1,
            bytes: 32,
        });
        check(&mut t, "r1", &TestMsg::new(1, 5, 5));
        t.on_event(&TopicEvent::PublisherGone {
            publisher: "r1".into(),
        });
        assert!(t.finished(1));
        let r = t.finish(Some(6), Some(1));
        assert!(r.errors.is_empty(), "{r}");
        assert_eq!(r.publisher(1).received, 3);
        assert_eq!(r.publisher(1).lost, 3);
    }

    #[test]
    fn gaps_duplicates_and_late_messages_are_errors() {
        let mut t = Tracker::new(true);
        check(&mut t, "r1", &TestMsg::new(1, 1, 5)); // missing 0
        check(&mut t, "r1", &TestMsg::new(1, 1, 5)); // duplicate
        t.on_event(&TopicEvent::PublisherGone {
            publisher: "r1".into(),
        });
        check(&mut t, "r1", &TestMsg::new(1, 2, 5)); // after gone
        let r = t.finish(Some(4), Some(1));
        assert_eq!(r.errors_of("order").len(), 2, "{r}");
        assert_eq!(r.errors_of("after-gone").len(), 1, "{r}");
        assert_eq!(r.errors_of("count").len(), 1, "{r}");
    }
}
