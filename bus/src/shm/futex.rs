//! Futex-based sleeping and waking, across processes.
//!
//! The futex word the writer bumps lives in the producer page of the data
//! file, which readers map read-only: `FUTEX_WAIT` works on a read-only
//! shared mapping (the kernel keys a shared futex by the file page and only
//! reads the word), which a test checks. The futexes are the non-private
//! kind, so a waiter in one process and a waker in another meet. The waiting
//! words (`waiters`, `wake_armed`) live in the control file (readers write
//! them).
//!
//! # The protocol
//!
//! Sleeper ([`prepare`] → re-check → sleep → [`finish`]; [`sleep`] runs it
//! for a set of rings):
//!
//! 1. load the futex word (Acquire): the value to sleep on;
//! 2. count itself in `waiters`, store 1 to `wake_armed`;
//! 3. the handshake's barrier ([`barrier`]): `membarrier` (rings whose
//!    header says [`WakeHandshake::Membarrier`]), or a SeqCst fence;
//! 4. re-check the ring; sleep on the futex only if nothing is there;
//! 5. uncount itself from `waiters`.
//!
//! Writer (`WriterCore::notify`, after its Release store of `tail`): the
//! handshake's other half (compiler fence, or SeqCst fence), then load
//! `waiters`; if nonzero, load `wake_armed`, and if it is 1 *and* the writer
//! wins a swap of it to 0: bump the futex word (Release) and `FUTEX_WAKE`.
//!
//! **No missed wake-up** (SYNC: wake-handshake): the barrier pair makes the
//! writer's `waiters`/`wake_armed` loads see the sleeper's step 2, or the
//! sleeper's step 4 see the writer's `tail` (asymmetric argument in
//! [`super::membarrier`]; symmetric: two SeqCst fences). If the writer sees
//! step 2 but finds `wake_armed` 0, another publish swapped it: that swap
//! read our 1 or a later store. It cannot be a swap whose bump we loaded in
//! step 1 (that bump's Release synchronizes with our Acquire, so the swap
//! happens before our store of 1 and cannot read it): the swap that took our
//! arm bumps the futex word after our step 1, so our `FUTEX_WAIT` returns at
//! once or is woken by that swap's `FUTEX_WAKE` (the kernel orders the value
//! check and the wake under its bucket lock). A second sleeper arriving while
//! a wake is in flight arms again, and the next publish wakes again.
//!
//! **Coalesced** (SYNC: wake-coalesce): a wake needs a won swap, a swap wins
//! only over a sleeper's store of 1, and a sleeper stores once per sleep: at
//! most one `FUTEX_WAKE` per sleep of a subscriber, however many messages
//! arrive meanwhile (a wake serves every sleeper that armed before it).
//! `close` always wakes (once).
//!
//! **Fallbacks.** A ring whose header names no handshake (its writer did not
//! say it registered) or a sleeper whose `membarrier` call fails cannot rely
//! on the handshake: the sleeper still fences, arms and sleeps on the
//! futex, but in slices of at most [`FALLBACK_SLICE`], so a missed wake-up
//! costs at most that.

use std::time::Duration;

use super::membarrier::{self, WakeHandshake};
use crate::sync::{fence, load_acquire_ro32, AtomicU32, AtomicU64, Ordering};

/// Longest sleep of a sleeper that cannot rely on the wake-up handshake (a
/// ring without a wake flag, or `membarrier` denied to this process).
pub(crate) const FALLBACK_SLICE: Duration = Duration::from_millis(1);

/// One reader's place in a ring's sleep/wake handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sleeper<'a> {
    /// The writer's futex word (read-only memory for readers).
    pub(crate) futex: &'a AtomicU32,
    /// The ring's waiter count (control file).
    pub(crate) waiters: &'a AtomicU32,
    /// The ring's wake-armed word (control file; see the module docs).
    pub(crate) armed: &'a AtomicU32,
    /// The reader's slot flag saying it is counted in `waiters`, so whoever
    /// reclaims the slot of a reader killed asleep takes the count back.
    pub(crate) sleeping: Option<&'a AtomicU64>,
    /// The ring's handshake as its header says; `None`: the header names
    /// none (sleep in [`FALLBACK_SLICE`]s).
    pub(crate) handshake: Option<WakeHandshake>,
}

