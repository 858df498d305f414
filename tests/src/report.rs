//! The summary a subscriber process writes: line-oriented `key=value` text,
//! easy to read in a failing test's output and to parse back.
//!
//! ```text
//! shmbus-report v1
//! publisher id=1 ring=p-4242-0 received=500 first=0 last=499 lost=0
//! gone ring=p-4242-0
//! broken ring=evil-magic kind=not-a-segment
//! error kind=corrupt ring=evil-magic /dev/shm/.../evil-magic.ring is corrupt: ...
//! lost-unattributed 0
//! end
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::Path,
};

/// What one publisher's messages looked like to the subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherReport {
    /// The numeric id inside its messages.
    pub id: u32,
    /// Its ring id (file name without `.ring`), once a message named it.
    pub ring: Option<String>,
    /// Messages received (content and order checked).
    pub received: u64,
    /// First sequence number received.
    pub first: Option<u64>,
    /// Last sequence number received.
    pub last: Option<u64>,
    /// Messages reported lost (overwrite policy, eviction) or skipped as invalid.
    pub lost: u64,
}

/// A problem the subscriber saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError {
    /// Short class: `order`, `content`, `corrupt`, `invalid-message`, ...
    pub kind: String,
    /// The ring it concerns, if known.
    pub ring: Option<String>,
    /// Human-readable detail (one line).
    pub detail: String,
}

/// A subscriber's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Per numeric publisher id.
    pub publishers: BTreeMap<u32, PublisherReport>,
    /// Rings whose publisher was reported gone (`TopicEvent::PublisherGone`).
    pub gone: BTreeSet<String>,
    /// Rings dropped because they could not be read, with the error kind.
    pub broken: BTreeMap<String, String>,
    /// Everything that went wrong, in order.
    pub errors: Vec<ReportError>,
    /// Losses reported for rings no message ever named (cannot be attributed).
    pub lost_unattributed: u64,
}

const HEADER: &str = "shmbus-report v1";

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl Report {
    /// Messages received from all publishers.
    pub fn total_received(&self) -> u64 {
        self.publishers.values().map(|p| p.received).sum()
    }

    /// Messages lost from all publishers.
    pub fn total_lost(&self) -> u64 {
        self.publishers.values().map(|p| p.lost).sum::<u64>() + self.lost_unattributed
    }

    /// Errors of one kind.
    pub fn errors_of(&self, kind: &str) -> Vec<&ReportError> {
        self.errors.iter().filter(|e| e.kind == kind).collect()
    }

    /// The publisher with numeric id `id`.
    ///
    /// # Panics
    ///
    /// If no message of it was received (with the report in the message).
    pub fn publisher(&self, id: u32) -> &PublisherReport {
        self.publishers
            .get(&id)
            .unwrap_or_else(|| panic!("no messages of publisher {id} in report:\n{self}"))
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(HEADER);
        s.push('\n');
        for p in self.publishers.values() {
            let _ = writeln!(
                s,
                "publisher id={} ring={} received={} first={} last={} lost={}",
                p.id,
                p.ring.as_deref().unwrap_or("-"),
                p.received,
                opt(p.first),
                opt(p.last),
                p.lost
            );
        }
        for ring in &self.gone {
            let _ = writeln!(s, "gone ring={ring}");
        }
        for (ring, kind) in &self.broken {
            let _ = writeln!(s, "broken ring={ring} kind={kind}");
        }
        for e in &self.errors {
            let _ = writeln!(
                s,
                "error kind={} ring={} {}",
                e.kind,
                e.ring.as_deref().unwrap_or("-"),
                one_line(&e.detail)
            );
        }
        let _ = writeln!(s, "lost-unattributed {}", self.lost_unattributed);
        s.push_str("end\n");
        s
    }

    /// Parses [`Self::to_text`]'s output.
    ///
    /// # Errors
    ///
    /// A description of the first malformed line (or a missing `end`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("not a report: {text:?}"));
        }
        let mut r = Self::default();
        for line in lines {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            match tag {
                "publisher" => {
                    let kv = fields(rest)?;
                    let p = PublisherReport {
                        id: num(&kv, "id")?,
                        ring: some(&kv, "ring")?,
                        received: num(&kv, "received")?,
                        first: opt_num(&kv, "first")?,
                        last: opt_num(&kv, "last")?,
                        lost: num(&kv, "lost")?,
                    };
                    r.publishers.insert(p.id, p);
                }
                "gone" => {
                    let kv = fields(rest)?;
                    r.gone.insert(get(&kv, "ring")?.to_string());
                }
                "broken" => {
                    let kv = fields(rest)?;
                    r.broken
                        .insert(get(&kv, "ring")?.to_string(), get(&kv, "kind")?.to_string());
                }
                "error" => {
                    let mut parts = rest.splitn(3, ' ');
                    let kind = parts.next().and_then(|p| p.strip_prefix("kind="));
                    let ring = parts.next().and_then(|p| p.strip_prefix("ring="));
                    let (Some(kind), Some(ring)) = (kind, ring) else {
                        return Err(format!("bad error line {line:?}"));
                    };
                    r.errors.push(ReportError {
                        kind: kind.to_string(),
                        ring: (ring != "-").then(|| ring.to_string()),
                        detail: parts.next().unwrap_or("").to_string(),
                    });
                }
                "lost-unattributed" => {
                    r.lost_unattributed = rest.parse().map_err(|_| format!("bad line {line:?}"))?;
                }
                "end" => return Ok(r),
                _ => return Err(format!("unknown report line {line:?}")),
            }
        }
        Err("report has no end line (truncated)".to_string())
    }

    /// Writes the report to `path` atomically (temporary file, then rename).
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp-report");
        std::fs::write(&tmp, self.to_text())?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a report written by [`Self::write_to`].
    ///
    /// # Errors
    ///
    /// File-system or parse errors, as text.
    pub fn read_from(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read report {}: {e}", path.display()))?;
        Self::parse(&text)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

fn fields(rest: &str) -> Result<BTreeMap<&str, &str>, String> {
    rest.split_ascii_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| format!("bad field {kv:?} in {rest:?}"))
        })
        .collect()
}

