//! The local rings this bridge may export, found by scanning the bus.
//!
//! A scan lists the topic directories whose names match an export rule and
//! the ring files in them. The catalog loop (in the daemon) scans when
//! inotify reports a change (see [`super::watch`]), after a reload, shortly
//! after a scan that met a ring not yet initialized, and every
//! `rescan_interval` as a safety net. A new file is
//! opened once, briefly (an untethered reader that never pins, so it gates
//! nobody), to read its header: type, geometry and the `replica` flag.
//! Replica rings (written by a bridge) are never exported, so two bridges
//! never loop messages back to each other. Each ring gets a stream id unique
//! in this daemon, used in STREAM_ANNOUNCE on every connection.
//!
//! Besides ring files, a scan lists the sender's export holds whose ring's
//! names are gone (see `export_hold`): a publisher that exited while this
//! bridge was down, whose tail (or exact loss and END) a peer is still owed.
//! Such a [`LocalRing`] has the hold as its path and is offered only to the
//! peer it is held for ([`LocalRing::held_for`]).
//!
//! Bounds: the catalog holds one entry per ring file in an exportable topic
//! directory that exists now (entries of removed files go at the next
//! scan), and at most [`MAX_RINGS`] of them: files beyond that are left out
//! with a warning, so a local user creating files without end costs the
//! bridge a bounded amount of memory.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use shmbus_bus::{self as bus, RawReader, StartAt};

use crate::{
    config::{Config, ExportMode},
    log,
};

/// Most ring files the catalog tracks.
/// Equal to [`crate::proto::session::import::MAX_ANNOUNCED_STREAMS`]: a
/// receiver refuses a connection announcing more.
pub const MAX_RINGS: usize = crate::proto::session::import::MAX_ANNOUNCED_STREAMS;

/// A local ring that may be exported.
#[derive(Debug)]
pub struct LocalRing {
    /// Stream id in STREAM_ANNOUNCE (unique in this daemon).
    pub id: u32,
    /// Topic name.
    pub topic: String,
    /// Publisher id (file stem).
    pub publisher: String,
    /// The ring file.
    pub path: PathBuf,
    /// Message type name.
    pub type_name: String,
    /// Message type fingerprint.
    pub type_fingerprint: u64,
    /// Ring capacity.
    pub capacity: u64,
    /// Largest payload.
    pub max_message: u64,
    /// The export mode of its topic.
    pub mode: ExportMode,
    /// Found through an export hold whose ring's names are gone (see
    /// `export::hold`): the tag of the one peer it is offered to, and
    /// `path` is the hold.
    pub held_for: Option<String>,
}

#[derive(Debug)]
enum Known {
    /// Exportable; the inode tells a replaced file from the same one.
    Ring { ino: u64, ring: Arc<LocalRing> },
    /// A replica, or unusable (logged once); skipped until the file changes.
    Skip { ino: u64 },
}

