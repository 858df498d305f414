//! The hardware floor: the least work that moves a message between two cores
//! through shared memory, with no protocol beyond what correctness needs.
//!
//! A channel is one `MAP_SHARED` file in the run directory (on `/dev/shm`):
//! a ring of fixed slots, each a 16-byte header (stamp, length) followed by the
//! payload, rounded to whole cache lines. The sender writes the payload, then
//! release-stores the slot's stamp (`position + 1`); the receiver spins on the
//! stamp of the slot it expects (its own cache line for small messages), reads
//! and checks the payload, then release-stores its cursor on its own line. The
//! sender reads cursors only when its cached view says the ring is full. In
//! blocking mode a waiter count and a futex word sit on the sender's line;
//! the sender pays one load per message while nobody sleeps.
//!
//! ```text
//! 0      header   magic, version, slots, stride, receivers, msg_len
//! 128    sender   notify (futex u32), waiters (u32)
//! 256    receiver cursor (u64), attached (u64)   one 128-byte line each
//! page   slots    [stamp u64 | len u32 | pad u32 | payload ...] x slots
//! ```

use std::fs::OpenOptions;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use memmap2::{MmapOptions, MmapRaw};

use crate::os::{futex_wait, futex_wake_all};
use crate::payload;
use crate::transport::{open_when_published, retry_until, ChannelSpec, Rx, System, Tx, Wait};

const MAGIC: u64 = u64::from_le_bytes(*b"SBFLOOR1");
const VERSION: u64 = 1;
const LINE: usize = 128;
const SENDER_OFF: usize = LINE;
const RECEIVERS_OFF: usize = 2 * LINE;
const SLOT_HEADER: usize = 16;
const MAX_RECEIVERS: usize = 64;
const PAGE: usize = 4096;

/// Geometry of one channel file, derived from the spec and checked on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    slots: usize,
    stride: usize,
    receivers: usize,
    msg_len: usize,
}

impl Layout {
    fn new(spec: &ChannelSpec) -> Result<Layout> {
        if spec.receivers == 0 || spec.receivers > MAX_RECEIVERS {
            bail!(
                "floor supports 1..={MAX_RECEIVERS} receivers, not {}",
                spec.receivers
            );
        }
        if spec.depth == 0 || spec.msg_len > u32::MAX as usize {
            bail!("floor needs a non-zero depth and a payload below 4 GiB");
        }
        let layout = Layout {
            slots: spec.depth,
            stride: (SLOT_HEADER + spec.msg_len).next_multiple_of(64),
            receivers: spec.receivers,
            msg_len: spec.msg_len,
        };
        // Refuse geometries whose size does not fit in memory arithmetic, so
        // `file_len` and `slot_off` below cannot overflow.
        let fits = layout
            .slots
            .checked_mul(layout.stride)
            .and_then(|n| n.checked_add(layout.slots_off()))
            .is_some_and(|n| n <= isize::MAX as usize);
        if !fits {
            bail!(
                "floor channel of {} x {} bytes is too large",
                layout.slots,
                layout.stride
            );
        }
        Ok(layout)
    }

    fn slots_off(&self) -> usize {
        (RECEIVERS_OFF + self.receivers * LINE).next_multiple_of(PAGE)
    }

    fn file_len(&self) -> usize {
        self.slots_off() + self.slots * self.stride
    }

    fn slot_off(&self, pos: u64) -> usize {
        // `pos % slots` < slots, so the product stays inside the slot area.
        self.slots_off() + (pos % self.slots as u64) as usize * self.stride
    }
}

/// A mapped channel file with typed access to its words.
#[derive(Debug)]
struct Mapping {
    map: MmapRaw,
    layout: Layout,
}

impl Mapping {
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off & 7 == 0 && off + 8 <= self.map.len(),
            "floor offset out of range"
        );
        // SAFETY: `off` is 8-aligned inside the mapping (checked above; the
        // mapping itself is page-aligned) and the mapping outlives `&self`.
        // Every access to this word, in any process, is atomic.
        unsafe { &*self.map.as_mut_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off & 3 == 0 && off + 4 <= self.map.len(),
            "floor offset out of range"
        );
        // SAFETY: as in `u64_at`, for a 4-aligned u32 word.
        unsafe { &*self.map.as_mut_ptr().add(off).cast::<AtomicU32>() }
    }

    fn notify(&self) -> &AtomicU32 {
        self.u32_at(SENDER_OFF)
    }

    fn waiters(&self) -> &AtomicU32 {
        self.u32_at(SENDER_OFF + 4)
    }

    fn cursor(&self, receiver: usize) -> &AtomicU64 {
        self.u64_at(RECEIVERS_OFF + receiver * LINE)
    }

    fn attached(&self, receiver: usize) -> &AtomicU64 {
        self.u64_at(RECEIVERS_OFF + receiver * LINE + 8)
    }

    fn stamp(&self, pos: u64) -> &AtomicU64 {
        self.u64_at(self.layout.slot_off(pos))
    }

    fn len(&self, pos: u64) -> &AtomicU32 {
        self.u32_at(self.layout.slot_off(pos) + 8)
    }

    fn payload_ptr(&self, pos: u64) -> *mut u8 {
        let off = self.layout.slot_off(pos) + SLOT_HEADER;
        assert!(
            off + self.layout.msg_len <= self.map.len(),
            "floor slot out of range"
        );
        // SAFETY: `off + msg_len` is inside the mapping (checked above).
        unsafe { self.map.as_mut_ptr().add(off) }
    }
}

