//! The invariants of a run, judged from the logs every process wrote and
//! the driver's record of spawns and kills.
//!
//! 1. No process saw a violation from inside (`v` lines: corrupt content,
//!    order, duplicates, a loss or eviction its policy forbids, a loss
//!    count that does not explain the gap exactly, a send blocked 30 s).
//! 2. Committed is delivered: for a ring of a local publisher incarnation
//!    that a subscriber drained to `gone`, the subscriber accounts for
//!    every sequence the publisher logged as committed (received, or for
//!    lossy policies reported lost); for a publisher that stopped cleanly
//!    exactly its count, no more.
//! 3. Early subscribers start at 0: a local subscriber registered before a
//!    publisher incarnation was spawned accounts for its first message.
//! 4. Remote (through the bridge pair): per remote publisher, what a
//!    subscriber that ended cleanly accounted for is one interval, and for
//!    the tethered export it reaches the publisher's last logged commit.
//! 5. Publishers never stall longer than [`stall_bound`].
//! 6. Every process stopped cleanly at the end (the driver's problems).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{
    driver::Outcome,
    lines::{parse_log, Line, RingLine},
    topology::{is_tethered, Kind, Side},
};

/// The longest a send may take, whatever was killed: the probe interval
/// for dead subscribers ([`shmbus_bus::LIVENESS_INTERVAL`], 20 ms) plus a
/// margin for a loaded 2-core machine shared with other builds, where a
/// runnable process can wait hundreds of ms for a CPU. On the tethered
/// topic the exporting bridge's durable slot may also hold the publisher
/// while the bridge restarts (README: tethered exports may hold local
/// publishers back), so that topic gets the bridge restart budget too.
pub fn stall_bound(topic: &str) -> Duration {
    let base = shmbus_bus::LIVENESS_INTERVAL + Duration::from_secs(2);
    if is_tethered(topic) {
        base + Duration::from_secs(5)
    } else {
        base
    }
}

/// The figures and the violations of a run.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Every broken invariant, with the role and details.
    pub violations: Vec<String>,
    /// Messages committed (logged by publishers; a lower bound for killed
    /// incarnations).
    pub published: u64,
    /// Messages received, over all subscriber incarnations.
    pub received: u64,
    /// Messages reported lost (`TopicEvent::Lost`).
    pub lost: u64,
    /// Evictions and the messages their rejoins skipped.
    pub evictions: u64,
    /// Messages skipped by rejoins after evictions.
    pub evict_skipped: u64,
    /// Longest send per topic, µs.
    pub max_stall_us: BTreeMap<String, u64>,
    /// Publisher incarnations, and how many stopped cleanly.
    pub publisher_incarnations: (u64, u64),
    /// Subscriber incarnations, and how many drained every publisher at the end.
    pub subscriber_incarnations: (u64, u64),
    /// Log lines that could not be parsed (torn by a kill).
    pub torn_lines: u64,
}

#[derive(Debug, Default)]
struct PubLog {
    topic: String,
    ring: Option<String>,
    spawned_us: u64,
    committed: u64,
    done: bool,
}

#[derive(Debug, Default)]
struct SubLog {
    name: String,
    side: Option<Side>,
    topic: String,
    subscribed_us: Option<u64>,
    rings: BTreeMap<String, RingLine>,
    gone: BTreeSet<String>,
    unions: Vec<(u32, u64, u64, u64)>,
    clean: bool,
}

