//! Export holds: the sender's hard links that keep an exported ring until
//! its peer has all of it.
//!
//! When the sender opens an export stream for a peer, it links the ring's
//! data and control files to `.<publisher>.x<peer tag>.xhold` and its control
//! path (see [`naming::export_hold_name`]) in the same topic directory. If the
//! publisher exits while this bridge is down (or, tethered, after the
//! durable lease), the last process using the ring removes `<id>.ring` and
//! `<id>.ctl`, but the inode, with its final tail and records, lives on
//! under the hidden names, which subscribers, the catalog's ring listing
//! and sweeps ignore (`validate_name` refuses a leading '.'). The restarted
//! bridge finds the hold ([`orphaned`]), offers it to that peer again, and
//! the peer gets the exact GAP for what the publisher lapped, the rest of
//! the tail and END; on END's ACK the hold is removed.
//!
//! A hold cannot make a live publisher's ring leak: while the publisher
//! runs its names are the normal ones and the hold is only an extra link;
//! it goes with the stream's acknowledged END, or at [`expire`] once the
//! publisher is gone and nobody came for it within `export_hold_max_age`.
//! When the peer's state expires (it was away for `peer_state_expiry`), the
//! holds of its streams go with it (`ExportSet::drop_holds`); holds found
//! at startup that the peer never comes back for expire by age.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use shmbus_bus::{self as bus, RawReader, StartAt};

use super::{
    super::{catalog::LocalRing, naming},
    streams::ExportStream,
    ExportSet,
};

/// An export hold this sender owns (see the module docs).
#[derive(Debug)]
pub(crate) struct ExportHold {
    path: PathBuf,
}

impl ExportHold {
    /// Takes the hold of `ring` for peer `peer`: adopts it if `ring` was
    /// found through its hold, else links the ring's files to the hold
    /// names. `None` if the ring's names are gone already (its reader still
    /// works; only a later restart could not resume it) or linking failed.
    pub(crate) fn take(ring: &LocalRing, peer: &str) -> Option<Self> {
        if ring.held_for.is_some() {
            return Some(Self {
                path: ring.path.clone(),
            });
        }
        let dir = ring.path.parent()?;
        let path = dir.join(naming::export_hold_name(&ring.publisher, peer));
        match link_ring(&ring.path, &path) {
            Ok(()) => Some(Self { path }),
            Err(e) => {
                crate::log::debug!("no export hold for {}: {e}", ring.path.display());
                None
            }
        }
    }

    /// Removes the hold's links: the peer has everything.
    pub(crate) fn remove(self) {
        remove(&self.path);
    }
}

/// Whether `ring` may be announced to the peer tagged `peer_tag`, given
/// the rings already `announced` on this connection and the peer's export
/// `streams`. A ring found through a hold goes only to the peer it is held
/// for, and not while this peer already has that publisher's ring, under
/// its own names (a publisher that exited while this bridge ran: its
/// stream carries the tail) or as a stream already finished on this
/// connection (its hold went with the END; the catalog drops it at the
/// next scan).
pub(super) fn offer(
    ring: &LocalRing,
    peer_tag: &str,
    announced: &BTreeMap<u32, Arc<LocalRing>>,
    streams: &BTreeMap<u32, ExportStream>,
) -> bool {
    let Some(tag) = &ring.held_for else {
        return true;
    };
    let same =
        |r: &LocalRing| r.id != ring.id && r.topic == ring.topic && r.publisher == ring.publisher;
    tag == peer_tag
        && !announced.values().any(|r| same(r))
        && !streams.values().any(|st| same(&st.ring))
}

impl ExportSet {
    /// Removes the export holds of every stream of this peer: its state is
    /// dropped, nobody will resume these streams. Readers and durable slots
    /// are left to the set's drop.
    pub(crate) fn drop_holds(&mut self) {
        for st in self.streams.values_mut() {
            st.drop_hold();
        }
    }
}

/// Links data file `ring` and its control file to `hold` and its control
/// path. An existing hold of the same inode is kept (a restarted bridge); one
/// of another inode (an older ring of the same publisher id, whose peer
/// moved on to this one) is replaced.
fn link_ring(ring: &Path, hold: &Path) -> io::Result<()> {
    let ring_ino = std::fs::metadata(ring)?.ino();
    match std::fs::symlink_metadata(hold) {
        Ok(m) if m.ino() == ring_ino => return Ok(()),
        Ok(_) => remove(hold),
        Err(_) => {}
    }
    // Control file first: a ring being removed loses its data name first,
    // so a hold never has a data link without its control link for long.
    let ctl = bus::control_path_of(hold);
    let _ = std::fs::remove_file(&ctl);
    std::fs::hard_link(bus::control_path_of(ring), &ctl)?;
    if let Err(e) = std::fs::hard_link(ring, hold) {
        let _ = std::fs::remove_file(&ctl);
        return Err(e);
    }
    // The name may have been replaced between the stat and the link: then
    // this hold is of another ring than the reader's; drop it.
    if std::fs::metadata(hold)?.ino() != ring_ino {
        remove(hold);
        return Err(io::Error::other("the ring was replaced while linking"));
    }
    Ok(())
}

