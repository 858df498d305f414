//! Pieces for one thread that waits on behalf of many readers (an async
//! reactor): a ring's waiter registration that outlives a borrow of its
//! reader ([`WaitRegistration`]), a futex word of the waiting thread's own
//! ([`Doorbell`]), and one sleep on many of both ([`wait_registered`]).
//!
//! The registration is the sleeper handshake of [`crate::shm::futex`],
//! split across threads: whoever registers calls `prepare` (counted as a
//! waiter, the futex value to sleep on noted) and must then re-check for
//! data ([`WaitRegistration::is_ready`]); the waiting thread sleeps on the
//! noted value, so a publish between the two makes its sleep return at
//! once; `finish` runs exactly once, when the registration is
//! [unregistered](WaitRegistration::unregister) or dropped, by whichever
//! thread gets there first. Nothing of the handshake is re-implemented
//! here.
//!
//! Synchronization pairs of this file:
//! - SYNC: reg-once: the `armed` swap of `unregister` (Relaxed RMW: one
//!   caller alone sees 1, which is all it decides; `finish` orders itself).
//! - SYNC: doorbell: `Doorbell::ring`'s Release increment pairs with the
//!   Acquire load in `Doorbell::value`, so a waiting thread that sees the
//!   new value also sees what the ringer did before (queued commands).

use std::{sync::Arc, time::Duration};

use crate::{
    ring::View,
    shm::{
        futex::{self, Sleeper},
        segment::Mapping,
    },
    sync::{AtomicU32, Ordering},
    ReadyProbe, RingReader,
};

/// Most registrations one [`wait_registered`] call sleeps on: the kernel's
/// `futex_waitv` limit, less the doorbell.
pub const MAX_REGISTERED: usize = futex::FUTEX_WAITV_MAX - 1;

/// A ring reader's registration as a waiter, held by another thread than
/// the reader's (e.g. an async reactor): while it is registered, the ring's
/// publisher wakes the ring's futex on every publish (it sees a waiter).
///
/// Made by [`WaitRegistration::register`], which runs the first half of the
/// sleeper handshake; the caller must then check [`Self::is_ready`] before
/// relying on a wake-up. Unregisters (exactly once) on
/// [`Self::unregister`] or drop.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{RingConfig, RingReader, RingWriter, StartAt, WaitRegistration};
/// let dir = std::env::temp_dir().join(format!("shmbus-doc-reg-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("p.ring");
/// let mut writer = RingWriter::create(&path, &RingConfig::default()).unwrap();
/// let reader = RingReader::open(&path, StartAt::Latest).unwrap();
///
/// let registration = WaitRegistration::register(&reader);
/// assert!(!registration.is_ready()); // re-check after registering
/// writer.try_write(b"news").unwrap(); // sees a waiter: wakes the futex
/// assert!(registration.is_ready());
/// assert!(registration.unregister()); // the waiter count goes back
/// assert!(!registration.unregister()); // once only
/// # drop((registration, reader, writer)); std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct WaitRegistration {
    probe: ReadyProbe,
    /// The reader's slot, whose `sleeping` flag lets a reclaimer take the
    /// count back if this process dies registered.
    slot: Option<usize>,
    /// The futex value `prepare` returned: what a sleep waits on.
    seen: u32,
    /// The ring's wake-up handshake can be relied on (`Sleeper::reliable`):
    /// if not, a sleep on it lasts at most `futex::FALLBACK_SLICE`.
    reliable: bool,
    /// 1 while counted as a waiter (SYNC: reg-once).
    armed: AtomicU32,
}

impl WaitRegistration {
    /// Registers as a waiter on `reader`'s ring, watching the position the
    /// reader is at now. Check [`Self::is_ready`] afterwards: data that
    /// arrived just before the registration wakes nobody.
    pub fn register(reader: &RingReader) -> Self {
        let probe = reader.ready_probe();
        let slot = reader.slot().map(|(index, _)| index);
        let mut me = Self {
            probe,
            slot,
            seen: 0,
            reliable: false,
            armed: AtomicU32::new(1),
        };
        me.seen = futex::prepare(&me.sleeper());
        // After `prepare`: a heavy barrier it found denied counts.
        me.reliable = me.sleeper().reliable();
        me
    }

    fn map(&self) -> &Arc<Mapping> {
        self.probe.mapping()
    }

