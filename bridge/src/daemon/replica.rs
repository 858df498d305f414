//! Replica rings on disk: creating them, finding the ones an earlier run of
//! this bridge made, and the hold, end and resume markers (see [`naming`]).
//!
//! # Markers never re-deliver
//!
//! A hold keeps a whole ring (its memory) to remember one position, so holds
//! of streams that never came back expire ([`expire_markers`]). An expired
//! hold is not forgotten: it leaves a resume marker, a few bytes with the
//! position and next sequence number, and a stream announced again resumes
//! there (the sender's GAP then reports the loss exactly) instead of from
//! the sender's oldest data, which this bridge delivered before. End and
//! resume markers are touched whenever their stream is announced
//! ([`touch_marks`]), so they expire only after the stream was not seen for
//! the whole expiry time, i.e. its ring is gone on the sender.

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

/// Creates epoch `epoch` of stem `stem` in `dir`, starting at `start`
/// (numbered from `next_seq` when known, else from its first record), and
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
    next_seq: Option<u64>,
) -> Result<Replica, bus::Error> {
    let id = naming::replica_id(stem, epoch);
    bus::create_dir_all(dir, dir, 0o700)?;
    let path = bus::ring_path(dir, &id)?;
    let config = meta.ring_config();
    let writer = match next_seq {
        Some(seq) => ReplicaWriter::create_numbered(&path, &config, start, seq)?,
        None => ReplicaWriter::create(&path, &config, start)?,
    };
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
    /// The sequence number of the message at `position`, when known.
    pub next_seq: Option<u64>,
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

/// Finds the replicas (and holds, or the resume marker an expired hold
/// left) an earlier run made for `stem` in `dir` and the position they
/// reach; `None` if there are none.
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
    let mut point: Option<ResumePoint> = match read_mark(&dir.join(naming::resume_name(stem))) {
        Ok(Some(m)) => Some(ResumePoint {
            position: m.position,
            next_seq: m.next_seq,
            next_epoch: m.next_epoch,
            old_rings: Vec::new(),
        }),
        Ok(None) => None,
        Err(e) => return Err(PreviousError::Io(dir.join(naming::resume_name(stem)), e)),
    };
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
        let next_seq = known_next_sequence(&reader);
        drop(reader);
        let p = point.get_or_insert(ResumePoint {
            position: tail,
            next_seq,
            next_epoch: 0,
            old_rings: Vec::new(),
        });
        if tail > p.position {
            p.position = tail;
            p.next_seq = next_seq;
        } else if tail == p.position && p.next_seq.is_none() {
            p.next_seq = next_seq;
        }
        p.next_epoch = p.next_epoch.max(epoch.saturating_add(1));
        if is_ring {
            p.old_rings.push(path);
        }
    }
    Ok(point)
}

/// The next sequence number of a finished replica, if it holds a record
/// (an empty one may not know its numbering).
fn known_next_sequence(reader: &RawReader) -> Option<u64> {
    (reader.tail() > reader.head()).then(|| reader.next_sequence())
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

/// Expires bridge marker files in topic directory `dir` not changed for
/// `max_age`: a hold whose replica's writer is gone (a remote publisher
/// that never came back) becomes a resume marker (its ring's memory is
/// freed, its position kept); end and resume markers are removed. Returns
/// how many files were expired.
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
        let is_mark =
            name.starts_with('.') && (name.ends_with(".ended") || name.ends_with(".resume"));
        if !is_hold && !is_mark {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        // A hold's ctime changes when a name of its ring is added or
        // removed, so it dates the replica's abandonment; a mark's when its
        // stream was last announced (touch_marks).
        let changed = UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, 0);
        if now.duration_since(changed).unwrap_or_default() < max_age {
            continue;
        }
        let path = entry.path();
        if is_hold {
            match RawReader::open(&path, StartAt::Latest, false) {
                Ok(r) if !r.publisher_gone() => continue,
                Ok(r) => {
                    let mark = naming::parse_hold(&name).map(|(stem, epoch)| {
                        let mark = Mark {
                            position: r.tail(),
                            next_seq: known_next_sequence(&r),
                            next_epoch: epoch.saturating_add(1),
                        };
                        (stem, mark)
                    });
                    drop(r);
                    if let Some(Err(e)) =
                        mark.map(|(stem, mark)| keep_resume_mark(dir, stem, &mark))
                    {
                        // Without the mark the position would be forgotten:
                        // keep the hold.
                        crate::log::warning!(
                            "cannot record where {} resumes, keeping it: {e}",
                            path.display()
                        );
                        continue;
                    }
                }
                // Unreadable (damaged, or not a ring): nothing to keep.
                Err(_) => {}
            }
            if std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
            let _ = std::fs::remove_file(bus::control_path_of(&path));
        } else if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Records `mark` as where `stem` resumes unless a resume mark at a later
/// position exists.
///
/// # Errors
///
/// The file-system error (reading the old mark or writing the new one).
pub fn keep_resume_mark(dir: &Path, stem: &str, mark: &Mark) -> io::Result<()> {
    let path = dir.join(naming::resume_name(stem));
    if let Some(old) = read_mark(&path)? {
        if old.position > mark.position {
            return Ok(());
        }
    }
    write_mark(&path, mark)
}

/// A stream's place, as an end or resume marker records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The position the stream continues from (or ended at).
    pub position: u64,
    /// The sequence number of the message at `position`, when known.
    pub next_seq: Option<u64>,
    /// The replica epoch to create next.
    pub next_epoch: u64,
}

