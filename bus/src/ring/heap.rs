//! A ring whose shared state lives on the heap: for unit tests and loom
//! models (which cannot see processes, files or mmap).
//!
//! Liveness locks are modelled faithfully: exclusive per owner (each
//! [`HeapView`] is one owner, like one open file description), released
//! when the owner "dies" ([`HeapSegment::crash`]). The clock is logical.
//!
//! **The ring's bytes** are one array of atomic 64-bit words, as in the
//! production mapping (`View for Arc<Mapping>`): stamps, meta words and
//! payload share them, so a reader that loads a stamp where a newer lap left
//! payload bytes really finds those bytes. Payload is written with Relaxed
//! word stores (production: a plain `copy_nonoverlapping` into the
//! reservation) and [`View::read_payload`] copies with Relaxed word loads,
//! exactly as production does (observers and Overwrite readers validate the
//! copy afterwards). Production Block readers read payload *in place*
//! through a plain `&[u8]`; under loom [`HeapView::read_in_place`] models
//! that: the same Relaxed loads (so a stale value fails a value check) plus a
//! loom `UnsafeCell` per word used only as a race detector, which
//! `write_payload` touches mutably, so an in-place read not ordered after the
//! write of those bytes, or an overwrite not ordered after an in-place read,
//! fails the model even when the values happen to agree.
//!
//! **Crashes.** [`HeapView::with_crash_after`] gives a view that "dies" when
//! its owner makes its `n`-th call into the view: the call unwinds with
//! [`Crashed`] (the model catches it with [`catch_crash`] and then calls
//! [`HeapSegment::crash`]), so a model can stop an owner at every point
//! where it touches the view, keeping the shared writes it made before.

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::Arc,
    time::Duration,
};

use crate::sync::Ordering;
use crate::{
    layout::{Producer, Slot, Waiters},
    sync::{untracked, AtomicU32, AtomicU64},
};

use super::{Geometry, View};

/// Under loom the lock table is a loom mutex: taking a liveness lock
/// synchronizes with its last release (or the owner's death), as the
/// kernel's lock code does in practice. The protocol relies on that: with a
/// std mutex here (a lock that decides ownership but gives no ordering),
/// `loom_crashed_owner_after_its_claim` reports a data race.
#[cfg(loom)]
type Mutex<T> = loom::sync::Mutex<T>;
#[cfg(not(loom))]
type Mutex<T> = std::sync::Mutex<T>;

/// Heap-backed ring state shared by every handle of one test.
#[derive(Debug)]
pub(crate) struct HeapSegment {
    producer: Producer,
    waiters: Waiters,
    slots: Vec<Slot>,
    words: Vec<AtomicU64>,
    /// Race detector for in-place payload reads (see the module docs).
    #[cfg(loom)]
    cells: Vec<crate::sync::PayloadCell<()>>,
    geometry: Geometry,
    /// Lock byte -> owner.
    locks: Mutex<HashMap<u64, u64>>,
    /// Live registrations (index, generation).
    registrations: Mutex<HashSet<(u64, u64)>>,
    /// Owners handed out so far.
    owners: untracked::AtomicU64,
    /// The logical clock, nanoseconds.
    clock: untracked::AtomicU64,
    /// `futex_wake` calls so far (the wake models count them).
    wakes: untracked::AtomicU64,
    #[cfg(loom)]
    futex: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

impl HeapSegment {
    pub(crate) fn new(geometry: Geometry, slots: usize) -> Arc<Self> {
        let words = (geometry.capacity / 8) as usize;
        Arc::new(Self {
            producer: Producer::new_zeroed(),
            waiters: Waiters::new_zeroed(),
            slots: (0..slots).map(|_| Slot::new_free()).collect(),
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            cells: (0..words)
                .map(|_| crate::sync::PayloadCell::new(()))
                .collect(),
            geometry,
            locks: Mutex::new(HashMap::new()),
            registrations: Mutex::new(HashSet::new()),
            owners: untracked::AtomicU64::new(0),
            clock: untracked::AtomicU64::new(1),
            wakes: untracked::AtomicU64::new(0),
            #[cfg(loom)]
            futex: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        })
    }

    /// The owner `owner` died: the kernel drops every lock it held.
    pub(crate) fn crash(&self, owner: u64) {
        self.locks.lock().unwrap().retain(|_, o| *o != owner);
    }