fn file_path(spec: &ChannelSpec) -> PathBuf {
    spec.dir.join(format!("{}.floor", spec.name))
}

/// The raw shared-memory ring described in the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floor;

impl System for Floor {
    fn name(&self) -> &'static str {
        "floor"
    }

    fn notes(&self) -> &'static [&'static str] {
        &["floor: raw ring of cache-line-aligned slots in a MAP_SHARED /dev/shm file, a stamp per \
           slot and a cursor per receiver, nothing else; blocking mode adds a waiter count and a \
           shared futex"]
    }

    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>> {
        let layout = Layout::new(spec)?;
        let path = file_path(spec);
        let tmp = path.with_extension("floor-init");
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
        let m = Mapping { map, layout };
        // The file is fresh (zero-filled) and not yet visible under its final
        // name, so Relaxed stores suffice for the fields; the Release store of
        // the magic publishes them (paired with the receiver's Acquire load).
        m.u64_at(8).store(VERSION, Ordering::Relaxed);
        m.u64_at(16).store(layout.slots as u64, Ordering::Relaxed);
        m.u64_at(24).store(layout.stride as u64, Ordering::Relaxed);
        m.u64_at(32)
            .store(layout.receivers as u64, Ordering::Relaxed);
        m.u64_at(40).store(layout.msg_len as u64, Ordering::Relaxed);
        m.u64_at(0).store(MAGIC, Ordering::Release);
        std::fs::rename(&tmp, &path).with_context(|| format!("publishing {}", path.display()))?;
        for i in 0..layout.receivers {
            // Acquire pairs with the receiver's Release store of `attached`.
            retry_until(spec.connect_timeout, &format!("floor receiver {i}"), || {
                Ok((m.attached(i).load(Ordering::Acquire) == 1).then_some(()))
            })?;
        }
        Ok(Box::new(FloorTx {
            m,
            next: 0,
            gate: 0,
            wait: spec.wait,
        }))
    }

    fn open_rx(&self, spec: &ChannelSpec, index: usize) -> Result<Box<dyn Rx>> {
        let want = Layout::new(spec)?;
        if index >= want.receivers {
            bail!(
                "floor receiver index {index} is out of range (receivers: {})",
                want.receivers
            );
        }
        let path = file_path(spec);
        let file = open_when_published(
            spec.connect_timeout,
            "the floor sender to publish its file",
            &path,
        )?;
        let len = file.metadata()?.len();
        if len != want.file_len() as u64 {
            bail!(
                "{} is {len} bytes, expected {} for this channel",
                path.display(),
                want.file_len()
            );
        }
        let map = MmapOptions::new()
            .populate()
            .map_raw(&file)
            .with_context(|| format!("mapping {}", path.display()))?;
        let m = Mapping { map, layout: want };
        // Acquire pairs with the sender's Release store of the magic, making
        // the header fields visible. Everything read here is checked against
        // what this side expects before any offset derived from it is used.
        if m.u64_at(0).load(Ordering::Acquire) != MAGIC {
            bail!("{} is not an initialized floor channel", path.display());
        }
        let got = [8, 16, 24, 32, 40].map(|off| m.u64_at(off).load(Ordering::Relaxed));
        let expect = [
            VERSION,
            want.slots as u64,
            want.stride as u64,
            want.receivers as u64,
            want.msg_len as u64,
        ];
        if got != expect {
            bail!("{} has header {got:?}, expected {expect:?}", path.display());
        }
        // Release pairs with the sender's Acquire wait on `attached`.
        m.attached(index).store(1, Ordering::Release);
        Ok(Box::new(FloorRx { m, index, next: 0 }))
    }
}

#[derive(Debug)]
struct FloorTx {
    m: Mapping,
    /// Position of the next message.
    next: u64,
    /// Cached minimum receiver cursor.
    gate: u64,
    wait: Wait,
}

