//! Replica rings on disk: creating them, finding the ones an earlier run of
//! this bridge made, and the hold and end markers (see [`naming`]).

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use shmbus_bus::{self as bus, Policy, RawReader, ReplicaWriter, RingConfig, StartAt};

use super::naming::{self, Entry};

/// The geometry and type a replica copies from the remote ring's
/// STREAM_ANNOUNCE, so that typed subscribers accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMeta {
    /// Message type name.
    pub type_name: String,
    /// Message type fingerprint.
    pub type_fingerprint: u64,
    /// Ring capacity (the remote ring's: positions mirror it).
    pub capacity: u64,
    /// Largest payload.
    pub max_message: u64,
}

impl ReplicaMeta {
    /// The ring configuration of a replica: the remote geometry and type,
    /// Block policy (local subscribers never lose remote data).
    pub fn ring_config(&self) -> RingConfig {
        RingConfig {
            capacity: self.capacity,
            max_message: self.max_message,
            policy: Policy::Block,
            evict_after: None,
            type_name: self.type_name.clone(),
            type_fingerprint: self.type_fingerprint,
            replica: true,
            mode: 0o600,
            ..RingConfig::default()
        }
    }
}

/// A live replica: its writer and the files behind it.
#[derive(Debug)]
pub struct Replica {
    /// The writer.
    pub writer: ReplicaWriter,
    /// The ring file.
    pub path: PathBuf,
    /// The hold link to it.
    pub hold: PathBuf,
}

impl Replica {
    /// Closes the replica for good: local subscribers drain it and see its
    /// publisher gone; the hold goes, since a newer epoch (or the end
    /// marker) now records the stream's position.
    pub fn retire(self) {
        let hold = self.hold;
        drop(self.writer);
        remove_hold(&hold);
    }
}

/// Removes a hold: its data-file link and its control-file link.
fn remove_hold(hold: &Path) {
    let _ = std::fs::remove_file(hold);
    let _ = std::fs::remove_file(bus::control_path_of(hold));
}

/// Creates epoch `epoch` of stem `stem` in `dir`, starting at `start`, and
/// its hold link.
///
/// # Errors
///
/// The bus error (bad name, geometry, file system).
pub fn create(
    dir: &Path,
    stem: &str,
    epoch: u64,
    meta: &ReplicaMeta,
    start: u64,
) -> Result<Replica, bus::Error> {
    let id = naming::replica_id(stem, epoch);
    bus::create_dir_all(dir, dir, 0o700)?;
    let path = bus::ring_path(dir, &id)?;
    let writer = ReplicaWriter::create(&path, &meta.ring_config(), start)?;
    let hold = dir.join(naming::hold_name(&id));
    // A ring is two files: the hold links both (the control file's link is
    // the hold's own control path, so the hold opens like a ring).
    for (from, to) in [
        (path.clone(), hold.clone()),
        (bus::control_path_of(&path), bus::control_path_of(&hold)),
    ] {
        let _ = std::fs::remove_file(&to);
        std::fs::hard_link(&from, &to).map_err(|source| bus::Error::Io {
            path: to.clone(),
            source,
        })?;
    }
    Ok(Replica { writer, path, hold })
}

/// Where a stream resumes after a restart of this bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The highest position any earlier replica holds.
    pub position: u64,
    /// The epoch to create next.
    pub next_epoch: u64,
    /// Earlier replica ring files still present (subscribers may still be
    /// draining them).
    pub old_rings: Vec<PathBuf>,
}

/// Why an earlier replica cannot be taken over.
#[derive(Debug, thiserror::Error)]
pub enum PreviousError {
    /// A live process still writes it (another bridge with the same node
    /// name and peer?).
    #[error("replica {0} is still written by a live process; is another bridge with this node name running?")]
    LiveWriter(PathBuf),
    /// The directory could not be read.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

/// Finds the replicas (and holds) an earlier run made for `stem` in `dir`
/// and the position they reach; `None` if there are none.
///
/// # Errors
///
/// [`PreviousError`].
pub fn find_previous(dir: &Path, stem: &str) -> Result<Option<ResumePoint>, PreviousError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PreviousError::Io(dir.to_owned(), e)),
    };
    let mut point: Option<ResumePoint> = None;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(kind) = naming::classify(&name, stem) else {
            continue;
        };
        let path = entry.path();
        let reader = match RawReader::open(&path, StartAt::Latest, false) {
            Ok(r) => r,
            // Removed meanwhile (a subscriber swept it): the hold has it.
            Err(_) => continue,
        };
        if !reader.info().replica {
            continue;
        }
        if !reader.publisher_gone() {
            return Err(PreviousError::LiveWriter(path));
        }
        let (epoch, is_ring) = match kind {
            Entry::Ring(e) => (e, true),
            Entry::Hold(e) => (e, false),
        };
        let tail = reader.tail();
        drop(reader);
        let p = point.get_or_insert(ResumePoint {
            position: tail,
            next_epoch: 0,
            old_rings: Vec::new(),
        });
        p.position = p.position.max(tail);
        p.next_epoch = p.next_epoch.max(epoch.saturating_add(1));
        if is_ring {
            p.old_rings.push(path);
        }
    }
    Ok(point)
}

