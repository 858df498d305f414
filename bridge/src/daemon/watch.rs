//! Change notification for the catalog: inotify on the bus directory and on
//! each exportable topic directory, so a new or removed ring is noticed when
//! it appears instead of at the next poll.
//!
//! The watch only says *that* something changed; the catalog then rescans
//! (listing is the single source of truth, see [`super::catalog`]). So a
//! lost event costs latency, never correctness: on `IN_Q_OVERFLOW`, or when
//! a watch cannot be added (`max_user_watches` reached), the caller rescans,
//! and a slow periodic rescan (`rescan_interval`) runs regardless.
//!
//! Watches are added before the directory is listed (see
//! [`BusWatch::sync`]), so a ring moved into a topic directory is either
//! seen by that listing or reported by the watch afterwards.
//!
//! Bounds: one watch per watched directory (the root, the bus directory,
//! the exportable topic directories that exist), at most
//! [`MAX_TOPIC_WATCHES`] topic directories; a watch of a removed directory
//! is dropped when the kernel reports `IN_IGNORED`.

use std::{
    collections::HashMap,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::{config::Config, log};

/// Most topic directories watched; topics beyond this are found by the
/// periodic rescan only.
pub const MAX_TOPIC_WATCHES: usize = 4096;

/// What [`BusWatch::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing within the timeout.
    None,
    /// Entries were created, moved or removed: rescan.
    Changed,
    /// The kernel's event queue overflowed, events were lost: rescan.
    Overflow,
}

/// Events a watched directory reports: entries appearing or leaving.
fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE_SELF
        | WatchMask::ONLYDIR
}

/// inotify watches on the root, the bus and its exportable topics.
#[derive(Debug)]
pub struct BusWatch {
    inotify: Inotify,
    /// Watched directories by descriptor (root, bus, topics) ...
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// ... and the same by path.
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// While the root does not exist: the watch on its nearest existing
    /// ancestor, to see the root appear.
    ancestor: Option<WatchDescriptor>,
    /// Whether the "too many watches" warning was logged.
    warned_full: bool,
    buf: Vec<u8>,
}

impl BusWatch {
    /// An inotify instance with no watches yet.
    ///
    /// # Errors
    ///
    /// If inotify is unavailable (e.g. `max_user_instances` reached); the
    /// caller then relies on the periodic rescan.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            by_path: HashMap::new(),
            ancestor: None,
            warned_full: false,
            buf: vec![0; 16 * 1024],
        })
    }

    /// Number of watched directories.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    /// Adds watches for the root, the bus directory and every topic
    /// directory `config` exports that exists now (already watched ones are
    /// kept). Call it before listing the bus.
    pub fn sync(&mut self, config: &Config) {
        let bus_dir = config.root.join(&config.bus);
        // The root, to see the bus directory appear; while the root itself
        // is missing, its nearest existing ancestor, to see it appear.
        if self.add(&config.root) {
            if let Some(wd) = self.ancestor.take() {
                self.forget(&wd);
                let _ = self.inotify.watches().remove(wd);
            }
        } else if self.ancestor.is_none() {
            let existing = config.root.ancestors().skip(1).find(|a| a.is_dir());
            if let Some(dir) = existing {
                if self.add(dir) {
                    self.ancestor = self.by_path.get(dir).cloned();
                }
            }
        }
        if !self.add(&bus_dir) {
            return;
        }
        let Ok(topics) = std::fs::read_dir(&bus_dir) else {
            return;
        };
        for t in topics.flatten() {
            let Ok(topic) = t.file_name().into_string() else {
                continue;
            };
            if shmbus_bus::validate_name("topic", &topic).is_err()
                || config.export_rule(&topic).is_none()
            {
                continue;
            }
            let path = t.path();
            if self.by_path.contains_key(&path) {
                continue;
            }
            if self.dirs.len() >= MAX_TOPIC_WATCHES + 2 {
                if !self.warned_full {
                    log::warning!(
                        "watching {MAX_TOPIC_WATCHES} topic directories already; more topics are found by the periodic rescan only"
                    );
                    self.warned_full = true;
                }
                return;
            }
            self.add(&path);
        }
    }

    /// Watches `dir`; false if it cannot be watched (absent, or no watch
    /// left: logged once).
    fn add(&mut self, dir: &Path) -> bool {
        if self.by_path.contains_key(dir) {
            return true;
        }
        match self.inotify.watches().add(dir, dir_mask()) {
            Ok(wd) => {
                self.dirs.insert(wd.clone(), dir.to_owned());
                self.by_path.insert(dir.to_owned(), wd);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                if !self.warned_full {
                    log::warning!(
                        "cannot watch {}: {e}; relying on the periodic rescan for it",
                        dir.display()
                    );
                    self.warned_full = true;
                }
                false
            }
        }
    }

    fn forget(&mut self, wd: &WatchDescriptor) {
        if let Some(path) = self.dirs.remove(wd) {
            self.by_path.remove(&path);
        }
        if self.ancestor.as_ref() == Some(wd) {
            self.ancestor = None;
        }
    }

    /// Waits up to `timeout` for changes and drains every queued event.
    pub fn wait(&mut self, timeout: Duration) -> Change {
        let fd = self.inotify.as_raw_fd();
        match crate::io::socket::poll_once(fd, libc::POLLIN, timeout) {
            Ok(revents) if revents & libc::POLLIN != 0 => {}
            _ => return Change::None,
        }
        let mut change = Change::None;
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Change::Overflow,
            };
            let mut any = false;
            let mut gone = Vec::new();
            for event in events {
                any = true;
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    change = Change::Overflow;
                } else if event.mask.contains(EventMask::IGNORED) {
                    // The directory is gone (or its watch was removed).
                    gone.push(event.wd);
                    if change == Change::None {
                        change = Change::Changed;
                    }
                } else if change == Change::None {
                    change = Change::Changed;
                }
            }
            for wd in &gone {
                self.forget(wd);
            }
            if !any {
                break;
            }
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_reported_and_removed_directories_forgotten() {
        let dir = std::env::temp_dir().join(format!("shmbus-watch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = BusWatch::new().unwrap();
        assert!(w.add(&dir));
        assert!(w.add(&dir), "a second add keeps the one watch");
        assert_eq!(w.watched(), 1);
        assert_eq!(w.wait(Duration::from_millis(10)), Change::None);
        std::fs::write(dir.join("x.ring"), b"").unwrap();
        assert_eq!(w.wait(Duration::from_secs(30)), Change::Changed);
        std::fs::remove_file(dir.join("x.ring")).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        // DELETE, DELETE_SELF and IGNORED may come in more than one read.
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while w.watched() > 0 && std::time::Instant::now() < end {
            w.wait(Duration::from_millis(100));
        }
        assert_eq!(w.watched(), 0, "the removed directory's watch is dropped");
        assert!(!w.add(&dir), "an absent directory cannot be watched");
    }
}
