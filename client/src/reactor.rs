//! The async receive's reactor: one thread per [`MAX_REGISTERED`] rings
//! waits, for every async subscriber of the process, on the rings' futex
//! words and a doorbell of its own, and wakes the tasks' [`Waker`]s.
//!
//! A waiting [`Subscriber::recv_async`](crate::Subscriber::recv_async)
//! registers each ring it reads ([`WaitRegistration`]: counted as a waiter,
//! futex value noted), re-checks for data, and parks its waker here. The
//! thread of the shard holding the registration sleeps in one
//! `futex_waitv` on its doorbell and all its rings; a publish (which sees a
//! waiter and wakes the ring's futex) or a moved futex value returns the
//! sleep, and every registration whose ring has news fires: it is
//! unregistered and its task woken. Registrations fire once; the task
//! registers again if it waits again.
//!
//! Cancel safety: a wait is a [`Wait`] value inside the receive future.
//! Dropping it (the future dropped in `select!`) unregisters every ring at
//! once, on the dropping thread (no waiter count stays raised), and rings
//! the doorbell so the reactor forgets the entries; no thread waits on
//! behalf of a dropped future, and nothing was consumed.
//!
//! What a futex cannot announce is found by the reactor while it has
//! entries: a topic directory that changed (a new publisher: one `stat` per
//! directory per wait slice, [`shmbus_bus::MAX_SLEEP`], however many
//! subscribers watch it) and, every [`LIVENESS_SLICES`] slices (about a
//! second), a publisher that died (a lock probe per ring): the entries
//! concerned fire, and the subscriber rescans or notices the end. Idle, the
//! reactor costs one wake-up per slice, not one per subscriber.
//!
//! Why `futex_waitv` and not io_uring futex operations: both work here; a
//! thread in `futex_waitv` needs no new dependency and no ring setup, wakes
//! as fast (`MACHINE-FACTS.md` §5), and keeps each registration the plain
//! sleeper handshake. Its cost is the doorbell: adding a registration
//! wakes the reactor to rebuild its wait list (io_uring would take a new
//! futex wait without waking anyone).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    task::Waker,
    time::{Instant, SystemTime},
};

use shmbus_bus::{
    wait_registered, Doorbell, RingReader, WaitRegistration, MAX_REGISTERED, MAX_SLEEP,
};

/// Every how many wait slices the reactor checks that the publishers of
/// its rings are alive (a lock probe, a syscall, per ring): about once a
/// second.
const LIVENESS_SLICES: u32 = 20;

/// An entry waits.
const ARMED: u8 = 0;
/// The reactor fired it (and unregistered it).
const FIRED: u8 = 1;
/// Its wait was dropped (and unregistered it).
const CANCELLED: u8 = 2;

/// What an entry watches besides (or instead of) a ring's futex.
#[derive(Debug)]
struct DirWatch {
    dir: PathBuf,
    /// The directory's mtime at the subscriber's last scan.
    modified: Option<SystemTime>,
}

/// One registration parked with the reactor.
#[derive(Debug)]
struct Entry {
    /// The ring's waiter registration; `None` for a directory watch alone.
    ring: Option<WaitRegistration>,
    /// The topic directory to watch for new publishers (one entry per wait).
    dir: Option<DirWatch>,
    waker: Waker,
    /// ARMED, FIRED or CANCELLED: whoever moves it from ARMED unregisters
    /// and, for a ring, gives back the shard's capacity.
    state: AtomicU8,
}

