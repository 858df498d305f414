//! A reference decoder for bridge wire frames, written from
//! `docs/bridge-protocol.md` alone (it does not call `shmbus_bridge`).
//!
//! It is deliberately plain: owned values, one function per step of the
//! spec's decoding procedure, no cleverness, so that a disagreement with the
//! bridge's decoder points at one of the two, and the spec says which.

/// Length of a frame header.
pub const HEADER_LEN: usize = 8;
/// Length of a DATA frame's prefix (header plus fixed fields).
pub const DATA_PREFIX_LEN: usize = 24;
/// Length of a tag after each frame, once the handshake is done.
pub const TAG_LEN: usize = 16;

const MAX_DATA_PAYLOAD: u64 = 16 << 20;

/// A decoded frame, every field as the spec lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefFrame {
    /// Code 1.
    Hello {
        /// `hello_magic`.
        magic: u64,
        /// `protocol_version`.
        version: u16,
        /// `layout_version`.
        layout: u32,
        /// `nonce`.
        nonce: [u8; 32],
        /// `peer_name`.
        name: String,
    },
    /// Code 4.
    Announce {
        /// `stream`.
        stream: u32,
        /// `type_fingerprint`.
        fingerprint: u64,
        /// `ring_capacity`.
        capacity: u64,
        /// `max_message`.
        max_message: u64,
        /// `flags`.
        flags: u32,
        /// `topic`.
        topic: String,
        /// `publisher`.
        publisher: String,
        /// `type_name`.
        type_name: String,
    },
    /// Code 5.
    Subscribe {
        /// `stream`.
        stream: u32,
        /// `resume_position`.
        resume: u64,
        /// `window`.
        window: u64,
    },
    /// Code 6 (the prefix only).
    Data {
        /// `stream`.
        stream: u32,
        /// `start_position`.
        start: u64,
        /// `len`.
        len: u32,
    },
    /// Code 7.
    Ack {
        /// `stream`.
        stream: u32,
        /// `position`.
        position: u64,
    },
    /// Code 8.
    Gap {
        /// `stream`.
        stream: u32,
        /// `from`.
        from: u64,
        /// `to`.
        to: u64,
        /// `next_seq`.
        next_seq: u64,
    },
    /// Code 9: (stream, tail) entries.
    Heartbeat(Vec<(u32, u64)>),
    /// Code 10.
    Error {
        /// `code`.
        code: u16,
        /// `message`.
        message: String,
    },
    /// Code 11.
    End {
        /// `stream`.
        stream: u32,
        /// `position`.
        position: u64,
    },
    /// Code 12.
    Noise(Vec<u8>),
    /// Code 13.
    Credit {
        /// `stream`.
        stream: u32,
        /// `limit`.
        limit: u64,
    },
}

/// The refusals of the spec's table, one per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Magic is not `"SB"`.
    BadMagic,
    /// Unknown type code.
    UnknownType,
    /// Flags byte not 0.
    ReservedFlags,
    /// Body length above the type's maximum.
    BodyTooLarge,
    /// A field does not fit in the body.
    Truncated,
    /// Bytes left after the last field.
    Trailing,
    /// DATA body length is not 16 + `len`.
    DataLengthMismatch,
    /// NOISE with an empty body.
    EmptyNoise,
    /// `str16` count above its maximum.
    StringTooLong,
    /// `str16` count below its minimum.
    EmptyString,
    /// `str16` bytes are not UTF-8.
    InvalidUtf8,
    /// HEARTBEAT count above 1024.
    TooManyEntries,
    /// GAP with `from >= to`.
    InvalidGap,
    /// STREAM_ANNOUNCE capacity not a power of two, or max message outside 1..=capacity.
    InvalidRing,
    /// STREAM_ANNOUNCE flags outside bits 0 and 1.
    UnknownStreamFlags,
}