/// Judges `outcome`.
pub fn check(outcome: &Outcome) -> Verdict {
    let mut v = Verdict::default();
    v.violations
        .extend(outcome.problems.iter().map(|p| format!("driver: {p}")));
    let mut pubs: BTreeMap<u32, PubLog> = BTreeMap::new();
    let mut subs: Vec<SubLog> = Vec::new();
    for inc in &outcome.incarnations {
        let role = &outcome.roles[inc.role];
        let who = format!("{}.{}", role.name, inc.incarnation);
        let text = std::fs::read_to_string(&inc.log).unwrap_or_default();
        let (lines, torn) = parse_log(&text);
        v.torn_lines += torn as u64;
        let mut sub = SubLog {
            name: who.clone(),
            ..SubLog::default()
        };
        if let Kind::Subscriber { side, topic, .. } = &role.kind {
            sub.side = Some(*side);
            sub.topic = topic.to_string();
        }
        for line in lines {
            match line {
                Line::Violation { kind, detail, .. } => {
                    v.violations.push(format!("{who}: {kind}: {detail}"));
                }
                Line::Ready {
                    publisher, ring, ..
                } => {
                    let p = pubs.entry(publisher).or_default();
                    p.ring = Some(ring);
                    p.spawned_us = inc.spawned_us;
                    if let Kind::Publisher { topic, .. } = &role.kind {
                        p.topic = topic.to_string();
                    }
                }
                Line::Committed {
                    publisher,
                    committed,
                    max_stall_us,
                    ..
                }
                | Line::Done {
                    publisher,
                    committed,
                    max_stall_us,
                    ..
                } => {
                    let p = pubs.entry(publisher).or_default();
                    p.committed = p.committed.max(committed);
                    if let Kind::Publisher { topic, .. } = &role.kind {
                        let m = v.max_stall_us.entry(topic.to_string()).or_default();
                        *m = (*m).max(max_stall_us);
                        if Duration::from_micros(max_stall_us) > stall_bound(topic) {
                            v.violations.push(format!(
                                "{who}: a send took {max_stall_us} µs, over the bound {:?}",
                                stall_bound(topic)
                            ));
                        }
                    }
                    if matches!(line, Line::Done { .. }) {
                        p.done = true;
                    }
                }
                Line::Subscribed { t } => sub.subscribed_us = Some(t),
                Line::Ring(r) => {
                    sub.rings.insert(r.ring.clone(), r);
                }
                Line::Gone { ring, .. } => {
                    sub.gone.insert(ring);
                }
                Line::Union {
                    publisher,
                    lo,
                    hi,
                    missing,
                    ..
                } => sub.unions.push((publisher, lo, hi, missing)),
                Line::Final { drained, .. } => sub.clean = drained,
            }
        }
        if sub.side.is_some() {
            subs.push(sub);
        }
    }
    v.publisher_incarnations = (
        pubs.len() as u64,
        pubs.values().filter(|p| p.done).count() as u64,
    );
    v.published = pubs.values().map(|p| p.committed).sum();
    v.subscriber_incarnations = (
        subs.len() as u64,
        subs.iter().filter(|s| s.clean).count() as u64,
    );
    let by_ring: BTreeMap<&str, (u32, &PubLog)> = pubs
        .iter()
        .filter_map(|(&id, p)| Some((p.ring.as_deref()?, (id, p))))
        .collect();
    for s in &subs {
        for r in s.rings.values() {
            v.received += r.received;
            v.lost += r.lost;
            v.evictions += r.evictions;
            v.evict_skipped += r.evict_skipped;
        }
        if s.side == Some(Side::A) {
            check_local(s, &pubs, &by_ring, &mut v.violations);
        } else {
            check_remote(s, &pubs, &mut v.violations);
        }
    }
    v
}

