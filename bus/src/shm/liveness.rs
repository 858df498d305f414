//! Process labels: a process named by pid *and* start time, stored in ring
//! headers and slots for tools (`shmbus` listings, logs).
//!
//! These labels are never used to decide liveness: a process in another pid
//! namespace, or under `hidepid`, is invisible in this `/proc` and alive.
//! Liveness is by open-file-description locks ([`super::lock`]).
//!
//! The start time is field 22 of `/proc/<pid>/stat` (clock ticks since boot).

use std::{fs, io};

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
        match read_stat(pid)? {
            Some((_, start_time)) => Ok(Self { pid, start_time }),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/stat is unreadable",
            )),
        }
    }
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
    fn exited_child_has_no_stat() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(read_stat(pid).unwrap(), None);
    }
}
