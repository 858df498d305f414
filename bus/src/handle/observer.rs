//! [`RingObserver`]: reading a ring without a slot, for tools and exports
//! that must never hold a publisher back.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    layout::WRITER_CLOSED,
    ring::{
        gate::JoinAt,
        reader::{Peek, ReadFault, ReaderCore},
        View,
    },
    shm::{
        fs::Access,
        segment::{self, Mapping, SegmentInfo},
        wait::{self, Deadline, WaitStrategy},
    },
    sync::Ordering,
    Error, StartAt,
};

/// What an observer's read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed<'a> {
    /// A message, copied out and validated: it was whole when copied.
    Message {
        /// The publisher's 64-bit sequence number for it.
        sequence: u64,
        /// The copied payload (valid until the next read).
        payload: &'a [u8],
    },
    /// Messages the observer missed (the publisher lapped it): exact counts.
    Gap {
        /// Messages lost.
        messages: u64,
        /// Ring bytes lost.
        bytes: u64,
    },
    /// Nothing new yet.
    Empty,
    /// The publisher is gone (closed the ring and released it, or died) and
    /// everything was read.
    Closed,
}

/// What [`RingObserver::try_take`] found: as [`Observed`], with the
/// message in a buffer of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// A message, copied out and validated.
    Message {
        /// The publisher's 64-bit sequence number for it.
        sequence: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Messages the observer missed (the publisher lapped it): exact counts.
    Gap {
        /// Messages lost.
        messages: u64,
        /// Ring bytes lost.
        bytes: u64,
    },
    /// Nothing new yet.
    Empty,
    /// The publisher is gone and everything was read.
    Closed,
}

/// Reads a ring of any policy without joining its subscriber table: it never
/// holds the publisher back, never counts as a subscriber, and is lapped
/// when too slow (then it reports exactly what it missed). Each record is
/// copied out with per-word atomic loads and checked against the
/// publisher's `head` afterwards (a seqlock), so what it returns was never
/// being overwritten while copied.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{Observed, RingConfig, RingObserver, RingWriter, StartAt};
/// let dir = std::env::temp_dir().join(format!("shmbus-doc-obs-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("p.ring");
/// let mut w = RingWriter::create(&path, &RingConfig::default()).unwrap();
/// let mut o = RingObserver::open(&path, StartAt::Latest).unwrap();
/// w.try_write(b"seen").unwrap();
/// assert_eq!(
///     o.try_read().unwrap(),
///     Observed::Message { sequence: 0, payload: b"seen" }
/// );
/// # drop((w, o)); std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct RingObserver {
    core: ReaderCore<Arc<Mapping>>,
    /// 16-byte aligned copy buffer.
    scratch: Vec<u128>,
}

impl RingObserver {
    /// Opens the ring at `path` and starts at `start`.
    ///
    /// # Errors
    ///
    /// As [`crate::RingReader::open`], except [`Error::NoFreeSlot`].
    pub fn open(path: &Path, start: StartAt) -> Result<Self, Error> {
        let map = segment::open_with(path, segment::INIT_WAIT, Access::Group)?;
        let at = match start {
            StartAt::Latest => JoinAt::Latest,
            StartAt::Oldest => JoinAt::Oldest,
        };
        let core = ReaderCore::observer(map, at).map_err(|f| fault(path, f))?;
        Ok(Self {
            core,
            scratch: Vec::new(),
        })
    }

    /// The ring's validated header.
    pub fn info(&self) -> &SegmentInfo {
        self.core.view.info()
    }

