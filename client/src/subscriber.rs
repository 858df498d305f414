//! [`Subscriber`]: reads every publisher of a topic, in place.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    marker::PhantomData,
    path::PathBuf,
    ptr::NonNull,
    time::{Duration, Instant},
};

use rkyv::Archive;
use shmbus_bus::{self as bus, ReadEvent, RingReader, StartAt, WaitStrategy};

use crate::{codec, Bus, Checkable, Error, Result};

/// How often an idle subscriber looks for new publishers: every this many
/// empty polls, and after every sleep of a blocking wait.
const RESCAN_POLLS: u32 = 1 << 12;

/// Upper bound of a directory time's granularity (a kernel clock tick is 1
/// to 10 ms): changes this recent may hide others made in the same tick.
const MTIME_GRANULARITY: Duration = Duration::from_millis(50);

/// How often a blocked subscriber of a topic without publishers looks for one.
const NO_PUBLISHER_POLL: Duration = Duration::from_millis(5);

/// Something that happened to a topic, besides messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicEvent {
    /// A publisher appeared (or was found at subscribe time).
    PublisherJoined {
        /// Its id.
        publisher: String,
    },
    /// A publisher is gone (closed or died) and all its messages were read.
    PublisherGone {
        /// Its id.
        publisher: String,
    },
    /// Messages of a publisher were lost (overwrite policy, or eviction).
    Lost {
        /// The publisher.
        publisher: String,
        /// Messages lost.
        messages: u64,
        /// Ring bytes lost.
        bytes: u64,
    },
}