/// Outcome of [`decode`] that is not a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefDecoded {
    /// A frame occupying `consumed` bytes (DATA: its 24-byte prefix).
    Frame {
        /// The frame.
        frame: RefFrame,
        /// Bytes of the input it occupies.
        consumed: usize,
    },
    /// More bytes are needed: `needed` in total.
    Incomplete {
        /// Total bytes needed.
        needed: usize,
    },
}

/// A frame header that passed step 2 of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefHeader {
    /// The type code.
    pub code: u8,
    /// The body length.
    pub body_len: u32,
}

impl RefHeader {
    /// Bytes from the frame start that make up "the frame" (step 3).
    pub fn prefix_len(&self) -> usize {
        if self.code == 6 {
            DATA_PREFIX_LEN
        } else {
            HEADER_LEN + self.body_len as usize
        }
    }

    /// Bytes of the whole frame on the wire without its tag: the prefix,
    /// plus for DATA the payload its body length announces.
    pub fn wire_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

/// The maximum body length of a type code, `None` if the code is unknown.
pub fn max_body(code: u8) -> Option<u64> {
    Some(match code {
        1 => 303,
        4 => 1572,
        5 => 20,
        6 => 16 + MAX_DATA_PAYLOAD,
        7 | 11 | 13 => 12,
        8 => 28,
        9 => 2 + 1024 * 12,
        10 => 1028,
        12 => 256,
        _ => return None,
    })
}

/// Step 2: the header checks, in the spec's order.
///
/// # Errors
///
/// The first rule broken.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<RefHeader, Refusal> {
    if h[0] != b'S' || h[1] != b'B' {
        return Err(Refusal::BadMagic);
    }
    let max = max_body(h[2]).ok_or(Refusal::UnknownType)?;
    if h[3] != 0 {
        return Err(Refusal::ReservedFlags);
    }
    let body_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if u64::from(body_len) > max {
        return Err(Refusal::BodyTooLarge);
    }
    Ok(RefHeader {
        code: h[2],
        body_len,
    })
}

/// Decodes one frame from the start of `buf` per the spec.
///
/// # Errors
///
/// The spec's refusal.
pub fn decode(buf: &[u8]) -> Result<RefDecoded, Refusal> {
    if buf.len() < HEADER_LEN {
        return Ok(RefDecoded::Incomplete { needed: HEADER_LEN });
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let header = parse_header(&h)?;
    let prefix = header.prefix_len();
    if buf.len() < prefix {
        return Ok(RefDecoded::Incomplete { needed: prefix });
    }
    let frame = body(header, &buf[HEADER_LEN..prefix])?;
    Ok(RefDecoded::Frame {
        frame,
        consumed: prefix,
    })
}

/// A cursor over a body: each read takes bytes off the front.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        if self.rest.len() < n {
            return Err(Refusal::Truncated);
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn le(&mut self, n: usize) -> Result<u64, Refusal> {
        let bytes = self.take(n)?;
        // Little-endian: byte i is worth 256^i.
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn u16(&mut self) -> Result<u16, Refusal> {
        self.le(2).map(|v| v as u16)
    }

    fn u32(&mut self) -> Result<u32, Refusal> {
        self.le(4).map(|v| v as u32)
    }

    fn u64(&mut self) -> Result<u64, Refusal> {
        self.le(8)
    }

    fn str16(&mut self, min: usize, max: usize) -> Result<String, Refusal> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(Refusal::StringTooLong);
        }
        if n < min {
            return Err(Refusal::EmptyString);
        }
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Refusal::InvalidUtf8)
    }
}

