//! [`Publisher`]: writes rkyv archives straight into its own ring.

use std::{
    marker::PhantomData,
    mem::MaybeUninit,
    time::{Duration, Instant},
};

use rkyv::Archive;
use shmbus_bus::{self as bus, Loan, RingReader, RingWriter, StartAt, WaitStrategy, WriterStats};

use crate::{
    codec::{self, Fills, Publishable, RowFn, SerializeFail},
    Bus, Error, Result,
};

/// Publishes messages of type `T` on one topic, through a ring of its own.
///
/// `send` serializes with rkyv directly into the shared ring: no copy, no
/// intermediate buffer. Order is kept per publisher; subscribers merge
/// publishers fairly but not in a global order.
///
/// Dropping the publisher closes its ring: subscribers read what is left and
/// then see it gone.
///
/// A publisher is `Send`: move it to the thread that publishes. Two
/// processes never share one: each publisher is the only writer of its
/// ring. `client/examples/publisher.rs` is a whole program.
///
/// # Examples
///
/// ```
/// use shmbus::{Bus, TopicEvent};
/// use std::time::Duration;
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-publisher-{}", std::process::id()));
/// let bus = Bus::builder().root(&root).build()?;
/// let mut subscriber = bus.subscriber::<String>("log")?;
/// let mut publisher = bus.publisher_named::<String>("log", "ops")?;
///
/// publisher.send(&"started".to_string())?; // waits only while a subscriber is a ring behind
/// publisher.send_batch(&["a".to_string(), "b".to_string()])?; // one wake-up for both
/// assert_eq!(publisher.stats().published, 3);
///
/// let id = publisher.id().to_string();
/// drop(publisher); // closes the ring; what was sent is still read
/// for expected in ["started", "a", "b"] {
///     assert_eq!(subscriber.recv_timeout(Duration::from_secs(5))?.as_str(), expected);
/// }
/// assert!(matches!(subscriber.recv_timeout(Duration::from_millis(50)), Err(shmbus::Error::Timeout(_))));
/// assert!(subscriber.take_events().contains(&TopicEvent::PublisherGone { publisher: id }));
/// # drop(subscriber); std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), shmbus::Error>(())
/// ```
#[derive(Debug)]
pub struct Publisher<T: Archive> {
    writer: RingWriter,
    topic: String,
    id: String,
    /// The name the ring declares for `T`.
    type_name: String,
    wait: WaitStrategy,
    /// Bytes the last message archived to: the first buffer offered to rkyv.
    size_hint: usize,
    /// rkyv's scratch allocator, reused across messages.
    arena: codec::Scratch,
    /// The last message had [`Fill`](crate::Fill) fields: size the next
    /// one by counting alone (no first loan), since its fills cannot run
    /// before its exact size is known.
    count_first: bool,
    _type: PhantomData<fn(&T)>,
}

impl<T: Publishable> Publisher<T> {
    pub(crate) fn create(bus: &Bus, topic: &str, label: &str, ty: codec::TypeInfo) -> Result<Self> {
        let dir = bus.topic_dir(topic)?;
        let mut id = Bus::new_publisher_id(label)?;
        bus::create_dir_all(bus.root(), &dir, bus.dir_mode())?;
        let _ = bus::sweep_topic(&dir);
        check_topic_type(&dir, topic, &ty)?;
        let config = bus::RingConfig {
            type_name: ty.name.clone(),
            type_fingerprint: ty.fingerprint,
            ..bus.ring_config()
        };
        // Ids are unique per process (counter) and per host (pid and start
        // time); processes in different pid namespaces can still meet on one
        // pid and start tick: then take the next counter value.
        let mut attempts = 0;
        let writer = loop {
            match RingWriter::create(&bus::ring_path(&dir, &id)?, &config) {
                Err(bus::Error::AlreadyExists(_)) if attempts < ID_ATTEMPTS => {
                    attempts += 1;
                    id = Bus::new_publisher_id(label)?;
                }
                other => break other?,
            }
        };
        Ok(Self {
            writer,
            topic: topic.to_string(),
            id,
            type_name: ty.name,
            wait: WaitStrategy::default(),
            size_hint: 64,
            arena: codec::Scratch::new(),
            count_first: false,
            _type: PhantomData,
        })
    }

