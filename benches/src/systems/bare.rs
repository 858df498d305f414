//! The bare ring: the smallest single-writer *byte* ring of shmbus's design,
//! with no API and no checks beyond what keeps memory safe. It is the
//! yardstick for shmbus's own overhead: shmbus runs the same algorithm with
//! validation, slots, liveness and a typed API on top. (The `floor` system is
//! a different thing: a ring of cache-line slots.)
//!
//! What it keeps of the design (`DESIGN.md`, "Records", "Flow control",
//! "Waiting"):
//!
//! - variable-length records: a 16-byte header (commit stamp, length), the
//!   payload, 16-byte aligned; a record never wraps, a padding record fills
//!   the ring's end;
//! - the commit stamp is the record's own absolute position (`| 1`, padding
//!   `| 3`), stored last with Release; before it the writer clears the stamp
//!   where the next record will start (unless the ring is exactly full, when
//!   that word is the oldest unread record's genuine, older stamp), so a
//!   reader spins on one word per message and stale bytes never pass for a
//!   commit;
//! - one writer, N readers, each reader's cursor on its own cache line;
//!   **batched release**: a reader stores its cursor only every `capacity /
//!   8` bytes, or when the writer signals that it is short of space (the
//!   `need` word, on a line of its own that the writer writes only when it
//!   finds the ring full), or before it sleeps;
//! - the writer reads cursors only when its cached limit says the ring is
//!   full;
//! - waiting: a waiter count and a futex word on the writer's line; the
//!   writer pays one Relaxed load per message while nobody sleeps. The
//!   store/load handshake is asymmetric as in the design: the writer
//!   registers for `membarrier(GLOBAL_EXPEDITED)` before the channel becomes
//!   visible and then needs only a compiler fence; a sleeper issues the
//!   membarrier. If registration fails (or [`SYMMETRIC_ENV`] is `1`), the
//!   header says so and both sides use a SeqCst fence instead.
//!
//! ```text
//! 0      header   magic, version, capacity, receivers, msg_len, asymmetric
//! 128    wake     notify (futex u32), waiters (u32)
//! 256    need     position the writer waits for (u64), its own line
//! 384    receiver cursor (u64), attached (u64)   one 128-byte line each
//! page   data     capacity bytes (a power of two), the same size as the
//!                 shmbus ring of the same row (`geometry_for`)
//! ```
//!
//! # Synchronization pairs
//!
//! | pair | release side | acquire side | orders |
//! |---|---|---|---|
//! | commit | writer stores the stamp (Release) | reader loads the stamp (Acquire) | length word, payload and the cleared next stamp |
//! | release | reader stores its cursor (Release) | writer's refresh loads cursors (Acquire) | the reader's reads of released bytes before the writer overwrites them |
//! | wake | writer stores the stamp, barrier, loads `waiters` | sleeper increments `waiters`, barrier, re-checks the stamp | no missed wake-up (Dekker); the barrier is a compiler fence + the sleeper's membarrier, or SeqCst fences on both sides |
//! | notify | writer bumps `notify` (Release) | sleeper loads `notify` (Acquire) before its re-check | a sleeper that read the new value sees the stamp |

use std::fs::OpenOptions;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::sync::atomic::{compiler_fence, fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use memmap2::{MmapOptions, MmapRaw};

use super::shmbus::geometry_for;
use crate::os::{
    futex_wait, futex_wake_all, membarrier_global_expedited, membarrier_register_global_expedited,
};
use crate::payload;
use crate::transport::{open_when_published, retry_until, ChannelSpec, Rx, System, Tx, Wait};

/// Name of this system in tables and on the command line.
pub const NAME: &str = "bare ring";

/// Set to `1` in the runner's environment to make the bare ring use the
/// symmetric wake handshake (a SeqCst fence per message in the writer,
/// no membarrier), to measure the trade the design describes.
pub const SYMMETRIC_ENV: &str = "SHMBUS_BENCH_BARE_SYMMETRIC";

const MAGIC: u64 = u64::from_le_bytes(*b"SBBARE01");
const VERSION: u64 = 1;
const LINE: usize = 128;
const WAKE_OFF: usize = LINE;
const NEED_OFF: usize = 2 * LINE;
const RECEIVERS_OFF: usize = 3 * LINE;
const MAX_RECEIVERS: usize = 64;
const PAGE: usize = 4096;
/// Record header bytes; also the record alignment.
const HEADER: u64 = 16;
/// Stamp bit: committed.
const COMMITTED: u64 = 1;
/// Stamp bit: padding to the ring's end.
const PADDING: u64 = 2;

/// Bytes a record with a `len`-byte payload occupies.
#[inline]
fn record_size(len: u64) -> u64 {
    HEADER + len.next_multiple_of(HEADER)
}

/// Geometry of one channel file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    capacity: u64,
    receivers: usize,
    msg_len: usize,
}

