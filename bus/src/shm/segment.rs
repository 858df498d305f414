//! Creating, opening and mapping a ring's two files.
//!
//! A ring is a data file `<id>.ring` (header, producer page, ring data;
//! written only by the publisher, mapped read-only by subscribers) and a
//! control file `<id>.ctl` (subscriber slots and waiting words, shared
//! read-write), tied together by a random ring id in both headers.
//!
//! The creator builds both under hidden temporary names (`O_EXCL`,
//! `O_NOFOLLOW`, pages reserved with `fallocate`, so a full tmpfs is `ENOSPC`
//! here and never a SIGBUS later), takes the publisher's lock (byte 0 of the
//! control file), joins the topic's registered subscribers (pre-join),
//! stores each `magic` last (Release), then renames the control file and
//! then the data file into place without replacing anything: a reader never
//! finds a half-made ring under its real name.
//!
//! Every opener checks what it opened with `fstat` on the same descriptor
//! (regular file, owner, mode; see [`super::fs`]) and validates every
//! header field once; nothing in a header is re-read.
//!
//! # Safety of the mappings
//!
//! Like any shared file mapping, a ring can be changed by other processes at
//! any time. The ring protocol tolerates that for its own words (they are
//! atomics, and every value is validated before use, every offset masked).
//! Subscribers cannot write the data file at all. A process of the
//! publisher's user can still truncate a file, which faults every mapping
//! of it (SIGBUS): no shmbus code ever truncates a ring; keep the tree's
//! ownership tight.

use std::{
    fs::File,
    io,
    mem::MaybeUninit,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::{
    layout::{
        self, control_file_len, ControlHeader, Producer, SegmentHeader, Slot, Waiters, CTL_MAGIC,
        DATA_OFFSET, ENDIAN_TAG, FLAG_REPLICA, FLAG_WAKE_FENCE, FLAG_WAKE_MEMBARRIER,
        LAYOUT_VERSION, MAGIC, MAX_CAPACITY, MAX_RECORD_PAYLOAD, MAX_SLOTS, MIN_CAPACITY, PAGE,
        POLICY_BLOCK, POLICY_OVERWRITE, PRODUCER_OFFSET, PUBLISHER_LOCK_BYTE, RECORD_HEADER,
        SLOTS_OFFSET, TYPE_NAME_MAX, WAITERS_OFFSET, WRITER_OPEN,
    },
    ring::{gate, records, Geometry, Policy, View},
    shm::{
        fs::{self, Access},
        futex::{self, Sleeper},
        liveness::ProcessId,
        lock,
        membarrier::{self, WakeHandshake},
        registry::Registry,
    },
    sync::{AtomicU32, AtomicU64, Ordering},
    Error,
};

/// How long `open` waits for a creator to finish initializing a segment.
pub const INIT_WAIT: Duration = Duration::from_millis(250);

/// Parameters of a new ring.
///
/// # Examples
///
/// ```
/// use shmbus_bus::{Policy, RingConfig};
/// let config = RingConfig {
///     capacity: 1 << 20,
///     max_message: 64 << 10,
///     policy: Policy::Overwrite,
///     ..RingConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Ring data bytes: a power of two from 4 KiB to 16 GiB.
    pub capacity: u64,
    /// Largest payload; at most `capacity / 2 - 16` (so any record fits
    /// after a wrap) and below 4 GiB (the record header's length field).
    pub max_message: u64,
    /// Subscriber slots (1..=1024): the most subscribers this ring can have at once.
    pub slots: u32,
    /// Flow control.
    pub policy: Policy,
    /// Untethered eviction (Block only): evict a live subscriber that holds the
    /// publisher back this long. `None`: only dead subscribers are evicted.
    pub evict_after: Option<Duration>,
    /// The message type's name, checked by typed subscribers.
    pub type_name: String,
    /// The message type's layout fingerprint (0 for raw bytes).
    pub type_fingerprint: u64,
    /// Marks a replica ring written by a bridge (never exported again).
    pub replica: bool,
    /// File mode: 0o600 (the default: the owner only) or 0o660 (the
    /// owner's group may subscribe: the control file is then 0o660 and the
    /// data file 0o640, so group members read but never write the data).
    pub mode: u32,
    /// How the publisher and sleeping subscribers close the wake-up race
    /// (see [`WakeHandshake`]). A process that cannot register for
    /// `membarrier` creates the ring with [`WakeHandshake::Fence`] instead
    /// ([`SegmentInfo::wake_handshake`] says which one a ring uses).
    ///
    /// Default: [`WakeHandshake::Membarrier`], from `wake-bench` (2 vCPU KVM
    /// guest, shared and loaded; two runs, `a / b`):
    ///
    /// | case | Membarrier | Fence |
    /// |---|---:|---:|
    /// | writes/s, nobody sleeping, no subscriber | 20.1 / 22.8 M | 16.2 / 19.8 M |
    /// | writes/s, one `write` per message, 3 sleeping subscribers | 5.66 / 4.10 M | 3.77 / 3.62 M |
    /// | bursty (100 msgs / 1 ms), 1 sleeper: publisher CPU µs/burst, write p99 | 33 / 33, 3.0 / 3.7 µs | 43 / 33, 2.7 / 2.9 µs |
    /// | bursty, 4 sleepers | 36 / 47, 7.1 / 27 µs | 54 / 47, 14 / 12 µs |
    /// | bursty, 16 sleepers | 172 / 264, 168 / 165 µs | 80 / 146, 171 / 199 µs |
    ///
    /// The publish path without sleepers (the throughput case) gains 15-25 %
    /// and coalesced sends to sleepers 13-50 %; with up to 4 sleepers the
    /// publisher's cost is the same or lower. With 16 subscribers that sleep
    /// every burst on 2 cores, every sleep's `membarrier` interrupts the
    /// publisher: its CPU doubles. Choose [`WakeHandshake::Fence`] for rings
    /// with many subscribers that sleep often on few cores, or for a
    /// publisher that must never be interrupted (its latency p99 is then
    /// unaffected by other processes' sleeps).
    pub wake_handshake: WakeHandshake,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            capacity: 4 << 20,
            max_message: 1 << 20,
            slots: 64,
            policy: Policy::Block,
            evict_after: None,
            type_name: String::new(),
            type_fingerprint: 0,
            replica: false,
            mode: 0o600,
            wake_handshake: WakeHandshake::Membarrier,
        }
    }
}

