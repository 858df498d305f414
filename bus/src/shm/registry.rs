//! The topic's subscriber registry: who is subscribed right now, so that a
//! new publisher can pre-join every current subscriber at its ring's first
//! record.
//!
//! One file per topic, `<topic_dir>/subscribers.reg`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"shmbreg\x01"` (u64 LE), written last (Release) |
//! | 8 | 4 | layout version ([`REGISTRY_VERSION`]) |
//! | 12 | 4 | entry count ([`REGISTRY_ENTRIES`]) |
//! | 64 + 64·i | 64 | entry i: `state`, `pid`, `start_time` (u64 each), padding |
//!
//! An entry's `state` is `generation << 8 | REG_FREE/REG_USED`; `pid` and
//! `start_time` are labels for tools only, never used to decide liveness.
//!
//! # Liveness
//!
//! Entry i is owned by whoever holds the open-file-description lock on byte
//! i of the file ([`crate::shm::lock`]): a subscriber takes the lock first
//! and only then writes the entry, and keeps its own description open for
//! its whole life, so the kernel releases the entry's lock when it dies, in
//! any pid namespace. An entry is live when it is `REG_USED` *and* its lock
//! is held. Taking the lock is claiming the entry, so a registration never
//! races a reap. A child forked without exec shares the description: the
//! entry stays locked until the child exits too.
//!
//! # Creation
//!
//! Several processes may create the registry at once: each builds it under a
//! hidden temporary name (`.subscribers.reg.<pid>.<n>.tmp`), stores magic
//! last, and renames it into place without replacing; a loser opens the
//! winner's file. Nobody ever sees a half-made registry under its real name.
//!
//! # Trust
//!
//! The file is shared read-write by the topic's subscribers (mode 0600, or
//! 0660 in group mode): they trust each other. A corrupt entry can at worst
//! make a publisher pre-join a slot that is then reaped, or skip one
//! (the subscriber then joins as a late one); a truncated file faults
//! (SIGBUS) in whoever maps it, like any shared mapping.

// Wired into subscribing and ring creation by the Core v2 work (issue 7);
// until then only the tests use it.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use memmap2::{MmapMut, MmapOptions};

use crate::{
    shm::{
        fs::{self, Access},
        lock,
    },
    sync::{AtomicU32, AtomicU64, Ordering},
    Error,
};

/// File name of a topic's subscriber registry.
pub(crate) const REGISTRY_FILE: &str = "subscribers.reg";
/// Number of entries: the most subscribers a topic can have at once.
pub(crate) const REGISTRY_ENTRIES: u32 = 256;
/// The registry's magic: `b"shmbreg\x01"` read as a little-endian u64.
pub(crate) const REGISTRY_MAGIC: u64 = u64::from_le_bytes(*b"shmbreg\x01");
/// Layout version of the registry file.
pub(crate) const REGISTRY_VERSION: u32 = 1;
/// Entry state: not registered.
pub(crate) const REG_FREE: u64 = 0;
/// Entry state: registered (live while its lock is held).
pub(crate) const REG_USED: u64 = 1;
/// The low byte of `state` is FREE/USED; the generation is above it.
const STATE_BITS: u32 = 8;
/// Mask of the FREE/USED byte of `state`.
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
/// Generations are 56 bits wide.
const GEN_MASK: u64 = (1 << (64 - STATE_BITS)) - 1;
/// How many times `open_or_create` tries before giving up on a registry
/// that keeps being created and removed by others.
const CREATE_ATTEMPTS: u32 = 16;
/// How long opening waits for a creator to store magic.
const INIT_WAIT: Duration = Duration::from_millis(250);

/// The file header, on its own cache line.
#[repr(C, align(64))]
struct Header {
    /// [`REGISTRY_MAGIC`] once initialized, stored last.
    magic: AtomicU64,
    /// [`REGISTRY_VERSION`].
    version: AtomicU32,
    /// [`REGISTRY_ENTRIES`].
    entries: AtomicU32,
}

