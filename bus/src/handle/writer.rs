//! [`RingWriter`]: the publisher's handle on its own ring.

use std::{mem::MaybeUninit, path::Path, sync::Arc, time::Duration};

use crate::{
    layout::{SLOT_ACTIVE, SLOT_PREJOINED, SLOT_STATE_MASK},
    ring::{
        gate,
        writer::{ReserveFail, Reserved, WriterCore},
        View,
    },
    shm::{
        segment::{self, Mapping, RingConfig, SegmentInfo, Start},
        wait::{Deadline, WaitStrategy, MAX_SLEEP},
    },
    sync::{fence, spin_loop, yield_now, Ordering},
    Error,
};

/// The single writer of a ring segment.
///
/// Publishing is wait-free under [`crate::Policy::Overwrite`], and under
/// [`crate::Policy::Block`] waits only for subscribers to release space. `RingWriter`
/// is `Send` but not `Sync`: every method that writes takes `&mut self`.
///
/// Dropping it publishes what was committed and marks the ring closed;
/// subscribers drain it and then learn the publisher is gone. The last
/// handle out removes the ring's files. A `RingWriter` inherited by a child
/// forked without exec does nothing when the child drops it (the ring, its
/// lock and its files stay the parent's); note that the child's copy of the
/// publisher's lock keeps the ring looking alive until the child exits too.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{RingConfig, RingReader, RingWriter, StartAt, ReadEvent};
/// let dir = std::env::temp_dir().join(format!("shmbus-doc-w-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("p.ring");
/// let mut w = RingWriter::create(&path, &RingConfig::default()).unwrap();
/// let mut r = RingReader::open(&path, StartAt::Latest).unwrap();
/// w.try_write(b"hello").unwrap();
/// match r.try_read().unwrap() {
///     ReadEvent::Message(m) => assert_eq!(m.payload(), b"hello"),
///     other => panic!("{other:?}"),
/// }
/// # drop((w, r)); std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct RingWriter {
    core: WriterCore<Arc<Mapping>>,
    unlink_on_drop: bool,
}

impl RingWriter {
    /// Creates the ring at `path` (its data file, which must not exist; the
    /// control file `<id>.ctl` goes beside it) and becomes its writer.
    /// Subscribers registered in the topic directory are joined from the
    /// first record before the ring becomes visible.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], [`Error::AlreadyExists`], [`Error::Io`]
    /// (`ENOSPC` when the tmpfs is full: pages are reserved here, so a full
    /// `/dev/shm` never surfaces later as SIGBUS), [`Error::NoFreeSlot`]
    /// (more registered subscribers than slots).
    pub fn create(path: &Path, config: &RingConfig) -> Result<Self, Error> {
        let map = segment::create(
            path,
            config,
            Start {
                position: 0,
                seq: Some(0),
            },
        )?;
        Ok(Self {
            core: WriterCore::new(map),
            unlink_on_drop: true,
        })
    }

    /// The segment's validated header.
    pub fn info(&self) -> &SegmentInfo {
        self.core.view.info()
    }

    /// Largest payload this ring takes.
    pub fn max_message(&self) -> usize {
        self.core.geometry().max_message as usize
    }

    /// Reserves room for a payload of up to `len` bytes without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Full`] (Block policy, subscribers hold the space),
    /// [`Error::TooLarge`].
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, Error> {
        let reserved = self.reserve_once(len, len)?;
        Ok(Loan {
            writer: self,
            reserved,
        })
    }

    /// Reserves room for up to `len` bytes, waiting for space with `wait` for
    /// at most `timeout` (`None`: forever).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::TooLarge`].
    pub fn loan(
        &mut self,
        len: usize,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<Loan<'_>, Error> {
        let reserved = self.reserve_waiting(len, len, wait, timeout)?;
        Ok(Loan {
            writer: self,
            reserved,
        })
    }