impl RingConfig {
    /// Checks every field's range.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::InvalidConfig(s));
        if !self.capacity.is_power_of_two()
            || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&self.capacity)
        {
            return bad(format!(
                "capacity {} must be a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}",
                self.capacity
            ));
        }
        let max = max_message_limit(self.capacity);
        if self.max_message == 0 || self.max_message > max {
            return bad(format!(
                "max_message {} must be 1..={max} for a ring of {} bytes",
                self.max_message, self.capacity
            ));
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return bad(format!("slots {} must be 1..={MAX_SLOTS}", self.slots));
        }
        if self.type_name.len() > TYPE_NAME_MAX {
            return bad(format!("type name longer than {TYPE_NAME_MAX} bytes"));
        }
        if self.policy == Policy::Overwrite && self.evict_after.is_some() {
            return bad("evict_after applies to the Block policy only".into());
        }
        if self.mode != 0o600 && self.mode != 0o660 {
            return bad(format!(
                "mode {:o} must be 0o600 (owner only) or 0o660 (owner's group too)",
                self.mode
            ));
        }
        Ok(())
    }
}

/// The largest `max_message` a ring of `capacity` bytes allows: half the
/// ring less a header, and what a record header's 32-bit length can say.
pub const fn max_message_limit(capacity: u64) -> u64 {
    let half = capacity / 2 - RECORD_HEADER;
    if half < MAX_RECORD_PAYLOAD {
        half
    } else {
        MAX_RECORD_PAYLOAD
    }
}

/// What a ring's header says, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The data file (`<id>.ring`).
    pub path: PathBuf,
    /// The control file (`<id>.ctl`).
    pub control_path: PathBuf,
    /// Ring data bytes.
    pub capacity: u64,
    /// Largest payload.
    pub max_message: u64,
    /// Subscriber slots.
    pub slots: u32,
    /// Flow control.
    pub policy: Policy,
    /// Untethered eviction delay.
    pub evict_after: Option<Duration>,
    /// The publisher process (a label: liveness is by lock, see
    /// [`crate::RingReader::publisher_alive`]).
    pub publisher: ProcessId,
    /// Creation time.
    pub created: SystemTime,
    /// Message type name.
    pub type_name: String,
    /// Message type fingerprint.
    pub type_fingerprint: u64,
    /// Written by a bridge.
    pub replica: bool,
    /// The random id shared by the ring's two files.
    pub ring_id: u64,
    /// The wake-up handshake the writer uses, from the header's flags;
    /// `None`: the header names none (a writer that did not register):
    /// sleepers then sleep in short timed slices.
    pub wake_handshake: Option<WakeHandshake>,
}

impl SegmentInfo {
    pub(crate) fn geometry(&self) -> Geometry {
        Geometry {
            capacity: self.capacity,
            max_message: self.max_message,
            policy: self.policy,
            evict_after: self.evict_after,
        }
    }

    /// Bytes of the data file.
    pub fn file_size(&self) -> u64 {
        DATA_OFFSET as u64 + self.capacity
    }
}

/// The control file of the data file `path`: `<id>.ctl` beside `<id>.ring`.
pub fn control_path_of(path: &Path) -> PathBuf {
    path.with_extension(crate::shm::paths::CTL_EXT)
}