/// Removes the holds of `stem` with an epoch below `epoch`.
pub fn remove_holds_below(dir: &Path, stem: &str, epoch: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(Entry::Hold(e)) = naming::classify(&name, stem) {
            if e < epoch {
                remove_hold(&entry.path());
            }
        }
    }
}

/// Removes bridge marker files in topic directory `dir` older than
/// `max_age`: holds whose replica's writer is gone (a remote publisher that
/// never came back) and end markers. Returns how many were removed.
pub fn expire_markers(dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_hold = name.starts_with('.') && name.ends_with(".hold");
        let is_end = name.starts_with('.') && name.ends_with(".ended");
        if !is_hold && !is_end {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        // A hold's ctime changes when a name of its ring is added or
        // removed, so it dates the replica's abandonment.
        let changed = UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, 0);
        if now.duration_since(changed).unwrap_or_default() < max_age {
            continue;
        }
        let path = entry.path();
        if is_hold {
            match RawReader::open(&path, StartAt::Latest, false) {
                Ok(r) if !r.publisher_gone() => continue,
                _ => {}
            }
        }
        if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
        if is_hold {
            let _ = std::fs::remove_file(bus::control_path_of(&path));
        }
    }
    removed
}

/// Whether the stream was received completely before (end marker).
pub fn is_ended(dir: &Path, stem: &str) -> bool {
    dir.join(naming::ended_name(stem)).exists()
}

/// Records that the stream was received completely.
///
/// # Errors
///
/// The file-system error.
pub fn mark_ended(dir: &Path, stem: &str) -> io::Result<()> {
    std::fs::write(dir.join(naming::ended_name(stem)), b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn meta() -> ReplicaMeta {
        ReplicaMeta {
            type_name: "test::T".into(),
            type_fingerprint: 77,
            capacity: 64 << 10,
            max_message: 1024,
        }
    }

    #[test]
    fn create_find_and_retire() {
        let d = Dir(std::path::PathBuf::from(format!(
            "/dev/shm/shmbus-test-{}-replica",
            std::process::id()
        )));
        let dir = d.0.join("bus").join("topic");
        assert_eq!(find_previous(&dir, "n.p").unwrap(), None);
        let r = create(&dir, "n.p", 3, &meta(), 4096).unwrap();
        assert_eq!(r.writer.position(), 4096);
        assert!(r.writer.info().replica);
        assert_eq!(r.writer.info().type_fingerprint, 77);
        assert!(r.hold.exists());
        // A live writer is never taken over.
        assert!(matches!(
            find_previous(&dir, "n.p"),
            Err(PreviousError::LiveWriter(_))
        ));
        // Dropped without retiring (as if the bridge died): the ring file may
        // go, the hold keeps the position.
        let Replica { writer, path, hold } = r;
        drop(writer);
        let _ = std::fs::remove_file(&path);
        let p = find_previous(&dir, "n.p").unwrap().unwrap();
        assert_eq!((p.position, p.next_epoch), (4096, 4));
        assert!(p.old_rings.is_empty());
        let r2 = create(&dir, "n.p", 4, &meta(), p.position).unwrap();
        remove_holds_below(&dir, "n.p", 4);
        assert!(!hold.exists());
        assert!(r2.hold.exists());
        r2.retire();
        assert!(find_previous(&dir, "n.p").unwrap().is_none());
        assert!(!is_ended(&dir, "n.p"));
        mark_ended(&dir, "n.p").unwrap();
        assert!(is_ended(&dir, "n.p"));
        // Expiry keeps live holds and young markers, removes the rest.
        let live = create(&dir, "n.q", 0, &meta(), 0).unwrap();
        let Replica {
            writer,
            hold: dead_hold,
            ..
        } = create(&dir, "n.r", 0, &meta(), 0).unwrap();
        drop(writer);
        assert_eq!(expire_markers(&dir, Duration::from_secs(3600)), 0);
        assert_eq!(expire_markers(&dir, Duration::ZERO), 2);
        assert!(!is_ended(&dir, "n.p"));
        assert!(!dead_hold.exists());
        assert!(live.hold.exists());
    }
}