struct Source {
    id: String,
    path: PathBuf,
    reader: RingReader,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Receives messages of type `T` from every publisher of a topic.
///
/// Each received [`Sample`] dereferences to `T`'s archived form *in the
/// shared ring*: nothing is copied or deserialized (Block policy; under the
/// Overwrite policy a validated copy is made, since the ring may be
/// overwritten meanwhile). Archives are validated with rkyv's checked access
/// unless [`Subscriber::trust_publishers`] turned that off.
///
/// Messages of one publisher arrive in order; publishers are served round
/// robin. Publishers that appear later are picked up (within one wait slice,
/// [`shmbus_bus::MAX_SLEEP`], when blocking).
#[derive(Debug)]
pub struct Subscriber<T: Archive> {
    topic: String,
    dir: PathBuf,
    start: StartAt,
    wait: WaitStrategy,
    sources: Vec<Source>,
    /// Publishers seen (so a finished one is not re-attached).
    known: HashSet<String>,
    next: usize,
    /// Receive polls so far (for the periodic rescan).
    polls: u32,
    checked: bool,
    events: VecDeque<TopicEvent>,
    lost_messages: u64,
    /// Errors found while scanning (a ring of another type, a corrupt
    /// ring), each reported once by the next receives.
    pending_errors: VecDeque<Error>,
    /// Ring files seen half-made, and since when: retried without waiting,
    /// reported once they stay so for `INIT_WAIT`.
    uninitialized: HashMap<String, Instant>,
    /// The topic directory's mtime at the last scan.
    dir_modified: Option<std::time::SystemTime>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Subscriber<T>
where
    T: Archive,
    T::Archived: Checkable,
{
    pub(crate) fn create(
        bus: &Bus,
        topic: &str,
        start: StartAt,
        wait: WaitStrategy,
    ) -> Result<Self> {
        let dir = bus.topic_dir(topic)?;
        bus::create_dir_all(&dir, bus.dir_mode())?;
        let _ = bus::sweep_topic(&dir);
        let mut sub = Self {
            topic: topic.to_string(),
            dir,
            // Publishers found at subscribe time start where asked; ones that
            // appear later are read from their first message.
            start,
            wait,
            sources: Vec::new(),
            known: HashSet::new(),
            next: 0,
            polls: 0,
            checked: true,
            events: VecDeque::new(),
            lost_messages: 0,
            pending_errors: VecDeque::new(),
            uninitialized: HashMap::new(),
            dir_modified: None,
            _type: PhantomData,
        };
        sub.rescan();
        // A publisher of another type makes this subscription wrong; a
        // damaged ring does not (it is reported by the next receive).
        if let Some(i) = sub
            .pending_errors
            .iter()
            .position(|e| matches!(e, Error::TypeMismatch { .. }))
        {
            return Err(sub
                .pending_errors
                .remove(i)
                .unwrap_or(Error::Timeout(Duration::ZERO)));
        }
        sub.start = StartAt::Oldest;
        Ok(sub)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Ids of the publishers currently attached.
    pub fn publishers(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.id.clone()).collect()
    }

    /// Topic events (publishers joining, leaving, losses) since the last call.
    pub fn take_events(&mut self) -> Vec<TopicEvent> {
        self.events.drain(..).collect()
    }

    /// Messages lost so far (overwrite policy, evictions).
    pub fn lost_messages(&self) -> u64 {
        self.lost_messages
    }

    /// How blocking receives wait.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Turns off rkyv validation of received archives.
    ///
    /// # Safety
    ///
    /// - every publisher of this topic, now and later, must be trusted to
    ///   write only valid archives of `T` (a malformed archive read
    ///   unchecked is undefined behaviour);
    /// - that includes bridged publishers, whose bytes came from the network.
    pub unsafe fn trust_publishers(&mut self) {
        self.checked = false;
    }

    /// After a wait slice without news: look for new publishers, and make the
    /// next probe of each ring check its publisher is alive (a crashed one
    /// wakes nobody).
    fn idle_checks(&mut self) {
        for source in &mut self.sources {
            source.reader.check_publisher_soon();
        }
        self.rescan();
    }

    /// Rescans if the topic directory changed since the last scan (or a
    /// half-made ring is pending a retry).
    ///
    /// Directory times are coarse (a clock tick): a file added in the same
    /// tick as the last scan leaves the time unchanged, so a directory
    /// changed within [`MTIME_GRANULARITY`] of now is rescanned regardless.
    fn rescan_if_changed(&mut self) {
        let modified = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        let recent = modified.is_none_or(|m| {
            std::time::SystemTime::now()
                .duration_since(m)
                .map_or(true, |age| age < MTIME_GRANULARITY)
        });
        if modified != self.dir_modified || recent || !self.uninitialized.is_empty() {
            self.rescan();
        }
    }

    /// Attaches publishers that appeared since the last scan.
    fn rescan(&mut self) {
        self.dir_modified = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = bus::publisher_id_of(&path) else {
                continue;
            };
            if self.known.contains(id) {
                continue;
            }
            let reader = match RingReader::open_waiting(&path, self.start, Duration::ZERO) {
                Ok(r) => r,
                // Removed meanwhile: nothing to do.
                Err(bus::Error::NotFound(_)) => continue,
                // Being created: retry at the next scan, without blocking;
                // report it once it stays half-made for INIT_WAIT.
                Err(e @ bus::Error::NotInitialized(_)) => {
                    let since = *self
                        .uninitialized
                        .entry(id.to_string())
                        .or_insert_with(Instant::now);
                    if since.elapsed() >= bus::INIT_WAIT {
                        self.uninitialized.remove(id);
                        self.known.insert(id.to_string());
                        self.pending_errors.push_back(Error::Bus(e));
                    }
                    continue;
                }
                Err(e) => {
                    self.known.insert(id.to_string());
                    self.pending_errors.push_back(Error::Bus(e));
                    continue;
                }
            };
            self.uninitialized.remove(id);
            self.known.insert(id.to_string());
            let info = reader.info();
            if info.type_fingerprint != codec::fingerprint::<T>() {
                self.pending_errors.push_back(Error::TypeMismatch {
                    topic: self.topic.clone(),
                    expected: codec::type_name::<T>().to_string(),
                    found: if info.type_name.is_empty() {
                        "untyped bytes".to_string()
                    } else {
                        info.type_name.clone()
                    },
                });
                continue;
            }
            self.events.push_back(TopicEvent::PublisherJoined {
                publisher: id.to_string(),
            });
            self.sources.push(Source {
                id: id.to_string(),
                path,
                reader,
            });
        }
    }