fn check_local(
    s: &SubLog,
    pubs: &BTreeMap<u32, PubLog>,
    by_ring: &BTreeMap<&str, (u32, &PubLog)>,
    out: &mut Vec<String>,
) {
    let tethered = is_tethered(&s.topic);
    for r in s.rings.values() {
        let Some(&(id, p)) = by_ring.get(r.ring.as_str()) else {
            out.push(format!("{}: ring {} of no known publisher", s.name, r.ring));
            continue;
        };
        if r.received > 0 && r.publisher != id {
            out.push(format!(
                "{}: ring {} carried publisher {}, its publisher logged {id}",
                s.name, r.ring, r.publisher
            ));
        }
        // Rule 3: registered before the publisher started (an untethered
        // subscriber evicted before it found the ring rejoins at the newest
        // message: allowed, and counted as an eviction).
        let evicted_early = !tethered && r.evictions > 0;
        if s.subscribed_us.is_some_and(|t| t < p.spawned_us) && !evicted_early {
            if let Some(first) = r.first {
                if first - r.lost_before_first.min(first) != 0 || first < r.lost_before_first {
                    out.push(format!(
                        "{}: early subscriber of {} started at seq {first} ({} lost before)",
                        s.name, r.ring, r.lost_before_first
                    ));
                }
            }
        }
        // Rule 2: drained to gone.
        if s.gone.contains(&r.ring) {
            let Some(last) = r.last else {
                if s.subscribed_us.is_some_and(|t| t < p.spawned_us)
                    && !evicted_early
                    && p.committed > r.pending_lost
                {
                    out.push(format!(
                        "{}: early subscriber drained {} without a message of {} committed",
                        s.name, r.ring, p.committed
                    ));
                }
                continue;
            };
            let accounted = last + 1 + if tethered { 0 } else { r.pending_lost };
            // Untethered: evicted after its last message, the subscriber
            // rejoined at the newest one, skipping a tail the library does
            // not count (README: "rejoins at the newest message").
            let tail_skipped = !tethered && r.evicted_at_end;
            if (accounted < p.committed && !tail_skipped) || (p.done && accounted > p.committed) {
                out.push(format!(
                    "{}: drained {} to seq {last} (+{} lost at the end), publisher {id} committed {}{}",
                    s.name,
                    r.ring,
                    r.pending_lost,
                    p.committed,
                    if p.done { " exactly" } else { " at least" }
                ));
            }
        }
    }
    // A clean subscriber registered before a publisher of its topic started
    // must have read that publisher's ring.
    if s.clean {
        for (&id, p) in pubs {
            let early = s.subscribed_us.is_some_and(|t| t < p.spawned_us);
            let ring = p.ring.as_deref().unwrap_or("");
            if p.topic == s.topic && early && p.committed > 0 && !s.rings.contains_key(ring) {
                out.push(format!(
                    "{}: never read publisher {id} ({ring}), which started after it",
                    s.name
                ));
            }
        }
    }
    check_unions(s, out);
}

fn check_unions(s: &SubLog, out: &mut Vec<String>) {
    for &(publisher, lo, hi, n) in &s.unions {
        if n != 0 {
            out.push(format!(
                "{}: publisher {publisher}: {n} sequence(s) of [{lo}, {hi}] neither received nor reported lost",
                s.name
            ));
        }
    }
}

fn check_remote(s: &SubLog, pubs: &BTreeMap<u32, PubLog>, out: &mut Vec<String>) {
    check_unions(s, out);
    if !s.clean || !is_tethered(&s.topic) {
        return;
    }
    for &(publisher, _, hi, _) in &s.unions {
        let Some(p) = pubs.get(&publisher) else {
            out.push(format!(
                "{}: messages of unknown publisher {publisher}",
                s.name
            ));
            continue;
        };
        if hi + 1 < p.committed || (p.done && hi + 1 != p.committed) {
            out.push(format!(
                "{}: remote publisher {publisher}: accounted up to seq {hi}, committed {}{}",
                s.name,
                p.committed,
                if p.done { " exactly" } else { " at least" }
            ));
        }
    }
}