impl Entry {
    /// Moves ARMED to `to`; true if this call did it.
    fn settle(&self, to: u8) -> bool {
        // Relaxed: the CAS alone decides who settles (one winner); the
        // waker and the registration carry their own synchronization.
        self.state
            .compare_exchange(ARMED, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn armed(&self) -> bool {
        // Relaxed: a snapshot; `settle` decides.
        self.state.load(Ordering::Relaxed) == ARMED
    }
}

/// One reactor thread and what it watches.
#[derive(Debug)]
struct Shard {
    bell: Doorbell,
    state: Mutex<ShardState>,
}

#[derive(Debug, Default)]
struct ShardState {
    /// Entries handed over, not yet in the thread's list.
    added: Vec<Arc<Entry>>,
    /// Ring entries armed in this shard (pending or listed): at most
    /// [`MAX_REGISTERED`].
    rings: usize,
}

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, ShardState> {
        // A panic while holding the lock leaves plain counters and a list:
        // still consistent enough to go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back one ring's capacity.
    fn release_ring(&self) {
        let mut state = self.lock();
        state.rings = state.rings.saturating_sub(1);
    }

    /// The thread: sleep on the doorbell and every armed ring, fire what
    /// is ready, once per slice look at directories and publishers.
    fn run(self: Arc<Self>) {
        let mut list: Vec<Arc<Entry>> = Vec::new();
        let mut next_slice = Instant::now() + MAX_SLEEP;
        let mut slices = 0u32;
        loop {
            let seen = self.bell.value();
            list.append(&mut self.lock().added);
            let slice = Instant::now() >= next_slice;
            if slice {
                next_slice = Instant::now() + MAX_SLEEP;
                slices = slices.wrapping_add(1);
            }
            let probe_liveness = slice && slices % LIVENESS_SLICES == 0;
            let mut dirs: HashMap<PathBuf, Option<SystemTime>> = HashMap::new();
            list.retain(|e| {
                if !e.armed() {
                    return false;
                }
                let news = match (&e.ring, &e.dir) {
                    // News, or a futex that moved (a sleep on it would
                    // return at once): the task looks and registers anew.
                    (Some(ring), _) if ring.is_ready() || ring.woken() => true,
                    (Some(ring), _) if probe_liveness => !ring.publisher_alive(),
                    (None, Some(watch)) if slice => {
                        let now = dirs
                            .entry(watch.dir.clone())
                            .or_insert_with(|| modified(&watch.dir));
                        dir_changed(watch.modified, *now)
                    }
                    _ => false,
                };
                if news {
                    self.fire(e);
                }
                !news
            });
            let rings: Vec<&WaitRegistration> =
                list.iter().filter_map(|e| e.ring.as_ref()).collect();
            // Idle with nothing to watch: sleep until the doorbell.
            let timeout =
                (!list.is_empty()).then(|| next_slice.saturating_duration_since(Instant::now()));
            wait_registered(&rings, &self.bell, seen, timeout);
        }
    }

    fn fire(&self, e: &Entry) {
        if e.settle(FIRED) {
            if let Some(ring) = &e.ring {
                ring.unregister();
                self.release_ring();
            }
            e.waker.wake_by_ref();
        }
    }
}

/// The directory's mtime, if it can be read.
fn modified(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// Whether a directory last seen at `before` has changed (`now`): its time
/// moved, or it is so recent that a change in the same clock tick could
/// hide (the subscriber's own rule, `MTIME_GRANULARITY`).
fn dir_changed(before: Option<SystemTime>, now: Option<SystemTime>) -> bool {
    now != before
        || now.is_some_and(|m| {
            SystemTime::now()
                .duration_since(m)
                .map_or(true, |age| age < crate::subscriber::MTIME_GRANULARITY)
        })
}

/// Every shard of this process (threads are started with their shard).
static SHARDS: OnceLock<Mutex<Vec<Arc<Shard>>>> = OnceLock::new();

/// A shard with room for `rings` more rings (or a new one), with the room
/// taken.
fn shard_for(rings: usize) -> std::io::Result<Arc<Shard>> {
    let shards = SHARDS.get_or_init(|| Mutex::new(Vec::new()));
    let mut shards = shards.lock().unwrap_or_else(PoisonError::into_inner);
    for shard in shards.iter() {
        let mut state = shard.lock();
        if state.rings + rings <= MAX_REGISTERED {
            state.rings += rings;
            return Ok(shard.clone());
        }
    }
    let shard = Arc::new(Shard {
        bell: Doorbell::new(),
        state: Mutex::new(ShardState {
            added: Vec::new(),
            rings,
        }),
    });
    let thread = shard.clone();
    std::thread::Builder::new()
        .name(format!("shmbus-reactor-{}", shards.len()))
        .spawn(move || thread.run())?;
    shards.push(shard.clone());
    Ok(shard)
}

/// Reactor threads running in this process.
///
/// # Examples
///
/// ```
/// // None until an async receive had to wait.
/// let _ = shmbus::reactor_threads();
/// ```
pub fn reactor_threads() -> usize {
    SHARDS.get().map_or(0, |s| {
        s.lock().unwrap_or_else(PoisonError::into_inner).len()
    })
}

/// One wait of one async receive: its rings and directory, registered
/// with the reactor. Dropping it unregisters everything not yet fired.
#[derive(Debug)]
pub(crate) struct Wait {
    entries: Vec<(Arc<Shard>, Arc<Entry>)>,
}

impl Wait {
    /// Registers `readers` (each as a waiter on its ring) and the topic
    /// directory `dir` (last scanned at `modified`) to wake `waker`.
    ///
    /// # Errors
    ///
    /// [`Registered::Ready`] if a ring has news by the re-check after
    /// registering (everything is unregistered again: read now);
    /// [`Registered::NoReactor`] if no reactor thread could be started.
    pub(crate) fn register<'r>(
        readers: impl ExactSizeIterator<Item = &'r RingReader>,
        dir: PathBuf,
        modified: Option<SystemTime>,
        waker: &Waker,
    ) -> Result<Self, Registered> {
        // Every entry goes into `wait` as soon as it exists: an early
        // return drops `wait`, which unregisters them all.
        let mut wait = Self {
            entries: Vec::with_capacity(readers.len() + 1),
        };
        let mut ready = false;
        let mut shard: Option<Arc<Shard>> = None;
        let mut room = 0usize;
        let mut left = readers.len();
        for reader in readers {
            let s = match shard.take() {
                Some(s) if room > 0 => s,
                full => {
                    // Rings go to shards in runs, as many as fit in one.
                    if let Some(full) = full {
                        full.bell.ring();
                    }
                    let want = left.clamp(1, MAX_REGISTERED);
                    room = want;
                    shard_for(want).map_err(Registered::NoReactor)?
                }
            };
            room -= 1;
            left -= 1;
            let registration = WaitRegistration::register(reader);
            // The handshake's re-check: news that came before the
            // registration counted wakes nobody.
            ready |= registration.is_ready();
            let entry = Arc::new(Entry {
                ring: Some(registration),
                dir: None,
                waker: waker.clone(),
                state: AtomicU8::new(ARMED),
            });
            s.lock().added.push(entry.clone());
            wait.entries.push((s.clone(), entry));
            shard = Some(s);
        }
        // The directory watch rides with the last shard (any shard will do:
        // it takes no futex slot).
        let s = match shard {
            Some(s) => s,
            None => shard_for(0).map_err(Registered::NoReactor)?,
        };
        let entry = Arc::new(Entry {
            ring: None,
            dir: Some(DirWatch { dir, modified }),
            waker: waker.clone(),
            state: AtomicU8::new(ARMED),
        });
        s.lock().added.push(entry.clone());
        wait.entries.push((s.clone(), entry));
        s.bell.ring();
        if ready {
            // Dropping `wait` unregisters everything again.
            return Err(Registered::Ready);
        }
        Ok(wait)
    }

    /// Whether the reactor fired any entry (a ring with news, a changed
    /// directory, a dead publisher).
    pub(crate) fn fired(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, e)| e.state.load(Ordering::Relaxed) == FIRED)
    }
}

/// Why [`Wait::register`] did not leave a wait registered.
#[derive(Debug)]
pub(crate) enum Registered {
    /// A ring had news by the re-check: read now.
    Ready,
    /// No reactor thread could be started.
    NoReactor(std::io::Error),
}

impl Drop for Wait {
    fn drop(&mut self) {
        let mut rung: Vec<*const Shard> = Vec::new();
        for (shard, entry) in &self.entries {
            if !entry.settle(CANCELLED) {
                continue;
            }
            // A directory watch holds no futex slot: the reactor drops it
            // at its next pass, no need to wake it.
            let Some(ring) = &entry.ring else {
                continue;
            };
            ring.unregister();
            shard.release_ring();
            let key = Arc::as_ptr(shard);
            if !rung.contains(&key) {
                rung.push(key);
                // The reactor takes the ring out of its sleep at once.
                shard.bell.ring();
            }
        }
    }
}
