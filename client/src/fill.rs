//! [`Fill`]: a byte field written in place in the ring by the user's code.
//!
//! A large payload (a camera frame, a point cloud) sent with
//! [`Publisher::send`](crate::Publisher::send) is first built in a `Vec`,
//! then copied into the ring by rkyv. A [`Fill`] field skips the `Vec`: the
//! archive reserves the field's bytes where the subscriber will read them
//! and hands them, row by row, to the closure given to
//! [`Publisher::send_filled`](crate::Publisher::send_filled), which writes
//! them there. Its archived form is exactly an [`ArchivedVec<u8>`], so the
//! subscriber's ordinary type (with a `Vec<u8>` field) reads it.
//!
//! How it stays safe without `unsafe` in user code:
//!
//! - the closure gets `&mut [u8]` over *initialized* memory: each row is
//!   zeroed just before the closure sees it (while the row is in cache, so
//!   it costs far less than a second pass over the payload), so bytes it
//!   leaves alone read as zero, never as whatever the ring held before;
//! - a publisher first counts the archive's size without running the
//!   closure, then writes it once into a loan of exactly that size: the
//!   closure runs once per row per message sent, never on space that is
//!   then thrown away (unless a later field fails to serialize, in which
//!   case nothing is published and the error says why);
//! - the subscriber validates the archive like any other (`bytecheck`).
//!
//! A `Fill` is a plain description (how many rows, how long): the closure
//! is an argument of the send, not a field, so the writer-side message
//! type has no lifetime or type parameter and derives like any other.
//! `Fill` serializes only into a shmbus publisher's ring (it implements
//! `Serialize` for shmbus's serializer alone).

use std::{fmt, mem::MaybeUninit};

use rkyv::{
    rancor::{Source, Strategy},
    ser::{sharing::Share, Positional, Serializer},
    vec::{ArchivedVec, VecResolver},
    Archive, Place, Serialize,
};

use crate::codec::{ArchiveWriter, RowFn};

/// Largest [`Fill`]: rkyv's default format has 32-bit relative pointers
/// (signed), so an archive stays below 2 GiB; a ring's largest message is
/// smaller anyway.
pub const MAX_FILL: usize = (i32::MAX as usize) / 2;

/// Where a row handed to a fill closure belongs.
///
/// # Examples
///
/// ```
/// let row = shmbus::Row { fill: 0, index: 3 };
/// assert_eq!(row.index, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    /// Which [`Fill`] field of the message: 0 for the first one the
    /// message serializes (fields in declaration order), 1 for the next.
    pub fill: usize,
    /// The row's index in that field, from 0.
    pub index: usize,
}

/// A byte field whose contents are written in place, in the ring, by the
/// closure given to [`Publisher::send_filled`](crate::Publisher::send_filled):
/// the writer-side stand-in for a `Vec<u8>` field.
///
/// `Fill` archives as an [`ArchivedVec<u8>`]. Declare a writer-side twin of
/// the message type `X` with `#[rkyv(as = ArchivedX)]` and `Fill` where `X`
/// has `Vec<u8>`: the compiler checks that both archive to one type, and
/// the ring's type name and fingerprint are `X`'s.
///
/// The closure is called once per row, in order, each time the message is
/// written into the ring; every row is zeroed just before, so the closure
/// may write only part of it. A `Fill` sent without a closure
/// ([`Publisher::send`](crate::Publisher::send) of the twin type itself)
/// is all zeros. If `rows * row_len` overflows or exceeds [`MAX_FILL`],
/// sending fails with [`Error::Serialize`](crate::Error::Serialize) (past
/// the ring's largest message: [`Error::TooLarge`](crate::Error::TooLarge))
/// and the closure is not called.
///
/// # Examples
///
/// A camera driver writing an 8 MiB frame row by row, straight into the
/// ring, read by an ordinary checked subscriber of `Image`:
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use shmbus::{Bus, Fill};
/// use std::time::Duration;
///
/// /// The message, as subscribers see it.
/// #[derive(Archive, Serialize)]
/// struct Image { width: u32, height: u32, encoding: String, data: Vec<u8> }
///
/// /// The publisher's twin of `Image`: `data` is written in place.
/// #[derive(Archive, Serialize)]
/// #[rkyv(as = ArchivedImage)]
/// struct ImageOut { width: u32, height: u32, encoding: String, data: Fill }
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-fill-{}", std::process::id()));
/// let bus = Bus::builder().root(&root).capacity(32 << 20).max_message(12 << 20).build()?;
/// let mut subscriber = bus.subscriber::<Image>("camera")?;
/// let mut publisher = bus.publisher::<Image>("camera")?;
///
/// let (width, height) = (2048u32, 1024u32); // RGBA: 8 MiB
/// let row_len = width as usize * 4;
/// let frame = ImageOut {
///     width,
///     height,
///     encoding: "rgba8".into(),
///     data: Fill::rows(height as usize, row_len),
/// };
/// publisher.send_filled(&frame, |row, bytes| {
///     // The driver writes row `row.index` here (a pattern stands in).
///     for (x, px) in bytes.chunks_exact_mut(4).enumerate() {
///         px.copy_from_slice(&[row.index as u8, x as u8, 0, 255]);
///     }
/// })?;
///
/// let image = subscriber.recv_timeout(Duration::from_secs(5))?; // checked
/// assert_eq!((image.width.to_native(), image.height.to_native()), (2048, 1024));
/// assert_eq!(image.data.len(), 8 << 20);
/// assert_eq!(&image.data[row_len * 3..][..4], &[3, 0, 0, 255]);
/// # drop(image); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), shmbus::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    rows: usize,
    row_len: usize,
    /// `rows * row_len`, if it does not overflow.
    len: Option<usize>,
}

