//! A ring whose shared state lives on the heap: for unit tests, Miri-style
//! single-process tests and loom models (which cannot see processes or mmap).

use std::{collections::HashSet, sync::Mutex, time::Duration};

use super::{Geometry, View};
#[cfg(loom)]
use crate::sync::Ordering;
use crate::{
    layout::{Control, Slot},
    sync::{AtomicU32, AtomicU64},
};

/// Heap-backed segment state.
#[derive(Debug)]
pub(crate) struct HeapSegment {
    control: Control,
    slots: Vec<Slot>,
    words: Vec<AtomicU64>,
    #[cfg(loom)]
    cells: Vec<crate::sync::PayloadCell<u64>>,
    geometry: Geometry,
    dead: Mutex<HashSet<u64>>,
    #[cfg(loom)]
    futex: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

impl HeapSegment {
    pub(crate) fn new(geometry: Geometry, slots: usize) -> Self {
        let words = (geometry.capacity / 8) as usize;
        Self {
            control: Control::new_zeroed(),
            slots: (0..slots).map(|_| Slot::new_free()).collect(),
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            cells: (0..words)
                .map(|_| crate::sync::PayloadCell::new(0))
                .collect(),
            geometry,
            dead: Mutex::new(HashSet::new()),
            #[cfg(loom)]
            futex: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    /// Declares process `pid` dead for `process_alive`.
    pub(crate) fn kill(&self, pid: u64) {
        self.dead.lock().unwrap().insert(pid);
    }
}

// SAFETY: `words` has capacity/8 entries, so every 8-aligned offset below the
// capacity indexes it; control and slots live as long as `self`; payload
// accesses index `words`/`cells` with bounds checks.
unsafe impl View for std::sync::Arc<HeapSegment> {
    fn control(&self) -> &Control {
        &self.control
    }

    fn slots(&self) -> &[Slot] {
        &self.slots
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        &self.words[(off / 8) as usize]
    }

    #[cfg(not(loom))]
    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        let base = self.words.as_ptr() as *mut u8;
        let end = off as usize + src.len();
        assert!(end <= self.words.len() * 8);
        // SAFETY: in bounds (checked above); atomics are UnsafeCells, so
        // writing through a pointer derived from them is allowed; the caller
        // guarantees no reader reads these bytes yet.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(off as usize), src.len()) };
    }

    #[cfg(not(loom))]
    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        let base = self.words.as_ptr() as *const u8;
        let end = off as usize + dst.len();
        assert!(end <= self.words.len() * 8);
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above); a volatile read, validated by the caller.
            *b = unsafe { std::ptr::read_volatile(base.add(off as usize + i)) };
        }
    }

    #[cfg(loom)]
    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        for (i, chunk) in src.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let cell = &self.cells[(off / 8) as usize + i];
            // SAFETY: loom checks that no read of this cell races this write.
            cell.with_mut(|p| unsafe { *p = u64::from_le_bytes(word) });
        }
    }

    #[cfg(loom)]
    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        for (i, chunk) in dst.chunks_mut(8).enumerate() {
            let cell = &self.cells[(off / 8) as usize + i];
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
        let guard = self.futex.0.lock().unwrap();
        // Relaxed: the kernel reads the word with no ordering either.
        if word.load(Ordering::Relaxed) != expected {
            return;
        }
        drop(self.futex.1.wait(guard).unwrap());
    }

    #[cfg(loom)]
    fn futex_wake(&self, _word: &AtomicU32) {
        let _guard = self.futex.0.lock().unwrap();
        self.futex.1.notify_all();
    }

    fn process_alive(&self, pid: u64, _start_time: u64) -> bool {
        !self.dead.lock().unwrap().contains(&pid)
    }
}