impl Layout {
    fn new(spec: &ChannelSpec) -> Result<Layout> {
        if spec.receivers == 0 || spec.receivers > MAX_RECEIVERS {
            bail!(
                "the bare ring supports 1..={MAX_RECEIVERS} receivers, not {}",
                spec.receivers
            );
        }
        if spec.msg_len > u32::MAX as usize {
            bail!("the bare ring carries payloads below 4 GiB");
        }
        // The same ring size as the shmbus rings of this row.
        let capacity = geometry_for(spec, spec.msg_len).capacity;
        if record_size(spec.msg_len as u64) > capacity / 2 || capacity > 1 << 40 {
            bail!(
                "a {} byte message does not fit a {capacity} byte bare ring",
                spec.msg_len
            );
        }
        Ok(Layout {
            capacity,
            receivers: spec.receivers,
            msg_len: spec.msg_len,
        })
    }

    fn data_off(&self) -> usize {
        (RECEIVERS_OFF + self.receivers * LINE).next_multiple_of(PAGE)
    }

    fn file_len(&self) -> usize {
        self.data_off() + self.capacity as usize
    }
}

/// A mapped channel file.
#[derive(Debug)]
struct Mapping {
    map: MmapRaw,
    layout: Layout,
    /// Start of the ring data inside `map`.
    data: *mut u8,
    /// `capacity - 1`.
    mask: u64,
}

impl Mapping {
    fn new(map: MmapRaw, layout: Layout) -> Result<Mapping> {
        if map.len() != layout.file_len() {
            bail!(
                "bare ring mapping is {} bytes, expected {}",
                map.len(),
                layout.file_len()
            );
        }
        // SAFETY: `data_off() < file_len() == map.len()` (checked above).
        let data = unsafe { map.as_mut_ptr().add(layout.data_off()) };
        Ok(Mapping {
            map,
            layout,
            data,
            mask: layout.capacity - 1,
        })
    }

    /// A control word before the data (header, wake, need, receiver lines).
    fn ctl_u64(&self, off: usize) -> &AtomicU64 {
        assert!(
            off & 7 == 0 && off + 8 <= self.layout.data_off(),
            "bare ring control offset out of range"
        );
        // SAFETY: `off` is 8-aligned and before the data, inside the mapping
        // (whose length was checked in `new`); the mapping outlives `&self`.
        // Every access to this word, in any process, is atomic.
        unsafe { &*self.map.as_mut_ptr().add(off).cast::<AtomicU64>() }
    }

    fn notify(&self) -> &AtomicU32 {
        // SAFETY: WAKE_OFF is a constant 8-aligned offset inside the first
        // page, which every mapping holds (`new` checked its length); atomic
        // accesses only.
        unsafe { &*self.map.as_mut_ptr().add(WAKE_OFF).cast::<AtomicU32>() }
    }

    fn waiters(&self) -> &AtomicU32 {
        // SAFETY: as in `notify`, the next 4 bytes.
        unsafe { &*self.map.as_mut_ptr().add(WAKE_OFF + 4).cast::<AtomicU32>() }
    }

    fn need(&self) -> &AtomicU64 {
        // SAFETY: as in `notify`, a constant 8-aligned offset in the first page.
        unsafe { &*self.map.as_mut_ptr().add(NEED_OFF).cast::<AtomicU64>() }
    }

    fn cursor(&self, receiver: usize) -> &AtomicU64 {
        self.ctl_u64(RECEIVERS_OFF + receiver * LINE)
    }

    fn attached(&self, receiver: usize) -> &AtomicU64 {
        self.ctl_u64(RECEIVERS_OFF + receiver * LINE + 8)
    }

