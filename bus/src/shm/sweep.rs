//! Removing segments nobody needs any more.
//!
//! A ring file is stale when its publisher is gone (closed it, or is provably
//! dead) and no live subscriber is attached. Whoever notices first removes
//! it: the closing publisher, the last subscriber to drain it, or the next
//! participant that scans the topic. Files of live publishers and rings that
//! still have live readers are never removed.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    layout::{SLOT_FREE, SLOT_STATE_MASK, WRITER_CLOSED},
    ring::View,
    shm::liveness,
    shm::paths::RING_EXT,
    shm::segment::{self, Mapping},
    sync::Ordering,
    Error,
};

/// A temporary file of a creator that is older than this is abandoned.
const ABANDONED_TMP_AGE: Duration = Duration::from_secs(10);

/// True if the ring's publisher is gone: closed, or its process is dead.
pub(crate) fn publisher_gone(map: &Arc<Mapping>) -> bool {
    // Acquire: pairs with the writer's Release store of CLOSED.
    map.control().writer_state.load(Ordering::Acquire) == WRITER_CLOSED
        || !map.info().publisher.is_alive()
}

/// True if any slot belongs to a live process.
fn has_live_reader(map: &Arc<Mapping>) -> bool {
    map.slots().iter().any(|slot| {
        // Acquire: pairs with the claimer's Release, so pid/start are its own.
        let state = slot.state.load(Ordering::Acquire);
        state & SLOT_STATE_MASK != SLOT_FREE
            // Relaxed: ordered after the state load.
            && liveness::is_alive(
                slot.pid.load(Ordering::Relaxed),
                slot.start_time.load(Ordering::Relaxed),
            )
    })
}

/// Removes the ring's file if its publisher is gone and nobody live reads it.
pub(crate) fn remove_if_unread(map: &Arc<Mapping>) -> bool {
    if publisher_gone(map) && !has_live_reader(map) {
        std::fs::remove_file(&map.info().path).is_ok()
    } else {
        false
    }
}

/// Removes stale ring files in a topic directory (see the module docs), and
/// temporary files abandoned by creators. Returns how many were removed.
/// Files that are not shmbus segments are left alone.
///
/// # Errors
///
/// [`Error::Io`] if the directory cannot be read (a missing one is fine).
pub fn sweep_topic(dir: &Path) -> Result<usize, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > ABANDONED_TMP_AGE);
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some(RING_EXT) {
            continue;
        }
        if let Ok(map) = segment::open(&path) {
            if remove_if_unread(&map) {
                removed += 1;
            }
        }
    }
    Ok(removed)
}
