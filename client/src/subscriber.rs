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

#[cfg(feature = "tokio")]
use crate::reactor;
use crate::{codec, Bus, Checkable, Error, Result};

/// How often an idle subscriber looks for new publishers: every this many
/// empty polls, and after every sleep of a blocking wait.
const RESCAN_POLLS: u32 = 1 << 12;

/// Upper bound of a directory time's granularity (a kernel clock tick is 1
/// to 10 ms): changes this recent may hide others made in the same tick.
pub(crate) const MTIME_GRANULARITY: Duration = Duration::from_millis(50);

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
///
/// A subscriber that exists when a publisher starts receives everything that
/// publisher sends; one made later starts at each publisher's newest message
/// ([`StartAt::Latest`], the default) or the oldest still in its ring
/// ([`StartAt::Oldest`], with [`Bus::subscriber_with`](crate::Bus::subscriber_with)).
/// `client/examples/subscriber.rs` is a whole program.
///
/// # Examples
///
/// ```
/// use shmbus::{Bus, StartAt, TopicEvent, WaitStrategy};
/// use std::time::Duration;
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-subscriber-{}", std::process::id()));
/// let bus = Bus::builder().root(&root).build()?;
/// let mut early = bus.subscriber::<u64>("ticks")?;
/// let mut publisher = bus.publisher::<u64>("ticks")?;
/// publisher.send(&1)?;
/// publisher.send(&2)?;
///
/// // Made before the publisher: everything it sent.
/// assert_eq!(*early.recv_timeout(Duration::from_secs(5))?, 1);
/// assert_eq!(*early.recv_timeout(Duration::from_secs(5))?, 2);
/// let joined = TopicEvent::PublisherJoined { publisher: publisher.id().to_string() };
/// assert_eq!(early.take_events(), [joined]);
///
/// // Made later: the history still in the ring, or only what comes next.
/// let mut late = bus.subscriber_with::<u64>("ticks", StartAt::Oldest, WaitStrategy::default())?;
/// assert_eq!(*late.recv_timeout(Duration::from_secs(5))?, 1);
/// let mut latest = bus.subscriber::<u64>("ticks")?;
/// assert!(latest.try_recv()?.is_none());
/// # drop((early, late, latest, publisher)); std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), shmbus::Error>(())
/// ```
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
    /// Copy each message out of the ring before validating it
    /// ([`Subscriber::distrust_publishers`]).
    copy: bool,
    /// 16-byte aligned private copies (copy mode).
    scratch: Vec<u128>,
    /// The message type this subscriber expects (name and fingerprint).
    ty: codec::TypeInfo,
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
    /// The bus is shared with the owner's group.
    group: bool,
    /// This subscriber's entry in the topic's registry: publishers created
    /// while it exists join it from their first record. `None` only while
    /// dropping.
    registration: Option<bus::Registration>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Archive> Drop for Subscriber<T> {
    fn drop(&mut self) {
        // Leave every ring, then the registry, then remove what nobody needs
        // any more: rings whose publisher is gone (pre-joined slots made
        // for this subscriber die with its registration).
        self.sources.clear();
        self.registration = None;
        let _ = bus::sweep_topic(&self.dir);
    }
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
        ty: codec::TypeInfo,
    ) -> Result<Self> {
        let dir = bus.topic_dir(topic)?;
        bus::create_dir_all(bus.root(), &dir, bus.dir_mode())?;
        let _ = bus::sweep_topic(&dir);
        // Register before looking for publishers: every publisher created
        // from now on joins this subscriber from its first record.
        let registration = bus::Registration::register_in(&dir, bus.group_access_enabled())?;
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
            copy: false,
            scratch: Vec::new(),
            ty,
            events: VecDeque::new(),
            lost_messages: 0,
            pending_errors: VecDeque::new(),
            uninitialized: HashMap::new(),
            dir_modified: None,
            group: bus.group_access_enabled(),
            registration: Some(registration),
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
            if let Some(mismatch) = sub.pending_errors.remove(i) {
                return Err(mismatch);
            }
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

    /// Receives by copy-then-validate: each message is copied out of the
    /// shared ring into this subscriber's own memory, then validated and read
    /// there. Use it for publishers you do not trust: validating in place
    /// (the default) protects against buggy or crashed publishers and
    /// damaged files, but not against a process with write access to the
    /// ring (the publisher's user) that changes the bytes after they were
    /// validated. It costs a copy per message; everything else is the same.
    ///
    /// # Examples
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-copy-{}", std::process::id()));
    /// let bus = shmbus::Bus::builder().root(&root).build()?;
    /// let mut subscriber = bus.subscriber::<u64>("readings")?;
    /// subscriber.distrust_publishers();
    /// let mut publisher = bus.publisher::<u64>("readings")?;
    /// publisher.send(&42)?;
    /// let sample = subscriber.recv_timeout(std::time::Duration::from_secs(1))?;
    /// assert_eq!(*sample, 42);
    /// # drop(sample); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn distrust_publishers(&mut self) {
        self.copy = true;
        self.checked = true;
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
        let Ok(entries) = bus::list_rings(&self.dir) else {
            return;
        };
        for entry in entries {
            let path = entry.data_path;
            let id = entry.publisher_id.as_str();
            if self.known.contains(id) {
                continue;
            }
            let options = bus::ReaderOptions {
                start: self.start,
                init_wait: Duration::ZERO,
                group: self.group,
                registration: self.registration.as_ref(),
            };
            let opened = match RingReader::open_with(&path, &options) {
                // The publisher evicted our pre-joined slot for lag before we
                // found its ring (untethered eviction): join at its newest
                // message and say that messages were lost.
                Err(bus::Error::Evicted) => {
                    note(
                        &mut self.events,
                        &self.topic,
                        TopicEvent::Lost {
                            publisher: id.to_string(),
                            messages: 0,
                            bytes: 0,
                        },
                    );
                    let options = bus::ReaderOptions {
                        start: StartAt::Latest,
                        registration: None,
                        ..options
                    };
                    RingReader::open_with(&path, &options)
                }
                other => other,
            };
            let reader = match opened {
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
                        skip(&mut self.pending_errors, &self.topic, Error::Bus(e));
                    }
                    continue;
                }
                Err(e) => {
                    self.known.insert(id.to_string());
                    skip(&mut self.pending_errors, &self.topic, Error::Bus(e));
                    continue;
                }
            };
            self.uninitialized.remove(id);
            self.known.insert(id.to_string());
            let info = reader.info();
            if info.type_fingerprint != self.ty.fingerprint {
                skip(
                    &mut self.pending_errors,
                    &self.topic,
                    Error::TypeMismatch {
                        topic: self.topic.clone(),
                        expected: self.ty.name.clone(),
                        found: if info.type_name.is_empty() {
                            "untyped bytes".to_string()
                        } else {
                            info.type_name.clone()
                        },
                    },
                );
                continue;
            }
            note(
                &mut self.events,
                &self.topic,
                TopicEvent::PublisherJoined {
                    publisher: id.to_string(),
                },
            );
            self.sources.push(Source {
                id: id.to_string(),
                path,
                reader,
            });
        }
    }

    /// Handles a fault of source `i`'s ring and returns what to report:
    /// after an eviction (or a slot taken away) the subscriber leaves the
    /// ring and rejoins it at its newest message ([`Error::Evicted`]); a
    /// ring that cannot be read further is dropped and its error returned.
    fn fault(&mut self, i: usize, e: bus::Error) -> Error {
        let repair = match e {
            bus::Error::Evicted | bus::Error::SlotLost => Repair::Rejoin,
            _ => Repair::Drop,
        };
        let publisher = self.repair(i, repair);
        match repair {
            Repair::Rejoin => {
                tracing::warn!(
                    topic = %self.topic,
                    %publisher,
                    "shmbus: evicted for holding the publisher back; rejoined at its newest message"
                );
                Error::Evicted {
                    topic: self.topic.clone(),
                    publisher,
                }
            }
            Repair::Drop => {
                tracing::warn!(topic = %self.topic, %publisher, error = %e, "shmbus: ring dropped");
                e.into()
            }
        }
    }

    /// Rejoins or drops source `i`; returns its publisher id.
    fn repair(&mut self, i: usize, repair: Repair) -> String {
        // Leave the old slot first: with every slot taken, the rejoin needs it.
        let old = self.sources.remove(i);
        let Source { id, path, reader } = old;
        drop(reader);
        if repair == Repair::Rejoin {
            let options = bus::ReaderOptions {
                start: StartAt::Latest,
                group: self.group,
                ..bus::ReaderOptions::default()
            };
            match RingReader::open_with(&path, &options) {
                Ok(reader) => {
                    self.sources.insert(
                        i,
                        Source {
                            id: id.clone(),
                            path,
                            reader,
                        },
                    );
                }
                // Removed meanwhile: the publisher is gone.
                Err(bus::Error::NotFound(_)) => {
                    note(
                        &mut self.events,
                        &self.topic,
                        TopicEvent::PublisherGone {
                            publisher: id.clone(),
                        },
                    );
                }
                // No slot now (or another failure): the next scan retries
                // the ring and reports what keeps it out.
                Err(_) => {
                    self.known.remove(&id);
                    self.dir_modified = None;
                }
            }
        }
        id
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
                        note(
                            &mut self.events,
                            &self.topic,
                            TopicEvent::Lost {
                                publisher: source.id.clone(),
                                messages,
                                bytes,
                            },
                        );
                        continue;
                    }
                    if source.reader.is_closed() {
                        let gone = self.sources.remove(i);
                        note(
                            &mut self.events,
                            &self.topic,
                            TopicEvent::PublisherGone { publisher: gone.id },
                        );
                        continue;
                    }
                    return Ok(Some(i));
                }
                Err(e) => return Err(self.fault(i, e)),
            }
        }
        Ok(None)
    }

    /// Receives the next message if one is ready.
    ///
    /// Each ring is looked at once per call: the publishers are tried round
    /// robin, and the first ring with a message hands it over from the same
    /// look that found it (no probe first).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`] (the message is skipped),
    /// [`Error::TypeMismatch`] for a new publisher of another type (it is
    /// ignored), [`Error::Evicted`] (the ring is rejoined at its newest
    /// message), [`Error::Bus`] for a corrupt ring (it is dropped). The
    /// subscriber stays usable after each.
    ///
    /// # Examples
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-try-{}", std::process::id()));
    /// let bus = shmbus::Bus::builder().root(&root).build()?;
    /// let mut subscriber = bus.subscriber::<u64>("ticks")?;
    /// assert!(subscriber.try_recv()?.is_none()); // nothing yet
    /// let mut publisher = bus.publisher::<u64>("ticks")?;
    /// publisher.send(&7)?;
    /// let sample = subscriber.try_recv()?.expect("sent above");
    /// assert_eq!(*sample, 7);
    /// # drop(sample); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, T>>> {
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
        let start = self.next;
        let mut k = 0;
        while k < self.sources.len() {
            let i = (start + k) % self.sources.len();
            self.next = i + 1;
            let this: *mut Self = self;
            // SAFETY: `this` is `self`, made afresh each turn, a unique
            // borrow alive for the whole call. The sample arm returns a
            // borrow made through it and never touches `self` again; the
            // other arms hold nothing borrowed and go on with `self`. The
            // borrow checker cannot see that when one arm returns a borrow
            // (no Polonius yet: rust-lang/rust#54663).
            match unsafe { &mut *this }.read_source(i)? {
                Step::Sample(sample) => return Ok(Some(sample)),
                Step::Empty => k += 1,
                // A gap noted or a finished ring removed: look at index `i`
                // again (the same ring, or the one that moved into place).
                Step::Again => {}
            }
        }
        Ok(None)
    }

    /// Reads source `i` once: a message (validated), nothing, or news that
    /// was dealt with (a gap noted, a finished ring removed).
    #[inline]
    fn read_source(&mut self, i: usize) -> Result<Step<'_, T>> {
        let this: *mut Self = self;
        // SAFETY: as in `try_recv`: everything below borrows through `me`,
        // except the error arms, which go back to `self` once every borrow
        // through `me` is dead (the error owns its data), and the closed
        // arm, which holds no borrow either.
        let me = unsafe { &mut *this };
        let Self {
            topic,
            checked,
            copy,
            scratch,
            ty,
            sources,
            events,
            lost_messages,
            ..
        } = me;
        let source = &mut sources[i];
        let id = source.id.as_str();
        let event = match source.reader.try_read() {
            Ok(event) => event,
            Err(e) => return Err(self.fault(i, e)),
        };
        match event {
            ReadEvent::Message(message) => {
                let bytes = if *copy {
                    private_copy(scratch, message.payload())
                } else {
                    message.payload()
                };
                let archived = if *checked {
                    match codec::access_checked::<T::Archived>(bytes) {
                        Ok(a) => NonNull::from(a),
                        Err(e) => {
                            return Err(Error::InvalidMessage {
                                topic: topic.clone(),
                                publisher: id.to_string(),
                                type_name: ty.name.clone(),
                                reason: codec::invalid_reason(&e, bytes.len(), &ty.name),
                            })
                        }
                    }
                } else {
                    // SAFETY: the caller of `trust_publishers` vouched that
                    // every publisher writes valid archives of `T`; the bytes
                    // are 16-byte aligned and complete (framing validated).
                    NonNull::from(unsafe { rkyv::access_unchecked::<T::Archived>(bytes) })
                };
                Ok(Step::Sample(Sample {
                    publisher: id,
                    message,
                    archived,
                }))
            }
            ReadEvent::Gap { messages, bytes } => {
                *lost_messages += messages;
                note(
                    events,
                    topic,
                    TopicEvent::Lost {
                        publisher: id.to_string(),
                        messages,
                        bytes,
                    },
                );
                Ok(Step::Again)
            }
            ReadEvent::Empty => Ok(Step::Empty),
            ReadEvent::Closed => {
                let gone = self.sources.remove(i);
                note(
                    &mut self.events,
                    &self.topic,
                    TopicEvent::PublisherGone { publisher: gone.id },
                );
                Ok(Step::Again)
            }
        }
    }

    /// Receives the next message, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`]; never [`Error::Timeout`].
    pub fn recv(&mut self) -> Result<Sample<'_, T>> {
        self.recv_until(None, Duration::MAX)
    }

    /// Receives the next message, waiting at most `timeout`. A timeout too
    /// long to be a point in time (`Duration::MAX`) waits forever.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`], plus [`Error::Timeout`] with `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample<'_, T>> {
        // Saturating: a deadline past what `Instant` holds is no deadline.
        let deadline = Instant::now().checked_add(timeout);
        self.recv_until(deadline, timeout)
    }

    /// Waits for a message until `deadline` (`None`: forever); a timeout
    /// reports `timeout`.
    fn recv_until(
        &mut self,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<Sample<'_, T>> {
        loop {
            let this: *mut Self = self;
            // SAFETY: `this` is `self`, made afresh each turn, a unique
            // borrow alive for the whole call. Returning the sample from one
            // arm makes the borrow checker (without Polonius:
            // rust-lang/rust#54663) keep `self` borrowed in the other arm
            // too, where the reborrow below is already dead; nothing else
            // uses `self` while it lives.
            if let Some(sample) = unsafe { &mut *this }.try_recv()? {
                return Ok(sample);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout(timeout));
            }
            self.wait_news(deadline);
        }
    }

    /// Waits until a source looks ready (one stamp load per ring per poll,
    /// consuming nothing), or the deadline or one wait slice passes. Rescans
    /// for publishers after a slice without news. The caller then reads
    /// with `try_recv`, which is the only look that takes a message.
    fn wait_news(&mut self, deadline: Option<Instant>) {
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
    }

    /// Reads up to `max` ready messages, handing each archived message to `f`,
    /// releasing each publisher's ring once per batch. Returns how many.
    ///
    /// An invalid message is skipped; the valid messages around it in the
    /// batch are still handed to `f`, then [`Error::InvalidMessage`] reports
    /// the first invalid one (and how many there were).
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`]; messages handed to `f` before the error count.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&T::Archived)) -> Result<usize> {
        let mut n = 0;
        let checked = self.checked;
        let copy = self.copy;
        while n < max {
            let Some(i) = self.find_ready()? else {
                break;
            };
            self.next = i + 1;
            let source = &mut self.sources[i];
            // The first invalid message: (reason, count of invalid ones).
            let mut invalid: Option<(String, usize)> = None;
            let ty = &self.ty;
            let scratch = &mut self.scratch;
            let drained = source.reader.drain(max - n, |bytes| {
                let bytes = if copy {
                    private_copy(scratch, bytes)
                } else {
                    bytes
                };
                if checked {
                    match codec::access_checked::<T::Archived>(bytes) {
                        Ok(a) => f(a),
                        Err(e) => match &mut invalid {
                            Some((_, count)) => *count += 1,
                            None => {
                                invalid =
                                    Some((codec::invalid_reason(&e, bytes.len(), &ty.name), 1));
                            }
                        },
                    }
                } else {
                    // SAFETY: see `try_recv`.
                    f(unsafe { rkyv::access_unchecked::<T::Archived>(bytes) });
                }
            });
            let drained = match drained {
                Ok(d) => d,
                Err(e) => return Err(self.fault(i, e)),
            };
            let source = &self.sources[i];
            let skipped = invalid.as_ref().map_or(0, |(_, count)| *count);
            n += drained.messages - skipped;
            self.lost_messages += drained.lost_messages;
            if drained.lost_messages > 0 {
                note(
                    &mut self.events,
                    &self.topic,
                    TopicEvent::Lost {
                        publisher: source.id.clone(),
                        messages: drained.lost_messages,
                        bytes: drained.lost_bytes,
                    },
                );
            }
            if let Some((reason, count)) = invalid {
                let reason = if count > 1 {
                    format!(
                        "{reason}; {} more invalid message(s) in this batch were skipped",
                        count - 1
                    )
                } else {
                    reason
                };
                return Err(Error::InvalidMessage {
                    topic: self.topic.clone(),
                    publisher: source.id.clone(),
                    type_name: self.ty.name.clone(),
                    reason,
                });
            }
        }
        Ok(n)
    }

    /// Receives the next message without blocking the async runtime: when
    /// nothing is ready, the task registers every ring it reads (as a
    /// waiter, the sleeper handshake) with the process's reactor and
    /// returns `Pending`; one reactor thread per
    /// [`shmbus_bus::MAX_REGISTERED`] rings, shared by all async
    /// subscribers of the process, sleeps in `futex_waitv` on those rings
    /// and wakes the task when a publisher publishes. No thread is held per
    /// wait, and no core is spun. New publishers are noticed within a wait
    /// slice ([`shmbus_bus::MAX_SLEEP`]), publishers that died without
    /// closing within about a second.
    ///
    /// Cancel-safe: dropping the future (in `select!`, or a timeout) loses
    /// no message (nothing is consumed before the future returns it) and
    /// leaves nothing behind: the registrations are withdrawn, on the
    /// dropping thread, as the future drops.
    ///
    /// It does not depend on tokio's reactor: any executor can poll it.
    ///
    /// # Errors
    ///
    /// As [`Self::try_recv`]; never [`Error::Timeout`] (wrap it in
    /// `tokio::time::timeout` for one); [`Error::Bus`] if the reactor thread
    /// could not be started.
    ///
    /// # Examples
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-async-{}", std::process::id()));
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let bus = shmbus::Bus::builder().root(&root).build()?;
    /// let mut subscriber = bus.subscriber::<u64>("ticks")?;
    /// let mut publisher = bus.publisher::<u64>("ticks")?;
    /// let sender = std::thread::spawn(move || {
    ///     std::thread::sleep(std::time::Duration::from_millis(20));
    ///     publisher.send(&5).unwrap();
    /// });
    /// let sample = subscriber.recv_async().await?; // parks the task, not a thread
    /// assert_eq!(*sample, 5);
    /// # drop(sample); sender.join().unwrap(); drop(subscriber);
    /// # Ok::<(), shmbus::Error>(())
    /// # })?;
    /// # std::fs::remove_dir_all(&root).ok();
    /// # Ok::<(), shmbus::Error>(())
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn recv_async(&mut self) -> Result<Sample<'_, T>> {
        let this: &mut Self = self;
        let mut wait: Option<reactor::Wait> = None;
        std::future::poll_fn(move |cx| {
            let me: *mut Self = &mut *this;
            // SAFETY: `me` is the subscriber this future borrows mutably for
            // its whole life; a sample returned from it ends the future
            // (`poll_fn` is awaited once, right here, and never polled after
            // `Ready`), so no two borrows made through `me` are alive
            // together. The raw pointer lives within one poll (the future
            // stays `Send`).
            unsafe { (*me).poll_recv(cx, &mut wait) }
        })
        .await
    }

    /// One poll of `recv_async`: a message, or `Pending` with `wait`
    /// registered to wake `cx`.
    #[cfg(feature = "tokio")]
    fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
        wait: &mut Option<reactor::Wait>,
    ) -> std::task::Poll<Result<Sample<'_, T>>> {
        use std::task::Poll;
        // A registered wait that fired (news, a changed directory, a dead
        // publisher) and then finds no message asks for the idle checks
        // (rescan, liveness) once; one that did not fire (a spurious poll)
        // is withdrawn all the same, and registered again below with the
        // current waker and positions.
        let mut fired = wait.take().is_some_and(|w| w.fired());
        loop {
            let this: *mut Self = self;
            // SAFETY: as in `recv_until`: `this` is `self`, made afresh each
            // turn; the sample arm returns a borrow made through it and
            // never touches `self` again.
            match unsafe { &mut *this }.try_recv() {
                Ok(Some(sample)) => return Poll::Ready(Ok(sample)),
                Err(e) => return Poll::Ready(Err(e)),
                Ok(None) => {}
            }
            if std::mem::take(&mut fired) {
                self.idle_checks();
                continue;
            }
            let readers = self.sources.iter().map(|s| &s.reader);
            match reactor::Wait::register(readers, self.dir.clone(), self.dir_modified, cx.waker())
            {
                Ok(w) => {
                    *wait = Some(w);
                    return Poll::Pending;
                }
                // News came in before the registration counted: read again.
                Err(reactor::Registered::Ready) => {}
                Err(reactor::Registered::NoReactor(e)) => {
                    return Poll::Ready(Err(Error::Bus(bus::Error::Io {
                        path: "shmbus-reactor thread".into(),
                        source: e,
                    })));
                }
            }
        }
    }
}

/// What one look at a ring found.
enum Step<'a, T: Archive> {
    /// A message, validated.
    Sample(Sample<'a, T>),
    /// Nothing to read there now.
    Empty,
    /// News dealt with (a gap noted, a finished ring removed): look again.
    Again,
}

/// What to do with a ring whose read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// Evicted or slot taken away: leave and join again at the newest message.
    Rejoin,
    /// Cannot be read further: stop reading it.
    Drop,
}

/// A received message, read in place. Dereferences to `T`'s archived form.
///
/// While a sample lives, its bytes are pinned in the publisher's ring (Block
/// policy): the publisher will not overwrite them. Drop samples promptly.
/// A subscriber that distrusts its publishers
/// ([`Subscriber::distrust_publishers`]) reads a private copy instead.
///
/// The sample borrows its subscriber: drop it before the next receive.
/// For an owned value, deserialize it with rkyv.
///
/// # Examples
///
/// ```
/// use rkyv::{rancor::Error as RkyvError, Archive, Deserialize, Serialize};
/// use std::time::Duration;
///
/// #[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
/// struct Reading { sensor: String, value: f32 }
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-sample-{}", std::process::id()));
/// let bus = shmbus::Bus::builder().root(&root).build()?;
/// let mut subscriber = bus.subscriber::<Reading>("readings")?;
/// let mut publisher = bus.publisher::<Reading>("readings")?;
/// publisher.send(&Reading { sensor: "t1".into(), value: 21.5 })?;
///
/// let sample = subscriber.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!(sample.sensor, "t1"); // &ArchivedReading, in the ring
/// assert_eq!((sample.publisher(), sample.sequence()), (publisher.id(), 0));
/// let owned: Reading = rkyv::deserialize::<Reading, RkyvError>(&*sample).unwrap();
/// assert_eq!(owned, Reading { sensor: "t1".into(), value: 21.5 });
/// drop(sample); // releases its bytes to the publisher
/// # drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), shmbus::Error>(())
/// ```
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

    /// The publisher's sequence number of this message (64-bit: never wraps
    /// in practice).
    pub fn sequence(&self) -> u64 {
        self.message.sequence()
    }

    /// The archive's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.message.payload()
    }
}