/// One subscriber's entry, on its own cache line.
#[repr(C, align(64))]
struct Entry {
    /// `generation << 8 | REG_FREE/REG_USED`.
    state: AtomicU64,
    /// Label: the registrant's pid (tools only).
    pid: AtomicU64,
    /// Label: the registrant's start time (tools only).
    start_time: AtomicU64,
}

/// Bytes of the header (one cache line).
const HEADER_SIZE: usize = std::mem::size_of::<Header>();
/// Bytes of one entry (one cache line).
const ENTRY_SIZE: usize = std::mem::size_of::<Entry>();
/// Bytes of a registry file.
const REGISTRY_SIZE: usize = HEADER_SIZE + REGISTRY_ENTRIES as usize * ENTRY_SIZE;

const _: () = assert!(HEADER_SIZE == 64 && ENTRY_SIZE == 64);
const _: () = assert!(std::mem::align_of::<Entry>() == 64);

/// A random starting generation for a new registry file (below 2^55, so
/// registrations never run out of room to count up).
fn random_generation() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let raw = if n == 8 {
        u64::from_le_bytes(buf)
    } else {
        // No entropy source: the clock still differs between two files.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    (raw & (GEN_MASK >> 1)).max(1)
}

/// `generation << 8 | kind`.
fn state(generation: u64, kind: u64) -> u64 {
    (generation & GEN_MASK) << STATE_BITS | kind
}

/// An open registry (its own open file description).
#[derive(Debug)]
pub(crate) struct Registry {
    /// This registry's own open file description (entry locks live on it).
    file: File,
    /// `REGISTRY_SIZE` bytes, MAP_SHARED, read-write.
    map: MmapMut,
    /// The registry file.
    path: PathBuf,
}

impl Registry {
    /// Opens the topic's registry, creating it if absent (subscribers do this).
    ///
    /// The topic directory must exist (and have been checked with
    /// [`fs::ensure_dir`]). The registry gets mode `access.ctl_mode()`.
    ///
    /// # Errors
    ///
    /// As [`Registry::open_existing`], and [`Error::Io`] if the file cannot
    /// be created (e.g. `ENOSPC`, or the directory is not writable).
    pub(crate) fn open_or_create(topic_dir: &Path, access: Access) -> Result<Self, Error> {
        let path = topic_dir.join(REGISTRY_FILE);
        // Two rounds cover "created by someone else between our open and our
        // rename"; more only if the file is also being removed meanwhile.
        for _ in 0..CREATE_ATTEMPTS {
            if let Some(registry) = Self::open_path(&path, access)? {
                return Ok(registry);
            }
            match Self::create(topic_dir, &path, access) {
                Err(Error::AlreadyExists(_)) => continue, // lost the race: open theirs
                other => return other,
            }
        }
        Err(Error::io(
            &path,
            io::Error::other(format!(
                "the registry appeared and disappeared {CREATE_ATTEMPTS} times while opening it: is something removing it?"
            )),
        ))
    }

    /// Opens the registry if it exists (publishers do this); `Ok(None)` if absent.
    ///
    /// # Errors
    ///
    /// - [`Error::Io`]: refused by [`fs::open_file`] (symlink, owner, mode),
    ///   or a system call failed.
    /// - [`Error::SizeMismatch`]: the file is not a registry's size.
    /// - [`Error::NotInitialized`]: magic still zero after 250 ms.
    /// - [`Error::Corrupt`]: wrong magic (not a registry) or entry count.
    /// - [`Error::VersionMismatch`]: another registry layout version.
    pub(crate) fn open_existing(topic_dir: &Path, access: Access) -> Result<Option<Self>, Error> {
        Self::open_path(&topic_dir.join(REGISTRY_FILE), access)
    }

