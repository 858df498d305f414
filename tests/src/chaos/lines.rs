//! The log lines of the chaos roles. Each process incarnation writes its
//! stdout to its own file; every line starts with a kind and the
//! `CLOCK_MONOTONIC` time in µs ([`super::mono_us`]). A process killed
//! mid-line leaves a torn last line: the parser skips lines it cannot read
//! (and counts them), so a log is always a prefix of the truth.

use std::fmt;

/// One log line. Every variant's fields are described in its doc (`t` is
/// always [`super::mono_us`] when the line was written).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Publisher: its ring exists (`ready <t> <pub> <ring>`).
    Ready {
        t: u64,
        publisher: u32,
        ring: String,
    },
    /// Publisher: `committed` messages (sequences `0..committed`) are
    /// published; the longest single send took `max_stall_us`
    /// (`c <t> <pub> <committed> <max_stall_us>`).
    Committed {
        t: u64,
        publisher: u32,
        committed: u64,
        max_stall_us: u64,
    },
    /// Publisher: stopped cleanly after exactly `committed` messages
    /// (`done <t> <pub> <committed> <max_stall_us>`).
    Done {
        t: u64,
        publisher: u32,
        committed: u64,
        max_stall_us: u64,
    },
    /// Subscriber: registered on the topic (`subscribed <t>`).
    Subscribed { t: u64 },
    /// Subscriber: the state of one ring (`s <t> <ring> ...`), latest wins.
    Ring(RingLine),
    /// Subscriber: a ring was drained and its publisher is gone
    /// (`gone <t> <ring>`).
    Gone { t: u64, ring: String },
    /// Subscriber: per message-level publisher, the span of sequences
    /// accounted for (received, reported lost or skipped by a rejoin) and
    /// how many inside it are missing without explanation
    /// (`u <t> <pub> <lo> <hi> <missing>`).
    Union {
        t: u64,
        publisher: u32,
        lo: u64,
        hi: u64,
        missing: u64,
    },
    /// Anyone: an invariant broken, seen from inside (`v <t> <kind> <detail>`).
    Violation {
        t: u64,
        kind: String,
        detail: String,
    },
    /// Subscriber: stopped cleanly (`final <t> <drained>`), after draining
    /// every publisher to `gone` (`drained` 1) or at once on EOF (0).
    Final { t: u64, drained: bool },
}

/// What a subscriber knows about one ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingLine {
    /// When.
    pub t: u64,
    /// The ring id.
    pub ring: String,
    /// The message-level publisher id (0 before the first message).
    pub publisher: u32,
    /// First sequence received, if any.
    pub first: Option<u64>,
    /// Last sequence received, if any.
    pub last: Option<u64>,
    /// Messages received.
    pub received: u64,
    /// Messages reported lost (`TopicEvent::Lost`), total.
    pub lost: u64,
    /// Of those, reported after the last message received (a tail loss).
    pub pending_lost: u64,
    /// Reported before the first message received.
    pub lost_before_first: u64,
    /// Evictions (untethered).
    pub evictions: u64,
    /// Messages skipped by rejoining at the newest after an eviction.
    pub evict_skipped: u64,
    /// Evicted after the last message received: the rejoin at the newest
    /// message skipped an uncounted tail.
    pub evicted_at_end: bool,
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready { t, publisher, ring } => write!(f, "ready {t} {publisher} {ring}"),
            Self::Committed {
                t,
                publisher,
                committed,
                max_stall_us,
            } => write!(f, "c {t} {publisher} {committed} {max_stall_us}"),
            Self::Done {
                t,
                publisher,
                committed,
                max_stall_us,
            } => write!(f, "done {t} {publisher} {committed} {max_stall_us}"),
            Self::Subscribed { t } => write!(f, "subscribed {t}"),
            Self::Ring(r) => write!(
                f,
                "s {} {} {} {} {} {} {} {} {} {} {} {}",
                r.t,
                r.ring,
                r.publisher,
                opt(r.first),
                opt(r.last),
                r.received,
                r.lost,
                r.pending_lost,
                r.lost_before_first,
                r.evictions,
                r.evict_skipped,
                u8::from(r.evicted_at_end)
            ),
            Self::Gone { t, ring } => write!(f, "gone {t} {ring}"),
            Self::Union {
                t,
                publisher,
                lo,
                hi,
                missing,
            } => write!(f, "u {t} {publisher} {lo} {hi} {missing}"),
            Self::Violation { t, kind, detail } => {
                write!(f, "v {t} {kind} {}", detail.replace('\n', " "))
            }
            Self::Final { t, drained } => write!(f, "final {t} {}", u8::from(*drained)),
        }
    }
}

