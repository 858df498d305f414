//! A reference decoder of the segment layout, written from `docs/layout.md`
//! (version 2) only: it reads plain byte slices and never calls
//! `shmbus_bus`, so a fuzz target can hold the bus's answers against it.
//! Section numbers below are the spec's.

/// Spec §1 constants.
pub const PAGE: u64 = 4096;
/// Offset of the ring data in the data file.
pub const DATA_OFFSET: u64 = 8192;
/// Offset of the producer page in the data file.
pub const PRODUCER: u64 = 4096;
/// Smallest ring.
pub const MIN_CAPACITY: u64 = 4096;
/// Largest ring.
pub const MAX_CAPACITY: u64 = 1 << 34;
/// Most subscriber slots.
pub const MAX_SLOTS: u32 = 1024;
/// Longest type name.
pub const TYPE_NAME_MAX: u32 = 256;
/// Largest payload a header can describe.
pub const MAX_RECORD_PAYLOAD: u64 = u32::MAX as u64 - 16;
/// `b"shmbus\0\x01"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"shmbus\x00\x01");
/// `b"shmbctl\x01"` as a little-endian u64.
pub const CTL_MAGIC: u64 = u64::from_le_bytes(*b"shmbctl\x01");

/// Reads a little-endian u64 at `off`, 0 past the end of `b`.
pub fn u64_at(b: &[u8], off: u64) -> u64 {
    let off = off as usize;
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// Reads a little-endian u32 at `off`, 0 past the end of `b`.
pub fn u32_at(b: &[u8], off: u64) -> u32 {
    let off = off as usize;
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// Why an open is refused (§2, "the order of the checks").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenRefusal {
    /// Magic zero or file shorter than a page.
    NotInitialized,
    /// Nonempty file shorter than a page.
    Short,
    /// Wrong magic.
    NotASegment,
    /// Wrong layout version (found).
    Version(u32),
    /// Wrong file size (expected).
    Size(u64),
    /// A field breaks its rule.
    Corrupt(&'static str),
}

/// The header fields a reader relies on (§2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRef {
    /// Ring bytes.
    pub capacity: u64,
    /// Largest payload.
    pub max_message: u64,
    /// Slots.
    pub slots: u32,
    /// 1 Block, 2 Overwrite.
    pub policy: u32,
    /// Eviction delay, ns.
    pub evict_after_ns: u64,
    /// Flags bit 0.
    pub replica: bool,
    /// Ring id.
    pub ring_id: u64,
    /// Type name.
    pub type_name: String,
    /// Type fingerprint.
    pub type_fingerprint: u64,
    /// Publisher pid.
    pub pid: u32,
}

/// `min(capacity / 2 - 16, MAX_RECORD_PAYLOAD)` (§2).
pub fn max_message_limit(capacity: u64) -> u64 {
    (capacity / 2 - 16).min(MAX_RECORD_PAYLOAD)
}

/// `round_up(256 + 128 n, PAGE)` (§4).
pub fn control_file_len(slots: u32) -> u64 {
    (256 + 128 * u64::from(slots)).div_ceil(PAGE) * PAGE
}

/// Decodes a data file's header (`file` is the whole file or at least its
/// first page, `file_size` its size) per §2, steps 1 to 6.
pub fn decode_header(file: &[u8], file_size: u64) -> Result<HeaderRef, OpenRefusal> {
    if file_size < PAGE || u64_at(file, 0) == 0 {
        return Err(if file_size > 0 && file_size < PAGE {
            OpenRefusal::Short
        } else {
            OpenRefusal::NotInitialized
        });
    }
    if u64_at(file, 0) != MAGIC {
        return Err(OpenRefusal::NotASegment);
    }
    let version = u32_at(file, 8);
    if version != 2 {
        return Err(OpenRefusal::Version(version));
    }
    if u32_at(file, 12) != 0x0102_0304 {
        return Err(OpenRefusal::Corrupt("endian"));
    }
    let capacity = u64_at(file, 24);
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(OpenRefusal::Corrupt("capacity"));
    }
    let slots = u32_at(file, 40);
    if slots == 0 || slots > MAX_SLOTS {
        return Err(OpenRefusal::Corrupt("slot_count"));
    }
    if u64_at(file, 16) != DATA_OFFSET {
        return Err(OpenRefusal::Corrupt("data_offset"));
    }
    if file_size != DATA_OFFSET + capacity {
        return Err(OpenRefusal::Size(DATA_OFFSET + capacity));
    }
    let max_message = u64_at(file, 32);
    if max_message == 0 || max_message > max_message_limit(capacity) {
        return Err(OpenRefusal::Corrupt("max_message"));
    }
    let policy = u32_at(file, 44);
    if policy != 1 && policy != 2 {
        return Err(OpenRefusal::Corrupt("policy"));
    }
    let evict_after_ns = u64_at(file, 64);
    if policy == 2 && evict_after_ns != 0 {
        return Err(OpenRefusal::Corrupt("evict_after_ns"));
    }
    let pid = u32::try_from(u64_at(file, 72)).map_err(|_| OpenRefusal::Corrupt("publisher_pid"))?;
    let name_len = u32_at(file, 104);
    if name_len > TYPE_NAME_MAX {
        return Err(OpenRefusal::Corrupt("type_name_len"));
    }
    let name = file
        .get(112..112 + name_len as usize)
        .ok_or(OpenRefusal::Corrupt("type_name"))?;
    let type_name =
        String::from_utf8(name.to_vec()).map_err(|_| OpenRefusal::Corrupt("type_name"))?;
    let flags = u32_at(file, 48);
    if flags & 6 == 6 {
        return Err(OpenRefusal::Corrupt("flags"));
    }
    Ok(HeaderRef {
        capacity,
        max_message,
        slots,
        policy,
        evict_after_ns,
        replica: flags & 1 != 0,
        ring_id: u64_at(file, 56),
        type_name,
        type_fingerprint: u64_at(file, 96),
        pid,
    })
}