/// Steps 4 to 6 for the body of a frame with `header`.
fn body(header: RefHeader, body: &[u8]) -> Result<RefFrame, Refusal> {
    let mut c = Cursor { rest: body };
    let frame = match header.code {
        1 => {
            let magic = c.u64()?;
            let version = c.u16()?;
            let layout = c.u32()?;
            let mut nonce = [0u8; 32];
            nonce.copy_from_slice(c.take(32)?);
            let name = c.str16(1, 255)?;
            RefFrame::Hello {
                magic,
                version,
                layout,
                nonce,
                name,
            }
        }
        4 => {
            let stream = c.u32()?;
            let fingerprint = c.u64()?;
            let capacity = c.u64()?;
            let max_message = c.u64()?;
            let flags = c.u32()?;
            let topic = c.str16(1, 255)?;
            let publisher = c.str16(1, 255)?;
            let type_name = c.str16(0, 1024)?;
            if flags & !0b11 != 0 {
                return Err(Refusal::UnknownStreamFlags);
            }
            if capacity.count_ones() != 1 || max_message == 0 || max_message > capacity {
                return Err(Refusal::InvalidRing);
            }
            RefFrame::Announce {
                stream,
                fingerprint,
                capacity,
                max_message,
                flags,
                topic,
                publisher,
                type_name,
            }
        }
        5 => RefFrame::Subscribe {
            stream: c.u32()?,
            resume: c.u64()?,
            window: c.u64()?,
        },
        6 => {
            let stream = c.u32()?;
            let start = c.u64()?;
            let len = c.u32()?;
            if u64::from(header.body_len) != 16 + u64::from(len) {
                return Err(Refusal::DataLengthMismatch);
            }
            RefFrame::Data { stream, start, len }
        }
        7 => RefFrame::Ack {
            stream: c.u32()?,
            position: c.u64()?,
        },
        8 => {
            let stream = c.u32()?;
            let from = c.u64()?;
            let to = c.u64()?;
            let next_seq = c.u64()?;
            if from >= to {
                return Err(Refusal::InvalidGap);
            }
            RefFrame::Gap {
                stream,
                from,
                to,
                next_seq,
            }
        }
        9 => {
            let count = c.u16()?;
            if count > 1024 {
                return Err(Refusal::TooManyEntries);
            }
            let mut entries = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                entries.push((c.u32()?, c.u64()?));
            }
            RefFrame::Heartbeat(entries)
        }
        10 => RefFrame::Error {
            code: c.u16()?,
            message: c.str16(0, 1024)?,
        },
        11 => RefFrame::End {
            stream: c.u32()?,
            position: c.u64()?,
        },
        12 => {
            let all = c.take(body.len())?;
            if all.is_empty() {
                return Err(Refusal::EmptyNoise);
            }
            RefFrame::Noise(all.to_vec())
        }
        13 => RefFrame::Credit {
            stream: c.u32()?,
            limit: c.u64()?,
        },
        // `parse_header` admitted only the codes above.
        _ => return Err(Refusal::UnknownType),
    };
    if !c.rest.is_empty() {
        return Err(Refusal::Trailing);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_from_the_spec() {
        let bytes = [
            b'S', b'B', 7, 0, 12, 0, 0, 0, 7, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            decode(&bytes),
            Ok(RefDecoded::Frame {
                frame: RefFrame::Ack {
                    stream: 7,
                    position: 4096
                },
                consumed: 20
            })
        );
        assert_eq!(
            decode(&bytes[..9]),
            Ok(RefDecoded::Incomplete { needed: 20 })
        );
        assert_eq!(
            decode(&bytes[..3]),
            Ok(RefDecoded::Incomplete { needed: 8 })
        );
    }

    #[test]
    fn refusals_in_order() {
        assert_eq!(decode(b"XB\x07\x01\0\0\0\0"), Err(Refusal::BadMagic));
        assert_eq!(decode(b"SB\x02\x01\0\0\0\0"), Err(Refusal::UnknownType));
        assert_eq!(decode(b"SB\x07\x01\0\0\0\0"), Err(Refusal::ReservedFlags));
        assert_eq!(decode(b"SB\x07\0\x0d\0\0\0"), Err(Refusal::BodyTooLarge));
        assert_eq!(decode(b"SB\x0c\0\0\0\0\0"), Err(Refusal::EmptyNoise));
        assert_eq!(decode(b"SB\x07\0\x02\0\0\0\0\0"), Err(Refusal::Truncated));
    }
}
