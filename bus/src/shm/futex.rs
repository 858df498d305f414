//! Futex-based sleeping and waking, across processes.
//!
//! The futex word the writer bumps lives in the producer page of the data
//! file, which readers map read-only: `FUTEX_WAIT` works on a read-only
//! shared mapping (the kernel keys a shared futex by the file page and only
//! reads the word), which a test checks. The futexes are the non-private
//! kind, so a waiter in one process and a waker in another meet. The waiter
//! count lives in the control file (readers write it). The reader side of
//! the protocol is [`prepare`] → re-check → sleep → [`finish`]; the writer
//! side is in `ring::writer` (`notify`). See SYNC: notify in [`crate::ring`].

#[cfg(not(loom))]
use std::time::Duration;

use crate::sync::{fence, load_acquire_ro32, AtomicU32, AtomicU64, Ordering};

/// One reader's place in a ring's sleep/wake handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sleeper<'a> {
    /// The writer's futex word (read-only memory for readers).
    pub(crate) futex: &'a AtomicU32,
    /// The ring's waiter count (control file).
    pub(crate) waiters: &'a AtomicU32,
    /// The reader's slot flag saying it is counted in `waiters`, so whoever
    /// reclaims the slot of a reader killed asleep takes the count back.
    pub(crate) sleeping: Option<&'a AtomicU64>,
}

/// Registers the caller as a waiter and returns the futex value to sleep on.
/// The caller must re-check for data after this and then call [`finish`]
/// once, whether it slept or not.
pub(crate) fn prepare(s: &Sleeper<'_>) -> u32 {
    // Acquire: pairs with the writer's Release bump, so a later re-check sees
    // the data that bump announced. (Read-only memory: Relaxed + fence.)
    let seen = load_acquire_ro32(s.futex);
    if let Some(flag) = s.sleeping {
        // Relaxed: read only by a reclaimer after our death (see `Sleeper`).
        flag.store(1, Ordering::Relaxed);
    }
    // Relaxed: ordered before the re-check by the fence below.
    s.waiters.fetch_add(1, Ordering::Relaxed);
    // SYNC: notify. Either the writer's waiters load sees our increment, or
    // our re-check sees its tail/stamp store.
    fence(Ordering::SeqCst);
    seen
}

/// Deregisters a waiter registered with [`prepare`].
pub(crate) fn finish(s: &Sleeper<'_>) {
    // Relaxed: a count; a stale value only costs the writer one extra wake.
    // Saturating: a reclaimer may have taken back a count that a reader
    // killed between its flag and its increment never added.
    let _ = s
        .waiters
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    if let Some(flag) = s.sleeping {
        // Relaxed: as in `prepare`.
        flag.store(0, Ordering::Relaxed);
    }
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
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; a
    // relative timeout pointer is either null or points at `ts`. FUTEX_WAIT
    // (not _PRIVATE) because the word is shared between processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
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
pub(crate) fn futex_wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) {
    const SYS_FUTEX_WAITV: libc::c_long = 449;
    const FUTEX2_SIZE_U32: u32 = 0x02;
    match words {
        [] => {
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
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
                futex_wait(
                    word,
                    expected,
                    timeout.map(|t| t.min(Duration::from_millis(1))),
                );
            }
        }
    }
}
