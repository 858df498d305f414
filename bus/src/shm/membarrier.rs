//! The asymmetric barrier of the wake-up handshake: `membarrier(2)`.
//!
//! A publisher must not miss a sleeper and a sleeper must not miss the
//! publisher's data: the publisher stores `tail` then loads the waiting
//! words, the sleeper stores the waiting words then loads the ring (a
//! store-load pattern, Dekker's). Symmetric solution: a full fence on both
//! sides, paid by the publisher on every publish. Asymmetric solution (this
//! module, as Folly's `asymmetricHeavyBarrier` and liburcu's
//! `sys_membarrier` flavour do):
//!
//! - the *publisher* puts only a compiler fence between its store and its
//!   load ([`light_barrier`]): the two stay in program order, the CPU may
//!   still let the load pass the store (store buffer);
//! - the *sleeper* (rare: once per sleep) calls
//!   `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` ([`heavy_barrier`]) after
//!   its stores and before its re-check. The kernel runs a full memory
//!   barrier on every CPU that currently runs a thread of a process that
//!   registered with `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`
//!   ([`register`]; every ring writer does so before its ring becomes
//!   visible), bracketed by full barriers in the caller; a registered thread
//!   that is not running passes a full barrier when it is scheduled in.
//!
//! Why that suffices: the barrier lands at some instruction boundary `X` of
//! the publisher's program. If `X` is after the `tail` store, the store is
//! globally visible before `membarrier` returns, so the sleeper's re-check
//! sees it. If `X` is before the store (and so before the load, which the
//! compiler fence keeps after the store), the sleeper's stores, made
//! visible before the IPI was sent, are visible to the publisher's load. One
//! of the two sees the other: no missed wake-up.
//!
//! The registration is per process (`mm`), once; a process whose
//! registration failed (seccomp, `EPERM`, `ENOSYS`, an old kernel) writes
//! rings with the symmetric fence instead, and says so in the ring's header
//! ([`crate::layout::FLAG_WAKE_FENCE`]). A sleeper whose own `membarrier`
//! call fails falls back to timed sleeps (see `shm::futex`).
//!
//! Cost measured here (`docs/../shared/MACHINE-FACTS.md`): about 0.15 µs
//! per sleep when no registered process runs on another CPU, about 10.6 µs
//! and an interrupt of that CPU when one does. Every registered process on
//! the host takes that interrupt, not only the ring's publisher: the price
//! of the global command (the private one works within one process only).
//!
//! # Under loom
//!
//! Loom cannot run a system call or interrupt a thread. The model keeps what
//! the kernel guarantees and nothing more: the heavy barrier is an AcqRel
//! read-modify-write of one global word, and the publisher's light barrier,
//! *only under loom*, is an AcqRel read-modify-write of the same word at the
//! point where the IPI's barrier matters (between its store and its load).
//! Read-modify-writes of one word are totally ordered, and the later one
//! synchronizes with the earlier: if the sleeper's barrier comes first, the
//! publisher's load sees the sleeper's stores (the IPI landed before `X`);
//! if the publisher's point comes first, the sleeper's re-check sees the
//! publisher's store (the IPI landed after). A publisher's light barrier
//! synchronizes with nothing but heavy barriers (and its own earlier ones),
//! so a sleeper that skips the heavy barrier, or uses a plain fence, gets no
//! ordering from the publisher in the model: the model does not prove the
//! symmetric protocol in disguise. `docs/loom.md` ("The wake-up handshake")
//! spells out what is modelled and assumed.

/// How a ring's publisher and its sleepers close the store-load race of the
/// wake-up handshake; chosen per ring at creation
/// ([`crate::RingConfig::wake_handshake`]) and recorded in its header.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{RingConfig, WakeHandshake};
/// // A host where interrupting the publisher's CPU on every sleep of a
/// // subscriber costs more than a fence per publish:
/// let config = RingConfig { wake_handshake: WakeHandshake::Fence, ..RingConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeHandshake {
    /// Asymmetric: the publisher pays a compiler fence per publish; a
    /// sleeper pays `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` per sleep
    /// (and every CPU running a registered process takes an interrupt). If
    /// the publisher's process cannot register, the ring falls back to
    /// [`Self::Fence`] (its header says so).
    Membarrier,
    /// Symmetric: a full fence in the publisher on every publish and in the
    /// sleeper on every sleep; no system call, no interrupts.
    Fence,
}

#[cfg(not(loom))]
mod imp {
    use crate::sync::{compiler_fence, AtomicU32, Ordering};

    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
    const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