    /// Finds a source with a message ready, dealing with gaps, finished
    /// publishers and evictions on the way. Consumes nothing.
    fn find_ready(&mut self) -> Result<Option<usize>> {
        // Look for new publishers every RESCAN_POLLS polls, busy or idle (a
        // subscriber kept busy by some publishers must still find new ones),
        // and at every poll while there is none (one `stat` per poll).
        self.polls = self.polls.wrapping_add(1);
        if self.sources.is_empty() || self.polls % RESCAN_POLLS == 0 {
            self.rescan_if_changed();
        }
        if let Some(e) = self.pending_errors.pop_front() {
            return Err(e);
        }
        let mut k = 0;
        while k < self.sources.len() {
            let i = (self.next + k) % self.sources.len();
            let source = &mut self.sources[i];
            match source.reader.probe() {
                Ok(false) => k += 1,
                Ok(true) => {
                    if let Some((messages, bytes)) = source.reader.take_gap() {
                        self.lost_messages += messages;
                        self.events.push_back(TopicEvent::Lost {
                            publisher: source.id.clone(),
                            messages,
                            bytes,
                        });
                        continue;
                    }
                    if source.reader.is_closed() {
                        let gone = self.sources.remove(i);
                        self.events
                            .push_back(TopicEvent::PublisherGone { publisher: gone.id });
                        continue;
                    }
                    return Ok(Some(i));
                }
                Err(bus::Error::Evicted | bus::Error::SlotLost) => {
                    let publisher = source.id.clone();
                    // Rejoin at the newest message; report the eviction once.
                    match RingReader::open(&source.path, StartAt::Latest) {
                        Ok(reader) => source.reader = reader,
                        Err(_) => {
                            self.sources.remove(i);
                        }
                    }
                    return Err(Error::Evicted {
                        topic: self.topic.clone(),
                        publisher,
                    });
                }
                Err(e) => {
                    // A corrupt ring: stop reading it, report once.
                    self.sources.remove(i);
                    return Err(e.into());
                }
            }
        }
        Ok(None)
    }

    /// Receives the next message if one is ready.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`] (the message is skipped),
    /// [`Error::TypeMismatch`] for a new publisher of another type (it is
    /// ignored), [`Error::Evicted`] (rejoined), [`Error::Bus`] for a corrupt
    /// ring (it is dropped). The subscriber stays usable after each.
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, T>>> {
        let Some(i) = self.find_ready()? else {
            return Ok(None);
        };
        self.next = i + 1;
        let topic = &self.topic;
        let checked = self.checked;
        let source = &mut self.sources[i];
        let id = source.id.as_str();
        match source.reader.try_read()? {
            ReadEvent::Message(message) => {
                let bytes = message.payload();
                let archived = if checked {
                    match codec::access_checked::<T::Archived>(bytes) {
                        Ok(a) => NonNull::from(a),
                        Err(e) => {
                            return Err(Error::InvalidMessage {
                                topic: topic.clone(),
                                publisher: id.to_string(),
                                type_name: codec::type_name::<T>().to_string(),
                                reason: e.to_string(),
                            })
                        }
                    }
                } else {
                    // SAFETY: the caller of `trust_publishers` vouched that
                    // every publisher writes valid archives of `T`; the bytes
                    // are 16-byte aligned and complete (framing validated).
                    NonNull::from(unsafe { rkyv::access_unchecked::<T::Archived>(bytes) })
                };
                Ok(Some(Sample {
                    publisher: id,
                    message,
                    archived,
                }))
            }
            // Overwrite: the copy showed messages were lost before this one
            // (it is read next time).
            ReadEvent::Gap { messages, bytes } => {
                self.lost_messages += messages;
                self.events.push_back(TopicEvent::Lost {
                    publisher: id.to_string(),
                    messages,
                    bytes,
                });
                Ok(None)
            }
            // Lost a race with a lapping writer between probe and read.
            ReadEvent::Empty | ReadEvent::Closed => Ok(None),
        }
    }

    /// Receives the next message, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`].
    pub fn recv(&mut self) -> Result<Sample<'_, T>> {
        self.recv_deadline(None)
    }