    /// Every entry that is `REG_USED` and whose lock is held by someone:
    /// `(index, generation)`, by index.
    ///
    /// Entries held through this registry's own description are not seen
    /// (its locks never conflict with itself): probe from a `Registry` that
    /// no [`Registration`] uses. If probing a lock fails, the entry is
    /// reported (a false "alive" only delays a reap).
    pub(crate) fn live_entries(&self) -> Vec<(u32, u64)> {
        // One probe for the common case of no subscriber at all.
        if let Ok(false) = lock::is_locked(&self.file, 0, u64::from(REGISTRY_ENTRIES)) {
            return Vec::new();
        }
        (0..REGISTRY_ENTRIES)
            .filter_map(|index| {
                // SYNC: Acquire pairs with the Release of `register`'s CAS,
                // so the labels written before it are visible to tools.
                let s = self.entry(index).state.load(Ordering::Acquire);
                let held = lock::is_locked(&self.file, u64::from(index), 1).unwrap_or(true);
                (s & STATE_MASK == REG_USED && held).then_some((index, s >> STATE_BITS))
            })
            .collect()
    }

    /// Whether entry `index` is still held by the registration of
    /// `generation` (lock held by someone AND state == `generation << 8 |
    /// REG_USED`). A false "alive" in a race is allowed (it only delays a
    /// reap); a false "dead" is never given: a live registrant holds the lock
    /// and its state for its whole life. An index out of range is dead; a
    /// failed lock probe is alive.
    ///
    /// Like [`Registry::live_entries`], it cannot see registrations made
    /// through this registry's own description.
    pub(crate) fn is_alive(&self, index: u32, generation: u64) -> bool {
        if index >= REGISTRY_ENTRIES {
            return false;
        }
        // SYNC: Acquire pairs with the Release of `register`'s CAS (and of
        // the drop's FREE store); the value alone decides, nothing else is read.
        let s = self.entry(index).state.load(Ordering::Acquire);
        s == state(generation, REG_USED)
            && lock::is_locked(&self.file, u64::from(index), 1).unwrap_or(true)
    }

