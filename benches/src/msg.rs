//! The message type of the typed shmbus rows, and how its archive is written
//! straight into a loaned ring buffer.
//!
//! [`Msg`] is an ordinary rkyv type: a sequence number and a byte payload.
//! Small messages go through [`shmbus::Publisher::send`], where rkyv
//! serializes the struct into the ring (copying the payload out of the
//! sender's `Vec`). Large messages are built in place: [`write_in_place`]
//! writes the payload pattern directly into the loan and then the archived
//! root with rkyv's own resolvers, producing exactly the bytes
//! `rkyv::to_bytes(&Msg { .. })` would (a unit test holds it to that), so the
//! payload is written once, where the subscriber reads it.

use std::mem::{align_of, size_of, MaybeUninit};

use anyhow::{bail, Result};
use rkyv::{
    place::Place,
    vec::{ArchivedVec, VecResolver},
    Archive, Serialize,
};

use crate::payload;

/// One message of the typed rows: the payload carries the pattern of
/// [`crate::payload`] for `seq`.
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Sequence number (equal to the payload's first word).
    pub seq: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Size of the archived root, which rkyv places at the end of the archive.
const ROOT: usize = size_of::<ArchivedMsg>();
/// Alignment of the archived root.
const ROOT_ALIGN: usize = align_of::<ArchivedMsg>();

/// Where the archived root starts in an archive with `payload_len` payload
/// bytes: rkyv writes the payload bytes first, then pads to the root's
/// alignment.
fn root_pos(payload_len: usize) -> usize {
    payload_len.next_multiple_of(ROOT_ALIGN)
}

/// Length of the archive of a [`Msg`] with `payload_len` payload bytes.
///
/// ```
/// use shmbus_benches::msg::{archived_len, Msg};
/// let m = Msg { seq: 1, payload: vec![0; 100] };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&m).unwrap();
/// assert_eq!(archived_len(100), bytes.len());
/// ```
pub fn archived_len(payload_len: usize) -> usize {
    root_pos(payload_len) + ROOT
}

/// Writes the archive of `Msg { seq, payload: <pattern for seq> }` with a
/// `payload_len` byte payload into the start of `buf` (a loaned, 16-byte
/// aligned ring buffer) and returns its length, [`archived_len`].
///
/// The payload is written once, in place; the root is resolved with rkyv's
/// resolvers exactly as its serializer would.
///
/// # Errors
///
/// If `buf` is shorter than the archive, or the payload is too large for
/// rkyv's 32-bit relative pointers.
pub fn write_in_place(seq: u64, payload_len: usize, buf: &mut [MaybeUninit<u8>]) -> Result<usize> {
    let len = archived_len(payload_len);
    if buf.len() < len {
        bail!(
            "a {len} byte archive does not fit a {} byte loan",
            buf.len()
        );
    }
    if u32::try_from(len).is_err() {
        bail!("a {payload_len} byte payload is too large for rkyv's 32-bit offsets");
    }
    let pos = root_pos(payload_len);
    payload::write_uninit(seq, &mut buf[..payload_len]);
    for b in &mut buf[payload_len..pos] {
        b.write(0);
    }

    // Resolve the root into a zeroed local, as rkyv's `resolve_aligned` does,
    // then copy it to its place at the end of the archive.
    let mut root = MaybeUninit::<ArchivedMsg>::zeroed();
    // SAFETY: `root` is a zeroed local: aligned, dereferenceable, and every
    // byte is initialized. `pos` is the position it will have in the archive,
    // which relative pointers are computed against.
    let out = unsafe { Place::new_unchecked(pos, root.as_mut_ptr()) };
    // SAFETY: `out.ptr()` is the root above; `addr_of_mut!` projects to its
    // fields without creating references, and nothing uninitialized is
    // written through these pointers.
    let (seq_ptr, payload_ptr) = unsafe {
        let p = out.ptr();
        (
            std::ptr::addr_of_mut!((*p).seq),
            std::ptr::addr_of_mut!((*p).payload),
        )
    };
    // SAFETY: both pointers point to fields of the place `out` (derived just
    // above), which is aligned and fully initialized (zeroed).
    let (seq_place, payload_place) = unsafe {
        (
            Place::from_field_unchecked(out, seq_ptr),
            Place::from_field_unchecked(out, payload_ptr),
        )
    };
    seq.resolve((), seq_place);
    // The payload starts at position 0 of the archive (written above).
    ArchivedVec::<u8>::resolve_from_len(payload_len, VecResolver::from_pos(0), payload_place);

    // SAFETY: every byte of `root` is initialized (zeroed, then resolved),
    // and `ArchivedMsg` is `ROOT` bytes.
    let root_bytes: &[u8; ROOT] = unsafe { &*root.as_ptr().cast::<[u8; ROOT]>() };
    for (d, s) in buf[pos..len].iter_mut().zip(root_bytes) {
        d.write(*s);
    }
    Ok(len)
}

/// Checks a received archived message: the whole payload against the
/// pattern, its length, and that the `seq` field matches the payload.
/// Returns the sequence number.
///
/// # Errors
///
/// On any mismatch.
#[inline]
pub fn check(m: &ArchivedMsg, payload_len: usize) -> Result<u64> {
    let seq = payload::check(m.payload.as_slice(), payload_len)?;
    let field = m.seq.to_native();
    if field != seq {
        bail!("message field seq {field} does not match its payload's {seq}");
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(16))]
    struct Aligned([MaybeUninit<u8>; 4096]);

    fn pattern(seq: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        payload::write(seq, &mut v);
        v
    }

    #[test]
    fn in_place_archive_equals_rkyv_output() {
        for len in [8, 9, 15, 16, 17, 64, 100, 1000, 1024, 3000] {
            let seq = 0x0123_4567_89ab_cdef + len as u64;
            let expect = rkyv::to_bytes::<rkyv::rancor::Error>(&Msg {
                seq,
                payload: pattern(seq, len),
            })
            .unwrap();
            let mut buf = Aligned([MaybeUninit::uninit(); 4096]);
            let n = write_in_place(seq, len, &mut buf.0).unwrap();
            assert_eq!(n, expect.len(), "length for {len}");
            // SAFETY: `write_in_place` initialized the first `n` bytes.
            let got = unsafe { std::slice::from_raw_parts(buf.0.as_ptr().cast::<u8>(), n) };
            assert_eq!(got, &expect[..], "bytes for {len}");
            let archived = rkyv::access::<ArchivedMsg, rkyv::rancor::Error>(got).unwrap();
            assert_eq!(check(archived, len).unwrap(), seq);
        }
    }

    #[test]
    fn short_buffer_is_an_error() {
        let mut buf = Aligned([MaybeUninit::uninit(); 4096]);
        assert!(write_in_place(1, 4096, &mut buf.0).is_err());
        assert!(write_in_place(1, 64, &mut buf.0[..archived_len(64) - 1]).is_err());
    }

    #[test]
    fn check_rejects_mismatched_seq() {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&Msg {
            seq: 5,
            payload: pattern(6, 64),
        })
        .unwrap();
        let archived = rkyv::access::<ArchivedMsg, rkyv::rancor::Error>(&bytes).unwrap();
        assert!(check(archived, 64).is_err());
        assert!(check(archived, 32).is_err());
    }
}