    /// Reserves room for at least `len` bytes, and up to `want` bytes if that
    /// much is free right now without waiting or wrapping: a serializer that
    /// learns its output size only by writing can try a generous buffer first.
    ///
    /// # Errors
    ///
    /// As [`Self::loan`].
    pub fn loan_up_to(
        &mut self,
        len: usize,
        want: usize,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<Loan<'_>, Error> {
        let reserved = self.reserve_waiting(len, want, wait, timeout)?;
        Ok(Loan {
            writer: self,
            reserved,
        })
    }

    fn reserve_once(&mut self, len: usize, want: usize) -> Result<Reserved, Error> {
        let result = self.core.reserve_up_to(len as u64, want as u64);
        let result = self.reserve_result(result, len as u64);
        if matches!(result, Err(Error::Full)) {
            self.count_full();
        }
        result
    }

    fn count_full(&self) {
        // Relaxed: a statistic.
        self.core
            .view
            .producer()
            .full_events
            .fetch_add(1, Ordering::Relaxed);
    }

    fn reserve_result(
        &mut self,
        result: Result<Reserved, ReserveFail>,
        len: u64,
    ) -> Result<Reserved, Error> {
        match result {
            Ok(r) => Ok(r),
            Err(ReserveFail::Full) => Err(Error::Full),
            Err(ReserveFail::TooLarge) => Err(Error::TooLarge {
                len,
                max: self.core.geometry().max_message,
            }),
            Err(ReserveFail::Corrupt { position, what }) => Err(Error::corrupt(
                &self.info().path,
                format!("at position {position}: {what}"),
            )),
        }
    }

