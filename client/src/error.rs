//! The client crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in `shmbus`.
///
/// The common cases have their own variants so callers can match on them;
/// the rest of the bus layer's errors arrive as [`Error::Bus`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Block policy: the ring is full and `try_send` does not wait.
    #[error(
        "ring is full: subscribers have not released enough space (use send/send_timeout to wait)"
    )]
    Full,
    /// A `*_timeout` call ran out of time; carries the timeout it was given.
    /// Calls without a timeout (`send`, `recv`, `recv_async`) never return
    /// it.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The archived message is larger than the topic's maximum message size
    /// (or, for [`MessageLoan::write`](crate::MessageLoan::write), than the
    /// loan). Decided by counting the archive's bytes, the same in every
    /// build.
    #[error("message of {len} bytes exceeds the topic's maximum of {max} bytes: create the publisher with a larger max_message")]
    TooLarge {
        /// Archived size (exact, or a lower bound if rkyv failed on the way
        /// after outgrowing the maximum).
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// The topic carries another message type than this handle's.
    #[error("topic {topic:?} carries {found:?}, but this handle is for {expected:?}: publishers and subscribers of a topic must use the same type (and the same build of it)")]
    TypeMismatch {
        /// The topic.
        topic: String,
        /// This handle's type.
        expected: String,
        /// The type a publisher of the topic declared.
        found: String,
    },
    /// A received message failed rkyv validation; it was skipped.
    #[error("publisher {publisher} of topic {topic:?} sent bytes that are not a valid archived {type_name}: {reason} (the message was skipped)")]
    InvalidMessage {
        /// The topic.
        topic: String,
        /// The publisher id.
        publisher: String,
        /// The expected type.
        type_name: String,
        /// What the validator said, with the payload's length (never
        /// empty, in release builds too).
        reason: String,
    },
    /// rkyv could not serialize the message for a reason other than its
    /// size (a `Serialize` impl that failed), or a loan was committed
    /// without a valid archive in it.
    #[error("could not serialize the message: {0}")]
    Serialize(String),
    /// This subscriber held a publisher back longer than the topic allows
    /// (`evict_after`), or its slot was taken away, and it lost its place in
    /// that publisher's ring. Every receive call reports it the same way and
    /// has already rejoined the ring at its newest message; the messages in
    /// between are lost.
    #[error("evicted from publisher {publisher} of topic {topic:?} (it held the publisher back too long, or its slot was taken); rejoined at its newest message")]
    Evicted {
        /// The topic.
        topic: String,
        /// The publisher whose ring evicted us.
        publisher: String,
    },
    /// An error of the shared-memory layer (names, files, corrupt segments...).
    #[error(transparent)]
    Bus(shmbus_bus::Error),
}

impl From<shmbus_bus::Error> for Error {
    fn from(e: shmbus_bus::Error) -> Self {
        match e {
            shmbus_bus::Error::Full => Self::Full,
            shmbus_bus::Error::TooLarge { len, max } => Self::TooLarge {
                len: len as usize,
                max: max as usize,
            },
            other => Self::Bus(other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
