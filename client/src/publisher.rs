//! [`Publisher`]: writes rkyv archives straight into its own ring.

use std::{marker::PhantomData, mem::MaybeUninit, time::Duration};

use rkyv::Archive;
use shmbus_bus::{self as bus, Loan, RingReader, RingWriter, StartAt, WaitStrategy, WriterStats};

use crate::{
    codec::{self, Publishable},
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
#[derive(Debug)]
pub struct Publisher<T: Archive> {
    writer: RingWriter,
    topic: String,
    id: String,
    wait: WaitStrategy,
    /// Bytes the last message archived to: the first buffer offered to rkyv.
    size_hint: usize,
    /// rkyv's scratch allocator, reused across messages.
    arena: codec::Scratch,
    _type: PhantomData<fn(&T)>,
}

impl<T: Publishable> Publisher<T> {
    pub(crate) fn create(bus: &Bus, topic: &str, label: &str) -> Result<Self> {
        let dir = bus.topic_dir(topic)?;
        bus::create_dir_all(&dir, bus.dir_mode())?;
        let _ = bus::sweep_topic(&dir);
        let type_name = codec::type_name::<T>();
        let fingerprint = codec::fingerprint::<T>();
        check_topic_type(&dir, topic, type_name, fingerprint)?;
        let id = Bus::new_publisher_id(label);
        let config = bus::RingConfig {
            type_name: type_name.to_string(),
            type_fingerprint: fingerprint,
            ..bus.ring_config()
        };
        let writer = RingWriter::create(&bus::ring_path(&dir, &id)?, &config)?;
        Ok(Self {
            writer,
            topic: topic.to_string(),
            id,
            wait: WaitStrategy::default(),
            size_hint: 64,
            arena: codec::Scratch::new(),
            _type: PhantomData,
        })
    }

    /// This publisher's id (its ring's file name without `.ring`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
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
    /// [`Error::TooLarge`], [`Error::Serialize`].
    pub fn send(&mut self, message: &T) -> Result<()> {
        self.send_inner(message, self.wait, None, true)
    }

    /// Publishes `message` if there is space now.
    ///
    /// # Errors
    ///
    /// [`Error::Full`], [`Error::TooLarge`], [`Error::Serialize`].
    pub fn try_send(&mut self, message: &T) -> Result<()> {
        match self.send_inner(message, WaitStrategy::BusySpin, Some(Duration::ZERO), true) {
            Err(Error::Timeout(_)) => Err(Error::Full),
            other => other,
        }
    }

    /// Publishes `message`, waiting at most `timeout` for space.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::TooLarge`], [`Error::Serialize`].
    pub fn send_timeout(&mut self, message: &T, timeout: Duration) -> Result<()> {
        self.send_inner(message, self.wait, Some(timeout), true)
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
            if let Err(e) = self.send_inner(m, self.wait, None, false) {
                self.writer.publish();
                return Err(e);
            }
            n += 1;
        }
        self.writer.publish();
        Ok(n)
    }

    fn send_inner(
        &mut self,
        message: &T,
        wait: WaitStrategy,
        timeout: Option<Duration>,
        publish: bool,
    ) -> Result<()> {
        let max = self.writer.max_message();
        let hint = self.size_hint.min(max);
        // First try: room for the last size, and up to twice that if free now.
        let mut loan = self
            .writer
            .loan_up_to(hint, hint.saturating_mul(2).max(256), wait, timeout)
            .map_err(|e| timeout_err(e, timeout))?;
        let len = match codec::serialize_into(message, loan.as_uninit(), &mut self.arena) {
            Ok(len) => len,
            Err(first) => {
                if loan.len() >= max {
                    return Err(too_large_or(first, max));
                }
                // Second try: the largest message the ring takes.
                loan = self
                    .writer
                    .loan(max, wait, timeout)
                    .map_err(|e| timeout_err(e, timeout))?;
                codec::serialize_into(message, loan.as_uninit(), &mut self.arena)
                    .map_err(|e| too_large_or(e, max))?
            }
        };
        self.size_hint = len.max(16);
        if publish {
            loan.commit(len);
        } else {
            loan.commit_deferred(len);
        }
        Ok(())
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
        let loan = self.writer.loan(len, self.wait, None)?;
        Ok(MessageLoan {
            loan,
            arena: &mut self.arena,
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
        Ok(self.writer.write(archive, self.wait, None)?)
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

fn timeout_err(e: bus::Error, timeout: Option<Duration>) -> Error {
    match e {
        bus::Error::Timeout => Error::Timeout(timeout.unwrap_or_default()),
        other => other.into(),
    }
}

fn too_large_or(e: rkyv::rancor::Error, max: usize) -> Error {
    let text = e.to_string();
    if text.contains("overflowed buffer") {
        Error::TooLarge { len: max + 1, max }
    } else {
        Error::Serialize(text)
    }
}

/// Refuses a publisher whose type differs from the topic's live publishers.
fn check_topic_type(
    dir: &std::path::Path,
    topic: &str,
    name: &str,
    fingerprint: u64,
) -> Result<()> {
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
                && info.type_fingerprint != fingerprint
            {
                return Err(Error::TypeMismatch {
                    topic: topic.to_string(),
                    expected: name.to_string(),
                    found: info.type_name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Space reserved in a publisher's ring. Commit to publish; drop to discard.
#[derive(Debug)]
pub struct MessageLoan<'a, T> {
    loan: Loan<'a>,
    arena: &'a mut codec::Scratch,
    written: Option<usize>,
    _type: PhantomData<fn(&T)>,
}

impl<T: Publishable> MessageLoan<'_, T> {
    /// Serializes `message` into the loan (replacing anything written before).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if the archive does not fit the loan.
    pub fn write(&mut self, message: &T) -> Result<()> {
        let max = self.loan.len();
        let len = codec::serialize_into(message, self.loan.as_uninit(), self.arena)
            .map_err(|e| too_large_or(e, max))?;
        self.written = Some(len);
        Ok(())
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
    /// [`Error::Serialize`] if nothing was written.
    pub fn commit(self) -> Result<()> {
        match self.written {
            Some(len) => {
                self.loan.commit(len);
                Ok(())
            }
            None => Err(Error::Serialize(
                "commit of a loan nothing was written to".into(),
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