/// One handle's mapping of a ring: its own open file descriptions (so the
/// liveness locks it takes are its own), the data file mapped read-write
/// (the writer) or read-only (everyone else), the control file read-write.
#[derive(Debug)]
pub(crate) struct Mapping {
    info: SegmentInfo,
    geometry: Geometry,
    /// This handle's description of the control file: its locks live here.
    ctl_file: File,
    /// Keeps the data file open for the mapping's life.
    _data_file: File,
    _data_map: DataMap,
    _ctl_map: MmapMut,
    data_base: *mut u8,
    ctl_base: *mut u8,
    /// The topic's registry, opened on first need (pre-joined slots' liveness).
    registry: OnceLock<Option<Registry>>,
    /// Who may use the tree (for opening the registry).
    access: Access,
    /// The process that made this handle: after a fork without exec the
    /// child inherits the descriptions (and so the locks); only the creating
    /// process may act on the handle's slot or file when it is dropped.
    creator_pid: u32,
}

#[derive(Debug)]
enum DataMap {
    Writable(#[allow(dead_code)] MmapMut),
    ReadOnly(#[allow(dead_code)] Mmap),
}

// SAFETY: the raw pointers point into mappings owned by the same struct, which
// live until it is dropped; all shared words are atomics, and payload access
// follows the ring protocol, so sharing the struct between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// Whether this process made the handle (false in a forked child).
    pub(crate) fn in_creator_process(&self) -> bool {
        std::process::id() == self.creator_pid
    }

    /// A pointer to ring data offset `off & (capacity - 1)`.
    fn data_ptr(&self, off: u64) -> *mut u8 {
        let off = off & self.geometry.mask();
        // SAFETY: the data region is `capacity` bytes from `DATA_OFFSET` of
        // the data mapping, and the masked offset is below `capacity`.
        unsafe { self.data_base.add(DATA_OFFSET + off as usize) }
    }

    /// The ring data bytes `off..off + len` as a shared slice, or `None` if
    /// the range is not inside the ring (a release-mode bound check).
    ///
    /// # Safety
    ///
    /// - nobody writes these bytes while the slice lives (a committed,
    ///   unreleased record under the Block policy, or bytes pinned by an
    ///   untethered reader).
    pub(crate) unsafe fn data_slice(&self, off: u64, len: usize) -> Option<&[u8]> {
        let end = off.checked_add(len as u64)?;
        if end > self.geometry.capacity {
            return None;
        }
        // SAFETY: in bounds (checked above); not written meanwhile per the caller.
        Some(unsafe { std::slice::from_raw_parts(self.data_ptr(off), len) })
    }

    /// The ring data bytes `off..off + len` for the writer to receive into
    /// (the file is zero-filled, so the bytes are initialized).
    ///
    /// # Safety
    ///
    /// As [`Self::data_uninit`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn data_mut(&self, off: u64, len: usize) -> &mut [u8] {
        // SAFETY: per the caller; file-backed memory is always initialized.
        unsafe { &mut *(std::ptr::from_mut(self.data_uninit(off, len)) as *mut [u8]) }
    }

    /// The ring data bytes `off..off + len` for the writer to fill.
    ///
    /// # Safety
    ///
    /// - the mapping is the writer's (writable);
    /// - `off + len <= capacity` and the range is the writer's current,
    ///   uncommitted reservation, which no reader reads.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn data_uninit(&self, off: u64, len: usize) -> &mut [MaybeUninit<u8>] {
        debug_assert!(matches!(self._data_map, DataMap::Writable(_)));
        assert!(
            off + len as u64 <= self.geometry.capacity,
            "reservation out of the ring"
        );
        // SAFETY: per the caller: writable, in bounds (asserted) and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(off).cast(), len) }
    }

    /// Whether the publisher is alive: it holds its lock (byte 0 of the
    /// control file). An error probing is not proof of death.
    pub(crate) fn publisher_alive(&self) -> bool {
        lock::is_locked(&self.ctl_file, PUBLISHER_LOCK_BYTE, 1).unwrap_or(true)
    }

    /// Whether slot `index`'s lock is held by someone else (an error probing
    /// counts as held).
    pub(crate) fn slot_locked(&self, index: usize) -> bool {
        lock::is_locked(&self.ctl_file, layout::slot_lock_byte(index), 1).unwrap_or(true)
    }

    /// Whether any lock on the control file is held by another description.
    pub(crate) fn any_locked(&self) -> bool {
        lock::is_locked(&self.ctl_file, 0, u64::from(self.info.slots) + 1).unwrap_or(true)
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: the data mapping starts with the page-aligned header, made
        // of atomics (any bit pattern is valid).
        unsafe { &*self.data_base.cast::<SegmentHeader>() }
    }

    fn control_header(&self) -> &ControlHeader {
        // SAFETY: the control mapping starts with the page-aligned control
        // header, made of atomics.
        unsafe { &*self.ctl_base.cast::<ControlHeader>() }
    }
}

