//! A ring whose shared state lives on the heap: for unit tests and loom
//! models (which cannot see processes, files or mmap).
//!
//! Liveness locks are modelled faithfully: exclusive per owner (each
//! [`HeapView`] is one owner, like one open file description), released
//! when the owner "dies" ([`HeapSegment::crash`]). The clock is logical.

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::Arc,
    time::Duration,
};

#[cfg(loom)]
use crate::sync::Ordering;
use crate::{
    layout::{Producer, Slot, Waiters},
    sync::{untracked, AtomicU32, AtomicU64},
};

use super::{Geometry, View};

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
    #[cfg(loom)]
    cells: Vec<crate::sync::PayloadCell<u64>>,
    geometry: Geometry,
    /// Lock byte -> owner.
    locks: Mutex<HashMap<u64, u64>>,
    /// Live registrations (index, generation).
    registrations: Mutex<HashSet<(u64, u64)>>,
    /// Owners handed out so far.
    owners: untracked::AtomicU64,
    /// The logical clock, nanoseconds.
    clock: untracked::AtomicU64,
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
                .map(|_| crate::sync::PayloadCell::new(0))
                .collect(),
            geometry,
            locks: Mutex::new(HashMap::new()),
            registrations: Mutex::new(HashSet::new()),
            owners: untracked::AtomicU64::new(0),
            clock: untracked::AtomicU64::new(1),
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
}

/// A new view (a new lock owner) of `seg`.
pub(crate) fn view(seg: &Arc<HeapSegment>) -> HeapView {
    HeapView {
        seg: seg.clone(),
        owner: seg.owners.fetch_add(1, untracked::Ordering::Relaxed) + 1,
    }
}

// SAFETY: `words` has capacity/8 entries and `word` masks every offset into
// them; producer, waiters and slots live as long as the segment, which the
// view keeps alive; payload accesses index `words`/`cells` with bounds checks.
unsafe impl View for HeapView {
    fn producer(&self) -> &Producer {
        &self.seg.producer
    }

    fn waiters(&self) -> &Waiters {
        &self.seg.waiters
    }

    fn slots(&self) -> &[Slot] {
        &self.seg.slots
    }

    fn geometry(&self) -> &Geometry {
        &self.seg.geometry
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        &self.seg.words[((off & self.seg.geometry.mask()) / 8) as usize]
    }

    #[cfg(not(loom))]
    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        for (i, chunk) in src.chunks(8).enumerate() {
            let word = self.word(off + 8 * i as u64);
            let mut bytes = word.load(untracked::Ordering::Relaxed).to_le_bytes();
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), untracked::Ordering::Relaxed);
        }
    }

    #[cfg(not(loom))]
    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        for (i, chunk) in dst.chunks_mut(8).enumerate() {
            let word = self
                .word(off + 8 * i as u64)
                .load(untracked::Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
    }

    #[cfg(loom)]
    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        for (i, chunk) in src.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let cell = &self.seg.cells[((off & self.seg.geometry.mask()) / 8) as usize + i];
            // SAFETY: loom checks that no read of this cell races this write.
            cell.with_mut(|p| unsafe { *p = u64::from_le_bytes(word) });
        }
    }

    #[cfg(loom)]
    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        for (i, chunk) in dst.chunks_mut(8).enumerate() {
            let cell = &self.seg.cells[((off & self.seg.geometry.mask()) / 8) as usize + i];
            // SAFETY: loom checks that no write of this cell races this read.
            let word = cell.with(|p| unsafe { *p });
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
    }

    #[cfg(not(loom))]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::shm::futex::futex_wait(word, expected, timeout);
    }

    #[cfg(not(loom))]
    fn futex_wake(&self, word: &AtomicU32) {
        crate::shm::futex::futex_wake(word);
    }

    // Loom cannot model the futex syscall; this is its semantics: the value
    // check and the sleep are atomic with respect to wake (the kernel's hash
    // bucket lock is the mutex here).
    #[cfg(loom)]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let guard = self.seg.futex.0.lock().unwrap();
        // Relaxed: the kernel reads the word with no ordering either.
        if word.load(Ordering::Relaxed) != expected {
            return;
        }
        drop(self.seg.futex.1.wait(guard).unwrap());
    }

    #[cfg(loom)]
    fn futex_wake(&self, _word: &AtomicU32) {
        let _guard = self.seg.futex.0.lock().unwrap();
        self.seg.futex.1.notify_all();
    }

    fn try_lock(&self, byte: u64) -> io::Result<bool> {
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
        let mut locks = self.seg.locks.lock().unwrap();
        if locks.get(&byte) == Some(&self.owner) {
            locks.remove(&byte);
        }
    }

    fn registry_alive(&self, index: u64, generation: u64) -> bool {
        self.seg
            .registrations
            .lock()
            .unwrap()
            .contains(&(index, generation))
    }

    fn now_ns(&self) -> u64 {
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