    /// The ring word at data offset `off & mask & !7`.
    #[inline(always)]
    fn word(&self, off: u64) -> &AtomicU64 {
        let off = (off & self.mask & !7) as usize;
        // SAFETY: the masked offset is 8-aligned and below `capacity`, so the
        // word lies inside the data region of the mapping, which outlives
        // `&self`. Stamp and length words are only ever accessed atomically.
        unsafe { &*self.data.add(off).cast::<AtomicU64>() }
    }

    /// Pointer to `len` ring bytes at data offset `off`.
    ///
    /// # Safety
    ///
    /// `off + len <= capacity`.
    #[inline(always)]
    unsafe fn bytes(&self, off: u64, len: usize) -> *mut u8 {
        debug_assert!(off + len as u64 <= self.layout.capacity);
        // SAFETY: the caller guarantees `off + len <= capacity`, so the
        // pointer stays inside the data region.
        unsafe { self.data.add(off as usize) }
    }
}

fn file_path(spec: &ChannelSpec) -> PathBuf {
    spec.dir.join(format!("{}.bare", spec.name))
}

/// The bare ring described in the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bare;

impl System for Bare {
    fn name(&self) -> &'static str {
        NAME
    }

    fn notes(&self) -> &'static [&'static str] {
        &[
            "bare ring: the smallest single-writer byte ring of shmbus's design in one MAP_SHARED \
           /dev/shm file, no API and no validation: 16-byte records (stamp = own position, \
           stored last; length), padding at the wrap, the next stamp cleared before each commit, \
           a cursor per receiver on its own line released every capacity/8 bytes or when the \
           writer signals it is short of space, cursors read only when the cached limit says \
           full, a waiter count + futex the writer checks with one load per message (asymmetric: \
           compiler fence, sleepers issue membarrier). Ring size as shmbus's for the same row; \
           one receive call per message in every row",
        ]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        let layout = Layout::new(spec)?;
        // Register before the channel becomes visible: from the first message
        // on, a sleeper's membarrier must reach this process.
        let asym = std::env::var_os(SYMMETRIC_ENV).is_none_or(|v| v != "1")
            && membarrier_register_global_expedited();
        let path = file_path(spec);
        let tmp = path.with_extension("bare-init");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.set_len(layout.file_len() as u64)?;
        let map = MmapOptions::new()
            .populate()
            .map_raw(&file)
            .with_context(|| format!("mapping {}", tmp.display()))?;
        let m = Mapping::new(map, layout)?;
        // The file is fresh (zero-filled) and not yet visible under its final
        // name, so Relaxed stores suffice; the Release store of the magic
        // publishes them (paired with the receiver's Acquire load).
        m.ctl_u64(8).store(VERSION, Ordering::Relaxed);
        m.ctl_u64(16).store(layout.capacity, Ordering::Relaxed);
        m.ctl_u64(24)
            .store(layout.receivers as u64, Ordering::Relaxed);
        m.ctl_u64(32)
            .store(layout.msg_len as u64, Ordering::Relaxed);
        m.ctl_u64(40).store(u64::from(asym), Ordering::Relaxed);
        m.ctl_u64(0).store(MAGIC, Ordering::Release);
        std::fs::rename(&tmp, &path).with_context(|| format!("publishing {}", path.display()))?;
        for i in 0..layout.receivers {
            // Acquire pairs with the receiver's Release store of `attached`.
            retry_until(spec.connect_timeout, &format!("bare receiver {i}"), || {
                Ok((m.attached(i).load(Ordering::Acquire) == 1).then_some(()))
            })?;
        }
        Ok(Box::new(BareTx {
            capacity: layout.capacity,
            len: layout.msg_len,
            m,
            write: 0,
            limit: 0,
            need: 0,
            asym,
            wait: spec.wait,
        }))
    }

    fn open_rx(&self, spec: &ChannelSpec, index: usize) -> Result<Box<dyn Rx>> {
        let want = Layout::new(spec)?;
        if index >= want.receivers {
            bail!(
                "bare receiver index {index} is out of range (receivers: {})",
                want.receivers
            );
        }
        let path = file_path(spec);
        let file = open_when_published(
            spec.connect_timeout,
            "the bare ring sender to publish its file",
            &path,
        )?;
        let map = MmapOptions::new()
            .populate()
            .map_raw(&file)
            .with_context(|| format!("mapping {}", path.display()))?;
        let m = Mapping::new(map, want)?;
        // Acquire pairs with the sender's Release store of the magic.
        if m.ctl_u64(0).load(Ordering::Acquire) != MAGIC {
            bail!("{} is not an initialized bare ring", path.display());
        }
        // Relaxed: the header fields were published by the magic's Release
        // store, which the Acquire load above synchronized with.
        let got = [8, 16, 24, 32].map(|off| m.ctl_u64(off).load(Ordering::Relaxed));
        let expect = [
            VERSION,
            want.capacity,
            want.receivers as u64,
            want.msg_len as u64,
        ];
        if got != expect {
            bail!("{} has header {got:?}, expected {expect:?}", path.display());
        }
        // Relaxed: as the fields above.
        let asym = m.ctl_u64(40).load(Ordering::Relaxed) == 1;
        // Release pairs with the sender's Acquire wait on `attached`.
        m.attached(index).store(1, Ordering::Release);
        let batch = want.capacity / 8;
        Ok(Box::new(BareRx {
            capacity: want.capacity,
            len: want.msg_len,
            m,
            index,
            next: 0,
            released: 0,
            release_at: batch,
            batch,
            asym,
        }))
    }
}

