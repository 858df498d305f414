//! The bus crate's one error type.

use std::{fmt, io, path::PathBuf};

/// Everything that can go wrong in `shmbus-bus`.
///
/// Messages say what happened and, where there is one, what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A bus, topic or publisher name breaks the naming rules.
    InvalidName {
        /// What kind of name ("bus", "topic", ...).
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A ring configuration value is out of range.
    InvalidConfig(String),
    /// An I/O error on a segment file or directory.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A segment with this name already exists.
    AlreadyExists(PathBuf),
    /// The segment file does not exist (its publisher is gone or never came).
    NotFound(PathBuf),
    /// The creator has not finished initializing the segment within the retry window.
    NotInitialized(PathBuf),
    /// The file is not a shmbus segment (wrong magic).
    NotASegment(PathBuf),
    /// The segment was made by an incompatible shmbus layout version.
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// Its layout version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The segment's size disagrees with its header (truncated or padded file).
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes the file has.
        found: u64,
    },
    /// A header field or ring record is invalid.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Every subscriber slot of the ring is taken by a live subscriber.
    NoFreeSlot(PathBuf),
    /// Block policy: the ring has no room until subscribers release some.
    Full,
    /// A wait ran out of time.
    Timeout,
    /// The payload is larger than the ring's maximum message size.
    TooLarge {
        /// Requested payload bytes.
        len: u64,
        /// The ring's maximum.
        max: u64,
    },
    /// Untethered eviction: this subscriber held the publisher back too long.
    Evicted,
    /// This subscriber's slot was taken away (a foreign write to the
    /// control file: subscribers of a ring share it).
    SlotLost,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { kind, name, reason } => {
                write!(f, "invalid {kind} name {name:?}: {reason}")
            }
            Self::InvalidConfig(what) => write!(f, "invalid ring configuration: {what}"),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::AlreadyExists(p) => write!(
                f,
                "{} already exists: pick another publisher id, or remove the file if its publisher is gone",
                p.display()
            ),
            Self::NotFound(p) => write!(f, "{} does not exist", p.display()),
            Self::NotInitialized(p) => write!(
                f,
                "{} was not initialized in time: its creator may have died while creating it (it is removed once that creator is gone)",
                p.display()
            ),
            Self::NotASegment(p) => write!(f, "{} is not a shmbus segment", p.display()),
            Self::VersionMismatch { path, found, expected } => write!(
                f,
                "{} has layout version {found} ({}), this build speaks {expected} ({}): run publishers and subscribers of the same shmbus version",
                path.display(),
                layout_name(*found),
                layout_name(*expected),
            ),
            Self::SizeMismatch { path, expected, found } => write!(
                f,
                "{} is {found} bytes but its header says {expected}: the file was truncated or altered",
                path.display()
            ),
            Self::Corrupt { path, what } => write!(f, "{} is corrupt: {what}", path.display()),
            Self::NoFreeSlot(p) => write!(
                f,
                "{} has no free subscriber slot: create the ring with more slots",
                p.display()
            ),
            Self::Full => f.write_str("ring is full: subscribers have not released enough space"),
            Self::Timeout => f.write_str("timed out"),
            Self::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the ring's maximum of {max} bytes: create the topic with a larger max message size"
            ),
            Self::Evicted => f.write_str(
                "subscriber was evicted for holding the publisher back too long: resubscribe to continue (messages were lost)",
            ),
            Self::SlotLost => f.write_str(
                "subscriber slot was taken by a foreign write to the control file: resubscribe to continue",
            ),
        }
    }
}

/// What each layout version was, for error messages.
fn layout_name(version: u32) -> &'static str {
    match version {
        1 => "one file per ring",
        2 => "a data file and a control file per ring",
        _ => "unknown to this build",
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}
