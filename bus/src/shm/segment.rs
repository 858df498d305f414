//! Creating, opening and mapping segment files.
//!
//! The creator builds the file under a hidden temporary name, initializes
//! every region, stores `magic` last (Release), then renames it into place
//! without replacing anything: a reader never finds a half-made segment under
//! its real name. `open` still retries briefly on a zero magic (a file made by
//! other means, or a creator that died), then reports `NotInitialized`.
//!
//! Readers map the control regions read-write and the ring data read-only.
//! Every header field is copied once and validated; nothing is re-read.
//!
//! # Safety of the mappings
//!
//! Like any shared file mapping, a segment can be changed by other processes
//! at any time. The ring protocol tolerates that for its own words (they are
//! atomics, and every value is bounds-checked before use); a process with
//! write access to the file can still make this process read garbage or, by
//! truncating the file, fault (SIGBUS). Keep the directory's mode tight.

use std::{
    fs::{File, OpenOptions},
    io,
    mem::MaybeUninit,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::{
    layout::{
        self, Control, SegmentHeader, Slot, CONTROL_OFFSET, ENDIAN_TAG, FLAG_REPLICA,
        LAYOUT_VERSION, MAGIC, MAX_CAPACITY, MAX_SLOTS, MIN_CAPACITY, PAGE, POLICY_BLOCK,
        POLICY_OVERWRITE, RECORD_HEADER, SLOTS_OFFSET, TYPE_NAME_MAX, WRITER_OPEN,
    },
    ring::{Geometry, Policy, View},
    shm::futex,
    shm::liveness::{self, ProcessId},
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
    /// Ring data bytes: a power of two from 4 KiB to 1 TiB.
    pub capacity: u64,
    /// Largest payload; at most `capacity / 2 - 16` so any record fits after a wrap.
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
    /// File mode of the segment (0o600 by default; 0o660 to share with a group).
    pub mode: u32,
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
        if self.mode & !0o777 != 0 || self.mode & 0o600 != 0o600 {
            return bad(format!(
                "mode {:o} must be within 0o777 and include 0o600",
                self.mode
            ));
        }
        Ok(())
    }
}

/// The largest `max_message` a ring of `capacity` bytes allows.
pub const fn max_message_limit(capacity: u64) -> u64 {
    capacity / 2 - RECORD_HEADER
}

/// What a segment's header says, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment file.
    pub path: PathBuf,
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
    /// The publisher process.
    pub publisher: ProcessId,
    /// Creation time.
    pub created: SystemTime,
    /// Message type name.
    pub type_name: String,
    /// Message type fingerprint.
    pub type_fingerprint: u64,
    /// Written by a bridge.
    pub replica: bool,
    data_offset: usize,
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

    /// Bytes of the whole file.
    pub fn file_size(&self) -> u64 {
        self.data_offset as u64 + self.capacity
    }
}

/// One mapped segment: control regions and ring data.
#[derive(Debug)]
pub(crate) struct Mapping {
    info: SegmentInfo,
    geometry: Geometry,
    /// Keeps the control mapping alive (read-write for everyone).
    _control_map: MmapMut,
    /// Keeps the data mapping alive (read-write for the writer, read-only for readers).
    _data_map: DataMap,
    base: *mut u8,
    data: *mut u8,
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

    /// A pointer to ring data offset `off`.
    pub(crate) fn data_ptr(&self, off: u64) -> *mut u8 {
        debug_assert!(off <= self.geometry.capacity);
        // SAFETY: `off <= capacity` and the data mapping is `capacity` bytes long.
        unsafe { self.data.add(off as usize) }
    }

    /// The ring data bytes `off..off + len` as a shared slice.
    ///
    /// # Safety
    ///
    /// - `off + len <= capacity`;
    /// - nobody writes these bytes while the slice lives (a committed,
    ///   unreleased record under the Block policy).
    pub(crate) unsafe fn data_slice(&self, off: u64, len: usize) -> &[u8] {
        debug_assert!(off + len as u64 <= self.geometry.capacity);
        // SAFETY: in bounds per the caller; not written meanwhile per the caller.
        unsafe { std::slice::from_raw_parts(self.data_ptr(off), len) }
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
        // SAFETY: per the caller: writable, in bounds and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(off).cast(), len) }
    }
}

