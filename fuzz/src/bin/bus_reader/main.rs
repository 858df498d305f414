//! Target `bus_reader`: a subscriber (`RingReader`: `try_read`, `drain`,
//! `probe`) and a raw reader (`RawReader::next_chunk`) reading a real ring
//! whose data file and control file the harness rewrites between their
//! calls, as a concurrent (and possibly hostile) writer would: records
//! appended, padding, gap records, positions moved, raw words scribbled.
//!
//! The harness keeps its own copy of every byte it wrote; after each call it
//! holds the bus's answer against the reference decoder (`docs/layout.md`):
//! - a message is the data record the spec's walk reaches from the reader's
//!   position (padding and gap records skipped), inside the ring, with the
//!   same length, bytes and sequence half;
//! - `Empty` only where that walk reaches a "not yet" stamp, and the
//!   reader's position is then exactly there; `Closed` never (the
//!   publisher is alive); a gap only at a gap record or a data record;
//! - a refusal names a reason the spec gives at that point (an invalid
//!   record, a broken span, a bad `writer_state`, a published position
//!   without a record, sequence numbers), or, for a lost slot, a foreign
//!   write to the control file or a position below `head`;
//! - `next_chunk` returns exactly the chunk the spec computes.
//!
//! Input: a base position (u32, times 16), a first sequence number (u64),
//! then one-byte opcodes with their operands (see `Op`).

use std::fs::File;

use shmbus_bus::{RawReader, RingConfig, RingReader, RingWriter};
use shmbus_fuzz::{
    input::Input,
    layout_ref::{self as spec, Rec},
    scratch::{open_rw, write_at, Scratch},
};

const CAPACITY: u64 = 4096;
const MAX_MESSAGE: u64 = 1024;
const SLOTS: u32 = 4;
const RING: spec::Ring = spec::Ring {
    capacity: CAPACITY,
    max_message: MAX_MESSAGE,
};
/// Producer words (spec §3), as offsets of the data file.
const TAIL: u64 = spec::PRODUCER;
const HEAD: u64 = spec::PRODUCER + 8;
const LIMIT: u64 = spec::PRODUCER + 16;
const PUBLISHED: u64 = spec::PRODUCER + 24;
const WRITER_STATE: u64 = spec::PRODUCER + 256;

/// The ring under test, made once per fuzzer process. The writer is kept
/// (idle) so that the publisher is alive; the harness writes the files.
struct Rig {
    _dir: Scratch,
    _writer: RingWriter,
    path: std::path::PathBuf,
    data_file: File,
    ctl_file: File,
    /// Readers kept from the last exec when it left them healthy: opening
    /// a reader per exec (files, mappings, a slot) cost most of an exec.
    /// The next exec puts its ring where they are (see `checks::run`).
    kept: Option<(RingReader, Option<RawReader>)>,
    /// The sequence number a kept reader expects next, as far as known.
    kept_seq: u64,
}

/// One exec's state: the harness's copy of the data file from the
/// producer page on, and the readers.
struct Exec<'a> {
    rig: &'a Rig,
    /// Data file bytes (index = file offset); the header page is unused.
    file: Vec<u8>,
    /// Where the harness's writer appends, and the next sequence number.
    wpos: u64,
    wseq: u64,
    /// A foreign write to the control file happened (slots may be lost).
    ctl_touched: bool,
    /// A reader call was refused: its reader is not kept.
    poisoned: std::cell::Cell<bool>,
    /// One past the last message's sequence number.
    next_seq: std::cell::Cell<u64>,
    /// File offsets written in `file` since the last flush (one positioned
    /// write per reader call instead of one per word).
    dirty: std::ops::Range<usize>,
    reader: Option<Result<RingReader, ()>>,
    raw: Option<Result<(RawReader, u64), ()>>,
}

impl Rig {
    fn new() -> Self {
        let dir = Scratch::new("bus_reader");
        let path = dir.path("r.ring");
        let config = RingConfig {
            capacity: CAPACITY,
            max_message: MAX_MESSAGE,
            slots: SLOTS,
            ..RingConfig::default()
        };
        let writer = RingWriter::create(&path, &config).expect("create the ring");
        let data_file = open_rw(&path);
        let ctl_file = open_rw(&path.with_extension("ctl"));
        Self {
            _dir: dir,
            _writer: writer,
            path,
            data_file,
            ctl_file,
            kept: None,
            kept_seq: 0,
        }
    }
}