    /// This publisher's id (its ring's file name without `.ring`):
    /// `<label>-<pid>.<start time>-<n>`, at most
    /// [`shmbus_bus::MAX_NAME_LEN`] bytes; a label longer than 43 bytes
    /// appears as its first 26 bytes, `.` and a 16-digit hash of the whole.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The name this publisher's ring declares for `T` (see
    /// [`Bus::typed_publisher`]).
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// How `send` waits for space (default: spin briefly, then sleep).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Publishes `message`, waiting for space as long as it takes (Block
    /// policy; Overwrite never waits).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`], [`Error::Serialize`]; never [`Error::Timeout`].
    pub fn send(&mut self, message: &T) -> Result<()> {
        self.send_inner(message, None, Wait::Forever(self.wait), true)
    }

    /// Publishes `message` if there is space now.
    ///
    /// # Errors
    ///
    /// [`Error::Full`], [`Error::TooLarge`], [`Error::Serialize`].
    pub fn try_send(&mut self, message: &T) -> Result<()> {
        self.send_inner(message, None, Wait::Never, true)
    }

    /// Publishes `message`, waiting at most `timeout` for space. A timeout
    /// too long to be a point in time (`Duration::MAX`) waits forever.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] with `timeout`, [`Error::TooLarge`],
    /// [`Error::Serialize`].
    pub fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<()> {
        self.send_inner(message, None, Wait::after(self.wait, timeout), true)
    }