/// Checks a control file against its data header (§2 step 7).
pub fn check_control(h: &HeaderRef, ctl: &[u8], ctl_size: u64) -> Result<(), OpenRefusal> {
    let expected = control_file_len(h.slots);
    if ctl_size != expected {
        return Err(OpenRefusal::Size(expected));
    }
    if u64_at(ctl, 0) != CTL_MAGIC {
        return Err(OpenRefusal::NotASegment);
    }
    let version = u32_at(ctl, 8);
    if version != 2 {
        return Err(OpenRefusal::Version(version));
    }
    if u32_at(ctl, 12) != h.slots {
        return Err(OpenRefusal::Corrupt("slot_count"));
    }
    if u64_at(ctl, 16) != h.ring_id {
        return Err(OpenRefusal::Corrupt("ring_id"));
    }
    Ok(())
}

/// The span rule of §3 over `(tail_before, head, tail_after)`.
pub fn check_span(
    capacity: u64,
    overwrite: bool,
    tail_before: u64,
    head: u64,
    tail_after: u64,
) -> Result<(), &'static str> {
    if !tail_before.is_multiple_of(16) || !tail_after.is_multiple_of(16) {
        return Err("tail alignment");
    }
    if !head.is_multiple_of(16) {
        return Err("head alignment");
    }
    let ahead = if overwrite { capacity } else { 0 };
    if head > tail_after.saturating_add(ahead) {
        return Err("head beyond tail");
    }
    if tail_before > head.saturating_add(capacity) {
        return Err("head more than a ring behind");
    }
    Ok(())
}

/// The limit rule of §3: `limit` 16-aligned and at most `tail`.
pub fn check_limit(limit: u64, tail: u64) -> Result<(), &'static str> {
    if !limit.is_multiple_of(16) || limit > tail {
        return Err("limit is not a record position within the tail");
    }
    Ok(())
}

/// What §5 says about the position `pos` of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rec {
    /// A valid data record.
    Data {
        /// Payload length.
        len: u32,
        /// Low half of its sequence number.
        seq_low: u32,
        /// Bytes it occupies.
        size: u64,
    },
    /// A valid padding record (occupies the rest of the lap).
    Padding {
        /// Bytes it occupies.
        size: u64,
        /// Low half of the next record's sequence number.
        seq_low: u32,
    },
    /// A valid gap record.
    Gap {
        /// Lost messages.
        count: u64,
        /// Low half of the first lost message's number.
        seq_low: u32,
        /// Bytes it occupies.
        size: u64,
    },
    /// Not written yet.
    NotYet,
    /// Invalid here; the reason.
    Invalid(&'static str),
}

/// The ring geometry a decoder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// Ring bytes (a power of two).
    pub capacity: u64,
    /// Largest data payload.
    pub max_message: u64,
}

