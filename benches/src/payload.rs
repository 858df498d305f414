//! The payload pattern every system carries, written in full by the sender and
//! read and checked in full by the receiver.
//!
//! Word `i` (8 bytes, little-endian) of a message with sequence number `seq`
//! is `seq + i` (wrapping); a trailing partial word, if any, holds the low bytes
//! of the next value. The first word is therefore the sequence number itself.
//! Checking compares every word, so the receiver touches every byte and a
//! torn, stale or misplaced message is detected.

use std::mem::MaybeUninit;

use anyhow::{bail, Result};

/// Sequence number of the message that tells a receiver the stream is over.
pub const END: u64 = u64::MAX;

/// Smallest payload the pattern supports (it must hold the sequence number).
pub const MIN_LEN: usize = 8;

#[inline(always)]
fn word(seq: u64, i: usize) -> [u8; 8] {
    seq.wrapping_add(i as u64).to_le_bytes()
}

/// Writes the pattern for `seq` into every byte of `dst` (already initialized
/// memory, e.g. a socket staging buffer).
///
/// ```
/// let mut buf = vec![0u8; 64];
/// shmbus_benches::payload::write(7, &mut buf);
/// assert_eq!(shmbus_benches::payload::check(&buf, 64).unwrap(), 7);
/// ```
#[inline]
pub fn write(seq: u64, dst: &mut [u8]) {
    write_from(seq, 0, dst);
}

/// Writes the pattern for `seq` into `dst` as if `dst` started at word
/// `first_word` of the payload (a row of a payload written in pieces).
///
/// ```
/// let mut whole = vec![0u8; 64];
/// shmbus_benches::payload::write(7, &mut whole);
/// let mut rows = vec![0u8; 64];
/// let (a, b) = rows.split_at_mut(32);
/// shmbus_benches::payload::write_from(7, 0, a);
/// shmbus_benches::payload::write_from(7, 4, b);
/// assert_eq!(whole, rows);
/// ```
#[inline]
pub fn write_from(seq: u64, first_word: usize, dst: &mut [u8]) {
    let mut chunks = dst.chunks_exact_mut(8);
    let mut i = first_word;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(seq, i));
        i += 1;
    }
    let tail = chunks.into_remainder();
    let last = word(seq, i);
    tail.copy_from_slice(&last[..tail.len()]);
}

/// Writes the pattern for `seq` into every byte of possibly uninitialized
/// memory (a loaned shared-memory buffer) and returns it as initialized bytes.
#[inline]
pub fn write_uninit(seq: u64, dst: &mut [MaybeUninit<u8>]) -> &mut [u8] {
    let len = dst.len();
    let mut chunks = dst.chunks_exact_mut(8);
    let mut i = 0;
    for chunk in &mut chunks {
        for (d, s) in chunk.iter_mut().zip(word(seq, i)) {
            d.write(s);
        }
        i += 1;
    }
    let tail = chunks.into_remainder();
    for (d, s) in tail.iter_mut().zip(word(seq, i)) {
        d.write(s);
    }
    // SAFETY: the loops above wrote every element of `dst` (all full chunks and
    // the remainder), so all `len` bytes are initialized; MaybeUninit<u8> has
    // the same layout as u8, and the returned borrow replaces `dst`'s.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), len) }
}

/// Reads every byte of a received payload, checks it against the pattern and
/// returns its sequence number.
///
/// Fails if the length is not `expected_len` or any byte is wrong.
#[inline]
pub fn check(src: &[u8], expected_len: usize) -> Result<u64> {
    if src.len() != expected_len || src.len() < MIN_LEN {
        bail!(
            "received a {} byte payload, expected {expected_len} (and at least {MIN_LEN})",
            src.len()
        );
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&src[..8]);
    let seq = u64::from_le_bytes(first);
    let mut diff = 0u64;
    let mut chunks = src.chunks_exact(8);
    let mut i = 0;
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        diff |= u64::from_le_bytes(w) ^ seq.wrapping_add(i as u64);
        i += 1;
    }
    let tail = chunks.remainder();
    let last = word(seq, i);
    for (got, want) in tail.iter().zip(last) {
        diff |= u64::from(got ^ want);
    }
    if diff != 0 {
        bail!("payload of message {seq} is corrupted (pattern mismatch)");
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_sizes() {
        for len in [8, 9, 15, 16, 64, 100, 1024, 65536] {
            let mut buf = vec![0u8; len];
            write(42, &mut buf);
            assert_eq!(check(&buf, len).unwrap(), 42);
            let mut un = vec![MaybeUninit::<u8>::uninit(); len];
            let init = write_uninit(u64::MAX - 3, &mut un);
            assert_eq!(check(init, len).unwrap(), u64::MAX - 3);
        }
    }

    #[test]
    fn detects_corruption_and_bad_length() {
        let mut buf = vec![0u8; 1024];
        write(5, &mut buf);
        buf[1000] ^= 1;
        assert!(check(&buf, 1024).is_err());
        write(5, &mut buf);
        assert!(check(&buf, 512).is_err());
        assert!(check(&buf[..4], 4).is_err());
    }
}