    /// Publishes every message with one tail store and at most one wake-up.
    /// Returns how many were published before an error, if any.
    ///
    /// # Errors
    ///
    /// As [`Self::send`]; messages before the failing one are published.
    pub fn send_batch<'m>(&mut self, messages: impl IntoIterator<Item = &'m T>) -> Result<usize>
    where
        T: 'm,
    {
        let mut n = 0;
        for m in messages {
            if let Err(e) = self.send_inner(m, None, Wait::Forever(self.wait), false) {
                self.writer.publish();
                return Err(e);
            }
            n += 1;
        }
        self.writer.publish();
        Ok(n)
    }

    /// Publishes `message`, a value of a writer-side twin of `T` (same
    /// archived form: `#[rkyv(as = ArchivedT)]`), calling `fill` to write
    /// the rows of its [`Fill`](crate::Fill) fields straight into the ring.
    /// Waits for space like [`Self::send`]. Subscribers of `T` read it as
    /// an archived `T`: the compiler checks the archived types are one, and
    /// the ring's type name and fingerprint stay `T`'s.
    ///
    /// `fill` is called once per row of each `Fill` field, in order, with
    /// the row zeroed (see [`Fill`](crate::Fill)); not at all if sending
    /// fails before the message is written (too large, full, timeout). A
    /// panic in `fill` publishes nothing and leaves the publisher usable.
    ///
    /// # Errors
    ///
    /// As [`Self::send`].
    ///
    /// # Examples
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use shmbus::Fill;
    ///
    /// #[derive(Archive, Serialize)]
    /// struct Blob { id: u64, bytes: Vec<u8> }
    ///
    /// #[derive(Archive, Serialize)]
    /// #[rkyv(as = ArchivedBlob)]
    /// struct BlobOut { id: u64, bytes: Fill }
    ///
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-as-{}", std::process::id()));
    /// let bus = shmbus::Bus::builder().root(&root).build()?;
    /// let mut subscriber = bus.subscriber::<Blob>("blobs")?;
    /// let mut publisher = bus.publisher::<Blob>("blobs")?;
    /// let blob = BlobOut { id: 9, bytes: Fill::rows(2, 3) };
    /// publisher.send_filled(&blob, |row, bytes| bytes.fill(b'a' + row.index as u8))?;
    /// let got = subscriber.recv_timeout(std::time::Duration::from_secs(5))?;
    /// assert_eq!((got.id.to_native(), got.bytes.as_slice()), (9, &b"aaabbb"[..]));
    /// # drop(got); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn send_filled<M>(
        &mut self,
        message: &M,
        mut fill: impl FnMut(crate::Row, &mut [u8]),
    ) -> Result<()>
    where
        M: Publishable + Archive<Archived = T::Archived>,
    {
        self.send_inner(message, Some(&mut fill), Wait::Forever(self.wait), true)
    }

    /// Like [`Self::send_filled`], if there is space now (else `fill` is
    /// not called).
    ///
    /// # Errors
    ///
    /// As [`Self::try_send`].
    ///
    /// # Examples
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use shmbus::{Error, Fill};
    ///
    /// #[derive(Archive, Serialize)]
    /// struct Blob { bytes: Vec<u8> }
    /// #[derive(Archive, Serialize)]
    /// #[rkyv(as = ArchivedBlob)]
    /// struct BlobOut { bytes: Fill }
    ///
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-tsf-{}", std::process::id()));
    /// let bus = shmbus::Bus::builder().root(&root).capacity(1 << 16).max_message(1 << 14).build()?;
    /// let _subscriber = bus.subscriber::<Blob>("blobs")?; // holds what is sent
    /// let mut publisher = bus.publisher::<Blob>("blobs")?;
    /// let blob = BlobOut { bytes: Fill::bytes(10_000) };
    /// let mut written = 0;
    /// let full = loop {
    ///     match publisher.try_send_filled(&blob, |_, b| { b.fill(1); written += 1 }) {
    ///         Ok(()) => {}
    ///         Err(Error::Full) => break true,
    ///         Err(e) => return Err(e),
    ///     }
    /// };
    /// assert!(full && written >= 3); // `fill` ran only for messages sent
    /// # drop((_subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn try_send_filled<M>(
        &mut self,
        message: &M,
        mut fill: impl FnMut(crate::Row, &mut [u8]),
    ) -> Result<()>
    where
        M: Publishable + Archive<Archived = T::Archived>,
    {
        self.send_inner(message, Some(&mut fill), Wait::Never, true)
    }

    /// Serializes `message` in place: first into a generous loan sized by
    /// the last message; if the archive outgrew it, the writer counted its
    /// exact size, and the message is written again into a loan of exactly
    /// that size. So a message never asks for more ring space than it needs
    /// (no `max_message` loan that pads the rest of a lap or waits for a
    /// megabyte to free), and sizes are decided by counting, not by reading
    /// rkyv's error messages.
    ///
    /// A message with [`Fill`](crate::Fill) fields is always written in the
    /// second pass, the only one that runs their closures: the first pass
    /// counts them without writing, so each closure runs once, into the
    /// space that is committed. After such a message the first pass is a
    /// count alone, with no loan.
    fn send_inner<'f, M: Publishable>(
        &mut self,
        message: &M,
        fill: Option<&'f mut RowFn<'f>>,
        wait: Wait,
        publish: bool,
    ) -> Result<()> {
        let max = self.writer.max_message();
        let needed = if self.count_first {
            match codec::serialize_into(message, &mut [], &mut self.arena, Fills::Defer) {
                // Empty: an archive of no bytes (a unit type) fits anywhere.
                Ok(len) => {
                    self.count_first = false;
                    len
                }
                // No fill this time: the next message tries a loan first.
                Err(SerializeFail::NoRoom { needed }) => {
                    self.count_first = false;
                    needed
                }
                Err(SerializeFail::Deferred { needed }) => needed,
                Err(SerializeFail::Failed { error, reached }) => {
                    return Err(self.failed(&error, reached, max));
                }
            }
        } else {
            let hint = self.size_hint.min(max);
            // First try: room for the last size, and up to twice that if free now.
            let want = hint.saturating_mul(2).max(256);
            let mut loan = wait.loan(&mut self.writer, hint, want)?;
            match codec::serialize_into(message, loan.as_uninit(), &mut self.arena, Fills::Defer) {
                Ok(len) => {
                    self.size_hint = len.max(16);
                    commit(loan, len, publish);
                    return Ok(());
                }
                Err(SerializeFail::NoRoom { needed }) => needed,
                Err(SerializeFail::Deferred { needed }) => {
                    self.count_first = true;
                    needed
                }
                Err(SerializeFail::Failed { error, reached }) => {
                    return Err(self.failed(&error, reached, max));
                }
            }
            // The unused loan is dropped here: it publishes nothing.
        };
        if needed > max {
            return Err(Error::TooLarge { len: needed, max });
        }
        self.size_hint = needed.max(16);
        let mut loan = wait.loan(&mut self.writer, needed, needed)?;
        match codec::serialize_into(message, loan.as_uninit(), &mut self.arena, Fills::Run(fill)) {
            Ok(len) => {
                commit(loan, len, publish);
                Ok(())
            }
            Err(SerializeFail::NoRoom { needed: again }) => Err(Error::Serialize(format!(
                "{}: the archive grew from {needed} to {again} bytes between two \
                 serializations of one message (a Serialize impl that is not deterministic)",
                self.type_name
            ))),
            // Not with `Fills::Run` and a buffer that holds the archive.
            Err(SerializeFail::Deferred { .. }) => Err(Error::Serialize(format!(
                "{}: a Fill field was not written in the pass that had room for it",
                self.type_name
            ))),
            Err(SerializeFail::Failed { error, reached }) => Err(self.failed(&error, reached, max)),
        }
    }

    fn failed(&self, error: &rkyv::rancor::BoxedError, reached: usize, max: usize) -> Error {
        if reached > max {
            // Failed after outgrowing the ring's maximum: that is the news.
            Error::TooLarge { len: reached, max }
        } else {
            Error::Serialize(codec::serialize_reason(error, &self.type_name))
        }
    }

    /// Reserves `len` bytes in the ring to fill in place: with
    /// [`MessageLoan::write`] (rkyv serializes into it) or raw bytes. Nothing is
    /// published unless the loan is committed.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`]; waits for space like `send`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shmbus::Bus;
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-loan-{}", std::process::id()));
    /// # let bus = Bus::builder().root(&root).build().unwrap();
    /// let mut publisher = bus.publisher::<Vec<u32>>("v").unwrap();
    /// let mut loan = publisher.loan(4096).unwrap();
    /// loan.write(&vec![1, 2, 3]).unwrap(); // serialized in the ring
    /// loan.commit().unwrap(); // now visible; dropping instead publishes nothing
    /// # drop(publisher); std::fs::remove_dir_all(&root).ok();
    /// ```
    pub fn loan(&mut self, len: usize) -> Result<MessageLoan<'_, T>> {
        let loan = Wait::Forever(self.wait).loan(&mut self.writer, len, len)?;
        Ok(MessageLoan {
            loan,
            arena: &mut self.arena,
            type_name: &self.type_name,
            written: None,
            _type: PhantomData,
        })
    }

    /// Publishes bytes that already are a valid archive of `T` (forwarding,
    /// replay). Subscribers validate them like any message.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`]; waits for space like `send`.
    pub fn send_bytes(&mut self, archive: &[u8]) -> Result<()> {
        self.writer
            .write(archive, self.wait, None)
            .map_err(|e| Wait::Forever(self.wait).error(e))
    }

    /// Ring counters.
    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Frees the slots of subscribers whose process died (a blocked publisher
    /// also does this by itself). Returns how many were freed.
    pub fn reap_dead_subscribers(&mut self) -> usize {
        self.writer.reap_dead_subscribers()
    }
}