impl<'a> Exec<'a> {
    /// A fresh ring at base position `p0` with next sequence `seq0`, as
    /// its writer leaves it at creation; subscriber slots freed unless
    /// `kept` readers (at `p0`) come along.
    fn new(
        rig: &'a Rig,
        p0: u64,
        seq0: u64,
        kept: Option<(RingReader, Option<RawReader>)>,
    ) -> Self {
        let mut e = Self {
            rig,
            file: vec![0; (spec::DATA_OFFSET + CAPACITY) as usize],
            wpos: p0,
            wseq: seq0,
            ctl_touched: false,
            poisoned: std::cell::Cell::new(false),
            next_seq: std::cell::Cell::new(seq0),
            dirty: 0..0,
            reader: None,
            raw: None,
        };
        for (off, v) in [(TAIL, p0), (HEAD, p0), (LIMIT, p0), (PUBLISHED, seq0)] {
            e.set_file(off, &v.to_le_bytes());
        }
        e.set_file(WRITER_STATE, &1u32.to_le_bytes());
        e.dirty = spec::PRODUCER as usize..e.file.len();
        e.clear_next();
        match kept {
            Some((reader, raw)) => {
                e.reader = Some(Ok(reader));
                e.raw = raw.map(|raw| Ok((raw, p0)));
            }
            None => {
                write_at(&rig.ctl_file, 128, &[0; 16]);
                write_at(&rig.ctl_file, 256, &[0; 128 * SLOTS as usize]);
            }
        }
        e
    }

    fn set_file(&mut self, off: u64, bytes: &[u8]) {
        let at = off as usize;
        let end = at + bytes.len();
        self.file[at..end].copy_from_slice(bytes);
        self.dirty = if self.dirty.is_empty() {
            at..end
        } else {
            self.dirty.start.min(at)..self.dirty.end.max(end)
        };
    }

    /// Writes what changed to the data file: before every reader call.
    fn flush(&mut self) {
        if !self.dirty.is_empty() {
            let range = std::mem::replace(&mut self.dirty, 0..0);
            write_at(&self.rig.data_file, range.start as u64, &self.file[range]);
        }
    }

    fn set_ring(&mut self, pos: u64, bytes: &[u8]) {
        let off = pos % CAPACITY;
        let n = bytes.len().min((CAPACITY - off) as usize);
        self.set_file(spec::DATA_OFFSET + off, &bytes[..n]);
    }

    fn header(&mut self, pos: u64, stamp: u64, len: u32, seq: u64) {
        let meta = u64::from(len) | (seq << 32);
        let mut h = [0; 16];
        h[..8].copy_from_slice(&stamp.to_le_bytes());
        h[8..].copy_from_slice(&meta.to_le_bytes());
        self.set_ring(pos, &h);
    }

    /// What a writer does after each record: clear the next stamp, with the
    /// next sequence number beside it.
    fn clear_next(&mut self) {
        self.header(self.wpos, 0, 0, self.wseq);
    }

    fn data(&self) -> &[u8] {
        &self.file[spec::DATA_OFFSET as usize..]
    }

    fn word(&self, off: u64) -> u64 {
        spec::u64_at(&self.file, off)
    }

    /// Pads to the lap's end if a record of `size` bytes does not fit.
    fn fit(&mut self, size: u64) {
        let room = CAPACITY - self.wpos % CAPACITY;
        if size > room {
            self.header(self.wpos, self.wpos | 3, (room - 16) as u32, self.wseq);
            self.wpos += room;
        }
    }

    fn append_data(&mut self, input: &mut Input<'_>) {
        let len = u32::from(input.u16()) % 1100;
        let skew = input.u8() as i8;
        let fill = input.u8();
        let seq = self.wseq.wrapping_add_signed(i64::from(skew));
        let size = 16 + u64::from(len).div_ceil(16) * 16;
        self.fit(size.min(CAPACITY));
        let pos = self.wpos;
        let payload: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
        self.set_ring(pos + 16, &payload);
        self.header(pos, pos | 1, len, seq);
        self.wpos += size;
        self.wseq = seq.wrapping_add(1);
        self.clear_next();
    }

    fn append_gap(&mut self, input: &mut Input<'_>) {
        let len = match input.u8() % 4 {
            0 => 0,
            1 => 8,
            2 => u32::from(input.u8()),
            _ => u32::from(input.u16()),
        };
        let count = match input.u8() % 3 {
            0 => u64::from(input.u8()),
            1 => input.u64(),
            _ => 0,
        };
        let size = 16 + u64::from(len).div_ceil(16) * 16;
        self.fit(size.min(CAPACITY));
        let pos = self.wpos;
        self.set_ring(pos + 16, &count.to_le_bytes());
        self.header(pos, pos | 5, len, self.wseq);
        self.wpos += size;
        self.wseq = self.wseq.wrapping_add(count);
        self.clear_next();
    }

    fn pad(&mut self) {
        let room = CAPACITY - self.wpos % CAPACITY;
        self.header(self.wpos, self.wpos | 3, (room - 16) as u32, self.wseq);
        self.wpos += room;
        self.clear_next();
    }

