//! Fuzz target: the bridge's `FrameReader` over a sealed byte stream split
//! into reads at fuzzer-chosen points, optionally with one byte flipped.
//!
//! Input layout: `mode u8` (bit 0: encrypt instead of auth, bit 1: flip
//! one byte, bit 2: skip DATA payloads instead of reading them, bit 3: a
//! receive timeout after every read), `flip_at u16`, `flip_mask u8`,
//! `cuts u8` (0..=7 read sizes follow), `cuts` × `read size u16`, then the
//! plaintext stream. The stream is cut into frames with the reference
//! decoder (`wire_ref`, from `docs/bridge-protocol.md`): every complete frame
//! with a valid header (DATA: a valid prefix) is sealed with a fixed key as
//! a bridge would seal it; what is left is appended as it is.
//!
//! Properties:
//!
//! - Without a flipped byte, the reader hands out exactly the sealed frames,
//!   in order, byte for byte (DATA: header, then the payload, decrypted in
//!   `encrypt` mode), whatever the read sizes; then the unsealed rest ends
//!   the stream with the error the spec predicts (a header refusal, a failed
//!   tag, or end of stream), never a frame.
//! - With a flipped byte, every frame handed out before the flipped one is
//!   intact, and from the flipped frame on nothing is handed out as
//!   authentic: a control frame is never returned, a DATA payload never
//!   verifies.

use std::{
    io::{self, Read},
    sync::atomic::AtomicBool,
    time::Duration,
};

use shmbus_bridge::{
    io::frame_reader::{FrameReader, ReadError},
    proto::{
        frame::{decode, Decoded, Frame, FrameError},
        seal::{Direction, Protection},
    },
};
use shmbus_fuzz::wire_ref::{self, RefDecoded, Refusal, DATA_PREFIX_LEN, HEADER_LEN, TAG_LEN};

const KEY: [u8; 32] = [0x5a; 32];

/// One frame as sealed: its plaintext (prefix, and DATA payload) and where
/// its bytes lie on the wire.
struct Sealed {
    prefix: Vec<u8>,
    payload: Option<Vec<u8>>,
    wire: std::ops::Range<usize>,
}

/// A source that returns the wire in reads of the given sizes (cycled),
/// optionally with a receive timeout after each.
struct Script {
    wire: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next_size: usize,
    timeouts: bool,
    timeout_due: bool,
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.timeout_due {
            self.timeout_due = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let size = self.sizes[self.next_size % self.sizes.len()];
        self.next_size += 1;
        let n = size.min(buf.len()).min(self.wire.len() - self.pos);
        buf[..n].copy_from_slice(&self.wire[self.pos..self.pos + n]);
        self.pos += n;
        self.timeout_due = self.timeouts && n > 0;
        Ok(n)
    }
}

/// Splits the plaintext into frames and seals them; returns the frames and
/// the wire (sealed frames, then the unsealed rest).
fn seal_stream(plain: &[u8], protection: Protection) -> (Vec<Sealed>, Vec<u8>, usize) {
    let mut send = Direction::new(KEY, protection);
    let (mut frames, mut wire, mut at) = (Vec::new(), Vec::new(), 0usize);
    while let Some(h) = plain.get(at..at + HEADER_LEN) {
        let Ok(header) = wire_ref::parse_header(h.try_into().expect("8 bytes")) else {
            break;
        };
        let total = header.wire_len() as usize;
        let Some(bytes) = plain.get(at..at + total) else {
            break;
        };
        let start = wire.len();
        if header.code == 6 {
            // DATA only when its prefix is valid (so the whole frame is at
            // least the prefix): the caller learns the payload length from it.
            let Ok(RefDecoded::Frame { .. }) =
                wire_ref::decode(&bytes[..DATA_PREFIX_LEN.min(total)])
            else {
                break;
            };
            let (prefix, payload) = bytes.split_at(DATA_PREFIX_LEN);
            let mut seal = send.begin().expect("counter");
            seal.aad(prefix);
            let mut body = payload.to_vec();
            match protection {
                Protection::Auth => seal.aad(&body),
                Protection::Encrypt => seal.encrypt(&mut body),
            }
            wire.extend_from_slice(prefix);
            wire.extend_from_slice(&body);
            wire.extend_from_slice(&seal.tag());
            frames.push(Sealed {
                prefix: prefix.to_vec(),
                payload: Some(payload.to_vec()),
                wire: start..wire.len(),
            });
        } else {
            wire.extend_from_slice(bytes);
            send.seal_control(&mut wire, start).expect("counter");
            frames.push(Sealed {
                prefix: bytes.to_vec(),
                payload: None,
                wire: start..wire.len(),
            });
        }
        at += total;
    }
    let rest_at = wire.len();
    wire.extend_from_slice(&plain[at..]);
    (frames, wire, rest_at)
}

/// A header refusal in the reference's terms.
fn header_refusal(e: &FrameError) -> Option<Refusal> {
    Some(match e {
        FrameError::BadMagic { .. } => Refusal::BadMagic,
        FrameError::UnknownType { .. } => Refusal::UnknownType,
        FrameError::ReservedFlags { .. } => Refusal::ReservedFlags,
        FrameError::BodyTooLarge { .. } => Refusal::BodyTooLarge,
        _ => return None,
    })
}

