//! One gateway per bus: an exclusive `flock` on `<root>/<bus>/.shmbus-zenoh.lock`.
//!
//! Two gateways on one bus would export each publisher twice and import
//! each remote stream twice. The lock is held for the process's life and
//! released by the kernel when it exits or dies (also by `SIGKILL`), so a
//! restarted gateway never finds a stale lock. The file names the holder's
//! pid for the error message.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another gateway holds it.
    #[error("another shmbus-zenoh (pid {holder}) already runs on this bus: {path} is locked")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as it wrote it (`?` if unreadable).
        holder: String,
    },
    /// The file or the bus directory could not be made or locked.
    #[error("{path}: {source}")]
    Io {
        /// The lock file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct GatewayLock {
    _file: File,
    path: PathBuf,
}

impl GatewayLock {
    /// Takes the lock of bus `bus` under `root`, creating the bus
    /// directory if needed.
    ///
    /// # Errors
    ///
    /// [`LockError::Held`] if another process holds it.
    pub fn take(root: &Path, bus: &str) -> Result<Self, LockError> {
        let dir = root.join(bus);
        shmbus_bus::create_dir_all(root, &dir, 0o700).map_err(|e| LockError::Io {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = dir.join(".shmbus-zenoh.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is
        // passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() || holder.len() > 20 {
                    "?".to_owned()
                } else {
                    holder.to_owned()
                };
                return Err(LockError::Held { path, holder });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_bus_is_refused_naming_the_holder() {
        let root = std::env::temp_dir().join(format!("shmbus-zenoh-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let first = GatewayLock::take(&root, "b").unwrap();
        match GatewayLock::take(&root, "b") {
            Err(LockError::Held { holder, path }) => {
                assert_eq!(holder, std::process::id().to_string());
                assert_eq!(path, first.path());
            }
            other => panic!("{other:?}"),
        }
        // Another bus is another lock.
        let other = GatewayLock::take(&root, "c").unwrap();
        drop((first, other));
        // Released on drop (the kernel releases it on exit the same way).
        let again = GatewayLock::take(&root, "b").unwrap();
        drop(again);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