// SAFETY: `base` maps at least `data_offset` bytes: the header, Control at
// CONTROL_OFFSET (128-aligned on a page-aligned base) and `slots` Slot lines
// from SLOTS_OFFSET, all inside `data_offset` (checked on create and open);
// `data` maps `capacity` bytes. Every type placed there is made of atomics,
// for which any bit pattern is valid.
unsafe impl View for Arc<Mapping> {
    fn control(&self) -> &Control {
        // SAFETY: see the impl's safety comment.
        unsafe { &*self.base.add(CONTROL_OFFSET).cast::<Control>() }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: see the impl's safety comment.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(SLOTS_OFFSET).cast::<Slot>(),
                self.info.slots as usize,
            )
        }
    }

    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    #[inline]
    fn word(&self, off: u64) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off < self.geometry.capacity);
        // Readers map the data read-only and only ever load these words:
        // Relaxed/Acquire loads of a lock-free AtomicU64 are plain loads on the
        // platforms we build for, so read-only memory is fine.
        // SAFETY: 8-aligned (page-aligned base, off % 8 == 0), in bounds per
        // the trait contract, and only loaded from where mapped read-only.
        unsafe { &*self.data_ptr(off).cast::<AtomicU64>() }
    }

    unsafe fn write_payload(&self, off: u64, src: &[u8]) {
        // SAFETY: per the trait contract the range is the writer's
        // reservation inside the (writable) data mapping.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data_ptr(off), src.len()) };
    }

    unsafe fn read_payload(&self, off: u64, dst: &mut [u8]) {
        // Volatile word reads: the writer may be overwriting these bytes (the
        // caller validates the copy afterwards, seqlock style), so the
        // compiler must neither elide nor tear-assume them.
        let src = self.data_ptr(off);
        let mut chunks = dst.chunks_exact_mut(8);
        let mut i = 0;
        for chunk in &mut chunks {
            // SAFETY: in bounds per the trait contract; `off` is 16-aligned
            // (a payload start), so every `i`-th word is 8-aligned.
            let word = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
            chunk.copy_from_slice(&word.to_ne_bytes());
            i += 8;
        }
        for (j, b) in chunks.into_remainder().iter_mut().enumerate() {
            // SAFETY: in bounds per the trait contract.
            *b = unsafe { std::ptr::read_volatile(src.add(i + j)) };
        }
    }

    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        futex::futex_wait(word, expected, timeout);
    }

    fn futex_wake(&self, word: &AtomicU32) {
        futex::futex_wake(word);
    }

    fn process_alive(&self, pid: u64, start_time: u64) -> bool {
        liveness::is_alive(pid, start_time)
    }
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

/// Creates and initializes a segment at `path`, failing if it exists.
pub(crate) fn create(path: &Path, config: &RingConfig) -> Result<Arc<Mapping>, Error> {
    create_at(path, config, 0)
}