#[derive(Debug)]
struct BareTx {
    m: Mapping,
    capacity: u64,
    len: usize,
    /// Position of the next record.
    write: u64,
    /// Cached minimum receiver cursor: positions below `limit + capacity`
    /// are free.
    limit: u64,
    /// Last value stored in the `need` word.
    need: u64,
    /// Waking is asymmetric (membarrier registered).
    asym: bool,
    wait: Wait,
}

impl BareTx {
    /// Reads every cursor until the record ending at `end` fits; while it
    /// does not, tells the readers which position to release.
    #[cold]
    fn wait_for_space(&mut self, end: u64) -> Result<()> {
        loop {
            let mut min = u64::MAX;
            for i in 0..self.m.layout.receivers {
                // Acquire pairs with the reader's Release store of its cursor
                // (`release`): its reads happen before we overwrite.
                let c = self.m.cursor(i).load(Ordering::Acquire);
                if c > self.write {
                    bail!(
                        "bare receiver {i} claims position {c} beyond the writer's {}",
                        self.write
                    );
                }
                min = min.min(c);
            }
            self.limit = min;
            if end <= self.limit + self.capacity {
                return Ok(());
            }
            // Ask for an eighth of the ring beyond the need, so a full ring
            // does not turn into one cursor store per message. Never past
            // what is written (a reader could not reach it).
            let want = (end - self.capacity + self.capacity / 8).min(self.write);
            if want > self.need {
                self.need = want;
                // Relaxed: a hint. The reader answers with a cursor store that
                // carries its own Release; a late hint only delays a release
                // that the reader's batch makes anyway.
                self.m.need().store(want, Ordering::Relaxed);
            }
            self.wait.idle();
        }
    }

    /// Clears the stamp at `end` where the next record will start, unless the
    /// ring is exactly full: then that word is the oldest unread record's
    /// genuine stamp, of an older position.
    #[inline(always)]
    fn clear_next(&self, end: u64) {
        if end + HEADER <= self.limit + self.capacity {
            // Relaxed: published by the Release store of the stamp that follows.
            self.m.word(end).store(0, Ordering::Relaxed);
        }
    }

    /// Wakes sleepers, if any: one load per message while nobody sleeps.
    #[inline(always)]
    fn notify(&self) {
        if self.asym {
            // The wake pair, asymmetric: the compiler keeps the stamp store
            // before the `waiters` load; the CPU's store buffer is drained by
            // the IPI of the sleeper's membarrier, which runs after its
            // `waiters` increment. Either that barrier hits this CPU after
            // the stamp store (the sleeper's re-check sees the stamp) or
            // before the `waiters` load (which then sees the increment): the
            // argument of Folly's and liburcu's asymmetric fences.
            compiler_fence(Ordering::SeqCst);
        } else {
            // The wake pair, symmetric: pairs with the sleeper's fence.
            fence(Ordering::SeqCst);
        }
        // Relaxed: ordered by the barrier above (wake pair).
        if self.m.waiters().load(Ordering::Relaxed) != 0 {
            // Release pairs with the sleeper's Acquire load of `notify`.
            self.m.notify().fetch_add(1, Ordering::Release);
            futex_wake_all(self.m.notify());
        }
    }
}

