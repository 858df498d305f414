//! The shared words of a live ring, named, for the hostile-words tests:
//! where each field of the producer page (data file) and of the control
//! file lives, how wide it is, and plain `pread`/`pwrite` access to it (the
//! "same-user scribbler" of the trust model: the test process may write
//! both files).

use std::{io, mem::offset_of, path::Path};

use shmbus_bus::layout::{
    ControlHeader, Producer, Slot, Waiters, PRODUCER_OFFSET, SLOTS_OFFSET, SLOT_SIZE,
    WAITERS_OFFSET,
};

use crate::ringfile::RingFile;

/// Which file of a ring a word lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The data file (`.ring`): header and producer page.
    Data,
    /// The control file (`.ctl`): header, waiters, slots.
    Control,
}

/// One shared word of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word {
    /// Its name, as the layout spells it (e.g. `tail`, `slot[0].position`).
    pub name: &'static str,
    /// Its field name alone (what an error naming it contains).
    pub field: &'static str,
    /// The file.
    pub which: Which,
    /// Byte offset in that file.
    pub offset: u64,
    /// 4 or 8 bytes.
    pub width: u8,
}

const fn producer(name: &'static str, off: usize, width: u8) -> Word {
    Word {
        name,
        field: name,
        which: Which::Data,
        offset: (PRODUCER_OFFSET + off) as u64,
        width,
    }
}

const fn control(name: &'static str, off: usize, width: u8) -> Word {
    Word {
        name,
        field: name,
        which: Which::Control,
        offset: off as u64,
        width,
    }
}

/// Every word of the producer page.
pub const PRODUCER_WORDS: [Word; 8] = [
    producer("tail", offset_of!(Producer, tail), 8),
    producer("head", offset_of!(Producer, head), 8),
    producer("limit", offset_of!(Producer, limit), 8),
    producer("published", offset_of!(Producer, published), 8),
    producer("futex", offset_of!(Producer, futex), 4),
    producer("writer_state", offset_of!(Producer, writer_state), 4),
    producer("evictions", offset_of!(Producer, evictions), 8),
    producer("full_events", offset_of!(Producer, full_events), 8),
];

/// The control file's header words.
pub const CONTROL_HEADER_WORDS: [Word; 4] = [
    control("magic", offset_of!(ControlHeader, magic), 8),
    control(
        "layout_version",
        offset_of!(ControlHeader, layout_version),
        4,
    ),
    control("slot_count", offset_of!(ControlHeader, slot_count), 4),
    control("ring_id", offset_of!(ControlHeader, ring_id), 8),
];

/// The control file's waiting words.
pub const WAITER_WORDS: [Word; 4] = [
    control("waiters", WAITERS_OFFSET + offset_of!(Waiters, waiters), 4),
    control(
        "space_futex",
        WAITERS_OFFSET + offset_of!(Waiters, space_futex),
        4,
    ),
    control(
        "space_waiters",
        WAITERS_OFFSET + offset_of!(Waiters, space_waiters),
        4,
    ),
    control(
        "wake_armed",
        WAITERS_OFFSET + offset_of!(Waiters, wake_armed),
        4,
    ),
];

/// The fields of a slot: (name, offset in the slot).
pub const SLOT_FIELDS: [(&str, usize); 12] = [
    ("state", offset_of!(Slot, state)),
    ("position", offset_of!(Slot, position)),
    ("held", offset_of!(Slot, held)),
    ("sleeping", offset_of!(Slot, sleeping)),
    ("pid", offset_of!(Slot, pid)),
    ("start_time", offset_of!(Slot, start_time)),
    ("reg_index", offset_of!(Slot, reg_index)),
    ("reg_generation", offset_of!(Slot, reg_generation)),
    ("durable_key", offset_of!(Slot, durable_key)),
    ("lease_ns", offset_of!(Slot, lease_ns)),
    ("orphaned_at", offset_of!(Slot, orphaned_at)),
    ("first_seq", offset_of!(Slot, first_seq)),
];

/// Field `field` (one of [`SLOT_FIELDS`]) of slot `index`, named
/// `name` (e.g. `"live slot.position"`).
///
/// # Panics
///
/// If `field` is not a slot field.
pub fn slot_word(name: &'static str, index: usize, field: &'static str) -> Word {
    let off = SLOT_FIELDS
        .iter()
        .find(|(f, _)| *f == field)
        .unwrap_or_else(|| panic!("no slot field {field}"))
        .1;
    Word {
        name,
        field,
        which: Which::Control,
        offset: (SLOTS_OFFSET + index * SLOT_SIZE + off) as u64,
        width: 8,
    }
}

/// Byte offset of `Waiters::waiters` in the control file.
pub const WAITERS_AT: u64 = (WAITERS_OFFSET + offset_of!(Waiters, waiters)) as u64;

/// Byte offset of `Producer::futex` in the data file.
pub const FUTEX_AT: u64 = (PRODUCER_OFFSET + offset_of!(Producer, futex)) as u64;

/// Byte offset of slot `index`'s state word in the control file.
pub fn slot_state_at(index: usize) -> u64 {
    (SLOTS_OFFSET + index * SLOT_SIZE + offset_of!(Slot, state)) as u64
}

/// Both files of one ring, opened read-write for plain reads and writes.
#[derive(Debug)]
pub struct RingWords {
    /// The data file.
    pub data: RingFile,
    /// The control file.
    pub control: RingFile,
}

impl RingWords {
    /// Opens the ring whose data file is `path`.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            data: RingFile::open(path)?,
            control: RingFile::open(&shmbus_bus::control_path_of(path))?,
        })
    }

    fn file(&self, which: Which) -> &RingFile {
        match which {
            Which::Data => &self.data,
            Which::Control => &self.control,
        }
    }

    /// Reads a word (zero-extended).
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn read(&self, w: &Word) -> io::Result<u64> {
        let f = self.file(w.which);
        if w.width == 4 {
            f.u32_at(w.offset).map(u64::from)
        } else {
            f.u64_at(w.offset)
        }
    }

    /// Writes a word (truncated to its width) with one `pwrite`.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn write(&self, w: &Word, value: u64) -> io::Result<()> {
        let f = self.file(w.which);
        if w.width == 4 {
            f.patch(w.offset, &(value as u32).to_le_bytes())
        } else {
            f.patch(w.offset, &value.to_le_bytes())
        }
    }

    /// Writes raw bytes at `offset` of `which`.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn write_bytes(&self, which: Which, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file(which).patch(offset, bytes)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A small seeded generator (splitmix64) for the random phases.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
