//! Names on disk: `<root>/<bus>/<topic>/<publisher-id>.ring` (a ring's data
//! file) beside `<publisher-id>.ctl` (its control file).
//!
//! Names are validated before they touch the file system: 1 to
//! [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `_`, `-` and `.`, not
//! starting with `.` (so no `..`, no hidden files, no `/`).

use std::path::{Path, PathBuf};

use crate::Error;

/// Prefix of the default root of all buses: the default root is
/// `/dev/shm/shmbus-<euid>` (see [`default_root`]), one per user, so a
/// second user on the host neither collides with nor can squat another's.
pub const DEFAULT_ROOT: &str = "/dev/shm/shmbus";
/// Environment variable that overrides [`DEFAULT_ROOT`].
pub const ROOT_ENV: &str = "SHMBUS_ROOT";
/// Name of the default bus.
pub const DEFAULT_BUS: &str = "default";
/// Longest bus, topic or publisher name.
pub const MAX_NAME_LEN: usize = 96;
/// File extension of a ring's data file.
pub const RING_EXT: &str = "ring";
/// File extension of a ring's control file.
pub const CTL_EXT: &str = "ctl";

/// Checks a bus, topic or publisher-id name.
///
/// # Errors
///
/// [`Error::InvalidName`] naming the rule that is broken.
///
/// # Examples
///
/// ```
/// use shmbus_bus::validate_name;
/// assert!(validate_name("topic", "sensors.imu-0").is_ok());
/// assert!(validate_name("topic", "../etc").is_err());
/// assert!(validate_name("topic", "a/b").is_err());
/// ```
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), Error> {
    let fail = |reason| {
        Err(Error::InvalidName {
            kind,
            name: name.chars().take(2 * MAX_NAME_LEN).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("it is longer than 96 bytes");
    }
    if name.starts_with('.') {
        return fail("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return fail("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// The root directory: `SHMBUS_ROOT` if set and non-empty, else this
/// user's `/dev/shm/shmbus-<euid>`.
///
/// # Examples
///
/// ```
/// # std::env::remove_var("SHMBUS_ROOT");
/// // SAFETY of the example: geteuid has no preconditions.
/// let uid = unsafe { libc::geteuid() };
/// assert_eq!(
///     shmbus_bus::default_root(),
///     std::path::PathBuf::from(format!("/dev/shm/shmbus-{uid}"))
/// );
/// ```
pub fn default_root() -> PathBuf {
    match std::env::var_os(ROOT_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => crate::shm::fs::default_root_for_user(),
    }
}

/// `<root>/<bus>/<topic>`, names validated.
///
/// # Errors
///
/// [`Error::InvalidName`] for a bad bus or topic name.
pub fn topic_dir(root: &Path, bus: &str, topic: &str) -> Result<PathBuf, Error> {
    validate_name("bus", bus)?;
    validate_name("topic", topic)?;
    Ok(root.join(bus).join(topic))
}

/// `<topic_dir>/<publisher_id>.ring`, id validated.
///
/// # Errors
///
/// [`Error::InvalidName`] for a bad publisher id.
pub fn ring_path(topic_dir: &Path, publisher_id: &str) -> Result<PathBuf, Error> {
    validate_name("publisher id", publisher_id)?;
    Ok(topic_dir.join(format!("{publisher_id}.{RING_EXT}")))
}

/// The publisher id of a ring file name (`<id>.ring`), if it is one.
pub fn publisher_id_of(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_suffix(".ring")?;
    validate_name("publisher id", id).ok()?;
    Some(id)
}

/// Creates `dir` (under the bus root `root`) and its missing parents with
/// mode 0o700, or 0o770 when `mode` grants the group anything, never
/// following a symlink, and checks every directory from `root` down: owned
/// by this user (or, in group mode, shared with one of its groups), not
/// writable by others. A tree owned by another user is refused in owner mode.
///
/// # Errors
///
/// [`Error::Io`] naming the directory and the rule it breaks.
pub fn create_dir_all(root: &Path, dir: &Path, mode: u32) -> Result<(), Error> {
    let access = crate::shm::fs::Access::from_file_mode(mode);
    crate::shm::fs::ensure_dir(root, dir, access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "default", "x.y_z-0", &"n".repeat(MAX_NAME_LEN)] {
            validate_name("t", good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"n".repeat(MAX_NAME_LEN + 1),
            "a\0",
        ] {
            assert!(validate_name("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ring_file_names() {
        let dir = Path::new("/r/b/t");
        let p = ring_path(dir, "p1").unwrap();
        assert_eq!(p, Path::new("/r/b/t/p1.ring"));
        assert_eq!(publisher_id_of(&p), Some("p1"));
        assert_eq!(publisher_id_of(Path::new("/r/.p1.ring.tmp")), None);
        assert!(ring_path(dir, "../x").is_err());
    }
}