// SAFETY: the data mapping is `DATA_OFFSET + capacity` bytes, page-aligned:
// the producer page at PRODUCER_OFFSET (128-aligned) and the ring data at
// DATA_OFFSET; the control mapping is `control_file_len(slots)` bytes:
// Waiters at WAITERS_OFFSET (128-aligned) and `slots` Slot lines from
// SLOTS_OFFSET (checked on create and open). Every type placed there is
// made of atomics, for which any bit pattern is valid. `word` masks its offset.
unsafe impl View for Arc<Mapping> {
    fn producer(&self) -> &Producer {
        // SAFETY: see the impl's safety comment.
        unsafe { &*self.data_base.add(PRODUCER_OFFSET).cast::<Producer>() }
    }

    fn waiters(&self) -> &Waiters {
        // SAFETY: see the impl's safety comment.
        unsafe { &*self.ctl_base.add(WAITERS_OFFSET).cast::<Waiters>() }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: see the impl's safety comment.
        unsafe {
            std::slice::from_raw_parts(
                self.ctl_base.add(SLOTS_OFFSET).cast::<Slot>(),
                self.info.slots as usize,
            )
        }
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    #[inline]
    fn word(&self, off: u64) -> &AtomicU64 {
        // Readers map the data read-only and only ever load these words,
        // Relaxed (plus a fence where they need Acquire), as Rust allows on
        // read-only memory.
        // SAFETY: 8-aligned (page-aligned base, offset masked to a multiple
        // of 8) and in bounds (masked into the ring).
        unsafe { &*self.data_ptr(off & !7).cast::<AtomicU64>() }
    }

    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        // SAFETY: per the trait contract the range is the writer's
        // reservation inside the (writable) data mapping.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data_ptr(off), src.len()) };
    }

    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        // Per-word atomic loads: the writer may be overwriting these bytes
        // (the caller validates the copy afterwards, seqlock style). Plain
        // or volatile reads would be a data race; Relaxed atomic loads are
        // not, and are plain moves on x86-64 and aarch64. Whole words go
        // straight into 8-byte chunks of `dst` (a copy of a variable-length
        // chunk per word ran at 2.6 GB/s, `read_path` bench `take/*`).
        let src = self.data_ptr(off).cast::<AtomicU64>();
        let mut words = dst.chunks_exact_mut(8);
        let mut next = 0;
        for out in &mut words {
            // SAFETY: by the trait contract `off` is 8-aligned and the range
            // rounded up to 8 bytes lies inside the ring data, contiguous in
            // the mapping (`data_ptr` masks `off` only): word `next` is in it.
            let word = unsafe { &*src.add(next) }.load(Ordering::Relaxed);
            out.copy_from_slice(&word.to_le_bytes());
            next += 1;
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            // SAFETY: as above; the rounded-up range includes this word.
            let last = unsafe { &*src.add(next) }.load(Ordering::Relaxed);
            tail.copy_from_slice(&last.to_le_bytes()[..tail.len()]);
        }
    }

    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        futex::futex_wait(word, expected, timeout);
    }

    fn futex_wake(&self, word: &AtomicU32) {
        futex::futex_wake(word);
    }

    fn try_lock(&self, byte: u64) -> io::Result<bool> {
        lock::try_lock(&self.ctl_file, byte)
    }

    fn unlock(&self, byte: u64) {
        // An unlock error leaves the lock held until the description closes:
        // the slot then looks alive a little longer, never dead too early.
        let _ = lock::unlock(&self.ctl_file, byte);
    }

    fn registry_alive(&self, index: u64, generation: u64) -> bool {
        let registry = self.registry.get_or_init(|| {
            let dir = self.info.path.parent()?;
            Registry::open_existing(dir, self.access).ok().flatten()
        });
        match (registry, u32::try_from(index)) {
            (Some(r), Ok(index)) => r.is_alive(index, generation),
            // No registry (or it cannot be opened): no registration can be
            // proven alive. A pre-joined slot needs one, so it is dead.
            _ => false,
        }
    }

    fn now_ns(&self) -> u64 {
        boottime_ns()
    }

    fn wake_handshake(&self) -> WakeHandshake {
        // The writer's own mapping always names one; `None` is only ever
        // read by a subscriber (and then no writer core uses this view).
        self.info.wake_handshake.unwrap_or(WakeHandshake::Fence)
    }
}