/// The set of exportable rings (see the module docs).
#[derive(Debug)]
pub struct Catalog {
    rings: RwLock<Vec<Arc<LocalRing>>>,
    generation: AtomicU64,
    known: std::sync::Mutex<HashMap<PathBuf, Known>>,
    next_id: std::sync::atomic::AtomicU32,
    /// Whether the "too many rings" warning was logged.
    warned_full: AtomicBool,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self {
            rings: RwLock::new(Vec::new()),
            generation: AtomicU64::new(0),
            known: std::sync::Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU32::new(1),
            warned_full: AtomicBool::new(false),
        }
    }

    /// Changes whenever the set of rings changes.
    pub fn generation(&self) -> u64 {
        // Acquire: pairs with the Release increment in `scan`, so the rings
        // read after it are at least that new.
        self.generation.load(Ordering::Acquire)
    }

    /// The exportable rings now.
    pub fn rings(&self) -> Vec<Arc<LocalRing>> {
        self.rings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Rescans the bus directory once; true if a ring could not be read
    /// yet (still being created) and a scan soon should try it again.
    pub fn scan(&self, config: &Config) -> bool {
        let bus_dir = config.root.join(&config.bus);
        let mut seen: Vec<(PathBuf, u64, String, String, Option<String>)> = Vec::new();
        let Ok(topics) = std::fs::read_dir(&bus_dir) else {
            return false;
        };
        for topic_entry in topics.flatten() {
            let Ok(topic) = topic_entry.file_name().into_string() else {
                continue;
            };
            if bus::validate_name("topic", &topic).is_err() || config.export_rule(&topic).is_none()
            {
                continue;
            }
            let Ok(files) = std::fs::read_dir(topic_entry.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                let Some(publisher) = bus::publisher_id_of(&path) else {
                    continue;
                };
                let publisher = publisher.to_owned();
                let Ok(meta) = f.metadata() else { continue };
                if seen.len() >= MAX_RINGS {
                    // Relaxed: a log-once flag, no data behind it.
                    if !self.warned_full.swap(true, Ordering::Relaxed) {
                        log::warning!(
                            "more than {MAX_RINGS} ring files in exportable topics; the rest are not exported"
                        );
                    }
                    break;
                }
                seen.push((path, meta.ino(), topic.clone(), publisher, None));
            }
            // Rings whose names are gone, kept for a peer by an export hold.
            for h in super::export_hold::orphaned(&topic_entry.path()) {
                let Ok(meta) = std::fs::metadata(&h.path) else {
                    continue;
                };
                if seen.len() < MAX_RINGS {
                    seen.push((
                        h.path,
                        meta.ino(),
                        topic.clone(),
                        h.publisher,
                        Some(h.peer_tag),
                    ));
                }
            }
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        let mut unsettled = false;
        let before = known.len();
        known.retain(|path, _| seen.iter().any(|(p, ..)| p == path));
        changed |= known.len() != before;
        for (path, ino, topic, publisher, held_for) in seen {
            let same = match known.get(&path) {
                Some(Known::Ring { ino: i, .. } | Known::Skip { ino: i }) => *i == ino,
                None => false,
            };
            if same {
                continue;
            }
            match self.probe(config, &path, ino, (topic, publisher, held_for)) {
                Some(entry) => {
                    changed |= matches!(entry, Known::Ring { .. }) || known.contains_key(&path);
                    known.insert(path, entry);
                }
                None => unsettled = true,
            }
        }
        if changed {
            let rings: Vec<Arc<LocalRing>> = known
                .values()
                .filter_map(|k| match k {
                    Known::Ring { ring, .. } => Some(Arc::clone(ring)),
                    Known::Skip { .. } => None,
                })
                .collect();
            *self.rings.write().unwrap_or_else(|e| e.into_inner()) = rings;
            // Release: pairs with the Acquire in `generation`.
            self.generation.fetch_add(1, Ordering::Release);
        }
        unsettled
    }

    /// Reads a new ring's header; `None` to try again next scan.
    fn probe(
        &self,
        config: &Config,
        path: &Path,
        ino: u64,
        (topic, publisher, held_for): (String, String, Option<String>),
    ) -> Option<Known> {
        let reader = match RawReader::open(path, StartAt::Latest, false) {
            Ok(r) => r,
            Err(
                bus::Error::NotFound(_) | bus::Error::NotInitialized(_) | bus::Error::NoFreeSlot(_),
            ) => return None,
            Err(e) => {
                log::warning!("not exporting {}: {e}", path.display());
                return Some(Known::Skip { ino });
            }
        };
        let info = reader.info();
        if info.replica {
            log::debug!("not exporting replica ring {}", path.display());
            return Some(Known::Skip { ino });
        }
        let mode = config.export_rule(&topic)?.mode;
        // Relaxed: only uniqueness matters; no data is published with the id.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        log::debug!("found exportable ring {} (stream {id})", path.display());
        Some(Known::Ring {
            ino,
            ring: Arc::new(LocalRing {
                id,
                topic,
                publisher,
                path: path.to_owned(),
                type_name: info.type_name.clone(),
                type_fingerprint: info.type_fingerprint,
                capacity: info.capacity,
                max_message: info.max_message,
                mode,
                held_for,
            }),
        })
    }
}