/// Removes hold `path`: its data link and its control link.
fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(bus::control_path_of(path));
}

/// An export hold whose ring's names are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphaned {
    /// The hold's data link.
    pub path: PathBuf,
    /// The ring's publisher id.
    pub publisher: String,
    /// The tag of the peer it is held for ([`naming::peer_tag`]).
    pub peer_tag: String,
}

/// The export holds in topic directory `dir` whose `<publisher>.ring` is
/// gone: rings a peer may still be owed the end of.
pub fn orphaned(dir: &Path) -> Vec<Orphaned> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some((publisher, tag)) = naming::parse_export_hold(&name) else {
            continue;
        };
        if entry.file_type().map_or(true, |t| !t.is_file()) {
            continue;
        }
        if dir.join(format!("{publisher}.ring")).exists() {
            continue;
        }
        out.push(Orphaned {
            path: entry.path(),
            publisher: publisher.to_owned(),
            peer_tag: tag.to_owned(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Removes the [`expired`] export holds of topic directory `dir`, with
/// their control links; returns how many.
pub fn expire(dir: &Path, max_age: Duration) -> usize {
    let mut removed = 0;
    for path in expired(dir, max_age) {
        if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
        let _ = std::fs::remove_file(bus::control_path_of(&path));
    }
    removed
}

/// The export holds (data links) in topic directory `dir` not changed for
/// `max_age` whose publisher is gone (or that are no readable ring). A
/// hold's ctime changes when a name of its ring is added or removed, so it
/// dates the moment the ring's own names went.
pub fn expired(dir: &Path, max_age: Duration) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if naming::parse_export_hold(&name).is_none() {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let changed = UNIX_EPOCH + Duration::new(u64::try_from(meta.ctime()).unwrap_or(0), 0);
        if now.duration_since(changed).unwrap_or_default() < max_age {
            continue;
        }
        let path = entry.path();
        // A live publisher's ring is never taken from its exports.
        if let Ok(r) = RawReader::open(&path, StartAt::Latest, false) {
            if !r.publisher_gone() {
                continue;
            }
        }
        out.push(path);
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::naming::{export_hold_name, peer_tag};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shmbus-xhold-{tag}-{}-{:?}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn holds_are_orphaned_when_the_ring_goes_and_expire_only_when_old() {
        let dir = scratch("orph");
        let ring = dir.join("p.ring");
        std::fs::write(&ring, b"data").unwrap();
        std::fs::write(dir.join("p.ctl"), b"ctl").unwrap();
        let hold = dir.join(export_hold_name("p", "peer"));
        link_ring(&ring, &hold).unwrap();
        // Again (a restarted bridge): the same hold, kept.
        link_ring(&ring, &hold).unwrap();
        assert_eq!(
            std::fs::metadata(bus::control_path_of(&hold))
                .unwrap()
                .ino(),
            std::fs::metadata(dir.join("p.ctl")).unwrap().ino()
        );
        // The ring's names still exist: nothing to resume.
        assert!(orphaned(&dir).is_empty());
        std::fs::remove_file(&ring).unwrap();
        std::fs::remove_file(dir.join("p.ctl")).unwrap();
        // The inode lives on under the hold.
        assert_eq!(std::fs::read(&hold).unwrap(), b"data");
        assert_eq!(
            orphaned(&dir),
            vec![Orphaned {
                path: hold.clone(),
                publisher: "p".into(),
                peer_tag: peer_tag("peer"),
            }]
        );
        // Young: kept. Old (and no live publisher: not even a ring): removed
        // with its control link.
        assert_eq!(expire(&dir, Duration::from_secs(3600)), 0);
        assert!(hold.exists());
        assert_eq!(expire(&dir, Duration::ZERO), 1);
        assert!(!hold.exists());
        assert!(!bus::control_path_of(&hold).exists());
        assert!(orphaned(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hold_of_another_inode_is_replaced_and_a_half_gone_ring_is_not_held() {
        let dir = scratch("repl");
        let ring = dir.join("p.ring");
        let hold = dir.join(export_hold_name("p", "peer"));
        std::fs::write(&hold, b"old").unwrap();
        std::fs::write(&ring, b"new").unwrap();
        std::fs::write(dir.join("p.ctl"), b"ctl").unwrap();
        link_ring(&ring, &hold).unwrap();
        assert_eq!(std::fs::read(&hold).unwrap(), b"new");
        remove(&hold);
        // Control file already removed (the ring is being deleted): no hold.
        std::fs::remove_file(dir.join("p.ctl")).unwrap();
        assert!(link_ring(&ring, &hold).is_err());
        assert!(!hold.exists() && !bus::control_path_of(&hold).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