impl Mapping {
    /// A sleeper on this ring for the subscriber in slot `slot` (if any):
    /// the futex word, the waiting words and the header's handshake.
    pub(crate) fn sleeper(&self, slot: Option<usize>) -> Sleeper<'_> {
        // SAFETY: as in `View::producer`/`waiters`/`slots` (one layout).
        let (producer, waiters) = unsafe {
            (
                &*self.data_base.add(PRODUCER_OFFSET).cast::<Producer>(),
                &*self.ctl_base.add(WAITERS_OFFSET).cast::<Waiters>(),
            )
        };
        let sleeping = slot.filter(|&i| i < self.info.slots as usize).map(|i| {
            // SAFETY: slot `i` is inside the control mapping (checked above).
            let slot = unsafe { &*self.ctl_base.add(SLOTS_OFFSET).cast::<Slot>().add(i) };
            &slot.sleeping
        });
        Sleeper {
            futex: &producer.futex,
            waiters: &waiters.waiters,
            armed: &waiters.wake_armed,
            sleeping,
            handshake: self.info.wake_handshake,
        }
    }
}

/// CLOCK_BOOTTIME in nanoseconds: shared by every process of the host and
/// counting suspend, for leases that outlive their owner.
pub(crate) fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn policy_code(p: Policy) -> u32 {
    match p {
        Policy::Block => POLICY_BLOCK,
        Policy::Overwrite => POLICY_OVERWRITE,
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 8 {
        u64::from_le_bytes(buf)
    } else {
        // No entropy source: time and pid still tell rings apart.
        now_unix_ns() ^ (u64::from(std::process::id()) << 40)
    }
}

/// Where a new ring's positions and sequence numbers start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    /// First position (16-aligned).
    pub(crate) position: u64,
    /// First sequence number, if known (a replica learns it from its first record).
    pub(crate) seq: Option<u64>,
}

