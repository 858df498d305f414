//! The client crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in `shmbus`.
///
/// The common cases have their own variants so callers can match on them;
/// the rest of the bus layer's errors arrive as [`Error::Bus`]. Each
/// variant's doc says what to do about it. Every error leaves the handle
/// that returned it usable: a subscriber skips what it could not read and
/// goes on, a publisher has published nothing of the failed message.
///
/// # Examples
///
/// A publisher that must not wait, and a subscriber with a deadline:
///
/// ```
/// use shmbus::{Bus, Error};
/// use std::time::Duration;
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-error-{}", std::process::id()));
/// let bus = Bus::builder().root(&root).capacity(4096).max_message(256).build()?;
/// let mut subscriber = bus.subscriber::<u64>("ticks")?;
/// let mut publisher = bus.publisher::<u64>("ticks")?;
///
/// let mut sent = 0;
/// loop {
///     match publisher.try_send(&sent) {
///         Ok(()) => sent += 1,
///         // The subscriber has not read yet: drop this one, or wait with send().
///         Err(Error::Full) => break,
///         Err(e) => return Err(e),
///     }
/// }
/// assert!(sent > 0);
/// for n in 0..sent {
///     assert_eq!(*subscriber.recv_timeout(Duration::from_secs(5))?, n);
/// }
/// match subscriber.recv_timeout(Duration::from_millis(10)) {
///     Err(Error::Timeout(after)) => assert_eq!(after, Duration::from_millis(10)),
///     other => panic!("nothing more was sent: {other:?}"),
/// }
/// # drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), shmbus::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Block policy: the ring is full and `try_send` does not wait.
    ///
    /// What to do: drop the message, retry later, or wait for space with
    /// `send` / `send_timeout`. A ring that is often full has a slow
    /// subscriber (`shmbus ls` shows its lag) or is too small for bursts
    /// (`BusBuilder::capacity`).
    #[error(
        "ring is full: subscribers have not released enough space (use send/send_timeout to wait)"
    )]
    Full,
    /// A `*_timeout` call ran out of time; carries the timeout it was given.
    /// Calls without a timeout (`send`, `recv`, `recv_async`) never return
    /// it.
    ///
    /// What to do: nothing was sent or consumed; call again, or treat the
    /// silence as your application's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The archived message is larger than the topic's maximum message size
    /// (or, for [`MessageLoan::write`](crate::MessageLoan::write), than the
    /// loan). Decided by counting the archive's bytes, the same in every
    /// build.
    ///
    /// What to do: nothing was published. Create the topic's publishers
    /// with a larger `BusBuilder::max_message` (at most half the ring's
    /// capacity), or a larger loan; split the message otherwise.
    #[error("message of {len} bytes exceeds the topic's maximum of {max} bytes: create the publisher with a larger max_message")]
    TooLarge {
        /// Archived size (exact, or a lower bound if rkyv failed on the way
        /// after outgrowing the maximum).
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// The topic carries another message type than this handle's.
    ///
    /// What to do: give every publisher and subscriber of a topic the same
    /// message type (ideally from one shared crate), or declare the same
    /// name on both sides with `Bus::typed_publisher` /
    /// `Bus::typed_subscriber`. A subscriber that gets it for a new
    /// publisher keeps reading the others; that publisher is ignored.
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
    ///
    /// What to do: receive again, reading goes on with the next message.
    /// The publisher (named here) writes bytes that are not a valid archive
    /// of the type: a bug in it, a build with another definition of the
    /// type under the same name, or raw bytes sent with `send_bytes`.
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
    ///
    /// What to do: nothing was published; the reason names what failed.
    /// Fix the `Serialize` impl, or `write` a message into the loan before
    /// `commit`.
    #[error("could not serialize the message: {0}")]
    Serialize(String),
    /// This subscriber held a publisher back longer than the topic allows
    /// (`evict_after`), or its slot was taken away, and it lost its place in
    /// that publisher's ring. Every receive call reports it the same way and
    /// has already rejoined the ring at its newest message; the messages in
    /// between are lost.
    ///
    /// What to do: receive again (it already rejoined); resynchronize your
    /// state if the lost messages mattered. To be evicted less, read faster,
    /// hold samples for less time, or create the topic with a larger ring
    /// or a longer `evict_after`.
    #[error("evicted from publisher {publisher} of topic {topic:?} (it held the publisher back too long, or its slot was taken); rejoined at its newest message")]
    Evicted {
        /// The topic.
        topic: String,
        /// The publisher whose ring evicted us.
        publisher: String,
    },
    /// An error of the shared-memory layer (names, files, corrupt segments...).
    ///
    /// What to do: see the variant of [`shmbus_bus::Error`]; each says what
    /// to do. From a receive, the subscriber has stopped reading only the
    /// ring named in the error and goes on with the others.
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
