//! Export: local rings put to Zenoh.
//!
//! A scan every `scan_interval` lists the topic directories of the bus that
//! an export rule matches and the rings in them. Each new ring that is not
//! a replica (a bridge's or a gateway's import: never exported again, so
//! gateways and bridges never loop messages back) gets a thread with a
//! [`RingObserver`] from the ring's oldest message: no subscriber slot, so
//! the network never holds a local publisher back. If the observer falls a
//! ring behind, the publisher laps it and the messages it missed are sent
//! as one GAP sample with the exact count (importers report them as
//! `Lost`).
//!
//! Each message is copied once, out of the ring into the buffer handed to
//! Zenoh (the observer's validated copy, [`RingObserver::try_take`]):
//! Zenoh may keep a buffer queued after the publisher has lapped the ring,
//! so a slice of the ring itself must never be handed to it.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use shmbus_bus::{self as bus, RingObserver, StartAt, Taken, WaitStrategy};
use zenoh::{
    qos::{CongestionControl, Reliability as ZReliability},
    Session, Wait,
};

use crate::{
    config::{Config, Congestion, ExportRule, Reliability},
    log,
    meta::{set_kind_and_seq, Kind, Meta},
    stats::Stats,
};

/// Most rings exported at once (one thread each); further rings are left
/// out with a warning until others go.
pub const MAX_EXPORTED: usize = 1024;

/// What the scan knows of a ring file.
enum Known {
    /// Exported by a thread (finished when its publisher is gone).
    Running(JoinHandle<()>),
    /// Not exported (a replica, an Overwrite ring, or refused).
    Skipped,
}

/// The export side: scans the bus and runs one thread per exported ring.
pub struct Exporter {
    config: Arc<Config>,
    session: Session,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    /// (path, inode) of every ring seen in an exported topic.
    known: HashMap<(PathBuf, u64), Known>,
    /// Whether the [`MAX_EXPORTED`] warning was given.
    full_warned: bool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("rings", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter of `config`'s rules over `session`.
    pub fn new(
        config: Arc<Config>,
        session: Session,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            config,
            session,
            stats,
            stop,
            known: HashMap::new(),
            full_warned: false,
        }
    }