/// Removes the files named on drop unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates a ring at `path` (its data file; the control file goes beside it),
/// failing if it exists, with the publisher's lock taken and the topic's
/// registered subscribers pre-joined.
pub(crate) fn create(
    path: &Path,
    config: &RingConfig,
    start: Start,
) -> Result<Arc<Mapping>, Error> {
    if !records::is_record_aligned(start.position) || start.position > u64::MAX / 4 {
        return Err(Error::InvalidConfig(format!(
            "start position {} is not 16-aligned",
            start.position
        )));
    }
    config.validate()?;
    let access = Access::from_file_mode(config.mode);
    let me = ProcessId::current().map_err(|e| Error::io("/proc/self/stat", e))?;
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidConfig(format!("{} has no directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidConfig(format!("{} has no file name", path.display())))?;
    let ctl_path = control_path_of(path);
    let tmp_data = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let tmp_ctl = dir.join(format!(
        ".{}.tmp",
        ctl_path.file_name().unwrap_or_default().to_string_lossy()
    ));
    // A leftover of a crashed creator with our name (ids are unique per
    // process, so nobody else creates under them).
    let _ = std::fs::remove_file(&tmp_data);
    let _ = std::fs::remove_file(&tmp_ctl);
    let mut cleanup = Cleanup(vec![tmp_ctl.clone(), tmp_data.clone()]);

    let ctl_len = control_file_len(config.slots);
    let data_len = DATA_OFFSET as u64 + config.capacity;
    let ctl_file = fs::create_file(&tmp_ctl, access.ctl_mode(), ctl_len as u64)?;
    // The publisher's lock, held for the writer's whole life on this description.
    if !lock::try_lock(&ctl_file, PUBLISHER_LOCK_BYTE).map_err(|e| Error::io(&tmp_ctl, e))? {
        return Err(Error::io(
            &tmp_ctl,
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "publisher lock of a new file is taken",
            ),
        ));
    }
    let data_file = fs::create_file(&tmp_data, access.data_mode(), data_len)?;
    // Registered before the ring becomes visible (the renames below), so
    // every sleeper that can find the ring is covered by its heavy barrier.
    let handshake = match config.wake_handshake {
        WakeHandshake::Membarrier if membarrier::register() => WakeHandshake::Membarrier,
        _ => WakeHandshake::Fence,
    };
    // SAFETY: we just created both files with O_EXCL under hidden names; no
    // one else maps them until the renames below, and afterwards this
    // process touches shared words through atomics only and the ring data
    // through the ring protocol (its own reservations only).
    let ctl_map = unsafe { MmapOptions::new().len(ctl_len).map_mut(&ctl_file) }
        .map_err(|e| Error::io(&tmp_ctl, e))?;
    // SAFETY: as above.
    let data_map = unsafe {
        MmapOptions::new()
            .len(data_len as usize)
            .map_mut(&data_file)
    }
    .map_err(|e| Error::io(&tmp_data, e))?;
    let ring_id = random_u64();
    let info = SegmentInfo {
        path: path.to_path_buf(),
        control_path: ctl_path.clone(),
        capacity: config.capacity,
        max_message: config.max_message,
        slots: config.slots,
        policy: config.policy,
        evict_after: config.evict_after,
        publisher: me,
        created: SystemTime::now(),
        type_name: config.type_name.clone(),
        type_fingerprint: config.type_fingerprint,
        replica: config.replica,
        ring_id,
        wake_handshake: Some(handshake),
    };
    let data_base = data_map.as_ptr() as *mut u8;
    let ctl_base = ctl_map.as_ptr() as *mut u8;
    let registry = Registry::open_existing(dir, access)?;
    let map = Arc::new(Mapping {
        geometry: info.geometry(),
        info,
        ctl_file,
        _data_file: data_file,
        _data_map: DataMap::Writable(data_map),
        _ctl_map: ctl_map,
        data_base,
        ctl_base,
        registry: OnceLock::new(),
        access,
        creator_pid: std::process::id(),
    });
    // The files are fresh from fallocate: all zero, so every slot is FREE and
    // every stamp is clear. Only headers and positions need values.
    init_data(&map, config, &me, ring_id, start);
    init_control(&map, config.slots, ring_id);
    // Pre-join every live registered subscriber from the first record, before
    // anyone can see the ring (so no slot is joined twice for one of them).
    if let Some(registry) = &registry {
        let live = registry.live_entries();
        let joined = gate::prejoin(&map, &live, start.position, start.seq);
        if joined < live.len() {
            return Err(Error::NoFreeSlot(path.to_path_buf()));
        }
    }
    let _ = map.registry.set(registry);
    // SYNC: segment-init. Release: an opener that loads a magic (Acquire)
    // sees every field above.
    map.control_header()
        .magic
        .store(CTL_MAGIC, Ordering::Release);
    map.header().magic.store(MAGIC, Ordering::Release);

    // Control file first: a visible data file always has its control file.
    fs::rename_noreplace(&tmp_ctl, &ctl_path)?;
    cleanup.0 = vec![ctl_path.clone(), tmp_data.clone()];
    match fs::rename_noreplace(&tmp_data, path) {
        Ok(()) => {}
        Err(Error::AlreadyExists(_)) => {
            // Someone else's ring of that name: leave it, remove our control
            // file (ours: we hold its publisher lock, and ring ids differ).
            return Err(Error::AlreadyExists(path.to_path_buf()));
        }
        Err(e) => return Err(e),
    }
    cleanup.0.clear();
    Ok(map)
}

fn init_data(map: &Arc<Mapping>, config: &RingConfig, me: &ProcessId, ring_id: u64, start: Start) {
    let header = map.header();
    // Relaxed: all published by the Release store of `magic`.
    let r = Ordering::Relaxed;
    header.layout_version.store(LAYOUT_VERSION, r);
    header.endian.store(ENDIAN_TAG, r);
    header.data_offset.store(DATA_OFFSET as u64, r);
    header.capacity.store(config.capacity, r);
    header.max_message.store(config.max_message, r);
    header.slot_count.store(config.slots, r);
    header.policy.store(policy_code(config.policy), r);
    let wake = match map.info.wake_handshake {
        Some(WakeHandshake::Membarrier) => FLAG_WAKE_MEMBARRIER,
        Some(WakeHandshake::Fence) => FLAG_WAKE_FENCE,
        None => 0,
    };
    let replica = if config.replica { FLAG_REPLICA } else { 0 };
    header.flags.store(replica | wake, r);
    header.ring_id.store(ring_id, r);
    header.evict_after_ns.store(
        config
            .evict_after
            .map_or(0, |d| d.as_nanos().clamp(1, u128::from(u64::MAX)) as u64),
        r,
    );
    header.publisher_pid.store(u64::from(me.pid), r);
    header.publisher_start.store(me.start_time, r);
    header.created_unix_ns.store(now_unix_ns(), r);
    header.type_fingerprint.store(config.type_fingerprint, r);
    header.type_name_len.store(config.type_name.len() as u32, r);
    let mut name_bytes = [0u8; TYPE_NAME_MAX];
    name_bytes[..config.type_name.len()].copy_from_slice(config.type_name.as_bytes());
    for (word, chunk) in header.type_name.iter().zip(name_bytes.chunks_exact(8)) {
        word.store(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])), r);
    }
    let producer = map.producer();
    producer.writer_state.store(WRITER_OPEN, r);
    producer.tail.store(start.position, r);
    producer.head.store(start.position, r);
    producer.limit.store(start.position, r);
    producer.published.store(start.seq.unwrap_or(0), r);
    // The first record's sequence hint beside its (clear) stamp, or none.
    map.word(start.position + 8).store(
        start
            .seq
            .map_or(layout::NO_SEQ_HINT, |seq| layout::meta_word(0, seq)),
        r,
    );
}

