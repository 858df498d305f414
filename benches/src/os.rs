//! Thin wrappers over the few Linux calls the harness needs: a cross-process
//! monotonic clock, CPU pinning, `sched_yield` and shared (non-private) futexes.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Nanoseconds on `CLOCK_MONOTONIC`.
///
/// Unlike [`std::time::Instant`], the raw value is comparable between
/// processes on the same machine, so a sender and a receiver can each stamp
/// their side of a transfer and the runner can subtract the two.
///
/// ```
/// let a = shmbus_benches::os::now_ns();
/// let b = shmbus_benches::os::now_ns();
/// assert!(b >= a);
/// ```
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists
    // on Linux, so the call cannot fail with these arguments.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    // Both fields are non-negative for CLOCK_MONOTONIC.
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Pins the calling process (all its current threads share the mask of the
/// main thread at exec time, which is when the harness calls this) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("cpu {cpu} is out of range for sched_setaffinity");
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE was checked above, so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its exact size;
    // pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("sched_setaffinity to cpu {cpu} failed (does the cpu exist?)")
        });
    }
    Ok(())
}

/// Gives the rest of the time slice away (`sched_yield`).
pub fn yield_now() {
    // SAFETY: sched_yield has no arguments and no memory effects.
    unsafe { libc::sched_yield() };
}

/// Number of online logical CPUs.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf with a valid name has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// `FUTEX_WAIT` on a word that may live in memory shared between processes
/// (no `FUTEX_PRIVATE_FLAG`). Sleeps while `*word == expected`, at most
/// `timeout`. Spurious returns are allowed: callers re-check their condition.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        // subsec_nanos() < 1e9 always fits a c_long.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; the
    // kernel only reads it. `ts` is a valid relative timeout. Errors (EAGAIN when
    // the value already changed, ETIMEDOUT, EINTR) are all "go re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// `FUTEX_WAKE` all waiters on `word` (shared, not private).
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access memory
    // other than hashing the address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Involuntary context switches of the calling process so far (times the
/// scheduler took the CPU away from it): a measure of interference.
pub fn involuntary_switches() -> u64 {
    // SAFETY: rusage is plain data; all-zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    u64::try_from(ru.ru_nivcsw).unwrap_or(0)
}

/// `MEMBARRIER_CMD_GLOBAL_EXPEDITED` (linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
/// `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` (linux/membarrier.h).
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

fn membarrier(cmd: libc::c_int) -> bool {
    // SAFETY: membarrier takes a command, flags and a cpu id, and touches no
    // memory of the caller; an unsupported or denied command returns -1.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) == 0 }
}

/// Registers this process for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`: from now on
/// another process's [`membarrier_global_expedited`] interrupts this
/// process's running threads with a full memory barrier. False if the kernel
/// (or a seccomp filter) refuses.
pub fn membarrier_register_global_expedited() -> bool {
    membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`: returns once every running
/// thread of every registered process executed a full memory barrier (an
/// IPI to their CPUs). False if the call failed.
pub fn membarrier_global_expedited() -> bool {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)
}
