//! What a run leaves behind once every process exited.
//!
//! README ("Files"): when the last process using a ring is gone, both its
//! files are gone. A SIGKILLed last user cannot remove anything, so files
//! of rings whose last user was killed may stay until a sweep: `shmbus gc`
//! (the library's sweep, plus the bridge's expiry of its holds and
//! markers, here with age 0 since both bridges are gone). The check: list
//! what is left (reported as a figure), sweep exactly as `shmbus gc
//! --hold-age 0` does, and then nothing may be left in either bus
//! directory: no `.ring`, `.ctl`, `subscribers.reg`, temporary file,
//! bridge hold or marker.

use std::{path::Path, time::Duration};

use crate::isolation::leftover_files;

/// Files left before and after the sweep.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Left when every process had exited, before the sweep.
    pub before_gc: Vec<String>,
    /// Left after the sweep: each is a leak.
    pub after_gc: Vec<String>,
}

/// Sweeps every topic of the default bus under `root` as `shmbus gc
/// --hold-age 0` does.
fn gc(root: &Path) {
    let bus = root.join(shmbus_bus::DEFAULT_BUS);
    let Ok(topics) = std::fs::read_dir(&bus) else {
        return;
    };
    for t in topics.flatten() {
        let dir = t.path();
        if !dir.is_dir() {
            continue;
        }
        let _ = shmbus_bus::sweep_topic(&dir);
        shmbus_bridge::daemon::replica::expire_markers(&dir, Duration::ZERO);
        shmbus_bridge::daemon::export_hold::expire(&dir, Duration::ZERO);
        let _ = shmbus_bus::sweep_topic(&dir);
    }
}

/// Lists, sweeps and lists again the roots.
pub fn check(roots: &[&Path]) -> Leftovers {
    let list = |roots: &[&Path]| -> Vec<String> {
        roots
            .iter()
            .flat_map(|r| leftover_files(r))
            .map(|p| p.display().to_string())
            .collect()
    };
    let before_gc = list(roots);
    for r in roots {
        gc(r);
    }
    Leftovers {
        before_gc,
        after_gc: list(roots),
    }
}

/// Counts files by kind: the extension, or the name for files without one
/// (`subscribers.reg` has one), e.g. `{"ring": 3, "ctl": 3, "hold": 2}`.
pub fn by_kind(files: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for f in files {
        let p = Path::new(f);
        let kind = match p.extension() {
            Some(e) => e.to_string_lossy().into_owned(),
            None => p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_counted() {
        let files = [
            "/a/t/x.ring",
            "/a/t/x.ctl",
            "/a/t/y.ring",
            "/b/t/.p.q.0.hold",
        ]
        .map(String::from);
        let kinds = by_kind(&files);
        assert_eq!(kinds.get("ring"), Some(&2));
        assert_eq!(kinds.get("ctl"), Some(&1));
        assert_eq!(kinds.get("hold"), Some(&1));
    }
}
