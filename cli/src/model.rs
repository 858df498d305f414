//! A snapshot of a bus for `ls`, `stat`, `gc` and `doctor`, taken through the
//! bus crate's public API only: [`list_rings`] names the rings,
//! [`RingStatus::read`] reads each one (validated, without joining it).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use shmbus_bus::{list_rings, Policy, RingStatus, SlotKind, SubscriberStatus};

/// A bus: its topics.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BusView {
    pub(crate) root: PathBuf,
    pub(crate) bus: String,
    pub(crate) path: PathBuf,
    pub(crate) topics: Vec<TopicView>,
}

/// A topic directory.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopicView {
    pub(crate) topic: String,
    pub(crate) path: PathBuf,
    pub(crate) rings: Vec<RingView>,
    /// Bridge hold links (`.<id>.hold`): replicas kept for a restarting bridge.
    pub(crate) holds: Vec<HoldView>,
    /// Files a creator or a dead process left: control files without their
    /// data file, temporary files.
    pub(crate) leftovers: Vec<PathBuf>,
}

/// What a ring is doing, as a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RingState {
    /// Its publisher holds its lock and has not closed it.
    Live,
    /// Closed by its publisher; subscribers still read it.
    Closed,
    /// Its publisher died (lock free, not closed); subscribers still read it.
    Dead,
    /// Publisher gone and no subscriber needs it: `shmbus gc` removes it.
    Stale,
    /// Validation refused it (the reason says why).
    Damaged,
}

impl RingState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Closed => "closed",
            Self::Dead => "dead",
            Self::Stale => "stale",
            Self::Damaged => "DAMAGED",
        }
    }
}

/// One ring of a topic.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RingView {
    pub(crate) publisher_id: String,
    pub(crate) path: PathBuf,
    pub(crate) state: RingState,
    /// Why the ring could not be read (state `damaged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) publisher: Option<PublisherView>,
    pub(crate) subscribers: Vec<SubscriberView>,
}

/// A ring's header and publisher counters.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PublisherView {
    /// The publisher's pid, as it saw itself (a label: another pid
    /// namespace may have another view).
    pub(crate) pid: u32,
    pub(crate) alive: bool,
    pub(crate) closed: bool,
    pub(crate) policy: &'static str,
    pub(crate) capacity: u64,
    pub(crate) max_message: u64,
    pub(crate) type_name: String,
    /// Hex, `0x` and 16 digits; 0 for raw bytes.
    pub(crate) type_fingerprint: String,
    pub(crate) replica: bool,
    pub(crate) created_unix_s: u64,
    pub(crate) published: u64,
    pub(crate) tail: u64,
    pub(crate) head: u64,
    /// Sends that found the ring full (waited for space, or failed).
    pub(crate) full_events: u64,
    /// Nanoseconds the publisher spent waiting for space.
    pub(crate) blocked_ns: u64,
    pub(crate) evictions: u64,
    pub(crate) waiters: u32,
    /// Bytes published and not yet released by the slowest gating subscriber.
    pub(crate) fill_bytes: u64,
}

/// One subscriber slot.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SubscriberView {
    pub(crate) slot: usize,
    pub(crate) pid: u64,
    pub(crate) kind: &'static str,
    pub(crate) position: u64,
    pub(crate) lag_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lag_messages: Option<u64>,
    pub(crate) held: bool,
    pub(crate) durable: bool,
    pub(crate) evicted: bool,
    pub(crate) alive: bool,
}

/// A bridge hold link.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HoldView {
    pub(crate) path: PathBuf,
    /// The replica's writer (the bridge) is gone.
    pub(crate) writer_gone: bool,
    /// Seconds since the hold last changed (its ctime).
    pub(crate) age_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

pub(crate) fn kind_name(kind: SlotKind) -> &'static str {
    match kind {
        SlotKind::Active => "active",
        SlotKind::Evicted => "evicted",
        SlotKind::Claiming => "claiming",
        SlotKind::Untethered => "untethered",
        SlotKind::Prejoined => "prejoined",
        SlotKind::Orphaned => "orphaned",
    }
}

fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Block => "block",
        Policy::Overwrite => "overwrite",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Whether a slot holds its publisher back: it gates (active, pre-joined,
/// kept durable) and its owner counts as alive, or it pins a sample.
fn gates(s: &SubscriberStatus) -> bool {
    s.held
        || (s.alive
            && matches!(
                s.kind,
                SlotKind::Active | SlotKind::Prejoined | SlotKind::Orphaned | SlotKind::Claiming
            ))
}

/// Reads one ring: its status, or why it could not be read.
pub(crate) fn ring_view(publisher_id: &str, path: &Path) -> RingView {
    match RingStatus::read(path) {
        Ok(status) => from_status(publisher_id, path, &status),
        Err(e) => RingView {
            publisher_id: publisher_id.to_owned(),
            path: path.to_owned(),
            state: RingState::Damaged,
            reason: Some(e.to_string()),
            publisher: None,
            subscribers: Vec::new(),
        },
    }
}

fn from_status(publisher_id: &str, path: &Path, st: &RingStatus) -> RingView {
    let gone = st.closed || !st.publisher_alive;
    // The sweep's rule (`sweep_topic`): a slot needs the data while its
    // owner lives (lock, registration or lease), and a durable slot whose
    // owner died is kept for its lease.
    let needed = st
        .subscribers
        .iter()
        .any(|s| s.alive || (s.durable && s.kind != SlotKind::Orphaned));
    let state = match (gone, needed, st.closed) {
        (false, _, _) => RingState::Live,
        (true, false, _) => RingState::Stale,
        (true, true, true) => RingState::Closed,
        (true, true, false) => RingState::Dead,
    };
    let fill_bytes = st
        .subscribers
        .iter()
        .filter(|s| gates(s))
        .map(|s| s.lag_bytes)
        .max()
        .unwrap_or(0);
    let info = &st.info;
    RingView {
        publisher_id: publisher_id.to_owned(),
        path: path.to_owned(),
        state,
        reason: None,
        publisher: Some(PublisherView {
            pid: info.publisher.pid,
            alive: st.publisher_alive,
            closed: st.closed,
            policy: policy_name(info.policy),
            capacity: info.capacity,
            max_message: info.max_message,
            type_name: info.type_name.clone(),
            type_fingerprint: format!("{:#018x}", info.type_fingerprint),
            replica: info.replica,
            created_unix_s: info
                .created
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            published: st.published,
            tail: st.tail,
            head: st.head,
            full_events: st.full_events,
            blocked_ns: st.blocked_ns,
            evictions: st.evictions,
            waiters: st.waiters,
            fill_bytes,
        }),
        subscribers: st
            .subscribers
            .iter()
            .map(|s| SubscriberView {
                slot: s.slot,
                pid: s.pid,
                kind: kind_name(s.kind),
                position: s.position,
                lag_bytes: s.lag_bytes,
                lag_messages: s.lag_messages,
                held: s.held,
                durable: s.durable,
                evicted: s.kind == SlotKind::Evicted,
                alive: s.alive,
            })
            .collect(),
    }
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one byte).
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The topic names of the bus directory `bus_dir` that match `pattern`,
/// sorted. A missing bus directory has none.
///
/// # Errors
///
/// If the directory exists but cannot be read.
pub(crate) fn topic_names(bus_dir: &Path, pattern: Option<&str>) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(bus_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", bus_dir.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| shmbus_bus::validate_name("topic", n).is_ok())
        .filter(|n| pattern.is_none_or(|p| glob(p, n)))
        .collect();
    names.sort();
    Ok(names)
}

/// Snapshot of the bus `bus` under `root`, topics matching `pattern`.
///
/// # Errors
///
/// If the bus or a topic directory cannot be read.
pub(crate) fn scan(root: &Path, bus: &str, pattern: Option<&str>) -> anyhow::Result<BusView> {
    let path = root.join(bus);
    let mut topics = Vec::new();
    for topic in topic_names(&path, pattern)? {
        topics.push(scan_topic(&topic, &path.join(&topic))?);
    }
    Ok(BusView {
        root: root.to_owned(),
        bus: bus.to_owned(),
        path,
        topics,
    })
}

/// Snapshot of one topic directory.
///
/// # Errors
///
/// If the directory cannot be read.
pub(crate) fn scan_topic(topic: &str, dir: &Path) -> anyhow::Result<TopicView> {
    let rings: Vec<RingView> = list_rings(dir)?
        .iter()
        .map(|r| ring_view(&r.publisher_id, &r.data_path))
        .collect();
    let mut holds = Vec::new();
    let mut leftovers = Vec::new();
    let now = SystemTime::now();
    for entry in fs::read_dir(dir)?.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        if name.starts_with('.') && name.ends_with(".hold") {
            let changed = UNIX_EPOCH + Duration::from_secs(meta.ctime().max(0) as u64);
            let age_s = now.duration_since(changed).map_or(0, |d| d.as_secs());
            let (writer_gone, reason) = match RingStatus::read(&path) {
                Ok(st) => (st.closed || !st.publisher_alive, None),
                Err(e) => (true, Some(e.to_string())),
            };
            holds.push(HoldView {
                path,
                writer_gone,
                age_s,
                reason,
            });
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            leftovers.push(path);
        } else if let Some(id) = name.strip_suffix(".ctl") {
            if shmbus_bus::validate_name("publisher id", id).is_ok()
                && !rings.iter().any(|r| r.publisher_id == id)
            {
                leftovers.push(path);
            }
        }
    }
    holds.sort_by(|a, b| a.path.cmp(&b.path));
    leftovers.sort();
    Ok(TopicView {
        topic: topic.to_owned(),
        path: dir.to_owned(),
        rings,
        holds,
        leftovers,
    })
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("*", "imu"));
        assert!(glob("im?", "imu"));
        assert!(glob("sensors.*", "sensors.imu"));
        assert!(glob("*.imu", "a.b.imu"));
        assert!(!glob("sensors.*", "sensor"));
        assert!(!glob("imu", "imu2"));
        assert!(glob("imu", "imu"));
    }
}