fn get<'a>(kv: &BTreeMap<&str, &'a str>, key: &str) -> Result<&'a str, String> {
    kv.get(key).copied().ok_or_else(|| format!("missing {key}"))
}

fn some(kv: &BTreeMap<&str, &str>, key: &str) -> Result<Option<String>, String> {
    let v = get(kv, key)?;
    Ok((v != "-").then(|| v.to_string()))
}

fn num<T: std::str::FromStr>(kv: &BTreeMap<&str, &str>, key: &str) -> Result<T, String> {
    let v = get(kv, key)?;
    v.parse().map_err(|_| format!("{key}={v} is not a number"))
}

fn opt_num(kv: &BTreeMap<&str, &str>, key: &str) -> Result<Option<u64>, String> {
    match get(kv, key)? {
        "-" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{key}={v} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let mut r = Report::default();
        r.publishers.insert(
            7,
            PublisherReport {
                id: 7,
                ring: Some("p-1-0".into()),
                received: 10,
                first: Some(0),
                last: Some(9),
                lost: 2,
            },
        );
        r.publishers.insert(
            8,
            PublisherReport {
                id: 8,
                ..PublisherReport::default()
            },
        );
        r.gone.insert("p-1-0".into());
        r.broken.insert("evil".into(), "corrupt".into());
        r.errors.push(ReportError {
            kind: "corrupt".into(),
            ring: Some("evil".into()),
            detail: "line one\nline two".into(),
        });
        r.errors.push(ReportError {
            kind: "timeout".into(),
            ring: None,
            detail: String::new(),
        });
        r.lost_unattributed = 3;
        let back = Report::parse(&r.to_text()).unwrap();
        assert_eq!(back.publishers, r.publishers);
        assert_eq!(back.gone, r.gone);
        assert_eq!(back.broken, r.broken);
        assert_eq!(back.errors[0].detail, "line one line two");
        assert_eq!(back.errors[1].ring, None);
        assert_eq!(back.total_lost(), 5);
        assert!(Report::parse("shmbus-report v1\n").is_err());
    }
}