    /// The registry file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens and validates `path`; `Ok(None)` if it does not exist.
    /// Whether the registry's path still names the file this description
    /// has open (it was not removed, nor replaced).
    pub(crate) fn still_linked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::symlink_metadata(&self.path), self.file.metadata()) {
            (Ok(p), Ok(f)) => p.ino() == f.ino() && p.dev() == f.dev(),
            _ => false,
        }
    }

    fn open_path(path: &Path, access: Access) -> Result<Option<Self>, Error> {
        let (file, stat) = match fs::open_file(path, true, access) {
            Ok(opened) => opened,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if stat.len != REGISTRY_SIZE as u64 {
            // Checked before mapping: touching pages past the end is SIGBUS.
            return Err(Error::SizeMismatch {
                path: path.to_path_buf(),
                expected: REGISTRY_SIZE as u64,
                found: stat.len,
            });
        }
        let registry = Self::map(file, path)?;
        registry.validate()?;
        Ok(Some(registry))
    }

    /// Creates, initializes and publishes a new registry at `path`.
    fn create(topic_dir: &Path, path: &Path, access: Access) -> Result<Self, Error> {
        let tmp = temp_path(topic_dir);
        let file = fs::create_file(&tmp, access.ctl_mode(), REGISTRY_SIZE as u64)?;
        let result = Self::map(file, &tmp).and_then(|mut registry| {
            // Every entry starts FREE at a random generation: pre-joined
            // slots name (index, generation), and a registry removed with
            // its last subscriber and made anew must not hand out a pair a
            // ring still remembers from the old file.
            let base = random_generation();
            for index in 0..REGISTRY_ENTRIES {
                // Relaxed: published by the Release store of magic below.
                registry
                    .entry(index)
                    .state
                    .store(state(base, REG_FREE), Ordering::Relaxed);
            }
            let h = registry.header();
            // Relaxed: published by the Release store of magic below.
            h.version.store(REGISTRY_VERSION, Ordering::Relaxed);
            h.entries.store(REGISTRY_ENTRIES, Ordering::Relaxed);
            // SYNC: Release pairs with the Acquire load of magic in
            // `validate`: whoever sees magic sees the version and count.
            h.magic.store(REGISTRY_MAGIC, Ordering::Release);
            fs::rename_noreplace(&tmp, path)?;
            registry.path = path.to_path_buf();
            Ok(registry)
        });
        if result.is_err() {
            // Ours alone (created O_EXCL under a unique name).
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Maps an open registry file (`REGISTRY_SIZE` bytes checked or created).
    fn map(file: File, path: &Path) -> Result<Self, Error> {
        // SAFETY: a MAP_SHARED mapping of a file other processes may change
        // at any time; this module touches it only through atomics (Header,
        // Entry), for which every bit pattern is valid. The file is at least
        // REGISTRY_SIZE bytes (checked or created so); a process with write
        // access that truncates it can make this process fault (module docs).
        let map = unsafe { MmapOptions::new().len(REGISTRY_SIZE).map_mut(&file) }
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            map,
            path: path.to_path_buf(),
        })
    }

    /// Waits up to [`INIT_WAIT`] for magic, then checks magic, version, count.
    fn validate(&self) -> Result<(), Error> {
        let h = self.header();
        let deadline = Instant::now() + INIT_WAIT;
        let magic = loop {
            // SYNC: Acquire pairs with the Release store of magic in `create`.
            let magic = h.magic.load(Ordering::Acquire);
            if magic != 0 {
                break magic;
            }
            if Instant::now() >= deadline {
                return Err(Error::NotInitialized(self.path.clone()));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if magic != REGISTRY_MAGIC {
            return Err(Error::corrupt(
                &self.path,
                format!("wrong magic {magic:#018x}: not a shmbus subscriber registry"),
            ));
        }
        // Relaxed: ordered after the Acquire load of magic.
        let version = h.version.load(Ordering::Relaxed);
        if version != REGISTRY_VERSION {
            return Err(Error::VersionMismatch {
                path: self.path.clone(),
                found: version,
                expected: REGISTRY_VERSION,
            });
        }
        // Relaxed: ordered after the Acquire load of magic.
        let entries = h.entries.load(Ordering::Relaxed);
        if entries != REGISTRY_ENTRIES {
            return Err(Error::corrupt(
                &self.path,
                format!("entry count {entries}, expected {REGISTRY_ENTRIES}"),
            ));
        }
        Ok(())
    }

    /// The file header.
    fn header(&self) -> &Header {
        // SAFETY: the mapping is REGISTRY_SIZE >= 64 bytes and page-aligned
        // (so 64-aligned), lives as long as `self`, and holds only atomics
        // (see `map`).
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Entry `index` (`index < REGISTRY_ENTRIES`, else panics).
    fn entry(&self, index: u32) -> &Entry {
        assert!(
            index < REGISTRY_ENTRIES,
            "registry index {index} out of range"
        );
        let offset = HEADER_SIZE + index as usize * ENTRY_SIZE;
        // SAFETY: offset + ENTRY_SIZE <= REGISTRY_SIZE (index checked above),
        // the offset is a multiple of 64 in a page-aligned mapping that lives
        // as long as `self` and holds only atomics (see `map`).
        unsafe { &*self.map.as_ptr().add(offset).cast::<Entry>() }
    }
}

/// A unique hidden temporary name in `topic_dir`: `.subscribers.reg.<pid>.<n>.tmp`.
fn temp_path(topic_dir: &Path) -> PathBuf {
    // Relaxed: only uniqueness of the counter value matters.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    topic_dir.join(format!(".{REGISTRY_FILE}.{}.{n}.tmp", std::process::id()))
}

/// A subscriber's entry: held for its life; dropping it frees the entry
/// (state FREE, then unlock) — only in the process that registered (the pid
/// recorded at registration is compared with `std::process::id()`; after a
/// fork the child's copy does nothing, and the entry stays locked until
/// every process sharing the description has closed it).
#[derive(Debug)]
pub struct Registration {
    /// Its own open file description: the entry's lock lives on it.
    registry: Registry,
    /// The entry (and lock byte) held.
    index: u32,
    /// The generation written by this registration.
    generation: u64,
    /// `std::process::id()` of the registering process.
    pid: u32,
}

impl Registration {
    /// Takes a free entry: for each index, `try_lock(byte index)`; on success
    /// CAS the entry's state (FREE, or a stale USED of a dead owner) to
    /// `(gen+1) << 8 | REG_USED`, and store the labels `pid` and `start_time`
    /// (for tools only).
    ///
    /// `registry` must be this registration's own (not shared with another
    /// owner): the lock lives on its description.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a lock cannot be probed (e.g. `ENOLCK`), or if all
    /// 256 entries are held by live subscribers (an `io::Error` whose message
    /// names the limit).
    pub(crate) fn register(registry: Registry, pid: u64, start_time: u64) -> Result<Self, Error> {
        for index in 0..REGISTRY_ENTRIES {
            let byte = u64::from(index);
            if !lock::try_lock(&registry.file, byte).map_err(|e| Error::io(&registry.path, e))? {
                continue;
            }
            // Holding the lock, this entry is ours: any USED state in it is a
            // dead owner's (its lock was released when it died).
            let entry = registry.entry(index);
            // Relaxed: the labels are published by the Release CAS below.
            entry.pid.store(pid, Ordering::Relaxed);
            entry.start_time.store(start_time, Ordering::Relaxed);
            // Relaxed: only we write the entry while we hold its lock; the
            // CAS below re-checks the value.
            let old = entry.state.load(Ordering::Relaxed);
            let generation = ((old >> STATE_BITS) + 1) & GEN_MASK;
            let generation = generation.max(1); // 0 means "never registered"
                                                // SYNC: Release pairs with the Acquire loads of `live_entries`
                                                // and `is_alive` (publishers pre-joining this entry).
            match entry.state.compare_exchange(
                old,
                state(generation, REG_USED),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Self {
                        registry,
                        index,
                        generation,
                        pid: std::process::id(),
                    })
                }
                // Someone wrote the entry without its lock (a buggy or
                // hostile peer): leave it and try the next one.
                Err(_) => {
                    let _ = lock::unlock(&registry.file, byte);
                }
            }
        }
        Err(Error::io(
            &registry.path,
            io::Error::other(format!(
                "all {REGISTRY_ENTRIES} subscriber registry entries are held by live subscribers: a topic has at most {REGISTRY_ENTRIES} subscribers at once"
            )),
        ))
    }

    /// Registers a subscriber of the topic in `topic_dir` (creating the
    /// registry if needed): publishers created from now on join it from
    /// their first record. `group`: the bus is shared with the owner's group.
    ///
    /// The registry file is removed by the last registration to leave, under
    /// a lock on all its entries; a registration that lands in a file being
    /// removed notices (the path names another file) and registers again.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: the registry cannot be created or opened, or the topic
    /// has 256 live subscribers; [`Error::Corrupt`] and friends for a file
    /// that is not a registry.
    pub fn register_in(topic_dir: &Path, group: bool) -> Result<Self, Error> {
        let access = if group { Access::Group } else { Access::Owner };
        let me = crate::ProcessId::current().map_err(|e| Error::io("/proc/self/stat", e))?;
        let mut last = None;
        for _ in 0..CREATE_ATTEMPTS {
            let registry = Registry::open_or_create(topic_dir, access)?;
            let result = Self::register(registry, u64::from(me.pid), me.start_time);
            match result {
                Ok(reg) if reg.registry.still_linked() => return Ok(reg),
                // Registered in a file being removed: register again.
                Ok(reg) => drop(reg),
                Err(e) => {
                    last = Some(e);
                    // Every entry held: a full topic, or the last subscriber
                    // removing the file right now. Look again shortly.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::io(
                topic_dir.join(REGISTRY_FILE),
                io::Error::other("the registry was removed under every registration attempt"),
            )
        }))
    }

    /// The entry's index (its lock is byte `index` of the registry file).
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The entry's generation, new with every registration of the index.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked child's copy: the entry is the parent's.
            return;
        }
        let entry = self.registry.entry(self.index);
        // Relaxed: published by the Release CAS below.
        entry.pid.store(0, Ordering::Relaxed);
        entry.start_time.store(0, Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire loads of `live_entries` and
        // `is_alive`. A CAS, so an entry overwritten by someone else is left
        // as it is.
        let _ = entry.state.compare_exchange(
            state(self.generation, REG_USED),
            state(self.generation, REG_FREE),
            Ordering::Release,
            Ordering::Relaxed,
        );
        // The lock is released last: nobody can claim the entry before it
        // is FREE. (Closing the description would release it too.)
        let _ = lock::unlock(&self.registry.file, u64::from(self.index));
        // The last one out removes the file: holding every entry's lock, no
        // one is registered and no one can register in it. A subscriber that
        // opened it meanwhile finds every entry taken or, once registered,
        // the path naming another file, and registers again.
        let all = u64::from(REGISTRY_ENTRIES);
        // The range lock goes with the description, closed right after.
        if matches!(lock::try_lock_range(&self.registry.file, 0, all), Ok(true))
            && self.registry.still_linked()
        {
            let _ = std::fs::remove_file(&self.registry.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::lock::test_support::{child_role, ready_and_wait, spawn_child, TestDir};
    use std::{collections::HashSet, sync::Barrier};

    fn open(dir: &Path) -> Registry {
        Registry::open_or_create(dir, Access::Owner).unwrap()
    }

    fn register(dir: &Path) -> Registration {
        Registration::register(open(dir), u64::from(std::process::id()), 7).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn create_then_open_existing() {
        let t = TestDir::new("reg");
        assert!(Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .is_none());
        let r = open(t.path());
        assert_eq!(r.path(), t.path().join(REGISTRY_FILE));
        assert_eq!(files(t.path()), [REGISTRY_FILE]);
        let md = std::fs::metadata(r.path()).unwrap();
        assert_eq!(md.len(), REGISTRY_SIZE as u64);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o600
        );
        let p = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        assert!(p.live_entries().is_empty());
        let _again = open(t.path());
        assert_eq!(files(t.path()), [REGISTRY_FILE]);
    }

    #[test]
    fn group_mode_file_is_0660() {
        let t = TestDir::new("reg");
        let r = Registry::open_or_create(t.path(), Access::Group).unwrap();
        let md = std::fs::metadata(r.path()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o660
        );
        // Owner mode refuses the group-writable file.
        assert!(Registry::open_existing(t.path(), Access::Owner).is_err());
    }

    #[test]
    fn registrations_are_distinct_and_live() {
        let t = TestDir::new("reg");
        let (a, b) = (register(t.path()), register(t.path()));
        assert_ne!(a.index(), b.index());
        let probe = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        let live = probe.live_entries();
        assert_eq!(
            live,
            [(a.index(), a.generation()), (b.index(), b.generation())]
        );
        assert!(probe.is_alive(a.index(), a.generation()));
        assert!(probe.is_alive(b.index(), b.generation()));
        // Labels.
        let e = probe.entry(a.index());
        assert_eq!(e.pid.load(Ordering::Relaxed), u64::from(std::process::id()));
        assert_eq!(e.start_time.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn is_alive_false_for_another_generation_or_index() {
        let t = TestDir::new("reg");
        let a = register(t.path());
        let probe = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        assert!(probe.is_alive(a.index(), a.generation()));
        assert!(!probe.is_alive(a.index(), a.generation() + 1));
        assert!(!probe.is_alive(a.index(), a.generation() - 1));
        assert!(!probe.is_alive(a.index() + 1, a.generation()));
        assert!(!probe.is_alive(REGISTRY_ENTRIES, a.generation()));
    }

    #[test]
    fn drop_frees_and_reuse_gets_a_higher_generation() {
        let t = TestDir::new("reg");
        let probe = Registry::open_existing(t.path(), Access::Owner)
            .ok()
            .flatten();
        assert!(probe.is_none());
        let a = register(t.path());
        let _keeps_the_file = register(t.path());
        let (index, generation) = (a.index(), a.generation());
        drop(a);
        let probe = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        assert!(!probe.is_alive(index, generation));
        assert_eq!(probe.live_entries().len(), 1, "only the other one");
        assert_eq!(
            probe.entry(index).state.load(Ordering::Relaxed),
            state(generation, REG_FREE)
        );
        let b = register(t.path());
        assert_eq!(b.index(), index);
        assert!(b.generation() > generation);
        assert!(probe.is_alive(b.index(), b.generation()));
    }

    #[test]
    fn last_registration_out_removes_the_file_and_late_ones_register_again() {
        let t = TestDir::new("reg");
        let a = Registration::register_in(t.path(), false).unwrap();
        let b = Registration::register_in(t.path(), false).unwrap();
        let first = (a.index(), a.generation());
        drop(a);
        assert!(t.path().join(REGISTRY_FILE).exists(), "b still registered");
        // A subscriber that opened the file before the last one leaves...
        let late = open(t.path());
        drop(b);
        assert!(
            !t.path().join(REGISTRY_FILE).exists(),
            "last one out removes it"
        );
        // ...registers in a removed file: it notices and registers again in
        // the file publishers will read.
        let reg = Registration::register(late, 1, 1).unwrap();
        assert!(!reg.registry.still_linked());
        drop(reg);
        let c = Registration::register_in(t.path(), false).unwrap();
        assert!(c.registry.still_linked());
        // A new file never hands out a pair an old one did (rings may
        // still name it in a pre-joined slot).
        assert_eq!(c.index(), first.0);
        assert_ne!(c.generation(), first.1);
        let publisher = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        assert_eq!(publisher.live_entries(), vec![(c.index(), c.generation())]);
    }

    #[test]
    fn used_entry_without_lock_is_dead_and_reused() {
        // A registrant that died leaves USED behind; the lock decides.
        let t = TestDir::new("reg");
        let probe = open(t.path());
        probe
            .entry(0)
            .state
            .store(state(41, REG_USED), Ordering::Relaxed);
        assert!(!probe.is_alive(0, 41));
        assert!(probe.live_entries().is_empty());
        let a = register(t.path());
        assert_eq!((a.index(), a.generation()), (0, 42));
    }

    const CHILD_TEST: &str = "shm::registry::tests::child_registers";

    /// Helper: in a re-run child, registers in the topic dir and waits to be killed.
    #[test]
    fn child_registers() {
        let Some(dir) = child_role("registrant") else {
            return;
        };
        let r = register(&dir);
        std::mem::forget(r); // never dropped: it is killed
        ready_and_wait();
    }

    #[test]
    fn killed_registrant_is_dead_and_its_entry_reused() {
        let t = TestDir::new("reg");
        let mut child = spawn_child(CHILD_TEST, "registrant", t.path());
        let probe = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        let live = probe.live_entries();
        assert_eq!(live.len(), 1, "{live:?}");
        let (index, generation) = live[0];
        assert!(probe.is_alive(index, generation));
        // While it lives, a new registration takes another entry.
        let other = register(t.path());
        assert_ne!(other.index(), index);
        drop(other);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(!probe.is_alive(index, generation));
        assert!(probe.live_entries().is_empty());
        let again = register(t.path());
        assert_eq!(again.index(), index);
        assert!(again.generation() > generation);
    }

    #[test]
    fn forked_copy_does_not_free() {
        // Simulates a fork's copy: a Registration whose recorded pid is not ours.
        let t = TestDir::new("reg");
        let mut a = register(t.path());
        let (index, generation) = (a.index(), a.generation());
        a.pid = a.pid.wrapping_add(1);
        // Keep the description open (as the parent would) past the copy's drop.
        let file = a.registry.file.try_clone().unwrap();
        drop(a);
        let probe = Registry::open_existing(t.path(), Access::Owner)
            .unwrap()
            .unwrap();
        assert!(probe.is_alive(index, generation));
        drop(file);
        assert!(!probe.is_alive(index, generation));
    }

    #[test]
    fn full_registry_is_a_clear_error() {
        let t = TestDir::new("reg");
        let all: Vec<_> = (0..REGISTRY_ENTRIES).map(|_| register(t.path())).collect();
        let indices: HashSet<_> = all.iter().map(Registration::index).collect();
        assert_eq!(indices.len(), REGISTRY_ENTRIES as usize);
        let e = Registration::register(open(t.path()), 1, 1).unwrap_err();
        assert!(e.to_string().contains("256"), "{e}");
        assert!(matches!(e, Error::Io { .. }));
        drop(all);
        register(t.path());
    }

    #[test]
    fn not_a_registry_is_refused() {
        let t = TestDir::new("reg");
        let path = t.path().join(REGISTRY_FILE);
        let write = |bytes: &[u8]| {
            let _ = std::fs::remove_file(&path);
            let f = fs::create_file(&path, 0o600, 0).unwrap();
            std::io::Write::write_all(&mut &f, bytes).unwrap();
        };
        let open = || Registry::open_existing(t.path(), Access::Owner);
        let header = |magic: u64, version: u32, entries: u32| {
            let mut b = vec![0u8; REGISTRY_SIZE];
            b[..8].copy_from_slice(&magic.to_le_bytes());
            b[8..12].copy_from_slice(&version.to_le_bytes());
            b[12..16].copy_from_slice(&entries.to_le_bytes());
            b
        };

        write(b"hello");
        assert!(matches!(open(), Err(Error::SizeMismatch { found: 5, .. })));
        assert!(matches!(
            Registry::open_or_create(t.path(), Access::Owner),
            Err(Error::SizeMismatch { .. })
        ));
        write(&header(u64::from_le_bytes(*b"shmbus\0\x01"), 1, 256));
        assert!(matches!(open(), Err(Error::Corrupt { what, .. }) if what.contains("magic")));
        write(&header(REGISTRY_MAGIC, 2, 256));
        assert!(matches!(
            open(),
            Err(Error::VersionMismatch {
                found: 2,
                expected: 1,
                ..
            })
        ));
        write(&header(REGISTRY_MAGIC, 1, 64));
        assert!(matches!(open(), Err(Error::Corrupt { what, .. }) if what.contains("count")));
        write(&header(0, 1, 256));
        let start = Instant::now();
        assert!(matches!(open(), Err(Error::NotInitialized(_))));
        assert!(start.elapsed() >= INIT_WAIT);
        write(&header(REGISTRY_MAGIC, 1, 256));
        assert!(open().unwrap().is_some());
    }

    #[test]
    fn symlinked_registry_is_refused() {
        let t = TestDir::new("reg");
        let real = TestDir::new("reg");
        drop(open(real.path()));
        std::os::unix::fs::symlink(
            real.path().join(REGISTRY_FILE),
            t.path().join(REGISTRY_FILE),
        )
        .unwrap();
        assert!(matches!(
            Registry::open_or_create(t.path(), Access::Owner),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn concurrent_creation_yields_one_file_and_distinct_entries() {
        const THREADS: usize = 8;
        for _round in 0..5 {
            let t = TestDir::new("reg");
            let barrier = Barrier::new(THREADS);
            let regs: Vec<Registration> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            register(t.path())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ids: HashSet<_> = regs.iter().map(|r| (r.index(), r.generation())).collect();
            let indices: HashSet<_> = regs.iter().map(Registration::index).collect();
            assert_eq!((ids.len(), indices.len()), (THREADS, THREADS));
            assert_eq!(files(t.path()), [REGISTRY_FILE], "one file, no temporaries");
            let probe = Registry::open_existing(t.path(), Access::Owner)
                .unwrap()
                .unwrap();
            assert_eq!(probe.live_entries().len(), THREADS);
        }
    }
}