impl Ring {
    /// Decodes the record at `pos` of `data` (the ring's `capacity` bytes).
    pub fn record(&self, data: &[u8], pos: u64) -> Rec {
        if !pos.is_multiple_of(16) {
            return Rec::Invalid("position not 16-aligned");
        }
        let off = pos % self.capacity;
        let room = self.capacity - off;
        let stamp = u64_at(data, off);
        let meta = u64_at(data, off + 8);
        let len = meta as u32;
        let seq_low = (meta >> 32) as u32;
        let len64 = u64::from(len);
        let size = 16 + len64.div_ceil(16) * 16;
        if stamp == pos | 1 {
            if len64 > self.max_message {
                return Rec::Invalid("data length above max_message");
            }
            if size > room {
                return Rec::Invalid("crosses the ring's end");
            }
            Rec::Data { len, seq_low, size }
        } else if stamp == pos | 3 {
            if len64 + 16 != room {
                return Rec::Invalid("padding does not end at the ring's end");
            }
            Rec::Padding {
                size: room,
                seq_low,
            }
        } else if stamp == pos | 5 {
            if len64 != 0 && len64 < 8 {
                return Rec::Invalid("gap length neither 0 nor at least 8");
            }
            if size > room {
                return Rec::Invalid("crosses the ring's end");
            }
            let count = if len64 >= 8 {
                u64_at(data, off + 16)
            } else {
                0
            };
            Rec::Gap {
                count,
                seq_low,
                size,
            }
        } else if stamp == 0 || stamp & !15 < pos {
            Rec::NotYet
        } else {
            Rec::Invalid("stamp of another position")
        }
    }

    /// The position after the record at `pos` of `size` bytes (§5 walks:
    /// padding ends the lap exactly, so this is `pos + size` for every kind).
    pub fn next(&self, pos: u64, size: u64) -> u64 {
        pos + size
    }

    /// The `len` payload bytes of the record at `pos` (inside the ring by
    /// construction of a valid record).
    pub fn payload<'a>(&self, data: &'a [u8], pos: u64, len: u32) -> &'a [u8] {
        let start = (pos % self.capacity + 16) as usize;
        &data[start..start + len as usize]
    }
}

/// The 64-bit number with low half `low` nearest to `hint` (§5).
pub fn extend_sequence(low: u32, hint: u64) -> u64 {
    let delta = low.wrapping_sub(hint as u32) as i32;
    hint.wrapping_add_signed(i64::from(delta))
}

/// One record found by [`walk_chunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Its position.
    pub pos: u64,
    /// Its decoding.
    pub rec: Rec,
}

/// An accepted chunk's records and the replica's next sequence number.
pub type ChunkWalk = (Vec<ChunkRecord>, Option<u64>);

/// Walks a replica chunk (§7): `data` is the ring image with the chunk in
/// place, `start` the write position, `len` the chunk's length, `seq` the
/// replica's next sequence number (`None`: a fresh replica, the first
/// numbered record sets it, extended from `hint`). Returns the records and
/// the next sequence number, or the position and reason of the refusal.
pub fn walk_chunk(
    ring: &Ring,
    data: &[u8],
    start: u64,
    len: u64,
    seq: Option<u64>,
    hint: u64,
) -> Result<ChunkWalk, (u64, &'static str)> {
    let end = start + len;
    let mut pos = start;
    let mut out = Vec::new();
    let mut seq = seq;
    while pos < end {
        let rec = ring.record(data, pos);
        let (size, numbered) = match rec {
            Rec::Data { size, seq_low, .. } => (size, Some((seq_low, 1))),
            Rec::Gap {
                size,
                seq_low,
                count,
            } => (size, Some((seq_low, count))),
            Rec::Padding { size, .. } => (size, None),
            Rec::NotYet => return Err((pos, "not a committed record")),
            Rec::Invalid(why) => return Err((pos, why)),
        };
        if pos + size > end {
            return Err((pos, "record extends past the chunk"));
        }
        if let Some((low, count)) = numbered {
            let this = seq.unwrap_or_else(|| extend_sequence(low, hint));
            if this as u32 != low {
                return Err((pos, "sequence not consecutive"));
            }
            seq = Some(
                this.checked_add(count)
                    .ok_or((pos, "gap count overflows"))?,
            );
        }
        out.push(ChunkRecord { pos, rec });
        pos += size;
    }
    Ok((out, seq))
}