impl Mark {
    fn encode(&self) -> String {
        let seq = self
            .next_seq
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        format!(
            "position={} next_seq={seq} next_epoch={}\n",
            self.position, self.next_epoch
        )
    }

    /// Parses [`Self::encode`]'s text; `None` if it is not that.
    fn decode(text: &str) -> Option<Self> {
        let mut words = text.trim_end_matches('\n').split(' ');
        let mut field = |name: &str| words.next()?.strip_prefix(name)?.strip_prefix('=');
        let position = field("position")?.parse().ok()?;
        let next_seq = match field("next_seq")? {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        let next_epoch = field("next_epoch")?.parse().ok()?;
        words.next().is_none().then_some(Self {
            position,
            next_seq,
            next_epoch,
        })
    }
}

fn write_mark(path: &Path, mark: &Mark) -> io::Result<()> {
    // Written whole under a temporary name, then renamed: a crash leaves the
    // old mark or the new one, never half of one.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, mark.encode())?;
    std::fs::rename(&tmp, path)
}

/// Reads a marker file: `Ok(None)` if there is none; an unreadable or
/// malformed one is an error (the caller must not guess a position).
fn read_mark(path: &Path) -> io::Result<Option<Mark>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Mark::decode(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a marker ({text:?})", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// How an earlier end marker of a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Not ended.
    No,
    /// Ended at this mark.
    At(Mark),
    /// An end marker exists but says nothing readable (written by an older
    /// version, or damaged): ended all the same.
    Unknown,
}

/// Whether the stream was received completely before (end marker).
pub fn ended(dir: &Path, stem: &str) -> Ended {
    let path = dir.join(naming::ended_name(stem));
    match read_mark(&path) {
        Ok(Some(m)) => Ended::At(m),
        Ok(None) => Ended::No,
        Err(_) => Ended::Unknown,
    }
}

/// Records that the stream was received completely, and where it ended.
/// Its resume mark, if any, goes.
///
/// # Errors
///
/// The file-system error.
pub fn mark_ended(dir: &Path, stem: &str, mark: &Mark) -> io::Result<()> {
    write_mark(&dir.join(naming::ended_name(stem)), mark)?;
    let _ = std::fs::remove_file(dir.join(naming::resume_name(stem)));
    Ok(())
}

/// Marks the stream as seen now: its end and resume markers start their
/// expiry time again (the sender still has its ring).
pub fn touch_marks(dir: &Path, stem: &str) {
    for name in [naming::ended_name(stem), naming::resume_name(stem)] {
        let path = dir.join(name);
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            // Setting the times changes the ctime, which dates a mark.
            let _ = f.set_modified(SystemTime::now());
        }
    }
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
    fn marks_round_trip_and_refuse_garbage() {
        for m in [
            Mark {
                position: 0,
                next_seq: None,
                next_epoch: 0,
            },
            Mark {
                position: u64::MAX,
                next_seq: Some(u64::MAX - 1),
                next_epoch: 7,
            },
        ] {
            assert_eq!(Mark::decode(&m.encode()), Some(m));
        }
        for bad in [
            "",
            "position=1",
            "position=1 next_seq=2 next_epoch=3 more",
            "position=x next_seq=- next_epoch=0",
            "next_seq=- position=1 next_epoch=0",
        ] {
            assert_eq!(Mark::decode(bad), None, "{bad:?}");
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
        let r = create(&dir, "n.p", 3, &meta(), 4096, None).unwrap();
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
        assert_eq!((p.position, p.next_epoch, p.next_seq), (4096, 4, None));
        assert!(p.old_rings.is_empty());
        let r2 = create(&dir, "n.p", 4, &meta(), p.position, p.next_seq).unwrap();
        remove_holds_below(&dir, "n.p", 4);
        assert!(!hold.exists());
        assert!(r2.hold.exists());
        r2.retire();
        assert!(find_previous(&dir, "n.p").unwrap().is_none());
        assert_eq!(ended(&dir, "n.p"), Ended::No);
        let end = Mark {
            position: 8192,
            next_seq: Some(99),
            next_epoch: 5,
        };
        mark_ended(&dir, "n.p", &end).unwrap();
        assert_eq!(ended(&dir, "n.p"), Ended::At(end));
        touch_marks(&dir, "n.p");
        // Expiry keeps live holds and young markers, removes the rest.
        let live = create(&dir, "n.q", 0, &meta(), 0, None).unwrap();
        let Replica {
            writer,
            hold: dead_hold,
            ..
        } = create(&dir, "n.r", 0, &meta(), 5 << 20, Some(1234)).unwrap();
        drop(writer);
        assert_eq!(expire_markers(&dir, Duration::from_secs(3600)), 0);
        assert_eq!(expire_markers(&dir, Duration::ZERO), 2);
        assert_eq!(ended(&dir, "n.p"), Ended::No);
        assert!(!dead_hold.exists());
        assert!(live.hold.exists());
        // The expired hold left where its stream resumes: no re-delivery.
        // (It held no record, so its numbering is not trusted.)
        let p = find_previous(&dir, "n.r").unwrap().unwrap();
        assert_eq!((p.position, p.next_seq, p.next_epoch), (5 << 20, None, 1));
        assert!(p.old_rings.is_empty());
        // A resume mark is a mark: it expires too (after the expiry time
        // without an announce of its stream).
        assert_eq!(expire_markers(&dir, Duration::ZERO), 1);
        assert!(find_previous(&dir, "n.r").unwrap().is_none());
    }
}