impl Fill {
    /// `rows` rows of `row_len` bytes each.
    ///
    /// # Examples
    ///
    /// ```
    /// let fill = shmbus::Fill::rows(480, 640 * 3);
    /// assert_eq!(fill.len(), 480 * 640 * 3);
    /// ```
    pub fn rows(rows: usize, row_len: usize) -> Self {
        Self {
            rows,
            row_len,
            len: rows.checked_mul(row_len),
        }
    }

    /// `len` bytes in one row. The whole row is zeroed before the closure
    /// sees it, a pass over memory that [`Self::rows`] avoids (it zeroes
    /// each row while it is in cache): prefer rows for large payloads.
    ///
    /// # Examples
    ///
    /// ```
    /// let fill = shmbus::Fill::bytes(4096);
    /// assert_eq!(fill.len(), 4096);
    /// ```
    pub fn bytes(len: usize) -> Self {
        Self::rows(1, len)
    }

    /// Bytes the field holds (`rows * row_len`, saturating).
    pub fn len(&self) -> usize {
        self.len.unwrap_or(usize::MAX)
    }

    /// True if the field holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// Zeroes each row of `buf` (exactly `self.len()` bytes) and hands it
    /// to `write`, if any, as rows of field number `fill`.
    pub(crate) fn run(
        &self,
        fill: usize,
        buf: &mut [MaybeUninit<u8>],
        write: Option<&mut RowFn<'_>>,
    ) {
        let row_len = self.row_len;
        if write.is_none() || row_len == 0 {
            // SAFETY: `buf` is writable (the caller's exclusive buffer);
            // zeroes are valid bytes.
            unsafe { std::ptr::write_bytes(buf.as_mut_ptr(), 0, buf.len()) };
        }
        let Some(write) = write else {
            return;
        };
        for index in 0..self.rows {
            let start = index * row_len;
            let row = &mut buf[start..start + row_len];
            // SAFETY: `row` is `row_len` writable bytes (a subslice of the
            // caller's exclusive buffer); writing zeroes initializes them.
            unsafe { std::ptr::write_bytes(row.as_mut_ptr(), 0, row_len) };
            // SAFETY: every byte of `row` was initialized just above, and
            // `MaybeUninit<u8>` has the layout of `u8`; the `&mut` borrow of
            // `row` is handed on, so nothing else aliases it.
            let row = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), row_len) };
            write(Row { fill, index }, row);
        }
    }
}

impl Archive for Fill {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<ArchivedVec<u8>>) {
        // Only reached after `serialize` succeeded: the length fits.
        ArchivedVec::<u8>::resolve_from_len(self.len(), resolver, out);
    }
}

/// Why a [`Fill`] could not be archived.
#[derive(Debug)]
struct FillTooLarge {
    rows: usize,
    row_len: usize,
}

impl fmt::Display for FillTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a Fill of {} rows of {} bytes is larger than an archive can address \
             (shmbus::MAX_FILL = {MAX_FILL} bytes)",
            self.rows, self.row_len
        )
    }
}

impl std::error::Error for FillTooLarge {}

impl<'w, A, E> Serialize<Strategy<Serializer<ArchiveWriter<'w>, A, Share>, E>> for Fill
where
    E: Source,
{
    fn serialize(
        &self,
        serializer: &mut Strategy<Serializer<ArchiveWriter<'w>, A, Share>, E>,
    ) -> Result<VecResolver, E> {
        let too_large = || {
            E::new(FillTooLarge {
                rows: self.rows,
                row_len: self.row_len,
            })
        };
        // Rows of zero bytes still cost a call each: bound their number too.
        if self.len.is_none_or(|l| l > MAX_FILL) || self.rows > MAX_FILL {
            return Err(too_large());
        }
        // Too far into the archive for a 32-bit relative pointer: checked
        // before anything runs.
        if serializer.writer.pos() > MAX_FILL {
            return Err(too_large());
        }
        // `[u8]` needs no alignment: the bytes start where the archive is.
        Ok(VecResolver::from_pos(serializer.writer.fill(self)))
    }
}
