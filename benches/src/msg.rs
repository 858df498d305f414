//! The message type of the typed shmbus rows, and how big ones are written
//! in place.
//!
//! [`Msg`] is an ordinary rkyv type: a sequence number and a byte payload.
//! Small messages go through [`shmbus::Publisher::send`], where rkyv
//! serializes the struct into the ring (copying the payload out of the
//! sender's `Vec`). Large messages are written in place with the client's
//! safe API, [`shmbus::Publisher::send_filled`]: [`MsgOut`] is `Msg`'s
//! writer-side twin with a [`Fill`] payload, and [`send_in_place`] writes the
//! payload pattern row by row straight into the ring, where the subscriber
//! reads it as an ordinary `ArchivedMsg`.

use std::mem::{align_of, size_of};

use anyhow::{bail, Context, Result};
use rkyv::{Archive, Serialize};
use shmbus::{Fill, Publisher};

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

/// [`Msg`]'s writer-side twin: the same archive, its payload a [`Fill`]
/// written in place by [`send_in_place`].
#[derive(Archive, Serialize, Debug)]
#[rkyv(as = ArchivedMsg)]
pub struct MsgOut {
    /// Sequence number (equal to the payload's first word).
    pub seq: u64,
    /// The payload, filled in place.
    pub payload: Fill,
}

/// Rows of an in-place payload: 4 KiB (a page; each row is zeroed and then
/// written while it is in cache), or the whole payload if it is not a
/// multiple of that.
const ROW: usize = 4096;

/// Sends `Msg { seq, payload: <pattern for seq> }` with a `payload_len` byte
/// payload, written row by row straight into the ring by
/// [`Publisher::send_filled`] (no `Vec`, no `unsafe`).
///
/// # Errors
///
/// As `send_filled`.
pub fn send_in_place(publisher: &mut Publisher<Msg>, seq: u64, payload_len: usize) -> Result<()> {
    let row_len = if payload_len.is_multiple_of(ROW) {
        ROW
    } else {
        payload_len
    };
    let rows = payload_len / row_len.max(1);
    let out = MsgOut {
        seq,
        payload: Fill::rows(rows, row_len),
    };
    publisher
        .send_filled(&out, |row, bytes| {
            payload::write_from(seq, row.index * row_len / 8, bytes);
        })
        .context("shmbus send_filled failed")
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

    fn pattern(seq: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        payload::write(seq, &mut v);
        v
    }

    /// `send_in_place` delivers the message `rkyv::to_bytes(&Msg { .. })` holds (length, payload, seq):
    /// whole rows and a payload that is one odd-sized row.
    #[test]
    fn in_place_message_equals_rkyv_output() {
        let root = std::env::temp_dir().join(format!("shmbus-bench-msg-{}", std::process::id()));
        let bus = shmbus::Bus::builder()
            .root(&root)
            .capacity(1 << 20)
            .max_message(64 << 10)
            .build()
            .unwrap();
        let mut sub = bus.subscriber::<Msg>("m").unwrap();
        let mut publisher = bus.publisher::<Msg>("m").unwrap();
        for len in [8, 100, 3000, 4096, 3 * 4096] {
            let seq = 0x0123_4567_89ab_cdef + len as u64;
            send_in_place(&mut publisher, seq, len).unwrap();
            let expect = rkyv::to_bytes::<rkyv::rancor::Error>(&Msg {
                seq,
                payload: pattern(seq, len),
            })
            .unwrap();
            assert_eq!(archived_len(len), expect.len(), "length for {len}");
            let got = sub.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
            assert_eq!(got.payload.as_slice(), &expect[..len], "payload for {len}");
            assert_eq!(check(&got, len).unwrap(), seq);
        }
        drop((sub, publisher));
        std::fs::remove_dir_all(&root).ok();
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
