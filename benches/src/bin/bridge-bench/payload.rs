//! Message contents: the sequence number in the first 8 bytes (little
//! endian, when the message is that long) and a byte derived from it at the
//! end, so the subscriber checks order, loss, duplicates and torn tails by
//! reading 9 bytes per message.

/// The check byte stored last in message `seq`.
pub(crate) fn tail_byte(seq: u64) -> u8 {
    (seq.wrapping_mul(31) >> 3) as u8 ^ 0x5a
}

/// Writes a full message: a fill pattern plus the stamp.
pub(crate) fn fill(msg: &mut [u8], seq: u64) {
    for (i, b) in msg.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7);
    }
    stamp(msg, seq);
}

/// Writes the sequence number and the check byte.
pub(crate) fn stamp(msg: &mut [u8], seq: u64) {
    let bytes = seq.to_le_bytes();
    let n = msg.len().min(8);
    msg[..n].copy_from_slice(&bytes[..n]);
    if let Some(last) = msg.last_mut() {
        *last = tail_byte(seq);
    }
}

/// Whether `msg` carries the stamp of message `expect` (only its low bytes
/// for messages shorter than 8 bytes) and the matching check byte.
pub(crate) fn check(msg: &[u8], expect: u64) -> bool {
    let mut bytes = [0u8; 8];
    let n = msg.len().min(8);
    bytes[..n].copy_from_slice(&msg[..n]);
    let mut want = expect.to_le_bytes();
    want[n..].fill(0);
    bytes == want && msg.last() == Some(&tail_byte(expect))
}