    /// Scans until `stop`, then waits for the ring threads.
    pub fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            self.scan();
            thread::sleep(self.config.scan_interval);
        }
        for (_, known) in self.known.drain() {
            if let Known::Running(handle) = known {
                let _ = handle.join();
            }
        }
    }

    /// One pass over the bus: starts threads for new rings, forgets rings
    /// whose files are gone and whose threads have ended.
    pub fn scan(&mut self) {
        let bus_dir = self.config.root.join(&self.config.bus);
        let Ok(entries) = std::fs::read_dir(&bus_dir) else {
            return;
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let Some(topic) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if bus::validate_name("topic", &topic).is_err()
                || !entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let Some(rule) = self.config.export_rule(&topic).cloned() else {
                continue;
            };
            let Ok(rings) = bus::list_rings(&entry.path()) else {
                continue;
            };
            for ring in rings {
                let Ok(meta) = std::fs::symlink_metadata(&ring.data_path) else {
                    continue;
                };
                let id = (ring.data_path.clone(), meta.ino());
                present.push(id.clone());
                let running = self
                    .known
                    .values()
                    .filter(|k| matches!(k, Known::Running(_)))
                    .count();
                if !self.known.contains_key(&id) && running >= MAX_EXPORTED {
                    if !self.full_warned {
                        log::warning!("{MAX_EXPORTED} rings exported already; the rest wait");
                        self.full_warned = true;
                    }
                    continue;
                }
                if !self.known.contains_key(&id) {
                    if let Some(known) =
                        self.open(&topic, &ring.publisher_id, &ring.data_path, &rule)
                    {
                        self.known.insert(id, known);
                    }
                }
            }
        }
        self.known.retain(|id, known| match known {
            Known::Running(handle) => !handle.is_finished() || present.contains(id),
            Known::Skipped => present.contains(id),
        });
    }

    /// Opens a new ring; `None` to try again at the next scan.
    fn open(&self, topic: &str, publisher: &str, path: &Path, rule: &ExportRule) -> Option<Known> {
        let observer = match RingObserver::open(path, StartAt::Oldest) {
            Ok(o) => o,
            Err(bus::Error::NotFound(_) | bus::Error::NotInitialized(_)) => return None,
            Err(e) => {
                log::warning!("not exporting {}: {e}", path.display());
                return Some(Known::Skipped);
            }
        };
        if observer.info().replica {
            log::debug!("not exporting the replica {}", path.display());
            return Some(Known::Skipped);
        }
        let key = self.config.key_of(topic);
        let publisher_z = match self
            .session
            .declare_publisher(key.clone())
            .reliability(match rule.reliability {
                Reliability::Reliable => ZReliability::Reliable,
                Reliability::BestEffort => ZReliability::BestEffort,
            })
            .congestion_control(match rule.congestion {
                Congestion::Block => CongestionControl::Block,
                Congestion::Drop => CongestionControl::Drop,
            })
            .express(rule.express)
            .wait()
        {
            Ok(p) => p,
            Err(e) => {
                log::warning!(
                    "not exporting {}: Zenoh publisher on {key}: {e}",
                    path.display()
                );
                return Some(Known::Skipped);
            }
        };
        // GAP and END, and the idle heartbeat, always wait for room: a
        // dropped one would leave importers unaware of the loss (or the
        // end) before it. Same key and priority: the same queue as the data.
        let control = match self
            .session
            .declare_publisher(key.clone())
            .reliability(ZReliability::Reliable)
            .congestion_control(CongestionControl::Block)
            .wait()
        {
            Ok(p) => p,
            Err(e) => {
                log::warning!(
                    "not exporting {}: Zenoh publisher on {key}: {e}",
                    path.display()
                );
                return Some(Known::Skipped);
            }
        };
        // Read the ring only while someone subscribes: a put without a
        // matching subscriber goes nowhere, and a freshly (re)started
        // gateway would otherwise send the ring's history before any peer
        // has routed its subscription here.
        let matched = Arc::new(AtomicBool::new(
            publisher_z
                .matching_status()
                .wait()
                .is_ok_and(|s| s.matching()),
        ));
        let flag = Arc::clone(&matched);
        if let Err(e) = publisher_z
            .matching_listener()
            .callback(move |status| flag.store(status.matching(), Ordering::Relaxed))
            .background()
            .wait()
        {
            log::warning!(
                "not exporting {}: Zenoh matching listener: {e}",
                path.display()
            );
            return Some(Known::Skipped);
        }
        log::info!("exporting {topic}/{publisher} to {key}");
        let stream = RingExport {
            matched,
            control,
            observer,
            publisher: publisher_z,
            base: Meta {
                kind: Kind::Message,
                seq: 0,
                origin: self.config.node_name.clone(),
                publisher: publisher.to_owned(),
                type_name: String::new(),
                type_fingerprint: 0,
            },
            attachment: Vec::new(),
            stats: Arc::clone(&self.stats),
            stop: Arc::clone(&self.stop),
            what: format!("{topic}/{publisher}"),
            spin: self.config.export_spin,
        };
        let spawned = thread::Builder::new()
            .name(format!("export {topic}"))
            .spawn(move || stream.run());
        match spawned {
            Ok(handle) => Some(Known::Running(handle)),
            Err(e) => {
                log::warning!("not exporting {}: no thread: {e}", path.display());
                None
            }
        }
    }
}

