//! Looking at and patching ring segment files from outside, with plain file
//! reads and writes (`pread`/`pwrite` on tmpfs see the same pages as the
//! mappings): control counters without joining the subscriber table, the
//! list of committed records, and byte patches for corruption tests.

use std::{
    fs::File,
    io,
    mem::offset_of,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use shmbus_bus::layout::{
    self, split_meta, Producer, SegmentHeader, DATA_OFFSET, PRODUCER_OFFSET, RECORD_HEADER,
    STAMP_COMMITTED, STAMP_FLAGS, STAMP_GAP, STAMP_PADDING,
};

/// Offsets of header fields, for patching.
#[derive(Debug, Clone, Copy)]
pub enum HeaderField {
    /// `magic` (u64).
    Magic,
    /// `layout_version` (u32).
    LayoutVersion,
    /// `endian` (u32).
    Endian,
    /// `capacity` (u64).
    Capacity,
    /// `max_message` (u64).
    MaxMessage,
    /// `slot_count` (u32).
    SlotCount,
    /// `policy` (u32).
    Policy,
    /// `type_name_len` (u32).
    TypeNameLen,
    /// `data_offset` (u64).
    DataOffset,
}

impl HeaderField {
    /// Byte offset in the file.
    pub fn offset(self) -> u64 {
        (match self {
            Self::Magic => offset_of!(SegmentHeader, magic),
            Self::LayoutVersion => offset_of!(SegmentHeader, layout_version),
            Self::Endian => offset_of!(SegmentHeader, endian),
            Self::Capacity => offset_of!(SegmentHeader, capacity),
            Self::MaxMessage => offset_of!(SegmentHeader, max_message),
            Self::SlotCount => offset_of!(SegmentHeader, slot_count),
            Self::Policy => offset_of!(SegmentHeader, policy),
            Self::TypeNameLen => offset_of!(SegmentHeader, type_name_len),
            Self::DataOffset => offset_of!(SegmentHeader, data_offset),
        }) as u64
    }
}

/// A snapshot of a ring's writer-owned counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSnapshot {
    /// Published tail.
    pub tail: u64,
    /// Oldest intact record.
    pub head: u64,
    /// Records published.
    pub published: u64,
    /// Subscribers evicted (dead or lagging).
    pub evictions: u64,
    /// Times the writer found the ring full.
    pub full_events: u64,
    /// `WRITER_OPEN` / `WRITER_CLOSED`.
    pub writer_state: u32,
}

/// One committed data record found in a ring file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// Absolute ring position.
    pub position: u64,
    /// File offset of the record header (stamp word).
    pub file_offset: u64,
    /// Payload length.
    pub len: u32,
    /// The writer's sequence number.
    pub seq: u32,
}

impl RecordInfo {
    /// File offset of the length/sequence word.
    pub fn meta_offset(&self) -> u64 {
        self.file_offset + 8
    }

    /// File offset of the payload.
    pub fn payload_offset(&self) -> u64 {
        self.file_offset + RECORD_HEADER
    }
}

/// A segment file, opened for plain reads and writes.
#[derive(Debug)]
pub struct RingFile {
    path: PathBuf,
    file: File,
}

impl RingFile {
    /// Opens `path` read-write.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::options().read(true).write(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a little-endian u64 at `offset`.
    ///
    /// # Errors
    ///
    /// File-system errors (e.g. past the end).
    pub fn u64_at(&self, offset: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, offset)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32 at `offset`.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn u32_at(&self, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.file.read_exact_at(&mut b, offset)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes `bytes` at `offset`.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn patch(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// XORs the byte at `offset` with `mask`.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn flip(&self, offset: u64, mask: u8) -> io::Result<()> {
        let mut b = [0u8; 1];
        self.file.read_exact_at(&mut b, offset)?;
        self.patch(offset, &[b[0] ^ mask])
    }

    /// The writer's counters (the data file's producer page), read without
    /// joining the ring.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn control(&self) -> io::Result<ControlSnapshot> {
        let at = |o: usize| (PRODUCER_OFFSET + o) as u64;
        Ok(ControlSnapshot {
            tail: self.u64_at(at(offset_of!(Producer, tail)))?,
            head: self.u64_at(at(offset_of!(Producer, head)))?,
            published: self.u64_at(at(offset_of!(Producer, published)))?,
            evictions: self.u64_at(at(offset_of!(Producer, evictions)))?,
            full_events: self.u64_at(at(offset_of!(Producer, full_events)))?,
            writer_state: self.u32_at(at(offset_of!(Producer, writer_state)))?,
        })
    }

    /// `(data offset in the file, ring capacity)` from the header.
    ///
    /// # Errors
    ///
    /// File-system errors.
    pub fn geometry(&self) -> io::Result<(u64, u64)> {
        let capacity = self.u64_at(HeaderField::Capacity.offset())?;
        Ok((DATA_OFFSET as u64, capacity))
    }

    /// The committed data records between `head` and the published tail, in
    /// order (padding skipped).
    ///
    /// # Errors
    ///
    /// File-system errors, or `InvalidData` if the framing is broken.
    pub fn records(&self) -> io::Result<Vec<RecordInfo>> {
        let (data, cap) = self.geometry()?;
        let ctrl = self.control()?;
        let mask = cap - 1;
        let mut out = Vec::new();
        let mut pos = ctrl.head;
        while pos < ctrl.tail {
            let off = pos & mask;
            let stamp = self.u64_at(data + off)?;
            let (len, seq) = split_meta(self.u64_at(data + off + 8)?);
            if stamp & !STAMP_FLAGS != pos || stamp & STAMP_COMMITTED == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no record at position {pos} (stamp {stamp:#x})"),
                ));
            }
            if stamp & STAMP_PADDING != 0 {
                pos += cap - off;
                continue;
            }
            if stamp & STAMP_GAP != 0 {
                pos += layout::record_size(u64::from(len));
                continue;
            }
            out.push(RecordInfo {
                position: pos,
                file_offset: data + off,
                len,
                seq,
            });
            pos += layout::record_size(u64::from(len));
        }
        Ok(out)
    }
}