/// Commits a loan, publishing now or with the batch.
fn commit(loan: Loan<'_>, len: usize, publish: bool) {
    if publish {
        loan.commit(len);
    } else {
        loan.commit_deferred(len);
    }
}

/// How many other ids a publisher tries when its id is taken.
const ID_ATTEMPTS: u32 = 16;

/// How a send waits for ring space.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// `try_send`: not at all.
    Never,
    /// `send`: as long as it takes.
    Forever(WaitStrategy),
    /// `send_timeout`: until `deadline`; `timeout` is what the caller asked.
    Until {
        strategy: WaitStrategy,
        deadline: Instant,
        timeout: Duration,
    },
}

impl Wait {
    /// Waiting at most `timeout` from now; forever if the deadline is past
    /// what `Instant` can represent (saturating, never a panic).
    fn after(strategy: WaitStrategy, timeout: Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => Self::Until {
                strategy,
                deadline,
                timeout,
            },
            None => Self::Forever(strategy),
        }
    }

    /// Reserves at least `len` bytes, up to `want` if free now.
    #[inline(always)]
    fn loan<'w>(self, writer: &'w mut RingWriter, len: usize, want: usize) -> Result<Loan<'w>> {
        let result = match self {
            // The bus has no non-waiting `loan_up_to`; a zero timeout is one
            // reservation attempt, and its `Timeout` means exactly "full".
            // (Asked of the bus layer: `RingWriter::try_loan_up_to`.)
            Self::Never => writer
                .loan_up_to(len, want, WaitStrategy::BusySpin, Some(Duration::ZERO))
                .map_err(|e| match e {
                    bus::Error::Timeout => bus::Error::Full,
                    other => other,
                }),
            Self::Forever(strategy) => writer.loan_up_to(len, want, strategy, None),
            Self::Until {
                strategy, deadline, ..
            } => writer.loan_up_to(
                len,
                want,
                strategy,
                Some(deadline.saturating_duration_since(Instant::now())),
            ),
        };
        result.map_err(|e| self.error(e))
    }

    /// The client error for a bus error of a reservation made this way.
    #[cold]
    #[inline(never)]
    fn error(self, e: bus::Error) -> Error {
        match (e, self) {
            (bus::Error::Timeout, Self::Until { timeout, .. }) => Error::Timeout(timeout),
            // A wait without a deadline never times out; pass on anything
            // else unchanged rather than invent a duration.
            (other, _) => other.into(),
        }
    }
}

