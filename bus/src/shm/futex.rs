//! Futex-based sleeping and waking, across processes.
//!
//! The futex word lives in the segment's control line (a `MAP_SHARED` file
//! mapping), so the futexes are the non-private kind, keyed by the file page:
//! a waiter in one process and a waker in another meet. The reader side of
//! the protocol is [`prepare`] → re-check → [`sleep`] → [`finish`]; the writer
//! side is in `ring::writer` (`notify`). See SYNC: notify in [`crate::ring`].

#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
use crate::sync::AtomicU32;
use crate::{
    layout::Control,
    sync::{fence, Ordering},
};

/// Registers the caller as a waiter on `ctrl` and returns the futex value to
/// sleep on. The caller must re-check for data after this and then call
/// [`finish`] once, whether it slept or not.
pub(crate) fn prepare(ctrl: &Control) -> u32 {
    // Acquire: pairs with the writer's Release bump, so a later re-check sees
    // the data that bump announced.
    let seen = ctrl.futex.load(Ordering::Acquire);
    // Relaxed: ordered before the re-check by the fence below.
    ctrl.waiters.fetch_add(1, Ordering::Relaxed);
    // SYNC: notify. Either the writer's waiters load sees our increment, or
    // our re-check sees its tail/stamp store.
    fence(Ordering::SeqCst);
    seen
}

/// Deregisters a waiter registered with [`prepare`].
pub(crate) fn finish(ctrl: &Control) {
    // Relaxed: a count; a stale value only costs the writer one extra wake.
    ctrl.waiters.fetch_sub(1, Ordering::Relaxed);
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