    fn sleeper(&self) -> Sleeper<'_> {
        let map = self.map();
        let mut sleeper = self.probe.handshake_sleeper();
        // Our own claim's index, inside the table; `get` all the same.
        sleeper.sleeping = self
            .slot
            .and_then(|i| map.slots().get(i))
            .map(|s| &s.sleeping);
        sleeper
    }

    /// Whether the reader would find news at the watched position (a
    /// message, a gap, the end of the ring). Cheap: a few loads.
    pub fn is_ready(&self) -> bool {
        self.probe.ready()
    }

    /// Whether the ring's futex moved since the registration (a publish
    /// woke it): a sleep on this registration would return at once, so a
    /// waiting thread should hand the news on and register again rather
    /// than sleep on it.
    pub fn woken(&self) -> bool {
        // Relaxed: a hint, as any futex value read before a sleep (the
        // kernel compares again); what was published is seen through
        // `is_ready`'s own loads by the reader that acts on it.
        self.map().producer().futex.load(Ordering::Relaxed) != self.seen
    }

    /// Whether the ring's publisher still holds its lock (a syscall: call
    /// it now and then, e.g. once per wait slice; a crashed publisher wakes
    /// nobody).
    pub fn publisher_alive(&self) -> bool {
        self.map().publisher_alive()
    }

    /// Stops counting as a waiter. True the first time (it was
    /// registered), false after.
    pub fn unregister(&self) -> bool {
        // SYNC: reg-once. Relaxed: the swap is one RMW, so exactly one
        // caller reads 1; `finish` carries the orderings it needs.
        if self.armed.swap(0, Ordering::Relaxed) == 1 {
            futex::finish(&self.sleeper());
            true
        } else {
            false
        }
    }

    /// True until [`Self::unregister`] (or drop).
    pub fn is_registered(&self) -> bool {
        // Relaxed: a snapshot for the caller's bookkeeping (SYNC: reg-once).
        self.armed.load(Ordering::Relaxed) == 1
    }
}

impl Drop for WaitRegistration {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// A futex word of a waiting thread's own, so other threads can wake it
/// out of [`wait_registered`] (to add or drop registrations).
///
/// # Examples
///
/// ```
/// use shmbus_bus::{wait_registered, Doorbell};
/// let bell = Doorbell::new();
/// let seen = bell.value();
/// bell.ring();
/// // Rung since `seen`: returns at once instead of sleeping a minute.
/// wait_registered(&[], &bell, seen, Some(std::time::Duration::from_secs(60)));
/// assert_ne!(bell.value(), seen);
/// ```
#[derive(Debug, Default)]
pub struct Doorbell {
    word: AtomicU32,
}

impl Doorbell {
    /// A new doorbell.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value: read it before looking at what ringers queue,
    /// then pass it to [`wait_registered`].
    pub fn value(&self) -> u32 {
        // SYNC: doorbell (Acquire): pairs with `ring`'s Release increment.
        self.word.load(Ordering::Acquire)
    }

    /// Changes the value and wakes a thread sleeping on it.
    pub fn ring(&self) {
        // SYNC: doorbell (Release): what the ringer did before is seen by
        // a waiter that reads the new value.
        self.word.fetch_add(1, Ordering::Release);
        futex::futex_wake(&self.word);
    }
}

/// Sleeps until a publisher wakes one of `registrations`' rings, `bell` is
/// rung (or its value is not `bell_seen` any more), or `timeout` passes; a
/// registration whose futex moved since it registered returns at once.
/// Returns nothing: callers look at what is ready.
///
/// Sleeps on at most [`MAX_REGISTERED`] registrations (the rest are not
/// watched: callers shard). Unregistered entries are skipped. If a ring's
/// wake-up handshake cannot be relied on (no handshake in its header, or
/// `membarrier` denied), the sleep lasts at most the handshake's fallback
/// slice, so a wake-up it misses costs a slice, never a hang.
pub fn wait_registered(
    registrations: &[&WaitRegistration],
    bell: &Doorbell,
    bell_seen: u32,
    timeout: Option<Duration>,
) {
    let unreliable = registrations
        .iter()
        .any(|r| r.is_registered() && !r.reliable);
    let timeout = if unreliable {
        Some(timeout.map_or(futex::FALLBACK_SLICE, |t| t.min(futex::FALLBACK_SLICE)))
    } else {
        timeout
    };
    let mut words: Vec<(&AtomicU32, u32)> =
        Vec::with_capacity(registrations.len().min(MAX_REGISTERED) + 1);
    words.push((&bell.word, bell_seen));
    words.extend(
        registrations
            .iter()
            .filter(|r| r.is_registered())
            .take(MAX_REGISTERED)
            .map(|r| (&r.map().producer().futex, r.seen)),
    );
    // How it ended does not matter: callers look at what is ready.
    let _ = futex::futex_wait_any(&words, timeout);
}