    fn publish(&mut self) {
        self.set_file(TAIL, &self.wpos.to_le_bytes());
        self.set_file(PUBLISHED, &self.wseq.to_le_bytes());
    }

    fn scribble(&mut self, input: &mut Input<'_>) {
        let what = input.u8();
        let value = input.u64();
        match what % 8 {
            0 => self.set_file(TAIL, &value.to_le_bytes()),
            1 => self.set_file(HEAD, &value.to_le_bytes()),
            // Head moved forward by whole records, as a lapping writer does.
            2 => {
                let head = self.word(HEAD).wrapping_add((value % 64) * 16);
                self.set_file(HEAD, &head.to_le_bytes());
            }
            3 => self.set_file(PUBLISHED, &value.to_le_bytes()),
            4 => self.set_file(WRITER_STATE, &(value as u32).to_le_bytes()),
            // A ring word: any word, or the stamp/meta/count of a record.
            _ => {
                let off = (value >> 32) % (CAPACITY / 8) * 8;
                let v = match what >> 3 {
                    0 => value & 0xffff_ffff,
                    1 => value.rotate_left(32),
                    _ => value,
                };
                self.set_ring(off, &v.to_le_bytes());
            }
        }
    }

    fn scribble_control(&mut self, input: &mut Input<'_>) {
        let slot = u64::from(input.u8()) % u64::from(SLOTS);
        let field = u64::from(input.u8()) % 12;
        let value = input.u64();
        write_at(
            &self.rig.ctl_file,
            256 + slot * 128 + field * 8,
            &value.to_le_bytes(),
        );
        self.ctl_touched = true;
    }
}

impl Drop for Exec<'_> {
    /// Before the readers leave: a ring whose `writer_state` does not say
    /// open is taken for a gone publisher's by the last reader out, which
    /// removes its files (`shm::sweep`); the next exec needs them.
    fn drop(&mut self) {
        write_at(&self.rig.data_file, WRITER_STATE, &1u32.to_le_bytes());
    }
}

/// Where the spec's walk from `pos` stops: the first data record, gap
/// record, "not yet" stamp or invalid record (padding is passed).
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // `Invalid`'s fields are read through Debug, in failure messages
enum Step {
    Data {
        pos: u64,
        len: u32,
        seq_low: u32,
        size: u64,
    },
    Gap {
        pos: u64,
        size: u64,
    },
    NotYet {
        pos: u64,
    },
    Invalid {
        pos: u64,
        why: &'static str,
    },
}

fn step(data: &[u8], mut pos: u64) -> Step {
    // Padding ends a lap and each lap's stamp names one position: two
    // paddings in a row cannot both be valid, so this ends quickly.
    for _ in 0..4 {
        match RING.record(data, pos) {
            Rec::Padding { size, .. } => pos += size,
            Rec::Data { len, seq_low, size } => {
                return Step::Data {
                    pos,
                    len,
                    seq_low,
                    size,
                }
            }
            Rec::Gap { size, .. } => return Step::Gap { pos, size },
            Rec::NotYet => return Step::NotYet { pos },
            Rec::Invalid(why) => return Step::Invalid { pos, why },
        }
    }
    Step::Invalid {
        pos,
        why: "padding after padding",
    }
}

/// The walk from `pos` passing gap records too (a reader skips those that
/// report nothing).
fn step_past_gaps(data: &[u8], mut pos: u64) -> Step {
    for _ in 0..(CAPACITY / 16 + 2) {
        match step(data, pos) {
            Step::Gap { pos: p, size } => pos = p + size,
            other => return other,
        }
    }
    Step::Invalid {
        pos,
        why: "walk does not end",
    }
}

mod checks;

fn main() {
    let mut rig = Rig::new();
    if shmbus_fuzz::other_modes(|b| checks::run(&mut rig, b), shmbus_fuzz::seeds::reader) {
        return;
    }
    // A panic aborts the process (afl.rs), so no state outlives a failure.
    let mut rig = std::panic::AssertUnwindSafe(rig);
    afl::fuzz(true, move |bytes: &[u8]| checks::run(&mut rig, bytes));
}

/// Opcodes (one byte, taken modulo the count).
#[derive(Debug, Clone, Copy)]
enum Op {
    Data,
    Gap,
    Pad,
    Publish,
    Scribble,
    ScribbleControl,
    TryRead,
    Drain,
    Probe,
    NextChunk,
}

const OPS: [Op; 10] = [
    Op::Data,
    Op::Gap,
    Op::Pad,
    Op::Publish,
    Op::Scribble,
    Op::ScribbleControl,
    Op::TryRead,
    Op::Drain,
    Op::Probe,
    Op::NextChunk,
];