    /// Reads the next message (a validated copy) without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the word that breaks the format.
    pub fn try_read(&mut self) -> Result<Observed<'_>, Error> {
        loop {
            match self.core.peek().map_err(|f| self.fault(f))? {
                Peek::Record(record) => {
                    let len = record.len as usize;
                    let words = len.div_ceil(16);
                    if self.scratch.len() < words {
                        self.scratch.resize(words, 0);
                    }
                    // SAFETY: `scratch` holds at least `len` bytes; u128 has
                    // no invalid bit patterns, so viewing it as bytes is sound.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(self.scratch.as_mut_ptr().cast::<u8>(), len)
                    };
                    let copied = self.core.copy_validated(&record, dst);
                    match copied.map_err(|f| self.fault(f))? {
                        Peek::Record(record) => {
                            self.core.advance_to(record.end, record.seq + 1);
                            // SAFETY: as above; the copy is complete.
                            let payload = unsafe {
                                std::slice::from_raw_parts(self.scratch.as_ptr().cast::<u8>(), len)
                            };
                            return Ok(Observed::Message {
                                sequence: record.seq,
                                payload,
                            });
                        }
                        Peek::Gap { messages, bytes } => {
                            return Ok(Observed::Gap { messages, bytes })
                        }
                        Peek::Empty => continue, // lapped while copying
                    }
                }
                Peek::Gap { messages, bytes } => return Ok(Observed::Gap { messages, bytes }),
                Peek::Empty => {
                    return Ok(if self.closed()? {
                        Observed::Closed
                    } else {
                        Observed::Empty
                    });
                }
            }
        }
    }

    /// Like [`Self::try_read`], with the message copied into a buffer of
    /// its own instead of the observer's: one copy for callers that hand
    /// the bytes on (the Zenoh gateway gives the buffer to Zenoh, which may
    /// keep it after the ring has moved on).
    ///
    /// # Errors
    ///
    /// As [`Self::try_read`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bus::{RingConfig, RingObserver, RingWriter, StartAt, Taken};
    /// let dir = std::env::temp_dir().join(format!("shmbus-doc-take-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("p.ring");
    /// let mut w = RingWriter::create(&path, &RingConfig::default()).unwrap();
    /// let mut o = RingObserver::open(&path, StartAt::Latest).unwrap();
    /// w.try_write(b"kept").unwrap();
    /// let Taken::Message { sequence, payload } = o.try_take().unwrap() else { panic!() };
    /// assert_eq!((sequence, payload), (0, b"kept".to_vec()));
    /// # drop((w, o)); std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn try_take(&mut self) -> Result<Taken, Error> {
        loop {
            match self.core.peek().map_err(|f| self.fault(f))? {
                Peek::Record(record) => {
                    let mut payload = vec![0u8; record.len as usize];
                    match self
                        .core
                        .copy_validated(&record, &mut payload)
                        .map_err(|f| self.fault(f))?
                    {
                        Peek::Record(record) => {
                            self.core.advance_to(record.end, record.seq + 1);
                            return Ok(Taken::Message {
                                sequence: record.seq,
                                payload,
                            });
                        }
                        Peek::Gap { messages, bytes } => return Ok(Taken::Gap { messages, bytes }),
                        Peek::Empty => continue, // lapped while copying
                    }
                }
                Peek::Gap { messages, bytes } => return Ok(Taken::Gap { messages, bytes }),
                Peek::Empty => {
                    return Ok(if self.closed()? {
                        Taken::Closed
                    } else {
                        Taken::Empty
                    });
                }
            }
        }
    }

    /// Waits until the publisher publishes past this observer's position
    /// or goes, the timeout passes, or one sleep (at most
    /// [`crate::MAX_SLEEP`]) ends; `true` if there may be something
    /// to read. Sleeping, the observer counts as a waiter, so the publisher
    /// wakes it as it wakes subscribers (it still holds nothing back).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmbus_bus::{RingConfig, RingObserver, RingWriter, StartAt, WaitStrategy};
    /// let dir = std::env::temp_dir().join(format!("shmbus-doc-obs-wait-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("p.ring");
    /// let mut w = RingWriter::create(&path, &RingConfig::default()).unwrap();
    /// let o = RingObserver::open(&path, StartAt::Latest).unwrap();
    /// assert!(!o.wait(WaitStrategy::default(), Some(Duration::from_millis(10))));
    /// w.try_write(b"x").unwrap();
    /// assert!(o.wait(WaitStrategy::default(), Some(Duration::from_secs(5))));
    /// # drop((w, o)); std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn wait(&self, strategy: WaitStrategy, timeout: Option<Duration>) -> bool {
        let view = &self.core.view;
        let producer = view.producer();
        let position = self.core.position();
        wait::wait_until(
            &[view.sleeper(None)],
            strategy,
            Deadline::after(timeout),
            wait::MAX_SLEEP,
            || {
                // Relaxed: hints; `try_read` re-reads the tail with Acquire.
                producer.tail.load(Ordering::Relaxed) > position
                    || producer.writer_state.load(Ordering::Relaxed) == WRITER_CLOSED
            },
        )
        .ready
    }

    /// At an empty position: whether the publisher is gone and everything
    /// was read. Closed means gone: the publisher's lock is free too (the
    /// state word alone could be forged).
    fn closed(&mut self) -> Result<bool, Error> {
        let closed = self.core.writer_closed().map_err(|f| self.fault(f))?
            && !self.core.view.publisher_alive();
        Ok(closed && matches!(self.core.verify_empty(), Ok(Peek::Empty)))
    }

    fn fault(&self, f: ReadFault) -> Error {
        fault(&self.info().path, f)
    }
}

fn fault(path: &Path, f: ReadFault) -> Error {
    match f {
        ReadFault::Corrupt { position, what } => {
            Error::corrupt(path, format!("at position {position}: {what}"))
        }
        // An observer has no slot to lose.
        ReadFault::Evicted | ReadFault::SlotLost => {
            Error::corrupt(path, "observer found a slot fault")
        }
    }
}
