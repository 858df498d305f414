//! The topic directory listing: which rings a topic has, and which files a
//! sweeper may look at. The one implementation of these rules, for the
//! client, the bridge, the sweep and the tools.
//!
//! A topic directory holds, per publisher, `<id>.ring` (the data file) beside
//! `<id>.ctl` (its control file), where `<id>` passes
//! [`crate::validate_name`]; the subscriber registry
//! ([`crate::shm::registry::REGISTRY_FILE`]); and, briefly, hidden temporary
//! files `.<name>.tmp` of creators that publish by renaming. Anything else
//! is not ours and is left alone.
//!
//! Only regular files count: a directory, symbolic link, FIFO or socket
//! under a ring's name is skipped (opening it would be refused anyway). The
//! listing reads names and file types only; it opens nothing, so it is a
//! snapshot that can be stale by the time it is used.

// Wired into the client, bridge and sweep by the Core v2 work (issue 7);
// until then only the tests use it.

use std::{
    fs::{self, DirEntry},
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::Error;

/// Extension of a ring's data file.
const DATA_EXT: &str = ".ring";
/// Extension of a ring's control file.
const CONTROL_EXT: &str = ".ctl";
/// Suffix of a creator's temporary file (which also starts with `.`).
const TEMP_EXT: &str = ".tmp";

/// One ring found in a topic directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEntry {
    /// The publisher id: the file name without `.ring`.
    pub publisher_id: String,
    /// `<topic_dir>/<id>.ring`.
    pub data_path: PathBuf,
    /// `<topic_dir>/<id>.ctl` (it may not exist yet, or any more).
    pub control_path: PathBuf,
}

/// The publisher id of `name` if it is `<id><ext>` with a valid id.
fn id_with_ext<'a>(name: &'a str, ext: &str) -> Option<&'a str> {
    let id = name.strip_suffix(ext)?;
    crate::validate_name("publisher id", id).ok()?;
    Some(id)
}

/// Whether `name` is a creator's temporary file: `.<name>.tmp`, `<name>` not empty.
fn is_temp_name(name: &str) -> bool {
    name.len() > 1 + TEMP_EXT.len() && name.starts_with('.') && name.ends_with(TEMP_EXT)
}

/// The regular files of `dir` as `(name, entry)`; names that are not UTF-8
/// are skipped (never ours). A missing directory is empty.
fn regular_files(dir: &Path) -> Result<Vec<(String, DirEntry)>, Error> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        // The entry's own type (d_type, or lstat): symlinks are not followed.
        let file_type = match entry.file_type() {
            Ok(t) => t,
            // Removed between readdir and lstat.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(entry.path(), e)),
        };
        if !file_type.is_file() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            files.push((name, entry));
        }
    }
    Ok(files)
}

/// Lists the rings of a topic: every `<id>.ring` whose id passes
/// `crate::validate_name("publisher id", id)`, sorted by id; hidden and
/// temporary files, the registry and other files are skipped, as is
/// anything that is not a regular file. A missing directory is `Ok(empty)`.
///
/// # Errors
///
/// [`Error::Io`] if the directory exists but cannot be read.
pub fn list_rings(topic_dir: &Path) -> Result<Vec<RingEntry>, Error> {
    let mut rings: Vec<RingEntry> = regular_files(topic_dir)?
        .into_iter()
        .filter_map(|(name, _)| {
            let id = id_with_ext(&name, DATA_EXT)?;
            Some(RingEntry {
                publisher_id: id.to_owned(),
                data_path: topic_dir.join(&name),
                control_path: topic_dir.join(format!("{id}{CONTROL_EXT}")),
            })
        })
        .collect();
    rings.sort_by(|a, b| a.publisher_id.cmp(&b.publisher_id));
    Ok(rings)
}