fn num<T: std::str::FromStr>(w: Option<&str>) -> Option<T> {
    w?.parse().ok()
}

fn opt_num(w: Option<&str>) -> Option<Option<u64>> {
    match w? {
        "-" => Some(None),
        s => s.parse().ok().map(Some),
    }
}

impl Line {
    /// Parses one line; `None` for anything else (a torn last line, a
    /// diagnostic).
    pub fn parse(line: &str) -> Option<Self> {
        let mut w = line.split(' ');
        let kind = w.next()?;
        let t = num(w.next())?;
        let parsed = match kind {
            "ready" => Self::Ready {
                t,
                publisher: num(w.next())?,
                ring: w.next()?.to_string(),
            },
            "c" | "done" => {
                let publisher = num(w.next())?;
                let committed = num(w.next())?;
                let max_stall_us = num(w.next())?;
                if kind == "c" {
                    Self::Committed {
                        t,
                        publisher,
                        committed,
                        max_stall_us,
                    }
                } else {
                    Self::Done {
                        t,
                        publisher,
                        committed,
                        max_stall_us,
                    }
                }
            }
            "subscribed" => Self::Subscribed { t },
            "s" => Self::Ring(RingLine {
                t,
                ring: w.next()?.to_string(),
                publisher: num(w.next())?,
                first: opt_num(w.next())?,
                last: opt_num(w.next())?,
                received: num(w.next())?,
                lost: num(w.next())?,
                pending_lost: num(w.next())?,
                lost_before_first: num(w.next())?,
                evictions: num(w.next())?,
                evict_skipped: num(w.next())?,
                evicted_at_end: num::<u8>(w.next())? == 1,
            }),
            "gone" => Self::Gone {
                t,
                ring: w.next()?.to_string(),
            },
            "u" => Self::Union {
                t,
                publisher: num(w.next())?,
                lo: num(w.next())?,
                hi: num(w.next())?,
                missing: num(w.next())?,
            },
            "v" => {
                let kind = w.next()?.to_string();
                let detail = w.collect::<Vec<_>>().join(" ");
                return Some(Self::Violation { t, kind, detail });
            }
            "final" => Self::Final {
                t,
                drained: match w.next()? {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
            },
            _ => return None,
        };
        // Trailing words mean a torn or foreign line.
        w.next().is_none().then_some(parsed)
    }
}

/// Prints a line on stdout and flushes it (the driver's pipe to the log
/// file; a line is written with one `write`).
pub fn emit(line: &Line) {
    use std::io::Write as _;
    let text = format!("{line}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Parses a whole log: the lines read, and how many could not be.
pub fn parse_log(text: &str) -> (Vec<Line>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for l in text.lines() {
        match Line::parse(l) {
            Some(p) => out.push(p),
            None => bad += 1,
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_round_trips_and_torn_lines_are_refused() {
        let lines = [
            Line::Ready {
                t: 1,
                publisher: 100_003,
                ring: "p1-9.1-0".into(),
            },
            Line::Committed {
                t: 2,
                publisher: 7,
                committed: 99,
                max_stall_us: 1234,
            },
            Line::Done {
                t: 3,
                publisher: 7,
                committed: 100,
                max_stall_us: 5,
            },
            Line::Subscribed { t: 4 },
            Line::Ring(RingLine {
                t: 5,
                ring: "r".into(),
                publisher: 7,
                first: None,
                last: Some(9),
                received: 3,
                lost: 4,
                pending_lost: 1,
                lost_before_first: 2,
                evictions: 1,
                evict_skipped: 6,
                evicted_at_end: true,
            }),
            Line::Gone {
                t: 6,
                ring: "r".into(),
            },
            Line::Union {
                t: 7,
                publisher: 7,
                lo: 0,
                hi: 99,
                missing: 0,
            },
            Line::Violation {
                t: 8,
                kind: "order".into(),
                detail: "got 3\nexpected 2".into(),
            },
            Line::Final {
                t: 9,
                drained: true,
            },
        ];
        for l in &lines {
            let text = l.to_string();
            let back = Line::parse(&text).unwrap_or_else(|| panic!("{text}"));
            if let Line::Violation { detail, .. } = &back {
                assert_eq!(detail, "got 3 expected 2");
            } else {
                assert_eq!(&back, l);
            }
        }
        let (parsed, bad) = parse_log("c 2 7 99 12\nc 3 7 1\nsubscribed 4\ns 5 r 7 - 9\n");
        assert_eq!(parsed.len(), 2);
        assert_eq!(bad, 2, "a torn `c` and a torn `s` are refused");
        assert_eq!(Line::parse("c 2 7 99 12 extra"), None);
    }
}
