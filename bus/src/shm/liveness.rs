//! Who is alive: a process named by pid *and* start time, so a reused pid
//! never passes for the process that died.
//!
//! The start time is field 22 of `/proc/<pid>/stat` (clock ticks since boot).
//! A process is dead when its `/proc` entry is gone, shows a different start
//! time, or is a zombie: positive proof, never a timer.

use std::{fs, io};

/// A process identity that survives pid reuse.
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
    /// assert!(me.is_alive());
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

    /// True unless the process has provably exited (or the pid was reused).
    pub fn is_alive(&self) -> bool {
        is_alive(u64::from(self.pid), self.start_time)
    }
}

/// True unless process `pid` that started at `start_time` has provably exited.
/// A pid of 0 or above `u32::MAX` (a corrupt slot) counts as dead.
pub fn is_alive(pid: u64, start_time: u64) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    if pid == 0 {
        return false;
    }
    match read_stat(pid) {
        Ok(Some((state, start))) => start == start_time && state != b'Z' && state != b'X',
        Ok(None) => false,
        // Unreadable for another reason (e.g. permissions): not proof of death.
        Err(_) => true,
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
    fn current_process_is_alive() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_alive());
        assert!(
            !is_alive(u64::from(me.pid), me.start_time + 1),
            "other start time"
        );
        assert!(!is_alive(0, 0));
        assert!(!is_alive(u64::MAX, 0));
    }

    #[test]
    fn exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let (_, start) = read_stat(pid).unwrap().unwrap_or((b'Z', 0));
        child.wait().unwrap();
        assert!(!is_alive(u64::from(pid), start));
    }
}