    fn reserve_waiting(
        &mut self,
        len: usize,
        want: usize,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<Reserved, Error> {
        let first = self.core.reserve_up_to(len as u64, want as u64);
        match self.reserve_result(first, len as u64) {
            Err(Error::Full) => {}
            other => return other,
        }
        // Blocked: one full event for this send; the time it waits is
        // counted as it goes (tools see a publisher stuck right now).
        self.count_full();
        self.wait_for_space(len, want, wait, timeout)
    }

    /// Adds the time since `*since` to the blocked-time counter.
    fn count_blocked(&self, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        let waited = u64::try_from(now.duration_since(*since).as_nanos()).unwrap_or(u64::MAX);
        *since = now;
        // Relaxed: a statistic.
        self.core
            .view
            .producer()
            .blocked_ns
            .fetch_add(waited, Ordering::Relaxed);
    }

    fn wait_for_space(
        &mut self,
        len: usize,
        want: usize,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<Reserved, Error> {
        let deadline = Deadline::after(timeout);
        let mut polls = 0u32;
        let mut since = std::time::Instant::now();
        loop {
            if deadline.passed() {
                self.count_blocked(&mut since);
                return Err(Error::Timeout);
            }
            polls = polls.saturating_add(1);
            match wait {
                WaitStrategy::BusySpin => spin_loop(),
                WaitStrategy::SpinThenYield { spins } if polls < spins => spin_loop(),
                WaitStrategy::SpinThenYield { .. } => yield_now(),
                WaitStrategy::Block { spins } if polls < spins => spin_loop(),
                WaitStrategy::Block { .. } => {
                    self.sleep_for_space(deadline);
                    self.count_blocked(&mut since);
                }
            }
            if polls % 256 == 0 {
                self.count_blocked(&mut since);
            }
            let retry = self.core.reserve_up_to(len as u64, want as u64);
            match self.reserve_result(retry, len as u64) {
                Err(Error::Full) => {}
                other => {
                    self.count_blocked(&mut since);
                    return other;
                }
            }
        }
    }

    /// Sleeps until a subscriber releases space (it bumps `space_futex` when it
    /// sees `space_waiters`), at most 2 ms: the subscriber checks the flag
    /// without a fence to keep its hot path cheap, so a wake-up can be missed,
    /// and then this bound is the cost. Liveness checks run between sleeps.
    fn sleep_for_space(&mut self, deadline: Deadline) {
        let waiters = self.core.view.waiters();
        // Acquire: pairs with a subscriber's Release bump.
        let seen = waiters.space_futex.load(Ordering::Acquire);
        // Relaxed: ordered before the re-check by the fence.
        waiters.space_waiters.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let nap = deadline.remaining(MAX_SLEEP).min(Duration::from_millis(2));
        self.core
            .view
            .futex_wait(&waiters.space_futex, seen, Some(nap));
        // Relaxed: only a hint to subscribers.
        waiters.space_waiters.store(0, Ordering::Relaxed);
    }

    /// Copies `payload` into the ring and publishes it, without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Full`], [`Error::TooLarge`].
    pub fn try_write(&mut self, payload: &[u8]) -> Result<(), Error> {
        let r = self.reserve_once(payload.len(), payload.len())?;
        self.core.write_payload(&r, payload);
        self.core.commit(r, payload.len() as u64);
        self.core.publish();
        Ok(())
    }

    /// Copies `payload` into the ring and publishes it, waiting for space.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::TooLarge`].
    pub fn write(
        &mut self,
        payload: &[u8],
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let r = self.reserve_waiting(payload.len(), payload.len(), wait, timeout)?;
        self.core.write_payload(&r, payload);
        self.core.commit(r, payload.len() as u64);
        self.core.publish();
        Ok(())
    }

    /// Copies every payload into the ring, then publishes them with one tail
    /// store and at most one wake-up. Stops at the first error; what was
    /// committed before it is published.
    ///
    /// # Errors
    ///
    /// As [`Self::write`]; the count written so far is lost with the error
    /// only in the sense that those messages were published.
    pub fn write_batch<'p>(
        &mut self,
        payloads: impl IntoIterator<Item = &'p [u8]>,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        let mut n = 0;
        let mut result = Ok(());
        for payload in payloads {
            match self.reserve_waiting(payload.len(), payload.len(), wait, timeout) {
                Ok(r) => {
                    self.core.write_payload(&r, payload);
                    self.core.commit(r, payload.len() as u64);
                    n += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.core.publish();
        result.map(|()| n)
    }

    /// Publishes records committed with [`Loan::commit_deferred`].
    pub fn publish(&mut self) {
        self.core.publish();
    }

    /// Counters and positions.
    pub fn stats(&self) -> WriterStats {
        let producer = self.core.view.producer();
        let subscribers = self
            .core
            .view
            .slots()
            .iter()
            // Relaxed: a snapshot for display.
            .filter(|s| {
                matches!(
                    s.state.load(Ordering::Relaxed) & SLOT_STATE_MASK,
                    SLOT_ACTIVE | SLOT_PREJOINED
                )
            })
            .count();
        WriterStats {
            published: self.core.next_sequence(),
            tail: self.core.tail(),
            // Relaxed: snapshots for display.
            head: producer.head.load(Ordering::Relaxed),
            evictions: producer.evictions.load(Ordering::Relaxed),
            full_events: producer.full_events.load(Ordering::Relaxed),
            blocked: Duration::from_nanos(producer.blocked_ns.load(Ordering::Relaxed)),
            subscribers,
        }
    }

    /// Keeps the segment file after the writer is dropped (the default is to
    /// remove it once no subscriber reads it any more).
    pub fn keep_file(&mut self, keep: bool) {
        self.unlink_on_drop = !keep;
    }

    /// Runs the checks of a blocked writer now (untethered eviction of a
    /// subscriber that held it back too long), then probes every subscriber
    /// slot (a blocked writer probes only the one in its way, rate-limited)
    /// and frees those whose owner is provably dead. Returns how many were
    /// freed.
    pub fn reap_dead_subscribers(&mut self) -> usize {
        let end = self.core.write_position() + self.core.geometry().capacity;
        self.core.refresh_gate(end);
        let view = &self.core.view;
        let now = view.now_ns();
        let mut freed = 0;
        for (index, slot) in view.slots().iter().enumerate() {
            // Acquire: the slot's fields are its owner's (SYNC: slot-claim).
            let state = slot.state.load(Ordering::Acquire);
            if gate::reap_if_dead(view, index, state, now) {
                freed += 1;
                // Relaxed: a statistic.
                view.producer().evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        freed
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        if !self.core.view.in_creator_process() {
            return; // a forked child: the ring is the parent's
        }
        self.core.close();
        if self.unlink_on_drop {
            // Removes the files only if no live subscriber still needs them;
            // otherwise the last one out (or the next sweep) removes them.
            let _ = crate::shm::sweep::remove_if_unread(&self.core.view);
        }
    }
}

/// What a [`RingWriter`] has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Records published (the next sequence number).
    pub published: u64,
    /// Published tail position (bytes written, padding included).
    pub tail: u64,
    /// Oldest intact record position.
    pub head: u64,
    /// Subscribers evicted (dead or, with untethered eviction, lagging).
    pub evictions: u64,
    /// Sends that found the ring full (waited for space, or failed with `Full`).
    pub full_events: u64,
    /// Time spent waiting for space.
    pub blocked: Duration,
    /// Active subscribers right now.
    pub subscribers: usize,
}

/// Room reserved in the ring for one message, to fill in place.
///
/// Dropping a loan without committing publishes nothing.
///
/// # Examples
///
/// ```
/// # use shmbus_bus::{RingConfig, RingWriter, WaitStrategy};
/// # let dir = std::env::temp_dir().join(format!("shmbus-doc-l-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let mut w = RingWriter::create(&dir.join("p.ring"), &RingConfig::default()).unwrap();
/// let mut loan = w.try_loan(4).unwrap();
/// loan.bytes_mut()[..4].copy_from_slice(b"abcd");
/// loan.commit(4);
/// # drop(w); std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct Loan<'a> {
    writer: &'a mut RingWriter,
    reserved: Reserved,
}

impl<'a> Loan<'a> {
    /// Bytes available.
    pub fn len(&self) -> usize {
        self.reserved.len as usize
    }

    /// True if zero bytes were reserved.
    pub fn is_empty(&self) -> bool {
        self.reserved.len == 0
    }

    /// The reserved bytes, uninitialized, 16-byte aligned.
    pub fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        let off = self
            .reserved
            .payload_offset(self.writer.core.geometry().mask());
        // SAFETY: the reservation is this writer's, uncommitted, inside the
        // writable data mapping; `&mut self` keeps it exclusive.
        unsafe {
            self.writer
                .core
                .view
                .data_uninit(off, self.reserved.len as usize)
        }
    }

    /// The reserved bytes as initialized memory (zeroed first, which costs a
    /// pass over them; use [`Self::as_uninit`] to avoid it).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let buf = self.as_uninit();
        for b in buf.iter_mut() {
            b.write(0);
        }
        let len = buf.len();
        // SAFETY: every byte was just initialized.
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) }
    }

    /// Commits the first `len` bytes and publishes them.
    ///
    /// # Panics
    ///
    /// If `len` exceeds the reservation.
    pub fn commit(self, len: usize) {
        let writer = self.commit_inner(len);
        writer.core.publish();
    }

    /// Commits the first `len` bytes without publishing: subscribers may see it
    /// already, but the tail and wake-ups wait for [`RingWriter::publish`].
    ///
    /// # Panics
    ///
    /// If `len` exceeds the reservation.
    pub fn commit_deferred(self, len: usize) {
        self.commit_inner(len);
    }

    fn commit_inner(self, len: usize) -> &'a mut RingWriter {
        assert!(len as u64 <= self.reserved.len, "commit beyond the loan");
        let Loan { writer, reserved } = self;
        writer.core.commit(reserved, len as u64);
        writer
    }
}
