//! The one place `shmbus-bus` takes its synchronization primitives from.
//!
//! Under `--cfg loom` these are loom's model-checked types; otherwise the
//! standard library's. Ring, subscriber-table and notify code import atomics
//! only from here (enforced by `clippy.toml`'s `disallowed-types`), so the same
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
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
    thread::yield_now,
};

/// A cell for payload words that loom checks for data races.
///
/// In production the payload lives in shared memory and is accessed through
/// raw pointers; under loom every 8-byte word of the ring's payload is one of
/// these, so a payload read that is not ordered after its write (or a write
/// that is not ordered after the last read) fails the model.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell as PayloadCell;