/// Like [`create`], with positions starting at `start` (16-aligned).
pub(crate) fn create_at(
    path: &Path,
    config: &RingConfig,
    start: u64,
) -> Result<Arc<Mapping>, Error> {
    if start % 16 != 0 || start > u64::MAX / 4 {
        return Err(Error::InvalidConfig(format!(
            "start position {start} is not 16-aligned"
        )));
    }
    config.validate()?;
    let me = ProcessId::current().map_err(|e| Error::io("/proc/self/stat", e))?;
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidConfig(format!("{} has no directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidConfig(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let data_offset = layout::data_offset(config.slots);
    let file_size = data_offset as u64 + config.capacity;

    let _ = std::fs::remove_file(&tmp); // a leftover of a crashed creator with our name
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(config.mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let cleanup = |e: Error| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    file.set_len(file_size)
        .map_err(|e| cleanup(Error::io(&tmp, e)))?;
    // SAFETY: we just created the file with O_EXCL under a hidden name; no one
    // else maps it until the rename below, and afterwards this process touches
    // the control part through atomics only.
    let control_map = unsafe { MmapOptions::new().len(data_offset).map_mut(&file) }
        .map_err(|e| cleanup(Error::io(&tmp, e)))?;
    // SAFETY: as above; the writer fills the data part through the ring
    // protocol (its own reservations only).
    let data_map = unsafe {
        MmapOptions::new()
            .offset(data_offset as u64)
            .len(config.capacity as usize)
            .map_mut(&file)
    }
    .map_err(|e| cleanup(Error::io(&tmp, e)))?;
    let base = control_map.as_ptr() as *mut u8;
    // The file is fresh from ftruncate: all zero, so every slot is FREE and
    // every stamp is clear. Only the header and writer state need values.
    // SAFETY: the mapping is at least one page, page-aligned; SegmentHeader
    // fits in CONTROL_OFFSET (layout asserts) and is made of atomics.
    let header = unsafe { &*base.cast::<SegmentHeader>() };
    // SAFETY: Control sits inside the mapping at a 128-aligned offset.
    let control = unsafe { &*base.add(CONTROL_OFFSET).cast::<Control>() };
    // Relaxed: all published by the Release store of `magic` below.
    header
        .layout_version
        .store(LAYOUT_VERSION, Ordering::Relaxed);
    header.endian.store(ENDIAN_TAG, Ordering::Relaxed);
    header
        .data_offset
        .store(data_offset as u64, Ordering::Relaxed);
    header.capacity.store(config.capacity, Ordering::Relaxed);
    header
        .max_message
        .store(config.max_message, Ordering::Relaxed);
    header.slot_count.store(config.slots, Ordering::Relaxed);
    header
        .policy
        .store(policy_code(config.policy), Ordering::Relaxed);
    header.flags.store(
        if config.replica { FLAG_REPLICA } else { 0 },
        Ordering::Relaxed,
    );
    header.evict_after_ns.store(
        config
            .evict_after
            .map_or(0, |d| d.as_nanos().clamp(1, u128::from(u64::MAX)) as u64),
        Ordering::Relaxed,
    );
    header
        .publisher_pid
        .store(u64::from(me.pid), Ordering::Relaxed);
    header
        .publisher_start
        .store(me.start_time, Ordering::Relaxed);
    header
        .created_unix_ns
        .store(now_unix_ns(), Ordering::Relaxed);
    header
        .type_fingerprint
        .store(config.type_fingerprint, Ordering::Relaxed);
    header
        .type_name_len
        .store(config.type_name.len() as u32, Ordering::Relaxed);
    let mut name_bytes = [0u8; TYPE_NAME_MAX];
    name_bytes[..config.type_name.len()].copy_from_slice(config.type_name.as_bytes());
    for (word, chunk) in header.type_name.iter().zip(name_bytes.chunks_exact(8)) {
        word.store(
            u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
    }
    control.writer_state.store(WRITER_OPEN, Ordering::Relaxed);
    control.tail.store(start, Ordering::Relaxed);
    control.head.store(start, Ordering::Relaxed);
    control.limit.store(start, Ordering::Relaxed);
    // SYNC: segment-init. Release: an opener that loads MAGIC (Acquire) sees
    // every field above.
    header.magic.store(MAGIC, Ordering::Release);

    // Move into place without replacing an existing segment.
    let c_tmp = cstring(&tmp)?;
    let c_dst = cstring(path)?;
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD with absolute or
    // relative paths is the plain rename(2) behaviour.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_tmp.as_ptr(),
            libc::AT_FDCWD,
            c_dst.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_file(&tmp);
        return Err(if err.kind() == io::ErrorKind::AlreadyExists {
            Error::AlreadyExists(path.to_path_buf())
        } else {
            Error::io(path, err)
        });
    }

    let info = SegmentInfo {
        path: path.to_path_buf(),
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
        data_offset,
    };
    let data = data_map.as_ptr() as *mut u8;
    Ok(Arc::new(Mapping {
        geometry: info.geometry(),
        info,
        _control_map: control_map,
        _data_map: DataMap::Writable(data_map),
        base,
        data,
    }))
}

fn cstring(p: &Path) -> Result<std::ffi::CString, Error> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidConfig(format!("{} contains a NUL byte", p.display())))
}

/// Opens an existing segment for reading: validates the header, maps the
/// control part read-write and the data read-only.
pub(crate) fn open(path: &Path) -> Result<Arc<Mapping>, Error> {
    open_waiting(path, INIT_WAIT)
}

/// Like [`open`], waiting at most `init_wait` for a creator to finish.
pub(crate) fn open_waiting(path: &Path, init_wait: Duration) -> Result<Arc<Mapping>, Error> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotFound(path.to_path_buf()))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let info = read_header(path, &file, init_wait)?;
    // SAFETY: the control part is only accessed through atomics (see `View`).
    let control_map = unsafe { MmapOptions::new().len(info.data_offset).map_mut(&file) }
        .map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping of the ring data, read through atomics, volatile
    // copies, or (Block policy) slices of committed records no one rewrites
    // while borrowed.
    let data_map = unsafe {
        MmapOptions::new()
            .offset(info.data_offset as u64)
            .len(info.capacity as usize)
            .map(&file)
    }
    .map_err(|e| Error::io(path, e))?;
    let base = control_map.as_ptr() as *mut u8;
    let data = data_map.as_ptr() as *mut u8;
    Ok(Arc::new(Mapping {
        geometry: info.geometry(),
        info,
        _control_map: control_map,
        _data_map: DataMap::ReadOnly(data_map),
        base,
        data,
    }))
}