/// What reading the unsealed rest must end with.
fn check_rest_error(rest: &[u8], err: &ReadError, counter: u64) {
    let Some(h) = rest.get(..HEADER_LEN) else {
        assert!(matches!(err, ReadError::Eof), "short rest: {err:?}");
        return;
    };
    match wire_ref::parse_header(h.try_into().expect("8 bytes")) {
        Err(want) => match err {
            ReadError::Frame(e) => assert_eq!(header_refusal(e), Some(want), "{e:?}"),
            other => panic!("header refused by the spec ({want:?}), reader said {other:?}"),
        },
        Ok(header) if header.code == 6 => {
            assert!(
                matches!(err, ReadError::Eof | ReadError::Auth(_)),
                "{err:?}"
            )
        }
        Ok(header) => {
            if rest.len() >= header.prefix_len() + TAG_LEN {
                assert!(
                    matches!(err, ReadError::Auth(shmbus_bridge::proto::seal::SealError::BadTag { counter: c }) if *c == counter),
                    "unsealed control frame: {err:?}"
                );
            } else {
                assert!(matches!(err, ReadError::Eof), "{err:?}");
            }
        }
    }
}

fn run(data: &[u8]) {
    let [mode, f0, f1, mask, ncuts, rest @ ..] = data else {
        return;
    };
    let ncuts = usize::from(ncuts % 8);
    let Some((cuts, plain)) = rest.split_at_checked(ncuts * 2) else {
        return;
    };
    let protection = if mode & 1 == 1 {
        Protection::Encrypt
    } else {
        Protection::Auth
    };
    let mut sizes: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])).max(1))
        .collect();
    if sizes.is_empty() {
        sizes.push(usize::MAX);
    }
    let (frames, mut wire, rest_at) = seal_stream(plain, protection);
    let flip = (mode & 2 != 0 && *mask != 0 && !wire.is_empty())
        .then(|| usize::from(u16::from_le_bytes([*f0, *f1])) % wire.len());
    if let Some(at) = flip {
        wire[at] ^= mask;
    }
    // The first frame the flip can affect (frames.len(): the unsealed rest).
    let flipped_frame = flip.map(|at| {
        frames
            .iter()
            .position(|f| f.wire.contains(&at))
            .unwrap_or(frames.len())
    });
    let wire_len = wire.len() as u64;
    let mut src = Script {
        wire,
        pos: 0,
        sizes,
        next_size: 0,
        timeouts: mode & 8 != 0,
        timeout_due: false,
    };
    let stop = AtomicBool::new(false);
    let mut reader = FrameReader::new(Duration::from_secs(3600), Direction::new(KEY, protection));
    let rest_plain = src.wire[rest_at..].to_vec();
    let mut index = 0usize;
    loop {
        // A sealed frame before any flipped byte: it must come out intact.
        let intact = index < frames.len() && flipped_frame.is_none_or(|f| index < f);
        let result = match reader.next_frame(&mut src, &stop) {
            Ok(None) => continue,
            Ok(Some(bytes)) => Ok(bytes.to_vec()),
            Err(e) => Err(e),
        };
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                assert!(!intact, "intact frame {index} refused: {e:?}");
                if flipped_frame.is_none() {
                    check_rest_error(&rest_plain, &e, index as u64);
                }
                return;
            }
        };
        let expected = frames.get(index);
        let is_data = bytes.len() >= 3 && bytes[2] == 6;
        if !is_data {
            // Control frames are handed out only once authentic.
            assert!(
                intact,
                "frame {index} handed out unsealed or after a flipped byte"
            );
            let f = expected.expect("intact implies sealed");
            assert_eq!(bytes, f.prefix, "control frame {index} differs");
            index += 1;
            continue;
        }
        // DATA: the header comes before its tag is checked.
        let len = match decode(&bytes) {
            Ok(Decoded::Frame {
                frame: Frame::Data(d),
                ..
            }) => u64::from(d.len),
            other => {
                assert!(!intact, "sealed DATA prefix does not decode: {other:?}");
                return;
            }
        };
        if let (true, Some(f)) = (intact, expected) {
            assert_eq!(bytes, f.prefix, "DATA header {index} differs");
        }
        let outcome = if mode & 4 != 0 || len > wire_len {
            reader.skip_payload(&mut src, len, &stop).map(|()| None)
        } else {
            // Two destination pieces, split where the fuzzer's first cut says.
            let mut a = vec![0u8; (len as usize).min(src.sizes[0] % 4096)];
            let mut b = vec![0u8; len as usize - a.len()];
            reader
                .read_payload(&mut src, &mut [&mut a, &mut b], &stop)
                .map(|()| Some([a, b].concat()))
        };
        match outcome {
            Ok(payload) => {
                assert!(
                    intact,
                    "DATA frame {index} verified unsealed or after a flipped byte"
                );
                let f = expected.expect("intact implies sealed");
                if let Some(p) = payload {
                    assert_eq!(Some(p), f.payload, "DATA payload {index} differs");
                }
                index += 1;
            }
            Err(e) => {
                assert!(!intact, "intact DATA {index} refused: {e:?}");
                if flipped_frame.is_none() {
                    assert!(matches!(e, ReadError::Eof), "unsealed DATA: {e:?}");
                }
                return;
            }
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        run(data);
    });
}
