//! Process labels: a process named by pid *and* start time, stored in ring
//! headers and slots for tools (`shmbus` listings, logs).
//!
//! These labels are never used to decide liveness: a process in another pid
//! namespace, or under `hidepid`, is invisible in this `/proc` and alive.
//! Liveness is by open-file-description locks ([`super::lock`]).
//!
//! The start time is field 22 of `/proc/<pid>/stat` (clock ticks since boot).

use std::{
    fs, io,
    sync::atomic::{AtomicU64, Ordering},
};

/// The calling process's label packed as `start_time << PID_BITS | pid`
/// (0: not read yet). Every reader and replica open asks for the label, and
/// reading `/proc/self/stat` each time was most of an open's cost. Keyed by
/// pid, so a forked child (new pid) reads its own label.
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// Pids are below `PID_MAX_LIMIT` (2^22 on 64-bit Linux).
const PID_BITS: u32 = 22;

/// A process label: pid and start time (clock ticks since boot), as seen
/// from the labelling process's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcessId {
    /// The calling process.
    ///
    /// # Errors
    ///
    /// Fails only if `/proc/self/stat` cannot be read (no procfs mounted).
    ///
    /// # Examples
    ///
    /// ```
    /// let me = shmbus_bus::ProcessId::current().unwrap();
    /// assert_eq!(me.pid, std::process::id());
    /// ```
    pub fn current() -> io::Result<Self> {
        let pid = std::process::id();
        // Relaxed: the word is the whole value (no other memory is
        // published with it), and a stale or missing one is only a re-read.
        if let Some(me) = unpack(CURRENT.load(Ordering::Relaxed)).filter(|me| me.pid == pid) {
            return Ok(me);
        }
        let me = match read_stat(pid)? {
            Some((_, start_time)) => Self { pid, start_time },
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "/proc/self/stat is unreadable",
                ))
            }
        };
        if let Some(word) = pack(me) {
            // Relaxed: see the load above.
            CURRENT.store(word, Ordering::Relaxed);
        }
        Ok(me)
    }
}

/// `me` as one word, `None` if a field does not fit (then it is not cached).
fn pack(me: ProcessId) -> Option<u64> {
    let fits = me.pid != 0 && me.pid < (1 << PID_BITS) && me.start_time < (1 << (64 - PID_BITS));
    fits.then(|| me.start_time << PID_BITS | u64::from(me.pid))
}

/// The label in `word`, `None` for the empty word.
fn unpack(word: u64) -> Option<ProcessId> {
    let pid = u32::try_from(word & ((1 << PID_BITS) - 1)).ok()?;
    (pid != 0).then_some(ProcessId {
        pid,
        start_time: word >> PID_BITS,
    })
}

/// (state, start time) of `pid`, `None` if it does not exist.
fn read_stat(pid: u32) -> io::Result<Option<(u8, u64)>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ESRCH: the process went away while we read.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) may contain spaces and ')': fields resume
    // after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.bytes().next())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    // Field 3 is the state; field 22 (starttime) is the 20th after it.
    let start = fields
        .nth(18)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    Ok(Some((state, start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_has_a_start_time() {
        let me = ProcessId::current().unwrap();
        let (state, start) = read_stat(me.pid).unwrap().unwrap();
        assert_eq!(start, me.start_time);
        assert!(matches!(state, b'R' | b'S'));
    }

    #[test]
    fn the_cached_label_is_the_one_proc_gives() {
        let first = ProcessId::current().unwrap();
        let again = ProcessId::current().unwrap();
        assert_eq!(first, again);
        let (_, start) = read_stat(std::process::id()).unwrap().unwrap();
        assert_eq!(again.start_time, start);
    }

    #[test]
    fn a_label_of_another_pid_is_not_used() {
        // What a forked child finds: the parent's label under another pid.
        let me = ProcessId::current().unwrap();
        let parent = ProcessId {
            pid: me.pid + 1,
            start_time: 7,
        };
        CURRENT.store(pack(parent).unwrap(), Ordering::Relaxed);
        assert_eq!(ProcessId::current().unwrap(), me);
    }

    #[test]
    fn labels_round_trip_through_the_word_or_are_not_cached() {
        let max = ProcessId {
            pid: (1 << PID_BITS) - 1,
            start_time: (1 << (64 - PID_BITS)) - 1,
        };
        assert_eq!(unpack(pack(max).unwrap()), Some(max));
        let big_start = ProcessId {
            pid: 5,
            start_time: 1 << (64 - PID_BITS),
        };
        assert_eq!(pack(big_start), None);
        let big_pid = ProcessId {
            pid: 1 << PID_BITS,
            start_time: 5,
        };
        assert_eq!(pack(big_pid), None);
        assert_eq!(unpack(0), None);
    }

    #[test]
    fn exited_child_has_no_stat() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(read_stat(pid).unwrap(), None);
    }
}