/// Refuses a publisher whose type differs from the topic's live publishers.
fn check_topic_type(dir: &std::path::Path, topic: &str, ty: &codec::TypeInfo) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if bus::publisher_id_of(&path).is_none() {
            continue;
        }
        // Opening joins as a subscriber for a moment; cheap and it validates.
        if let Ok(reader) = RingReader::open(&path, StartAt::Latest) {
            let info = reader.info();
            if reader.publisher_alive()
                && info.type_fingerprint != 0
                && info.type_fingerprint != ty.fingerprint
            {
                return Err(Error::TypeMismatch {
                    topic: topic.to_string(),
                    expected: ty.name.clone(),
                    found: info.type_name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Space reserved in a publisher's ring. Commit to publish; drop to discard.
///
/// Made by [`Publisher::loan`]. While it lives the publisher is borrowed,
/// and nobody sees its bytes: a loan that is dropped, or whose process dies
/// before the commit, publishes nothing.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-message-loan-{}", std::process::id()));
/// let bus = shmbus::Bus::builder().root(&root).build()?;
/// let mut subscriber = bus.subscriber::<Vec<u32>>("v")?;
/// let mut publisher = bus.publisher::<Vec<u32>>("v")?;
///
/// let mut discarded = publisher.loan(1024)?;
/// discarded.write(&vec![0; 4])?;
/// drop(discarded); // never published
///
/// let mut loan = publisher.loan(1024)?; // reserved in the ring
/// loan.write(&vec![1, 2, 3])?; // serialized into it
/// loan.commit()?; // published
///
/// let got = subscriber.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!(got.as_slice(), [1, 2, 3]);
/// # drop(got); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), shmbus::Error>(())
/// ```
#[derive(Debug)]
pub struct MessageLoan<'a, T> {
    loan: Loan<'a>,
    arena: &'a mut codec::Scratch,
    type_name: &'a str,
    written: Option<usize>,
    _type: PhantomData<fn(&T)>,
}

impl<T: Publishable> MessageLoan<'_, T> {
    /// Serializes `message` into the loan, replacing anything written
    /// before. If it fails, nothing is written any more (a previous write
    /// was overwritten): [`Self::commit`] then fails too. The closures of
    /// [`Fill`](crate::Fill) fields run here, into the loan, if their bytes
    /// fit it (they may have run when the archive as a whole then turns out
    /// too large: size the loan to the archive).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] with the archive's exact size if it does not fit
    /// the loan; [`Error::Serialize`].
    pub fn write(&mut self, message: &T) -> Result<()> {
        self.written = None;
        let max = self.loan.len();
        match codec::serialize_into(message, self.loan.as_uninit(), self.arena, Fills::Run(None)) {
            Ok(len) => {
                self.written = Some(len);
                Ok(())
            }
            Err(SerializeFail::NoRoom { needed } | SerializeFail::Deferred { needed }) => {
                Err(Error::TooLarge { len: needed, max })
            }
            Err(SerializeFail::Failed { reached, .. }) if reached > max => {
                Err(Error::TooLarge { len: reached, max })
            }
            Err(SerializeFail::Failed { error, .. }) => Err(Error::Serialize(
                codec::serialize_reason(&error, self.type_name),
            )),
        }
    }

    /// The loan's bytes, for writing an archive by hand; then
    /// [`Self::commit_bytes`].
    pub fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        self.loan.as_uninit()
    }

    /// Publishes what [`Self::write`] wrote.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if nothing was written (or the last write
    /// failed); the loan is dropped and publishes nothing.
    pub fn commit(self) -> Result<()> {
        match self.written {
            Some(len) => {
                self.loan.commit(len);
                Ok(())
            }
            None => Err(Error::Serialize(
                "commit of a loan that holds no archive: write() was not called or failed".into(),
            )),
        }
    }

    /// Publishes the first `len` bytes written through [`Self::as_uninit`].
    ///
    /// # Safety
    ///
    /// - the first `len` bytes were initialized;
    /// - `len` is at most the loan's length.
    pub unsafe fn commit_bytes(self, len: usize) {
        self.loan.commit(len);
    }
}