impl FloorTx {
    /// Recomputes the gate from every receiver's cursor.
    fn refresh_gate(&mut self) -> Result<()> {
        let mut min = u64::MAX;
        for i in 0..self.m.layout.receivers {
            // Acquire pairs with the receiver's Release store of its cursor:
            // its reads of a slot happen before we overwrite that slot.
            let c = self.m.cursor(i).load(Ordering::Acquire);
            if c > self.next {
                bail!(
                    "floor receiver {i} claims position {c} beyond the sender's {}",
                    self.next
                );
            }
            min = min.min(c);
        }
        self.gate = min;
        Ok(())
    }
}

impl Tx for FloorTx {
    fn send(&mut self, seq: u64) -> Result<()> {
        let pos = self.next;
        let slots = self.m.layout.slots as u64;
        while pos - self.gate >= slots {
            self.refresh_gate()?;
            if pos - self.gate >= slots {
                self.wait.idle();
            }
        }
        let len = self.m.layout.msg_len;
        // SAFETY: the slot is inside the mapping (checked in `payload_ptr`).
        // Every receiver's cursor is past the previous occupant of this slot
        // (gate check above, Acquire), and no receiver reads it again before
        // the stamp below is stored, so this process has exclusive access to
        // these bytes until then. MaybeUninit<u8> accepts any contents.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.m.payload_ptr(pos).cast::<MaybeUninit<u8>>(), len)
        };
        payload::write_uninit(seq, dst);
        // Relaxed: published by the Release store of the stamp below.
        self.m.len(pos).store(len as u32, Ordering::Relaxed);
        // Release pairs with the receiver's Acquire load of the stamp.
        self.m.stamp(pos).store(pos + 1, Ordering::Release);
        self.next = pos + 1;
        if self.wait == Wait::Block {
            // SeqCst fence between the stamp store and the waiter load pairs
            // with the fence in `FloorRx::recv_blocking`: either the waiter
            // sees the stamp or we see the waiter.
            fence(Ordering::SeqCst);
            // Relaxed: ordered by the fence above.
            if self.m.waiters().load(Ordering::Relaxed) != 0 {
                // Release pairs with the waiter's Acquire load of `notify`.
                self.m.notify().fetch_add(1, Ordering::Release);
                futex_wake_all(self.m.notify());
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FloorRx {
    m: Mapping,
    index: usize,
    next: u64,
}

impl FloorRx {
    /// Whether the expected message is published (Acquire on the stamp).
    fn ready(&self) -> Result<bool> {
        let pos = self.next;
        // Acquire pairs with the sender's Release store of the stamp.
        let stamp = self.m.stamp(pos).load(Ordering::Acquire);
        if stamp == pos + 1 {
            return Ok(true);
        }
        // An older lap's stamp (or 0) means "not yet"; anything newer means
        // the sender overran us, which the gate forbids: a corrupt channel.
        if stamp > pos + 1 {
            bail!("floor slot for position {pos} holds stamp {stamp}: channel corrupted");
        }
        Ok(false)
    }
}

impl Rx for FloorRx {
    fn try_recv(&mut self) -> Result<Option<u64>> {
        if !self.ready()? {
            return Ok(None);
        }
        let pos = self.next;
        let len = self.m.layout.msg_len;
        // Relaxed: ordered after the stamp's Acquire load in `ready`.
        let stored = self.m.len(pos).load(Ordering::Relaxed) as usize;
        if stored != len {
            bail!("floor message at {pos} says {stored} bytes, the channel carries {len}");
        }
        // SAFETY: the slot is inside the mapping (checked in `payload_ptr`).
        // The stamp's Acquire load made the sender's payload writes visible,
        // and the sender does not touch this slot again until our cursor
        // (stored below, after the last read) passes it.
        let src = unsafe { std::slice::from_raw_parts(self.m.payload_ptr(pos), len) };
        let seq = payload::check(src, len)?;
        // Release pairs with the sender's Acquire load of cursors.
        self.m.cursor(self.index).store(pos + 1, Ordering::Release);
        self.next = pos + 1;
        Ok(Some(seq))
    }

    fn recv_blocking(&mut self) -> Result<u64> {
        loop {
            if let Some(seq) = self.try_recv()? {
                return Ok(seq);
            }
            // Register as a waiter, then re-check before sleeping.
            self.m.waiters().fetch_add(1, Ordering::SeqCst);
            // Pairs with the sender's fence between stamp store and waiter load.
            fence(Ordering::SeqCst);
            // Acquire pairs with the sender's Release increment of `notify`.
            let seen = self.m.notify().load(Ordering::Acquire);
            if !self.ready()? {
                // Returns at once if `notify` moved since `seen`; the timeout
                // only bounds a sleep if the sender died.
                futex_wait(self.m.notify(), seen, Duration::from_millis(100));
            }
            self.m.waiters().fetch_sub(1, Ordering::SeqCst);
        }
    }
}