fn init_control(map: &Arc<Mapping>, slots: u32, ring_id: u64) {
    let header = map.control_header();
    // Relaxed: published by the Release store of `magic`.
    header
        .layout_version
        .store(LAYOUT_VERSION, Ordering::Relaxed);
    header.slot_count.store(slots, Ordering::Relaxed);
    header.ring_id.store(ring_id, Ordering::Relaxed);
}

fn cstring_ok(p: &Path) -> Result<(), Error> {
    if p.as_os_str().as_bytes().contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "{} contains a NUL byte",
            p.display()
        )));
    }
    Ok(())
}

/// Opens an existing ring for reading (owner access).
pub(crate) fn open(path: &Path) -> Result<Arc<Mapping>, Error> {
    open_with(path, INIT_WAIT, Access::Owner)
}

/// Opens an existing ring for reading: validates both headers, maps the
/// data file read-only and the control file read-write, each with a
/// description of its own. Waits at most `init_wait` for a creator to finish.
pub(crate) fn open_with(
    path: &Path,
    init_wait: Duration,
    access: Access,
) -> Result<Arc<Mapping>, Error> {
    cstring_ok(path)?;
    let (data_file, stat) = fs::open_file(path, false, access)?;
    let info = read_header(path, &data_file, stat.len, init_wait)?;
    let ctl_path = control_path_of(path);
    let (ctl_file, ctl_stat) = fs::open_file(&ctl_path, true, access)?;
    let ctl_len = control_file_len(info.slots);
    if ctl_stat.len != ctl_len as u64 {
        return Err(Error::SizeMismatch {
            path: ctl_path,
            expected: ctl_len as u64,
            found: ctl_stat.len,
        });
    }
    // SAFETY: the control file is shared and only accessed through atomics
    // (see `View`); its size was checked against the header above.
    let ctl_map = unsafe { MmapOptions::new().len(ctl_len).map_mut(&ctl_file) }
        .map_err(|e| Error::io(&ctl_path, e))?;
    // SAFETY: a read-only mapping of the data file, read through atomics,
    // per-word atomic copies, or (Block policy) slices of committed records
    // no one rewrites while borrowed; its size was checked by `read_header`.
    let data_map = unsafe {
        MmapOptions::new()
            .len(info.file_size() as usize)
            .map(&data_file)
    }
    .map_err(|e| Error::io(path, e))?;
    let data_base = data_map.as_ptr() as *mut u8;
    let ctl_base = ctl_map.as_ptr() as *mut u8;
    let map = Arc::new(Mapping {
        geometry: info.geometry(),
        info,
        ctl_file,
        _data_file: data_file,
        _data_map: DataMap::ReadOnly(data_map),
        _ctl_map: ctl_map,
        data_base,
        ctl_base,
        registry: OnceLock::new(),
        access,
        creator_pid: std::process::id(),
    });
    check_control_header(&map, &ctl_path)?;
    Ok(map)
}