impl Tx for BareTx {
    fn send(&mut self, seq: u64) -> Result<()> {
        let mask = self.m.mask;
        let size = record_size(self.len as u64);
        let to_end = self.capacity - (self.write & mask);
        let start = if size <= to_end {
            self.write
        } else {
            self.write + to_end
        };
        let end = start + size;
        if end > self.limit + self.capacity {
            self.wait_for_space(end)?;
        }
        if start != self.write {
            // Padding to the ring's end. `start` (offset 0) is below `end`,
            // so free: clear its stale stamp before the padding is visible.
            let off = self.write & mask;
            // Relaxed: published by the padding stamp's Release below.
            self.m
                .word(off + 8)
                .store(to_end - HEADER, Ordering::Relaxed);
            self.m.word(0).store(0, Ordering::Relaxed);
            // Commit pair (padding): Release pairs with the reader's Acquire.
            self.m
                .word(off)
                .store(self.write | COMMITTED | PADDING, Ordering::Release);
            self.write = start;
        }
        let off = start & mask;
        // SAFETY: `size <= to_end` at `start` (the padding moved `start` to
        // offset 0 otherwise, and `size <= capacity / 2`), so the payload
        // lies inside the data region. Every receiver's cursor is at least
        // `end - capacity` (gate check above, Acquire loads), so no receiver
        // reads these bytes of an earlier lap any more, and none reads them
        // for this lap before the stamp below is stored: this process has
        // exclusive access until then. MaybeUninit<u8> accepts any contents.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                self.m
                    .bytes(off + HEADER, self.len)
                    .cast::<MaybeUninit<u8>>(),
                self.len,
            )
        };
        payload::write_uninit(seq, dst);
        // Relaxed: published by the stamp's Release below.
        self.m
            .word(off + 8)
            .store(self.len as u64, Ordering::Relaxed);
        self.clear_next(end);
        // Commit pair: Release pairs with the reader's Acquire load of the
        // stamp; the length, payload and cleared next stamp are visible.
        self.m.word(off).store(start | COMMITTED, Ordering::Release);
        self.write = end;
        self.notify();
        Ok(())
    }
}

#[derive(Debug)]
struct BareRx {
    m: Mapping,
    capacity: u64,
    len: usize,
    index: usize,
    /// Position of the next record to read.
    next: u64,
    /// Last cursor value stored.
    released: u64,
    /// Store the cursor once `next` reaches this.
    release_at: u64,
    /// Release granularity in bytes.
    batch: u64,
    /// Waking is asymmetric (the writer registered for membarrier).
    asym: bool,
}

/// What the stamp at the reader's position says.
enum Stamp {
    Data,
    Padding,
    NotYet,
}

impl BareRx {
    #[inline(always)]
    fn stamp(&self) -> Result<Stamp> {
        let pos = self.next;
        // Commit pair: Acquire pairs with the writer's Release store.
        let stamp = self.m.word(pos).load(Ordering::Acquire);
        if stamp == pos | COMMITTED {
            Ok(Stamp::Data)
        } else if stamp == pos | COMMITTED | PADDING {
            Ok(Stamp::Padding)
        } else if stamp == 0 || stamp & !(HEADER - 1) < pos {
            Ok(Stamp::NotYet)
        } else {
            bail!("bare ring stamp {stamp:#x} at position {pos}: overrun or corrupt")
        }
    }

    /// Stores the cursor (release pair: Release pairs with the writer's
    /// Acquire loads in `wait_for_space`).
    #[inline]
    fn release(&mut self) {
        self.m
            .cursor(self.index)
            .store(self.next, Ordering::Release);
        self.released = self.next;
        self.release_at = self.next + self.batch;
    }

    /// Whether the writer asked for a position this reader has reached but
    /// not released.
    #[inline(always)]
    fn writer_short(&self) -> bool {
        // Relaxed: a hint (see `wait_for_space`); the line changes only when
        // the writer finds the ring full, so this is a cache hit.
        let need = self.m.need().load(Ordering::Relaxed);
        need > self.released && self.next >= need
    }