    /// Registers a subscriber (index, generation) as alive, or not.
    pub(crate) fn set_registered(&self, index: u64, generation: u64, alive: bool) {
        let mut regs = self.registrations.lock().unwrap();
        if alive {
            regs.insert((index, generation));
        } else {
            regs.remove(&(index, generation));
        }
    }

    /// `futex_wake` calls made through any view of this segment.
    pub(crate) fn wakes(&self) -> u64 {
        self.wakes.load(untracked::Ordering::Relaxed)
    }

    /// Advances the logical clock.
    pub(crate) fn advance_clock(&self, by: Duration) {
        self.clock
            .fetch_add(by.as_nanos() as u64, untracked::Ordering::Relaxed);
    }
}

/// One handle's view of a [`HeapSegment`]: its own lock owner.
#[derive(Debug, Clone)]
pub(crate) struct HeapView {
    pub(crate) seg: Arc<HeapSegment>,
    pub(crate) owner: u64,
    /// Calls into the view left before the owner dies (see the module docs).
    budget: Option<Arc<untracked::AtomicI64>>,
}

/// A new view (a new lock owner) of `seg`.
pub(crate) fn view(seg: &Arc<HeapSegment>) -> HeapView {
    HeapView {
        seg: seg.clone(),
        owner: seg.owners.fetch_add(1, untracked::Ordering::Relaxed) + 1,
        budget: None,
    }
}

/// The panic payload of an owner that died in a model.
#[derive(Debug)]
pub(crate) struct Crashed;

#[cfg(loom)]
/// Runs `f` as an owner that may die (a [`HeapView::with_crash_after`]
/// view): `Some(result)` if it ran to the end, `None` if it died.
pub(crate) fn catch_crash<T>(f: impl FnOnce() -> T) -> Option<T> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Crashed>().is_none() {
                default(info);
            }
        }));
    });
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(e) if e.downcast_ref::<Crashed>().is_some() => None,
        Err(e) => std::panic::resume_unwind(e),
    }
}

impl HeapView {
    /// This view dies at its `calls`-th call into the view (0: the first).
    #[cfg(loom)]
    pub(crate) fn with_crash_after(mut self, calls: u64) -> Self {
        self.budget = Some(Arc::new(untracked::AtomicI64::new(calls as i64)));
        self
    }

    /// One call into the view: the owner may die here.
    fn step(&self) {
        if let Some(b) = &self.budget {
            if b.fetch_sub(1, untracked::Ordering::Relaxed) <= 0 {
                std::panic::panic_any(Crashed);
            }
        }
    }

    /// Reads payload bytes in place, as a production Block reader does
    /// through a plain `&[u8]`: loom flags a write of these words that is not
    /// ordered with this read (see the module docs).
    ///
    /// # Safety
    ///
    /// As for [`View::read_payload`].
    #[cfg(loom)]
    pub(crate) unsafe fn read_in_place(&self, off: u64, dst: &mut [u8]) {
        for i in 0..dst.len().div_ceil(8) {
            let idx = (((off + 8 * i as u64) & self.seg.geometry.mask()) / 8) as usize;
            // SAFETY: a shared borrow of the detector cell; loom checks it
            // against `write_payload`'s mutable borrows.
            self.seg.cells[idx].with(|_| ());
        }
        // SAFETY: forwarded.
        unsafe { self.read_payload(off, dst) }
    }
}

// SAFETY: `words` has capacity/8 entries and `word` masks every offset into
// them; producer, waiters and slots live as long as the segment, which the
// view keeps alive; payload accesses index `words`/`cells` with bounds checks.
unsafe impl View for HeapView {
    fn producer(&self) -> &Producer {
        self.step();
        &self.seg.producer
    }

    fn waiters(&self) -> &Waiters {
        self.step();
        &self.seg.waiters
    }

    fn slots(&self) -> &[Slot] {
        self.step();
        &self.seg.slots
    }

    fn geometry(&self) -> &Geometry {
        self.step();
        &self.seg.geometry
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        self.step();
        &self.seg.words[((off & self.seg.geometry.mask()) / 8) as usize]
    }

    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        self.step();
        for (i, chunk) in src.chunks(8).enumerate() {
            let idx = (((off + 8 * i as u64) & self.seg.geometry.mask()) / 8) as usize;
            // Production writes these bytes with a plain copy: the detector
            // cell is borrowed mutably, so an in-place read that races it fails.
            #[cfg(loom)]
            self.seg.cells[idx].with_mut(|_| ());
            let word = &self.seg.words[idx];
            // Relaxed: only the single writer stores ring words; the commit
            // stamp's Release publishes them.
            let mut bytes = word.load(Ordering::Relaxed).to_le_bytes();
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }

    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        self.step();
        for (i, chunk) in dst.chunks_mut(8).enumerate() {
            // Relaxed per-word loads, as in production (validated by callers).
            let word = self.word(off + 8 * i as u64).load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
    }