impl Sleeper<'_> {
    /// Whether this sleeper may sleep for as long as it likes: `false` when
    /// the handshake cannot be relied on (then sleep at most
    /// [`FALLBACK_SLICE`] at a time). For callers of [`prepare`].
    // Used with `prepare` by loom models and waiters built outside
    // `wait_until` (the async reactor).
    #[allow(dead_code)]
    pub(crate) fn reliable(&self) -> bool {
        match self.handshake {
            Some(WakeHandshake::Fence) => true,
            Some(WakeHandshake::Membarrier) => !membarrier::heavy_unavailable(),
            None => false,
        }
    }
}

/// Steps 1 and 2 of the protocol: returns the futex value to sleep on.
fn register(s: &Sleeper<'_>) -> u32 {
    // SYNC: wake-coalesce. Acquire: pairs with the writer's Release bump, so
    // a swap that consumed an arm of ours is never one whose bump we loaded
    // here (module docs), and a later re-check sees the data that bump
    // announced. Read-only memory: Relaxed + fence.
    let seen = load_acquire_ro32(s.futex);
    if let Some(flag) = s.sleeping {
        // Relaxed: read only by a reclaimer after our death (see `Sleeper`).
        flag.store(1, Ordering::Relaxed);
    }
    // Relaxed: ordered before the re-check by the barrier that follows.
    s.waiters.fetch_add(1, Ordering::Relaxed);
    // Relaxed: as above; the writer's swap is what it pairs with.
    s.armed.store(1, Ordering::Relaxed);
    seen
}

/// Step 3 for every ring of `sleepers` at once: one heavy barrier (at most)
/// serves them all. Returns whether every sleeper may rely on the handshake.
pub(crate) fn barrier(sleepers: &[Sleeper<'_>]) -> bool {
    let mut reliable = true;
    let mut heavy = false;
    let mut light = false;
    for s in sleepers {
        match s.handshake {
            Some(WakeHandshake::Membarrier) => heavy = true,
            Some(WakeHandshake::Fence) => light = true,
            None => {
                light = true;
                reliable = false;
            }
        }
    }
    if light {
        // SYNC: wake-handshake (symmetric). Pairs with the writer's
        // fence(SeqCst) in `notify`: our `waiters`/`wake_armed` stores are
        // ordered before the re-check; one of the two sees the other.
        fence(Ordering::SeqCst);
    }
    if heavy && !membarrier::heavy_barrier() {
        // Denied (seccomp, EPERM, ENOSYS): the writer still has only its
        // compiler fence, so nothing orders us; sleep in short slices.
        reliable = false;
    }
    reliable
}

/// Registers the caller as a waiter and returns the futex value to sleep on
/// (steps 1 to 3: the handshake's barrier is issued before this returns).
/// The caller must re-check for data after this and then call [`finish`]
/// once, whether it slept or not. If [`Sleeper::reliable`] is false it must
/// sleep at most [`FALLBACK_SLICE`] at a time. To wait on several rings,
/// [`sleep`] issues one barrier for all of them.
// Used by loom models and waiters built outside `wait_until` (the async reactor).
#[allow(dead_code)]
pub(crate) fn prepare(s: &Sleeper<'_>) -> u32 {
    let seen = register(s);
    barrier(std::slice::from_ref(s));
    seen
}

/// Deregisters a waiter registered with [`prepare`].
pub(crate) fn finish(s: &Sleeper<'_>) {
    // Relaxed: a count; a stale value only costs the writer one extra wake.
    // Saturating: a reclaimer may have taken back a count that a reader
    // killed between its flag and its increment never added. `wake_armed`
    // stays as it is: clearing it could erase the arm of a sleeper that
    // came meanwhile; a stale 1 costs at most one wake, and only while
    // someone waits (the writer looks at it only when `waiters != 0`).
    let _ = s
        .waiters
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    if let Some(flag) = s.sleeping {
        // Relaxed: as in `register`.
        flag.store(0, Ordering::Relaxed);
    }
}

/// How a futex wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// Woken by `FUTEX_WAKE` (or spuriously, or by a signal).
    Woken,
    /// The word no longer held the expected value: nothing to wait for.
    Changed,
    /// The timeout passed.
    TimedOut,
}