/// One exported ring.
struct RingExport {
    /// Whether a Zenoh subscriber matches the key now.
    matched: Arc<AtomicBool>,
    observer: RingObserver,
    publisher: zenoh::pubsub::Publisher<'static>,
    /// The same key, congestion control Block: GAP, END, heartbeats.
    control: zenoh::pubsub::Publisher<'static>,
    /// The attachment's constant part.
    base: Meta,
    /// `base`, encoded.
    attachment: Vec<u8>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    what: String,
    /// [`Config::export_spin`].
    spin: Duration,
}

impl RingExport {
    fn run(mut self) {
        self.base.type_name = self.observer.info().type_name.clone();
        self.base.type_fingerprint = self.observer.info().type_fingerprint;
        self.attachment = self.base.encode();
        // The number after the last message sent (None before the first).
        let mut next: Option<u64> = None;
        // Idle waits since the last heartbeat, and what it announced.
        let (mut idle, mut announced) = (0u32, None::<u64>);
        // While the ring is empty with `export_spin`: when polling ends.
        let mut spin_until: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            if !self.matched.load(Ordering::Relaxed) {
                // Nobody listens: leave the messages in the ring (if it
                // laps this observer meanwhile, the loss is sent exactly).
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            let event = match self.observer.try_take() {
                Ok(Taken::Message { sequence, payload }) => {
                    spin_until = None;
                    // The one copy: the observer's validated copy out of
                    // the ring, a buffer Zenoh takes as it is.
                    next = Some(sequence + 1);
                    Some((Kind::Message, sequence, payload))
                }
                Ok(Taken::Gap { messages, .. }) => {
                    self.stats.export_lapped.add(messages);
                    next.map(|n| {
                        let to = n.saturating_add(messages);
                        next = Some(to);
                        (Kind::Gap, to, Vec::new())
                    })
                }
                Ok(Taken::Empty) => {
                    if !self.spin.is_zero() {
                        // Poll (yielding) until the window after the last
                        // message ends; a message within it needs no
                        // wake-up. The clock is read when the ring is
                        // found empty, never per message.
                        let now = Instant::now();
                        let end = *spin_until.get_or_insert(now + self.spin);
                        if now < end {
                            let poll = WaitStrategy::SpinThenYield { spins: 64 };
                            self.observer.wait(poll, Some(end - now));
                            continue;
                        }
                    }
                    let woken = self
                        .observer
                        .wait(WaitStrategy::default(), Some(Duration::from_millis(100)));
                    idle = if woken { 0 } else { idle + 1 };
                    // Idle 100 ms after sending, and every 2 s while idle:
                    // a GAP at the next number. Importers learn of samples
                    // Zenoh dropped at the end of a burst (congestion
                    // control Drop) without waiting for another message.
                    match next {
                        Some(n) if (announced != next && idle == 1) || idle % 20 == 0 => {
                            announced = next;
                            Some((Kind::Gap, n, Vec::new()))
                        }
                        _ => None,
                    }
                }
                Ok(Taken::Closed) => {
                    if let Some(n) = next {
                        self.put(Kind::End, n, Vec::new());
                    }
                    log::info!("{}: publisher gone, export ended", self.what);
                    return;
                }
                Err(e) => {
                    log::warning!("{}: export stopped: {e}", self.what);
                    return;
                }
            };
            if let Some((kind, seq, bytes)) = event {
                self.put(kind, seq, bytes);
            }
        }
    }

    fn put(&self, kind: Kind, seq: u64, payload: Vec<u8>) {
        // The constant part was encoded once; only kind and number change.
        let mut attachment = self.attachment.clone();
        set_kind_and_seq(&mut attachment, kind, seq);
        let publisher = match kind {
            Kind::Message => &self.publisher,
            Kind::Gap | Kind::End => &self.control,
        };
        match publisher.put(payload).attachment(attachment).wait() {
            Ok(()) => {
                if kind == Kind::Message {
                    self.stats.exported.add(1);
                }
            }
            Err(e) => {
                self.stats.put_errors.add(1);
                log::debug!("{}: put failed: {e}", self.what);
            }
        }
    }
}