fn check_control_header(map: &Mapping, ctl_path: &Path) -> Result<(), Error> {
    let h = map.control_header();
    // SYNC: segment-init. Acquire pairs with the creator's Release (the
    // control file was renamed into place after its magic was stored).
    match h.magic.load(Ordering::Acquire) {
        CTL_MAGIC => {}
        _ => return Err(Error::NotASegment(ctl_path.to_path_buf())),
    }
    // Relaxed: ordered after the Acquire above.
    let version = h.layout_version.load(Ordering::Relaxed);
    if version != LAYOUT_VERSION {
        return Err(Error::VersionMismatch {
            path: ctl_path.to_path_buf(),
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    if h.slot_count.load(Ordering::Relaxed) != map.info.slots {
        return Err(Error::corrupt(
            ctl_path,
            "slot_count: differs from the data file's",
        ));
    }
    if h.ring_id.load(Ordering::Relaxed) != map.info.ring_id {
        return Err(Error::corrupt(
            ctl_path,
            "ring_id: the control file belongs to another ring",
        ));
    }
    Ok(())
}

/// Reads a ring's header without joining a slot: for tools, discovery and
/// type checks. The data file is opened read-only and mapped one page.
///
/// # Errors
///
/// As [`crate::RingReader::open`], except [`Error::NoFreeSlot`].
pub fn inspect_ring(path: &Path) -> Result<SegmentInfo, Error> {
    let (file, stat) = fs::open_file(path, false, Access::Group)?;
    read_header(path, &file, stat.len, INIT_WAIT)
}

/// Reads and validates the header of an open data file.
pub(crate) fn read_header(
    path: &Path,
    file: &File,
    mut size: u64,
    init_wait: Duration,
) -> Result<SegmentInfo, Error> {
    let deadline = Instant::now() + init_wait;
    loop {
        if size >= PAGE as u64 {
            // SAFETY: the first page is mapped read-only and read through
            // atomics only.
            let page = unsafe { MmapOptions::new().len(PAGE).map(file) }
                .map_err(|e| Error::io(path, e))?;
            // SAFETY: page-aligned, one page long; SegmentHeader is atomics
            // only and fits in a page.
            let header = unsafe { &*page.as_ptr().cast::<SegmentHeader>() };
            // SYNC: segment-init. Acquire pairs with the creator's Release.
            match header.magic.load(Ordering::Acquire) {
                MAGIC => return validate_header(path, header, size),
                0 => {}
                _ => return Err(Error::NotASegment(path.to_path_buf())),
            }
        }
        if Instant::now() >= deadline {
            return Err(if size < PAGE as u64 && size > 0 {
                Error::SizeMismatch {
                    path: path.to_path_buf(),
                    expected: PAGE as u64,
                    found: size,
                }
            } else {
                Error::NotInitialized(path.to_path_buf())
            });
        }
        std::thread::sleep(Duration::from_millis(5));
        size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    }
}

fn validate_header(path: &Path, h: &SegmentHeader, file_size: u64) -> Result<SegmentInfo, Error> {
    // Relaxed: ordered after the Acquire load of `magic`.
    let r32 = |a: &AtomicU32| a.load(Ordering::Relaxed);
    let r64 = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let corrupt = |what: String| Err(Error::corrupt(path, what));
    let version = r32(&h.layout_version);
    if version != LAYOUT_VERSION {
        return Err(Error::VersionMismatch {
            path: path.to_path_buf(),
            found: version,
            expected: LAYOUT_VERSION,
        });
    }
    if r32(&h.endian) != ENDIAN_TAG {
        return corrupt("endian: made on a host of the other endianness".into());
    }
    let capacity = r64(&h.capacity);
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return corrupt(format!(
            "capacity: {capacity} is not a power of two in range"
        ));
    }
    let slots = r32(&h.slot_count);
    if slots == 0 || slots > MAX_SLOTS {
        return corrupt(format!("slot_count: {slots} out of range"));
    }
    if r64(&h.data_offset) != DATA_OFFSET as u64 {
        return corrupt(format!(
            "data_offset: {} is not {DATA_OFFSET}",
            r64(&h.data_offset)
        ));
    }
    let expected = DATA_OFFSET as u64 + capacity;
    if file_size != expected {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            expected,
            found: file_size,
        });
    }
    let max_message = r64(&h.max_message);
    if max_message == 0 || max_message > max_message_limit(capacity) {
        return corrupt(format!("max_message: {max_message} out of range"));
    }
    let policy = match r32(&h.policy) {
        POLICY_BLOCK => Policy::Block,
        POLICY_OVERWRITE => Policy::Overwrite,
        other => return corrupt(format!("policy: unknown value {other}")),
    };
    let evict_ns = r64(&h.evict_after_ns);
    let evict_after = (evict_ns != 0).then(|| Duration::from_nanos(evict_ns));
    if policy == Policy::Overwrite && evict_after.is_some() {
        return corrupt("evict_after_ns: set on an overwrite ring".into());
    }
    let pid = r64(&h.publisher_pid);
    let pid = u32::try_from(pid)
        .map_err(|_| Error::corrupt(path, format!("publisher_pid: {pid} out of range")))?;
    let name_len = r32(&h.type_name_len) as usize;
    if name_len > TYPE_NAME_MAX {
        return corrupt(format!("type_name_len: {name_len} out of range"));
    }
    let mut name = Vec::with_capacity(TYPE_NAME_MAX);
    for word in &h.type_name {
        name.extend_from_slice(&r64(word).to_le_bytes());
    }
    name.truncate(name_len);
    let type_name =
        String::from_utf8(name).map_err(|_| Error::corrupt(path, "type_name: not UTF-8"))?;
    let flags = r32(&h.flags);
    let wake_handshake = match (
        flags & FLAG_WAKE_MEMBARRIER != 0,
        flags & FLAG_WAKE_FENCE != 0,
    ) {
        (true, false) => Some(WakeHandshake::Membarrier),
        (false, true) => Some(WakeHandshake::Fence),
        (false, false) => None,
        (true, true) => return corrupt("flags: both wake-up handshakes".into()),
    };
    Ok(SegmentInfo {
        path: path.to_path_buf(),
        control_path: control_path_of(path),
        capacity,
        max_message,
        slots,
        policy,
        evict_after,
        publisher: ProcessId {
            pid,
            start_time: r64(&h.publisher_start),
        },
        created: UNIX_EPOCH + Duration::from_nanos(r64(&h.created_unix_ns)),
        type_name,
        type_fingerprint: r64(&h.type_fingerprint),
        replica: flags & FLAG_REPLICA != 0,
        ring_id: r64(&h.ring_id),
        wake_handshake,
    })
}

const _: () = assert!(MAX_RECORD_PAYLOAD < u32::MAX as u64 && RECORD_HEADER == 16);