/// How one [`sleep`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SleepEnd {
    /// The re-check found news: did not sleep.
    Ready,
    /// Slept (or found the futex word changed) and was woken.
    Woken,
    /// Slept until the timeout.
    TimedOut,
}

/// One sleep on every ring of `sleepers`: register on all of them, one
/// barrier, re-check with `ready`, sleep with `wait` (on every futex word at
/// once) for at most `slice` (capped at [`FALLBACK_SLICE`] when the
/// handshake cannot be relied on; `None`: no timeout, loom models only),
/// deregister. The whole sleeper side of the protocol: production waiting
/// ([`crate::shm::wait`]) and the loom models both call this.
pub(crate) fn sleep<'a>(
    sleepers: &[Sleeper<'a>],
    slice: Option<Duration>,
    mut ready: impl FnMut() -> bool,
    wait: impl FnOnce(&[(&'a AtomicU32, u32)], Option<Duration>) -> WaitEnd,
) -> SleepEnd {
    let seen: Vec<(&AtomicU32, u32)> = sleepers.iter().map(|s| (s.futex, register(s))).collect();
    let reliable = barrier(sleepers);
    let end = if ready() {
        SleepEnd::Ready
    } else {
        let slice = if reliable {
            slice
        } else {
            Some(slice.map_or(FALLBACK_SLICE, |s| s.min(FALLBACK_SLICE)))
        };
        match wait(&seen, slice) {
            WaitEnd::Woken | WaitEnd::Changed => SleepEnd::Woken,
            WaitEnd::TimedOut => SleepEnd::TimedOut,
        }
    };
    for s in sleepers {
        finish(s);
    }
    end
}

#[cfg(not(loom))]
fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

/// Sleeps while `*word == expected`, until woken, a signal, or `timeout`.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitEnd {
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; a
    // relative timeout pointer is either null or points at `ts`. FUTEX_WAIT
    // (not _PRIVATE) because the word is shared between processes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
    wait_end(rc)
}

/// Classifies a futex wait's return value (and `errno`).
#[cfg(not(loom))]
fn wait_end(rc: libc::c_long) -> WaitEnd {
    if rc >= 0 {
        return WaitEnd::Woken;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ETIMEDOUT) => WaitEnd::TimedOut,
        Some(libc::EAGAIN) => WaitEnd::Changed,
        // EINTR (a signal): like a spurious wake-up, the caller re-checks.
        _ => WaitEnd::Woken,
    }
}

/// Wakes every waiter sleeping on `word`.
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE only uses its address.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// `struct futex_waitv` from <linux/futex.h>.
#[cfg(not(loom))]
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// Most futexes one `futex_waitv` call takes (kernel limit).
#[cfg(not(loom))]
pub const FUTEX_WAITV_MAX: usize = 128;

/// Sleeps until any of `words[i] != expected[i]`, a wake on any of them, or
/// `timeout`. With one word this is `futex_wait`. Callers pass at most
/// [`FUTEX_WAITV_MAX`] words; more are not waited on (the timeout still bounds
/// the sleep), so callers with more rings must use a short timeout.
#[cfg(not(loom))]
pub(crate) fn futex_wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> WaitEnd {
    const SYS_FUTEX_WAITV: libc::c_long = 449;
    const FUTEX2_SIZE_U32: u32 = 0x02;
    match words {
        [] => {
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
            WaitEnd::TimedOut
        }
        [(word, expected)] => futex_wait(word, *expected, timeout),
        _ => {
            let list: Vec<FutexWaitv> = words
                .iter()
                .take(FUTEX_WAITV_MAX)
                .map(|(w, v)| FutexWaitv {
                    val: u64::from(*v),
                    uaddr: w.as_ptr() as u64,
                    flags: FUTEX2_SIZE_U32,
                    reserved: 0,
                })
                .collect();
            // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
            let deadline = timeout.map(|t| {
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `now` is a valid out-pointer.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
                let total = Duration::new(now.tv_sec as u64, now.tv_nsec as u32) + t;
                timespec(total)
            });
            let ts_ptr = deadline
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `list` holds `list.len()` initialized entries whose
            // addresses are live, aligned u32 futex words; `ts_ptr` is null or
            // points at `deadline`, alive for the call.
            let rc = unsafe {
                libc::syscall(
                    SYS_FUTEX_WAITV,
                    list.as_ptr(),
                    list.len() as libc::c_uint,
                    0u32,
                    ts_ptr,
                    libc::CLOCK_MONOTONIC,
                )
            };
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                // Kernels before 5.16: fall back to waiting on the first word.
                let (word, expected) = words[0];
                return futex_wait(
                    word,
                    expected,
                    timeout.map(|t| t.min(Duration::from_millis(1))),
                );
            }
            wait_end(rc)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::{
        heap::{self, HeapSegment},
        writer::WriterCore,
        Geometry, Policy, View,
    };

    fn ring() -> std::sync::Arc<HeapSegment> {
        HeapSegment::new(
            Geometry {
                capacity: 4096,
                max_message: 64,
                policy: Policy::Overwrite,
                evict_after: None,
            },
            2,
        )
    }

    fn publish(w: &mut WriterCore<heap::HeapView>) {
        let r = w.reserve(8).unwrap();
        w.write_payload(&r, &[1; 8]);
        w.commit(r, 8);
        w.publish();
    }

    /// One arm, many publishes: one wake. A second arm (a sleeper that
    /// comes while the first wake is in flight): one more wake.
    #[test]
    fn wakes_coalesce_to_one_per_sleep() {
        for handshake in [WakeHandshake::Membarrier, WakeHandshake::Fence] {
            let seg = ring();
            let view = heap::view(&seg);
            let mut w = WriterCore::new(heap::view(&seg));
            w.set_handshake(handshake);
            let s = Sleeper {
                futex: &view.producer().futex,
                waiters: &view.waiters().waiters,
                armed: &view.waiters().wake_armed,
                sleeping: None,
                handshake: Some(handshake),
            };
            // Nobody counted: no wake at all.
            publish(&mut w);
            assert_eq!(seg.wakes(), 0);
            let seen = prepare(&s);
            for _ in 0..5 {
                publish(&mut w);
            }
            assert_eq!(seg.wakes(), 1, "{handshake:?}: five publishes, one sleep");
            assert_ne!(view.producer().futex.load(Ordering::Relaxed), seen);
            // A second sleeper registers while the first still sleeps.
            let seen2 = prepare(&s);
            publish(&mut w);
            publish(&mut w);
            assert_eq!(
                seg.wakes(),
                2,
                "{handshake:?}: the second sleep is woken once"
            );
            assert_ne!(view.producer().futex.load(Ordering::Relaxed), seen2);
            finish(&s);
            finish(&s);
            // Everyone left: a stale arm costs nothing.
            publish(&mut w);
            assert_eq!(seg.wakes(), 2);
        }
    }

    /// A sleeper whose ring names no handshake sleeps in short slices.
    #[test]
    fn unflagged_ring_sleeps_in_fallback_slices() {
        let seg = ring();
        let view = heap::view(&seg);
        let s = Sleeper {
            futex: &view.producer().futex,
            waiters: &view.waiters().waiters,
            armed: &view.waiters().wake_armed,
            sleeping: None,
            handshake: None,
        };
        assert!(!s.reliable());
        let mut asked = None;
        let end = sleep(
            &[s],
            Some(Duration::from_secs(10)),
            || false,
            |_, t| {
                asked = t;
                WaitEnd::TimedOut
            },
        );
        assert_eq!(end, SleepEnd::TimedOut);
        assert_eq!(asked, Some(FALLBACK_SLICE));
        assert_eq!(seg.waiters_count(), 0, "finish uncounted the sleeper");
    }
}