/// Queues a topic event and reports it to `tracing` (rare events only:
/// publishers found and gone, losses).
fn note(events: &mut VecDeque<TopicEvent>, topic: &str, event: TopicEvent) {
    match &event {
        TopicEvent::PublisherJoined { publisher } => {
            tracing::debug!(topic, publisher, "shmbus: publisher found");
        }
        TopicEvent::PublisherGone { publisher } => {
            tracing::debug!(topic, publisher, "shmbus: publisher gone");
        }
        TopicEvent::Lost {
            publisher,
            messages,
            bytes,
        } => {
            tracing::warn!(topic, publisher, messages, bytes, "shmbus: messages lost");
        }
    }
    events.push_back(event);
}

/// Queues an error about a ring that is skipped (another type, damaged,
/// half-made for too long) and reports it to `tracing`.
fn skip(errors: &mut VecDeque<Error>, topic: &str, error: Error) {
    tracing::warn!(topic, %error, "shmbus: ring skipped");
    errors.push_back(error);
}

/// Copies `bytes` into `scratch` (16-byte aligned, grown as needed) and
/// returns the copy.
fn private_copy<'s>(scratch: &'s mut Vec<u128>, bytes: &[u8]) -> &'s [u8] {
    let words = bytes.len().div_ceil(16);
    if scratch.len() < words {
        scratch.resize(words, 0);
    }
    // SAFETY: `scratch` holds at least `bytes.len()` bytes; u128 has no
    // invalid bit patterns and no padding, so viewing it as bytes is sound.
    let dst =
        unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), bytes.len()) };
    dst.copy_from_slice(bytes);
    dst
}

impl<T: Archive> std::ops::Deref for Sample<'_, T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // The payload stays valid and unchanged while `message` lives: it
        // borrows the ring reader, whose slot pins the bytes, or holds the
        // validated copy; and `self` borrows `message`. A private copy
        // (distrusted publishers) lives in the subscriber, which `self`
        // borrows mutably.
        // SAFETY: `archived` points into that payload, validated (or vouched
        // for) as an archived `T`.
        unsafe { self.archived.as_ref() }
    }
}

#[cfg(test)]
mod tests {
    /// `recv_async`'s future can move between runtime threads: the raw
    /// reborrow inside it never lives across an `.await`.
    #[cfg(feature = "tokio")]
    #[test]
    fn recv_async_future_is_send() {
        fn assert_send<F: std::future::Future + Send>(_: F) {}
        let root = std::env::temp_dir().join(format!("shmbus-send-{}", std::process::id()));
        let bus = crate::Bus::builder().root(&root).build().unwrap();
        let mut subscriber = bus.subscriber::<u64>("t").unwrap();
        assert_send(subscriber.recv_async());
        drop(subscriber);
        let _ = std::fs::remove_dir_all(&root);
    }
}