    /// The pid that registered this process (0: none yet). A pid, not a
    /// flag: a child forked without exec inherits this memory but not
    /// necessarily the registration, so it registers again.
    static REGISTERED_PID: AtomicU32 = AtomicU32::new(0);
    /// 0 unknown, 1 the heavy barrier works, 2 it does not (this process).
    static HEAVY: AtomicU32 = AtomicU32::new(0);

    fn membarrier(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) takes no pointers.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Registers this process to receive global expedited barriers. Returns
    /// whether it is registered (then rings it writes may use
    /// [`super::WakeHandshake::Membarrier`]). Idempotent and cheap after the
    /// first call of a process.
    pub(crate) fn register() -> bool {
        let pid = std::process::id();
        // Relaxed: a per-process cache of a system call's effect; racing
        // first callers both register (idempotent).
        if REGISTERED_PID.load(Ordering::Relaxed) == pid {
            return true;
        }
        if std::env::var_os(DISABLE_ENV).is_some() {
            return false;
        }
        let supported = membarrier(MEMBARRIER_CMD_QUERY);
        let needed = MEMBARRIER_CMD_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;
        if supported < 0 || supported & needed != needed {
            return false;
        }
        if membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0 {
            return false;
        }
        // Relaxed: as above.
        REGISTERED_PID.store(pid, Ordering::Relaxed);
        true
    }

    /// The sleeper's heavy barrier: every CPU running a registered process
    /// passes a full barrier before this returns. `false` if the system
    /// call is not available to this process: the caller must not rely on
    /// the handshake then (it sleeps in short timed slices).
    pub(crate) fn heavy_barrier() -> bool {
        // Relaxed: a cache of whether the call works in this process.
        match HEAVY.load(Ordering::Relaxed) {
            2 => return false,
            0 if std::env::var_os(DISABLE_ENV).is_some() => {
                // Relaxed: as above.
                HEAVY.store(2, Ordering::Relaxed);
                return false;
            }
            _ => {}
        }
        if membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0 {
            // Relaxed: as above.
            HEAVY.store(1, Ordering::Relaxed);
            true
        } else {
            // Relaxed: as above.
            HEAVY.store(2, Ordering::Relaxed);
            false
        }
    }

    /// Whether [`heavy_barrier`] failed in this process (then sleepers on
    /// membarrier rings use timed slices).
    #[allow(dead_code)] // with `Sleeper::reliable`
    pub(crate) fn heavy_unavailable() -> bool {
        // Relaxed: as in `heavy_barrier`.
        HEAVY.load(Ordering::Relaxed) == 2
    }

    /// The publisher's side: keeps its `tail` store before its `waiters`
    /// load in program order, so the heavy barrier's interrupt lands before
    /// both, between them or after both (see the module docs).
    #[inline(always)]
    pub(crate) fn light_barrier() {
        compiler_fence(Ordering::SeqCst);
    }

    /// Set in a process's environment, it makes [`register`] and
    /// [`heavy_barrier`] fail as a seccomp filter would: that process writes
    /// rings with the symmetric fence, and sleeps on membarrier rings in
    /// short timed slices (tests of the fallbacks; also an operator's switch
    /// for a process that must never take or send the interrupts).
    pub(crate) const DISABLE_ENV: &str = "SHMBUS_NO_MEMBARRIER";
}

#[cfg(loom)]
mod imp {
    use crate::sync::{lazy_static, AtomicU64, Ordering};

    lazy_static! {
        /// The model's stand-in for the kernel's barrier (module docs).
        static ref BARRIER: AtomicU64 = AtomicU64::new(0);
    }

    pub(crate) fn register() -> bool {
        true
    }

    /// Initializes the barrier word. Models call this before they spawn a
    /// thread: loom's lazy initialization synchronizes every later user
    /// with the initializing thread, which would hand a sleeper the
    /// publisher's history (or the reverse) without any barrier.
    pub(crate) fn init_for_model() {
        // Relaxed: only forces the initialization; orders nothing.
        BARRIER.load(Ordering::Relaxed);
    }

    pub(crate) fn heavy_barrier() -> bool {
        // SYNC: wake-handshake (heavy side, the model of membarrier). The
        // later of this and a publisher's light barrier (one word's RMWs
        // are totally ordered) synchronizes with the earlier one.
        BARRIER.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub(crate) fn heavy_unavailable() -> bool {
        false
    }

    pub(crate) fn light_barrier() {
        // SYNC: wake-handshake (light side, where the IPI's barrier may
        // land; production has only a compiler fence here, see above).
        BARRIER.fetch_add(0, Ordering::AcqRel);
    }
}

pub(crate) use imp::*;