    /// Receives the next message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`], plus [`Error::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample<'_, T>> {
        self.recv_deadline(Some(timeout))
    }

    fn recv_deadline(&mut self, timeout: Option<Duration>) -> Result<Sample<'_, T>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.wait_ready(deadline)? {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout(timeout.unwrap_or_default()));
            }
        }
        match self.try_recv()? {
            Some(sample) => Ok(sample),
            // Only after a lost overwrite race; the next call waits again.
            None => Err(Error::Timeout(Duration::ZERO)),
        }
    }

    /// Waits until a source has a message (true), or the deadline or one
    /// wait slice passes (false). Rescans for publishers after each slice.
    fn wait_ready(&mut self, deadline: Option<Instant>) -> Result<bool> {
        if self.find_ready()?.is_some() {
            return Ok(true);
        }
        // With no publisher yet there is nothing to sleep on: look for one
        // every few milliseconds (a `stat` each) instead of every slice.
        let max = if self.sources.is_empty() {
            NO_PUBLISHER_POLL
        } else {
            bus::MAX_SLEEP
        };
        let slice = deadline.map_or(max, |d| {
            d.saturating_duration_since(Instant::now()).min(max)
        });
        let readers: Vec<&RingReader> = self.sources.iter().map(|s| &s.reader).collect();
        let ready = bus::wait_any(&readers, self.wait, Some(slice));
        if !ready {
            self.idle_checks();
        }
        Ok(self.find_ready()?.is_some())
    }

    /// Reads up to `max` ready messages, handing each archived message to `f`,
    /// releasing each publisher's ring once per batch. Returns how many.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`]; messages handed to `f` before the error count.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&T::Archived)) -> Result<usize> {
        let mut n = 0;
        let checked = self.checked;
        while n < max {
            let Some(i) = self.find_ready()? else {
                break;
            };
            self.next = i + 1;
            let topic = &self.topic;
            let source = &mut self.sources[i];
            let mut invalid = None;
            let drained = source.reader.drain(max - n, |bytes| {
                if invalid.is_some() {
                    return;
                }
                if checked {
                    match codec::access_checked::<T::Archived>(bytes) {
                        Ok(a) => f(a),
                        Err(e) => invalid = Some(e.to_string()),
                    }
                } else {
                    // SAFETY: see `try_recv`.
                    f(unsafe { rkyv::access_unchecked::<T::Archived>(bytes) });
                }
            })?;
            n += drained.messages;
            self.lost_messages += drained.lost_messages;
            if drained.lost_messages > 0 {
                self.events.push_back(TopicEvent::Lost {
                    publisher: source.id.clone(),
                    messages: drained.lost_messages,
                    bytes: drained.lost_bytes,
                });
            }
            if let Some(reason) = invalid {
                return Err(Error::InvalidMessage {
                    topic: topic.clone(),
                    publisher: source.id.clone(),
                    type_name: codec::type_name::<T>().to_string(),
                    reason,
                });
            }
        }
        Ok(n)
    }

    /// Probes for waiting from another thread (async receive).
    #[cfg(feature = "tokio")]
    fn ready_probes(&self) -> Vec<bus::ReadyProbe> {
        self.sources
            .iter()
            .map(|s| s.reader.ready_probe())
            .collect()
    }

    /// Receives the next message without blocking the async runtime: idle
    /// waits sleep on the rings' futexes in a blocking-pool thread (one wait
    /// slice at a time, so a dropped future frees the thread within
    /// [`shmbus_bus::MAX_SLEEP`]). No core is spun.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`].
    #[cfg(feature = "tokio")]
    pub async fn recv_async(&mut self) -> Result<Sample<'_, T>> {
        loop {
            if self.find_ready()?.is_some() {
                break;
            }
            let probes = self.ready_probes();
            let ready = tokio::task::spawn_blocking(move || {
                bus::wait_probes(
                    &probes,
                    WaitStrategy::Block { spins: 0 },
                    Some(bus::MAX_SLEEP),
                )
            })
            .await
            .unwrap_or(false);
            if !ready {
                self.idle_checks();
            }
        }
        match self.try_recv()? {
            Some(sample) => Ok(sample),
            None => Err(Error::Timeout(Duration::ZERO)),
        }
    }
}

/// A received message, read in place. Dereferences to `T`'s archived form.
///
/// While a sample lives, its bytes are pinned in the publisher's ring (Block
/// policy): the publisher will not overwrite them. Drop samples promptly.
#[derive(Debug)]
pub struct Sample<'a, T: Archive> {
    publisher: &'a str,
    message: bus::Message<'a>,
    archived: NonNull<T::Archived>,
}

impl<T: Archive> Sample<'_, T> {
    /// The id of the publisher that sent it.
    pub fn publisher(&self) -> &str {
        self.publisher
    }

    /// The publisher's sequence number of this message (wraps at 2^32).
    pub fn sequence(&self) -> u32 {
        self.message.sequence()
    }

    /// The archive's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.message.payload()
    }
}

impl<T: Archive> std::ops::Deref for Sample<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // The payload stays valid and unchanged while `message` lives: it
        // borrows the ring reader, whose slot pins the bytes, or holds the
        // validated copy; and `self` borrows `message`.
        // SAFETY: `archived` points into that payload, validated (or vouched
        // for) as an archived `T`.
        unsafe { self.archived.as_ref() }
    }
}
