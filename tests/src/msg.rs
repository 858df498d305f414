//! The test message and its verification.
//!
//! Every byte of a [`TestMsg`] is a function of `(publisher, seq)` and the
//! payload length, so a receiver can check a message without knowing anything
//! else: the payload is a splitmix64 stream seeded by the pair, and the
//! checksum (FNV-1a) covers publisher, sequence and payload. A torn, stale or
//! bit-flipped message fails [`verify`].

use rkyv::{Archive, Deserialize, Serialize};

/// The message the integration tests publish.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TestMsg {
    /// The publisher's numeric id (`--id`).
    pub publisher: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
    /// Bytes derived from `(publisher, seq)`.
    pub payload: Vec<u8>,
    /// FNV-1a over publisher, seq and payload.
    pub checksum: u64,
}

/// Another type, for type-mismatch tests.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OtherMsg {
    /// Anything.
    pub value: u64,
    /// Anything.
    pub label: String,
}

/// How long payloads are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// Every payload has this many bytes.
    Fixed(usize),
    /// Each payload has a length in `0..=n`, derived from `(publisher, seq)`.
    UpTo(usize),
}

impl SizeSpec {
    /// The payload length of message `seq` of `publisher`.
    pub fn len(self, publisher: u32, seq: u64) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::UpTo(0) => 0,
            Self::UpTo(n) => {
                let mut s = seed(publisher, seq) ^ 0x5bd1_e995_0000_0000;
                (splitmix(&mut s) % (n as u64 + 1)) as usize
            }
        }
    }
}

fn seed(publisher: u32, seq: u64) -> u64 {
    (u64::from(publisher) << 40) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Calls `f` with the expected payload of `(publisher, seq)` in chunks of at
/// most 8 bytes, `len` bytes in all.
fn payload_chunks(publisher: u32, seq: u64, len: usize, mut f: impl FnMut(&[u8])) {
    let mut state = seed(publisher, seq);
    let mut left = len;
    while left > 0 {
        let word = splitmix(&mut state).to_le_bytes();
        let n = left.min(8);
        f(&word[..n]);
        left -= n;
    }
}

/// The payload of message `seq` of `publisher`, `len` bytes long.
pub fn payload(publisher: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    payload_chunks(publisher, seq, len, |c| out.extend_from_slice(c));
    out
}

/// FNV-1a over publisher, seq and payload.
pub fn checksum(publisher: u32, seq: u64, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&publisher.to_le_bytes());
    eat(&seq.to_le_bytes());
    eat(payload);
    h
}

impl TestMsg {
    /// Message `seq` of `publisher`, with a payload of `len` bytes.
    pub fn new(publisher: u32, seq: u64, len: usize) -> Self {
        let payload = payload(publisher, seq, len);
        let checksum = checksum(publisher, seq, &payload);
        Self {
            publisher,
            seq,
            payload,
            checksum,
        }
    }
}

/// Checks an archived message: payload bytes and checksum must be the ones
/// derived from its publisher and sequence. Returns `(publisher, seq)`.
///
/// # Errors
///
/// A description of the first mismatch.
pub fn verify(m: &ArchivedTestMsg) -> Result<(u32, u64), String> {
    let publisher = m.publisher.to_native();
    let seq = m.seq.to_native();
    let got = m.payload.as_slice();
    let mut at = 0usize;
    let mut bad = None;
    payload_chunks(publisher, seq, got.len(), |chunk| {
        if bad.is_none() && got[at..at + chunk.len()] != *chunk {
            let i = (0..chunk.len())
                .find(|&i| got[at + i] != chunk[i])
                .unwrap_or(0);
            bad = Some(at + i);
        }
        at += chunk.len();
    });
    if let Some(i) = bad {
        return Err(format!(
            "publisher {publisher} seq {seq}: payload byte {i} of {} is wrong",
            got.len()
        ));
    }
    let want = checksum(publisher, seq, got);
    let found = m.checksum.to_native();
    if found != want {
        return Err(format!(
            "publisher {publisher} seq {seq}: checksum {found:#x}, expected {want:#x}"
        ));
    }
    Ok((publisher, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(m: &TestMsg) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(m).unwrap()
    }

    #[test]
    fn round_trip_verifies() {
        for len in [0, 1, 7, 8, 9, 300] {
            let bytes = archive(&TestMsg::new(3, 41, len));
            let a = rkyv::access::<ArchivedTestMsg, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(verify(a), Ok((3, 41)));
        }
    }

    #[test]
    fn any_flipped_payload_or_checksum_bit_is_caught() {
        let mut m = TestMsg::new(1, 2, 40);
        m.payload[17] ^= 0x10;
        let bytes = archive(&m);
        let a = rkyv::access::<ArchivedTestMsg, rkyv::rancor::Error>(&bytes).unwrap();
        assert!(verify(a).unwrap_err().contains("byte 17"));

        let mut m = TestMsg::new(1, 2, 40);
        m.checksum ^= 1;
        let bytes = archive(&m);
        let a = rkyv::access::<ArchivedTestMsg, rkyv::rancor::Error>(&bytes).unwrap();
        assert!(verify(a).unwrap_err().contains("checksum"));

        // Truncation keeps a valid prefix but breaks the checksum.
        let mut m = TestMsg::new(1, 2, 40);
        m.payload.truncate(30);
        let bytes = archive(&m);
        let a = rkyv::access::<ArchivedTestMsg, rkyv::rancor::Error>(&bytes).unwrap();
        assert!(verify(a).is_err());
    }

    #[test]
    fn sizes_are_deterministic_and_bounded() {
        let spec = SizeSpec::UpTo(100);
        let lens: Vec<usize> = (0..1000).map(|s| spec.len(2, s)).collect();
        assert!(lens.iter().all(|&l| l <= 100));
        assert!(lens.iter().any(|&l| l < 10) && lens.iter().any(|&l| l > 90));
        assert_eq!(lens[5], spec.len(2, 5));
        assert_eq!(SizeSpec::Fixed(9).len(1, 1), 9);
    }
}