    #[inline(always)]
    fn poll(&mut self) -> Result<Option<u64>> {
        loop {
            match self.stamp()? {
                Stamp::Data => {
                    let off = self.next & self.m.mask;
                    // Relaxed: ordered after the stamp's Acquire load.
                    let stored = self.m.word(off + 8).load(Ordering::Relaxed);
                    if stored > self.capacity - off - HEADER {
                        bail!("bare ring record at {} claims {stored} bytes", self.next);
                    }
                    let stored = stored as usize;
                    // SAFETY: `off + HEADER + stored <= capacity` (checked
                    // above), inside the data region. The stamp's Acquire made
                    // the writer's payload stores visible, and the writer does
                    // not write these bytes again until this reader's cursor,
                    // stored only after the reads below, passes them.
                    let src = unsafe {
                        std::slice::from_raw_parts(self.m.bytes(off + HEADER, stored), stored)
                    };
                    let seq = payload::check(src, self.len)?;
                    self.next += record_size(stored as u64);
                    if self.next >= self.release_at || self.writer_short() {
                        self.release();
                    }
                    return Ok(Some(seq));
                }
                Stamp::Padding => {
                    self.next += self.capacity - (self.next & self.m.mask);
                }
                Stamp::NotYet => {
                    if self.writer_short() {
                        self.release();
                    }
                    return Ok(None);
                }
            }
        }
    }
}

impl Rx for BareRx {
    fn try_recv(&mut self) -> Result<Option<u64>> {
        self.poll()
    }

    fn recv_blocking(&mut self) -> Result<u64> {
        loop {
            if let Some(seq) = self.poll()? {
                return Ok(seq);
            }
            // The writer may be waiting for this reader's space while it sleeps.
            if self.released != self.next {
                self.release();
            }
            // Wake pair: announce the sleep, then a full barrier (see
            // `BareTx::notify`), then re-check. SeqCst: in the symmetric
            // variant it is the store side of the Dekker pair.
            self.m.waiters().fetch_add(1, Ordering::SeqCst);
            let timeout = if self.asym {
                if membarrier_global_expedited() {
                    Duration::from_millis(100)
                } else {
                    // Cannot order against the writer: sleep briefly only.
                    Duration::from_micros(200)
                }
            } else {
                fence(Ordering::SeqCst);
                Duration::from_millis(100)
            };
            // Notify pair: Acquire pairs with the writer's Release increment.
            let seen = self.m.notify().load(Ordering::Acquire);
            if matches!(self.stamp()?, Stamp::NotYet) {
                // Returns at once if `notify` moved since `seen`; the timeout
                // only bounds a sleep if the writer died.
                futex_wait(self.m.notify(), seen, timeout);
            }
            // Relaxed: a late decrement only costs the writer a spurious wake.
            self.m.waiters().fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::END;

    fn spec(dir: &std::path::Path, msg_len: usize, receivers: usize, wait: Wait) -> ChannelSpec {
        ChannelSpec {
            dir: dir.to_owned(),
            name: "data".into(),
            run_id: "test".into(),
            msg_len,
            depth: 8,
            receivers,
            wait,
            stream: true,
            connect_timeout: Duration::from_secs(20),
        }
    }

    /// Streams `count` messages through a ring that wraps (with padding:
    /// 200-byte payloads make 224-byte records in a 4 KiB ring) to
    /// `receivers` threads, which check every payload and the order.
    fn stream(wait: Wait, receivers: usize, count: u64) {
        let dir = std::env::temp_dir().join(format!(
            "shmbus-bare-test-{}-{}",
            std::process::id(),
            wait.as_str()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = spec(&dir, 200, receivers, wait);
        assert_eq!(Layout::new(&spec).unwrap().capacity, 4096);
        let readers: Vec<_> = (0..receivers)
            .map(|i| {
                let spec = spec.clone();
                std::thread::spawn(move || -> Result<u64> {
                    let mut rx = Bare.open_rx(&spec, i)?;
                    let mut expected = 0;
                    loop {
                        let seq = crate::roles::recv(rx.as_mut(), wait)?;
                        if seq == END {
                            return Ok(expected);
                        }
                        assert_eq!(seq, expected);
                        expected += 1;
                    }
                })
            })
            .collect();
        let mut tx = Bare.open_tx(&spec).unwrap();
        for seq in 0..count {
            tx.send(seq).unwrap();
        }
        tx.send(END).unwrap();
        for r in readers {
            assert_eq!(r.join().unwrap().unwrap(), count);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wraps_with_padding_to_several_spinning_readers() {
        stream(Wait::Yield, 3, 50_000);
    }

    #[test]
    fn blocking_readers_are_woken() {
        stream(Wait::Block, 2, 20_000);
    }
}