/// Reads and validates the header of an open segment file.
pub(crate) fn read_header(
    path: &Path,
    file: &File,
    init_wait: Duration,
) -> Result<SegmentInfo, Error> {
    let deadline = Instant::now() + init_wait;
    loop {
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if size >= PAGE as u64 {
            // SAFETY: the first page is mapped read-only and read through
            // atomics only.
            let page = unsafe { MmapOptions::new().len(PAGE).map(file) }
                .map_err(|e| Error::io(path, e))?;
            // SAFETY: page-aligned, one page long; SegmentHeader is atomics
            // only and fits in CONTROL_OFFSET < PAGE.
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
        return corrupt("made on a host of the other endianness".into());
    }
    let capacity = r64(&h.capacity);
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return corrupt(format!(
            "capacity {capacity} is not a power of two in range"
        ));
    }
    let slots = r32(&h.slot_count);
    if slots == 0 || slots > MAX_SLOTS {
        return corrupt(format!("slot count {slots} out of range"));
    }
    let data_offset = layout::data_offset(slots);
    if r64(&h.data_offset) != data_offset as u64 {
        return corrupt(format!(
            "data offset {} != {data_offset}",
            r64(&h.data_offset)
        ));
    }
    let expected = data_offset as u64 + capacity;
    if file_size != expected {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            expected,
            found: file_size,
        });
    }
    let max_message = r64(&h.max_message);
    if max_message == 0 || max_message > max_message_limit(capacity) {
        return corrupt(format!("max message {max_message} out of range"));
    }
    let policy = match r32(&h.policy) {
        POLICY_BLOCK => Policy::Block,
        POLICY_OVERWRITE => Policy::Overwrite,
        other => return corrupt(format!("unknown policy {other}")),
    };
    let evict_ns = r64(&h.evict_after_ns);
    let evict_after = (evict_ns != 0).then(|| Duration::from_nanos(evict_ns));
    if policy == Policy::Overwrite && evict_after.is_some() {
        return corrupt("eviction set on an overwrite ring".into());
    }
    let pid = r64(&h.publisher_pid);
    let pid = u32::try_from(pid).map_err(|_| Error::corrupt(path, format!("pid {pid}")))?;
    let name_len = r32(&h.type_name_len) as usize;
    if name_len > TYPE_NAME_MAX {
        return corrupt(format!("type name length {name_len}"));
    }
    let mut name = Vec::with_capacity(TYPE_NAME_MAX);
    for word in &h.type_name {
        name.extend_from_slice(&r64(word).to_le_bytes());
    }
    name.truncate(name_len);
    let type_name =
        String::from_utf8(name).map_err(|_| Error::corrupt(path, "type name is not UTF-8"))?;
    let flags = r32(&h.flags);
    Ok(SegmentInfo {
        path: path.to_path_buf(),
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
        data_offset,
    })
}
