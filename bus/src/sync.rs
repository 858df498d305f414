//! The one place `shmbus-bus` takes its synchronization primitives from.
//!
//! Under `--cfg loom` these are loom's model-checked types; otherwise the
//! standard library's. Ring, subscriber-table and notify code import atomics
//! only from here (enforced by a grep in `ci/lint.sh`), so the same
//! algorithm text runs in production and under the model checker.
#![allow(unused_imports)] // not every primitive is used under both cfgs

#[cfg(loom)]
pub(crate) use loom::{
    hint::spin_loop,
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
    thread::yield_now,
};

#[cfg(not(loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::atomic::{compiler_fence, fence, AtomicU32, AtomicU64, Ordering},
    thread::yield_now,
};

/// Loom's lazily initialized statics (reset for every execution of a model):
/// the model's stand-in for the heavy barrier lives in one.
#[cfg(loom)]
pub(crate) use loom::lazy_static;

/// An Acquire load of a word that may live in read-only memory.
///
/// Rust allows only Relaxed atomic loads on read-only memory (see "Atomic
/// accesses to read-only memory" in `core::sync::atomic`), so readers of the
/// publisher's data file load Relaxed and then fence: the fence gives the
/// load Acquire semantics (it synchronizes with the partner's Release store
/// that the load read from).
#[inline(always)]
pub(crate) fn load_acquire_ro(word: &AtomicU64) -> u64 {
    let value = word.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    value
}

/// [`load_acquire_ro`] for a 32-bit word.
#[inline(always)]
pub(crate) fn load_acquire_ro32(word: &AtomicU32) -> u32 {
    let value = word.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    value
}

/// A cell for payload words that loom checks for data races.
///
/// In production the payload lives in shared memory and is accessed through
/// raw pointers; under loom every 8-byte word of the ring's payload is one of
/// these, so a payload read that is not ordered after its write (or a write
/// that is not ordered after the last read) fails the model.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell as PayloadCell;

/// Plain std atomics for test bookkeeping that loom must *not* model (owner
/// counters, the logical clock of heap-backed tests): never ring state.
#[cfg(any(test, loom))]
pub(crate) mod untracked {
    pub(crate) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
}