/// Control files (`<id>.ctl`, valid id) with no `<id>.ring` beside them, and
/// temporary files (`.<name>.tmp`), each older than `min_age` by its
/// modification time — candidates a sweeper may remove after checking their
/// locks. Sorted by path.
///
/// The age applies to control files too: a creator may have made the
/// control file and not yet renamed the data file into place. A file dated
/// in the future is not old. Only regular files are returned; a missing
/// directory is `Ok(empty)`.
///
/// # Errors
///
/// [`Error::Io`] if the directory exists but cannot be read.
pub(crate) fn orphans(topic_dir: &Path, min_age: Duration) -> Result<Vec<PathBuf>, Error> {
    let files = regular_files(topic_dir)?;
    let has_ring = |id: &str| {
        files
            .iter()
            .any(|(name, _)| id_with_ext(name, DATA_EXT) == Some(id))
    };
    let now = SystemTime::now();
    let old_enough = |entry: &DirEntry| match entry.metadata().and_then(|m| m.modified()) {
        Ok(modified) => now.duration_since(modified).is_ok_and(|age| age >= min_age),
        // Removed meanwhile (or no mtime): nothing to sweep.
        Err(_) => false,
    };
    let mut found: Vec<PathBuf> = files
        .iter()
        .filter(|(name, entry)| {
            let candidate = match id_with_ext(name, CONTROL_EXT) {
                Some(id) => !has_ring(id),
                None => is_temp_name(name),
            };
            candidate && old_enough(entry)
        })
        .map(|(_, entry)| entry.path())
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::lock::test_support::TestDir;
    use std::fs::File;

    fn touch(dir: &Path, name: &str, age: Duration) {
        let f = File::create(dir.join(name)).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    const OLD: Duration = Duration::from_secs(3600);
    const NEW: Duration = Duration::ZERO;

    #[test]
    fn missing_directory_is_empty() {
        let t = TestDir::new("list");
        let gone = t.path().join("no-such-topic");
        assert_eq!(list_rings(&gone).unwrap(), []);
        assert_eq!(orphans(&gone, NEW).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn not_a_directory_is_an_error() {
        let t = TestDir::new("list");
        touch(t.path(), "file", NEW);
        assert!(matches!(
            list_rings(&t.path().join("file")),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            orphans(&t.path().join("file"), NEW),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn list_rings_rules() {
        let t = TestDir::new("list");
        let d = t.path();
        for name in [
            "zeta.ring",
            "alpha-1.ring",
            "b_2.x.ring",
            "alpha-1.ctl",
            "orphan.ctl",
            ".hidden.ring",      // hidden
            ".alpha-1.ring.tmp", // a creator's temporary file
            "subscribers.reg",   // the registry
            ".ring",             // empty id
            "bad name.ring",     // invalid id
            "alpha.ring.bak",    // other files
            "README",
        ] {
            touch(d, name, NEW);
        }
        touch(
            d,
            &format!("{}.ring", "n".repeat(crate::MAX_NAME_LEN + 1)),
            NEW,
        );
        std::fs::create_dir(d.join("dir.ring")).unwrap();
        std::os::unix::fs::symlink(d.join("zeta.ring"), d.join("link.ring")).unwrap();
        let cfifo =
            std::ffi::CString::new(d.join("fifo.ring").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: `cfifo` is a NUL-terminated path valid for the call.
        assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);

        let rings = list_rings(d).unwrap();
        let ring = |id: &str| RingEntry {
            publisher_id: id.into(),
            data_path: d.join(format!("{id}.ring")),
            control_path: d.join(format!("{id}.ctl")),
        };
        assert_eq!(rings, [ring("alpha-1"), ring("b_2.x"), ring("zeta")]);
    }

    #[test]
    fn orphans_rules() {
        let t = TestDir::new("list");
        let d = t.path();
        for (name, age) in [
            ("live.ring", OLD),
            ("live.ctl", OLD),       // has its ring: never an orphan
            ("gone.ctl", OLD),       // no ring: orphan
            ("young.ctl", NEW),      // no ring, but too young
            (".made.ring.tmp", OLD), // abandoned temporary file
            (".subscribers.reg.1.0.tmp", OLD),
            (".fresh.ring.tmp", NEW), // a creator at work
            (".tmp", OLD),            // no name
            ("visible.tmp", OLD),     // not hidden: not ours
            ("bad id.ctl", OLD),      // invalid id
            (".hidden.ctl", OLD),     // invalid id
            ("subscribers.reg", OLD),
            ("other.ring.ctl", OLD), // id "other.ring" has no "other.ring.ring"
        ] {
            touch(d, name, age);
        }
        std::fs::create_dir(d.join("dir.ctl")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("link.ctl")).unwrap();
        // Dated in the future: not old.
        touch(d, "future.ctl", NEW);
        File::options()
            .write(true)
            .open(d.join("future.ctl"))
            .unwrap()
            .set_modified(SystemTime::now() + OLD)
            .unwrap();

        let found = orphans(d, Duration::from_secs(60)).unwrap();
        let expect: Vec<PathBuf> = [
            ".made.ring.tmp",
            ".subscribers.reg.1.0.tmp",
            "gone.ctl",
            "other.ring.ctl",
        ]
        .iter()
        .map(|n| d.join(n))
        .collect();
        assert_eq!(found, expect);
        // With no minimum age, the young ones count too.
        let all = orphans(d, Duration::ZERO).unwrap();
        for young in [".fresh.ring.tmp", "young.ctl"] {
            assert!(all.contains(&d.join(young)), "{young}: {all:?}");
        }
        assert!(!all.contains(&d.join("live.ctl")));
        assert!(!all.contains(&d.join("future.ctl")));
    }
}
