//! Removing rings nobody needs any more.
//!
//! A ring is stale when its publisher is gone (it closed the ring, or its
//! lock is free: positive proof of death, in any pid namespace) and no slot
//! still needs data: no owner holds a slot lock, no registered subscriber
//! waits on a pre-joined slot, no durable slot is within its lease.
//! Whoever notices first removes it: the closing publisher, the last
//! subscriber out, or the next participant that sweeps the topic. The test
//! is made with the kernel's locks, so "the last one out" is exact: whoever
//! drops its lock last sees no other. Rings of live publishers, and rings
//! that still owe data, are never removed; nothing here ever truncates a
//! file (that would fault every mapping of it).

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    layout::WRITER_CLOSED,
    ring::{gate, View},
    shm::{
        fs::Access,
        listing, lock,
        segment::{self, Mapping},
    },
    sync::{load_acquire_ro32, Ordering},
    Error,
};

/// A temporary file of a creator, or a control file without its data file,
/// older than this is abandoned.
const ABANDONED_AGE: Duration = Duration::from_secs(10);

/// True if the ring's publisher is gone: closed, or its lock is free. Only
/// the word CLOSED counts as closed: a damaged word (neither open nor
/// closed) is no proof that a publisher holding its lock is gone.
pub(crate) fn publisher_gone(map: &Arc<Mapping>) -> bool {
    // Acquire: pairs with the writer's Release store of CLOSED.
    load_acquire_ro32(&map.producer().writer_state) == WRITER_CLOSED || !map.publisher_alive()
}

/// True if some slot may still need the ring's data (see the module docs).
/// Slots of dead owners are reaped (or orphaned, if durable) first.
fn needs_data(map: &Arc<Mapping>) -> bool {
    if !map.any_locked() {
        // Fast path: no lock at all. Still, pre-joined and durable slots
        // have no lock of their own.
        return gate::any_slot_needs_data(map, |_| false);
    }
    let now = map.now_ns();
    for (index, slot) in map.slots().iter().enumerate() {
        // Acquire: the slot's fields are its owner's (SYNC: slot-claim).
        let state = slot.state.load(Ordering::Acquire);
        gate::reap_if_dead(map, index, state, now);
    }
    gate::any_slot_needs_data(map, |i| map.slot_locked(i))
}

/// Removes the ring's files if its publisher is gone and no slot needs its
/// data: the data file first (so nobody discovers the ring any more), then
/// the control file.
pub(crate) fn remove_if_unread(map: &Arc<Mapping>) -> bool {
    // Only names the bus gives (`<id>.ring` and its `<id>.ctl`): a ring
    // opened through another link (a bridge's hold link) is left to the
    // link's owner.
    if crate::shm::paths::publisher_id_of(&map.info().path).is_none() {
        return false;
    }
    if !publisher_gone(map) || needs_data(map) {
        return false;
    }
    let info = map.info();
    let removed = std::fs::remove_file(&info.path).is_ok();
    let _ = std::fs::remove_file(&info.control_path);
    removed
}

/// Removes stale rings in a topic directory (see the module docs), control
/// files left without their data file by a creator that died, and
/// temporary files abandoned by creators. Returns how many rings and files
/// were removed. Files that are not shmbus rings are left alone, and so are
/// rings that cannot be opened (another layout version, another user's).
///
/// # Errors
///
/// [`Error::Io`] if the directory cannot be read (a missing one is fine).
pub fn sweep_topic(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    for ring in listing::list_rings(dir)? {
        if let Ok(map) = segment::open_with(&ring.data_path, Duration::ZERO, Access::Group) {
            if remove_if_unread(&map) {
                removed += 1;
            }
        }
    }
    for path in listing::orphans(dir, ABANDONED_AGE)? {
        // A control file whose publisher still holds its lock is a creator
        // at work (or a live ring whose data file is being renamed): keep it.
        let held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ok()
            .and_then(|f| lock::is_locked(&f, 0, 1).ok())
            .unwrap_or(false);
        if !held && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