/// The figures of a run, one per line, for people.
pub fn figures(o: &Outcome, v: &Verdict, left: &super::leaks::Leftovers) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "run time {:.1} s ({:.1} s disturbed)",
        o.run_time.as_secs_f64(),
        o.disturb_time.as_secs_f64()
    );
    let _ = writeln!(s, "kills: {} {:?}", o.kills.values().sum::<u64>(), o.kills);
    let _ = writeln!(
        s,
        "churns (leave, rejoin): {} {:?}",
        o.churns.values().sum::<u64>(),
        o.churns
    );
    let _ = writeln!(
        s,
        "published {} by {} publisher incarnations ({} stopped cleanly); received {}; lost {} (reported); evictions {} (skipping {})",
        v.published,
        v.publisher_incarnations.0,
        v.publisher_incarnations.1,
        v.received,
        v.lost,
        v.evictions,
        v.evict_skipped
    );
    let _ = writeln!(
        s,
        "subscriber incarnations {} ({} drained at the end); torn log lines {}",
        v.subscriber_incarnations.0, v.subscriber_incarnations.1, v.torn_lines
    );
    for (topic, us) in &v.max_stall_us {
        let _ = writeln!(
            s,
            "longest send on {topic}: {:.1} ms (bound {:?})",
            *us as f64 / 1000.0,
            stall_bound(topic)
        );
    }
    let _ = writeln!(
        s,
        "files left when all had exited: {} {:?}; after gc: {}",
        left.before_gc.len(),
        super::leaks::by_kind(&left.before_gc),
        left.after_gc.len()
    );
    for f in &left.after_gc {
        let _ = writeln!(s, "  LEAK {f}");
    }
    let _ = writeln!(s, "violations: {}", v.violations.len());
    for x in v.violations.iter().take(50) {
        let _ = writeln!(s, "  {x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::chaos::topology::{mix, Incarnation};

    /// A run of `pub0-tb` (role 0) and `sub0-a-tb` (role 4) with the given
    /// log texts, the subscriber started first.
    fn judge(tag: &str, publisher: &str, subscriber: &str) -> Verdict {
        let dir = std::env::temp_dir().join(format!("chaos-checker-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let roles = mix(4, 8);
        assert_eq!(roles[0].name, "pub0-tb");
        assert_eq!(roles[4].name, "sub0-a-tb");
        let mut incarnations = Vec::new();
        for (role, text, spawned_us) in [(4, subscriber, 10), (0, publisher, 100)] {
            let log = dir.join(format!("{role}.log"));
            std::fs::write(&log, text).unwrap();
            incarnations.push(Incarnation {
                role,
                incarnation: 0,
                spawned_us,
                killed_us: None,
                log,
            });
        }
        let outcome = Outcome {
            roles,
            incarnations,
            kills: BTreeMap::new(),
            churns: BTreeMap::new(),
            problems: Vec::new(),
            run_time: Duration::from_secs(1),
            disturb_time: Duration::from_secs(1),
        };
        let v = check(&outcome);
        std::fs::remove_dir_all(&dir).unwrap();
        v
    }

    const PUBLISHER: &str = "ready 101 100000 r1\nc 120 100000 40 900\ndone 130 100000 50 900\n";

    fn subscriber(first: u64, last: u64) -> String {
        let received = last - first + 1;
        format!(
            "subscribed 20\ns 200 r1 100000 {first} {last} {received} 0 0 0 0 0 0\ngone 201 r1\n\
             u 300 100000 {first} {last} 0\nfinal 301 1\n"
        )
    }

    #[test]
    fn a_complete_run_is_clean() {
        let v = judge("clean", PUBLISHER, &subscriber(0, 49));
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!((v.published, v.received), (50, 50));
        assert_eq!(v.publisher_incarnations, (1, 1));
        assert_eq!(v.subscriber_incarnations, (1, 1));
    }

    #[test]
    fn a_short_drain_a_late_start_and_a_long_stall_are_violations() {
        let v = judge("short", PUBLISHER, &subscriber(0, 47));
        assert!(
            v.violations[0].contains("drained r1 to seq 47"),
            "{:?}",
            v.violations
        );
        let v = judge("late", PUBLISHER, &subscriber(3, 49));
        assert!(
            v.violations[0].contains("early subscriber of r1 started at seq 3"),
            "{:?}",
            v.violations
        );
        let stalled = PUBLISHER.replace("900", "9000000");
        let v = judge("stall", &stalled, &subscriber(0, 49));
        assert!(
            v.violations.iter().all(|x| x.contains("over the bound")),
            "{:?}",
            v.violations
        );
        assert_eq!(v.violations.len(), 2, "one per status line");
        let holed = subscriber(0, 49).replace("u 300 100000 0 49 0", "u 300 100000 0 49 2");
        let v = judge("hole", PUBLISHER, &holed);
        assert!(
            v.violations[0].contains("2 sequence(s) of [0, 49]"),
            "{:?}",
            v.violations
        );
        let inside = subscriber(0, 49).replace("gone 201", "v 150 content r1: checksum\ngone 201");
        let v = judge("inside", PUBLISHER, &inside);
        assert!(
            v.violations[0].contains("content: r1: checksum"),
            "{:?}",
            v.violations
        );
    }
}