    #[cfg(not(loom))]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::shm::futex::futex_wait(word, expected, timeout);
    }

    #[cfg(not(loom))]
    fn futex_wake(&self, word: &AtomicU32) {
        self.seg.wakes.fetch_add(1, untracked::Ordering::Relaxed);
        crate::shm::futex::futex_wake(word);
    }

    // Loom cannot model the futex syscall; this is its semantics: the value
    // check and the sleep are atomic with respect to wake (the kernel's hash
    // bucket lock is the mutex here).
    #[cfg(loom)]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        self.step();
        let guard = self.seg.futex.0.lock().unwrap();
        // Relaxed: the kernel reads the word with no ordering either.
        if word.load(Ordering::Relaxed) != expected {
            return;
        }
        drop(self.seg.futex.1.wait(guard).unwrap());
    }

    #[cfg(loom)]
    fn futex_wake(&self, _word: &AtomicU32) {
        self.step();
        self.seg.wakes.fetch_add(1, untracked::Ordering::Relaxed);
        let _guard = self.seg.futex.0.lock().unwrap();
        self.seg.futex.1.notify_all();
    }

    fn try_lock(&self, byte: u64) -> io::Result<bool> {
        self.step();
        let mut locks = self.seg.locks.lock().unwrap();
        match locks.get(&byte) {
            Some(&o) if o != self.owner => Ok(false),
            _ => {
                locks.insert(byte, self.owner);
                Ok(true)
            }
        }
    }

    fn unlock(&self, byte: u64) {
        self.step();
        let mut locks = self.seg.locks.lock().unwrap();
        if locks.get(&byte) == Some(&self.owner) {
            locks.remove(&byte);
        }
    }

    fn registry_alive(&self, index: u64, generation: u64) -> bool {
        self.step();
        self.seg
            .registrations
            .lock()
            .unwrap()
            .contains(&(index, generation))
    }

    fn now_ns(&self) -> u64 {
        self.step();
        self.seg.clock.load(untracked::Ordering::Relaxed)
    }
}

/// Direct access for tests: damage words, inspect counters.
#[cfg(all(test, not(loom)))]
impl HeapSegment {
    pub(crate) fn word_store(&self, off: u64, value: u64) {
        use crate::sync::Ordering;
        self.words[(off / 8) as usize].store(value, Ordering::Relaxed);
    }

    pub(crate) fn slot_state(&self, index: usize) -> u64 {
        use crate::sync::Ordering;
        self.slots[index].state.load(Ordering::Relaxed)
    }

    pub(crate) fn no_locks(&self) -> bool {
        self.locks.lock().unwrap().is_empty()
    }

    pub(crate) fn producer_evictions(&self) -> u64 {
        use crate::sync::Ordering;
        self.producer.evictions.load(Ordering::Relaxed)
    }

    pub(crate) fn producer_head(&self) -> u64 {
        use crate::sync::Ordering;
        self.producer.head.load(Ordering::Relaxed)
    }

    pub(crate) fn producer_store_tail(&self, v: u64) {
        use crate::sync::Ordering;
        self.producer.tail.store(v, Ordering::Relaxed);
    }

    pub(crate) fn producer_store_head(&self, v: u64) {
        use crate::sync::Ordering;
        self.producer.head.store(v, Ordering::Relaxed);
    }

    pub(crate) fn producer_store_limit(&self, v: u64) {
        use crate::sync::Ordering;
        self.producer.limit.store(v, Ordering::Relaxed);
    }

    pub(crate) fn producer_store_writer_state(&self, v: u32) {
        use crate::sync::Ordering;
        self.producer.writer_state.store(v, Ordering::Relaxed);
    }

    pub(crate) fn waiters_count(&self) -> u32 {
        use crate::sync::Ordering;
        self.waiters.waiters.load(Ordering::Relaxed)
    }

    pub(crate) fn waiters_count_add(&self, n: u32) {
        use crate::sync::Ordering;
        self.waiters.waiters.fetch_add(n, Ordering::Relaxed);
    }
}
