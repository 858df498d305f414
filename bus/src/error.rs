//! The bus crate's one error type.

use std::{fmt, io, path::PathBuf};

/// Everything that can go wrong in `shmbus-bus`.
///
/// Messages say what happened and, where there is one, what to do; each
/// variant's doc says what the caller should do. A handle stays usable
/// after an error unless the variant says otherwise.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{Error, RingConfig, RingWriter};
///
/// # let dir = std::env::temp_dir().join(format!("shmbus-doc-bus-error-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let config = RingConfig { capacity: 4096, max_message: 256, ..RingConfig::default() };
/// let mut writer = RingWriter::create(&dir.join("w.ring"), &config)?;
/// match writer.try_write(&[0; 1000]) {
///     Err(Error::TooLarge { len: 1000, max: 256 }) => {} // nothing was written
///     other => panic!("{other:?}"),
/// }
/// // A second writer of the same ring is refused: one writer per ring.
/// assert!(matches!(RingWriter::create(&dir.join("w.ring"), &config), Err(Error::AlreadyExists(_))));
/// # drop(writer); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A bus, topic or publisher name breaks the naming rules.
    ///
    /// What to do: use 1 to 96 bytes of ASCII letters, digits, `_`, `-`
    /// and `.`, not starting with `.`; `reason` names the rule.
    InvalidName {
        /// What kind of name ("bus", "topic", ...).
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A ring configuration value is out of range.
    ///
    /// What to do: fix the value the message names (see [`crate::RingConfig`]
    /// for each field's range).
    InvalidConfig(String),
    /// An I/O error on a segment file or directory.
    ///
    /// What to do: act on the OS error for the path named: `ENOSPC`, make
    /// room on the tmpfs or use a smaller ring; `EACCES` or a refused
    /// owner, run as the bus's user or enable group access; `EMFILE`, raise
    /// the open-file limit (every handle keeps two descriptors per ring).
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A segment with this name already exists.
    ///
    /// What to do: pick another publisher id; if its publisher is gone,
    /// `sweep_topic` (or `shmbus gc`) removes the file.
    AlreadyExists(PathBuf),
    /// The segment file does not exist (its publisher is gone or never came).
    ///
    /// What to do: nothing to read there; list the topic again
    /// ([`crate::list_rings`]) for its current rings.
    NotFound(PathBuf),
    /// The creator has not finished initializing the segment within the retry window.
    ///
    /// What to do: retry later; if its creator died, the file is removed
    /// once that creator is gone (by the next sweep).
    NotInitialized(PathBuf),
    /// The file is not a shmbus segment (wrong magic).
    ///
    /// What to do: something else wrote into the topic directory; remove
    /// the file. Other rings of the topic are unaffected.
    NotASegment(PathBuf),
    /// The segment was made by an incompatible shmbus layout version.
    ///
    /// What to do: run publishers and subscribers built with the same
    /// shmbus version (the message names both layouts).
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// Its layout version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The segment's size disagrees with its header (truncated or padded file).
    ///
    /// What to do: the file was altered outside shmbus; this ring cannot be
    /// read. Find what truncates files in the bus root (nothing in shmbus
    /// does).
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes the file has.
        found: u64,
    },
    /// A header field or ring record is invalid.
    ///
    /// What to do: this ring cannot be read further (`what` names the
    /// field); other rings are unaffected. A crashed or buggy writer, or a
    /// process that wrote into the files, damaged it.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Every subscriber slot of the ring is taken by a live subscriber.
    ///
    /// What to do: create the ring with more slots (`RingConfig::slots`, at
    /// most 1024), or close subscribers you do not need.
    NoFreeSlot(PathBuf),
    /// Block policy: the ring has no room until subscribers release some.
    ///
    /// What to do: retry later, or wait for space with a waiting call
    /// (`loan`, `write`).
    Full,
    /// A wait ran out of time.
    ///
    /// What to do: nothing was written or consumed; call again or give up.
    Timeout,
    /// The payload is larger than the ring's maximum message size.
    ///
    /// What to do: nothing was written; create the ring with a larger
    /// `max_message` (at most `capacity / 2 - 16`), or split the payload.
    TooLarge {
        /// Requested payload bytes.
        len: u64,
        /// The ring's maximum.
        max: u64,
    },
    /// Untethered eviction: this subscriber held the publisher back too long.
    ///
    /// What to do: the reader lost its place (and messages); open a new
    /// reader (the typed `shmbus` subscriber does this by itself).
    Evicted,
    /// This subscriber's slot was taken away (a foreign write to the
    /// control file: subscribers of a ring share it).
    ///
    /// What to do: open a new reader; find the process that writes into
    /// the control file (subscribers of a ring trust each other).
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
