//! Bridge wire frames: encoding and decoding, sans-IO.
//!
//! This module neither touches sockets nor reads clocks. Frames are encoded
//! into a caller-provided buffer and decoded from a byte slice. Every length
//! and count read from the wire is bounds-checked against the input *and*
//! against a per-type maximum before it is used, so a hostile peer cannot make
//! the receiver buffer gigabytes, read out of bounds or panic: any input gives
//! either a frame, [`Decoded::Incomplete`] or a typed [`FrameError`].
//!
//! The encoding is canonical: a byte string that decodes to a frame is exactly
//! what encoding that frame produces. Encoders apply the same checks as the
//! decoder, so a frame this module encodes is never rejected by a peer.
//!
//! # Layout
//!
//! All integers are little-endian; fields are packed (no padding, no alignment
//! requirement). Every frame starts with an 8-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic, the bytes `"SB"` ([`FRAME_MAGIC`]) |
//! | 2 | 1 | frame type ([`FrameType`]) |
//! | 3 | 1 | flags, reserved: must be 0 |
//! | 4 | 4 | body length in bytes (everything after the header; for DATA, including the payload) |
//!
//! Strings (`str16`) are a `u16` byte length followed by that many bytes of
//! UTF-8. Names (peer, topic, publisher) are 1..=[`MAX_NAME_LEN`] bytes, type
//! names 0..=[`MAX_TYPE_NAME_LEN`] (empty: untyped bytes), error messages 0..=[`MAX_ERROR_MESSAGE_LEN`].
//!
//! Bodies (offsets relative to the body start; the body length must match
//! exactly, trailing bytes are an error):
//!
//! | type | code | body |
//! |---|---|---|
//! | HELLO | 1 | `hello_magic u64` ([`HELLO_MAGIC`]), `protocol_version u16`, `layout_version u32`, `nonce [u8; 32]` (random), `peer_name str16` (the name the sender claims) |
//! | STREAM_ANNOUNCE | 4 | `stream u32`, `type_fingerprint u64`, `ring_capacity u64` (power of two), `max_message u64` (1..=capacity), `flags u32` ([`StreamFlags`]), `topic str16`, `publisher str16`, `type_name str16` |
//! | SUBSCRIBE | 5 | `stream u32`, `resume_position u64` ([`RESUME_OLDEST`]: from the oldest position the sender holds), `window u64`: the sender may send DATA up to `window` bytes past the position it starts from (the initial credit) |
//! | DATA | 6 | `stream u32`, `start_position u64`, `len u32` (≤ [`MAX_DATA_LEN`]), then `len` raw ring bytes; body length = 16 + `len` |
//! | ACK | 7 | `stream u32`, `position u64` |
//! | GAP | 8 | `stream u32`, `from u64`, `to u64` (`from < to`: bytes `[from, to)` are lost), `next_seq u64`: the sequence number of the first message at `to` (so the receiver counts the lost messages exactly) |
//! | HEARTBEAT | 9 | `count u16` (≤ [`MAX_HEARTBEAT_ENTRIES`]), then `count` × (`stream u32`, `sender_tail u64`) |
//! | ERROR | 10 | `code u16` ([`ErrorCode`]), `message str16` |
//! | END | 11 | `stream u32`, `position u64`: the stream's publisher is gone and every byte before `position` was sent |
//! | NOISE | 12 | a Noise handshake message, 1..=[`MAX_NOISE_LEN`] bytes (see [`handshake`](super::handshake)) |
//! | CREDIT | 13 | `stream u32`, `limit u64`: the sender may send DATA of the stream whose end is at most `limit` (an absolute ring position; limits only grow) |
//!
//! Codes 2 and 3 (AUTH, AUTH_OK of the pre-shared-key protocol version 1)
//! are no longer used. After the handshake every frame is followed by a
//! 16-byte tag ([`seal`](super::seal)); the tag is not part of the body
//! length.
//!
//! # DATA frames and zero-copy
//!
//! A DATA frame is split in two: the 24-byte [`DataHeader`] (frame header plus
//! the 16 fixed body bytes) and the payload. [`decode`] returns a DATA frame
//! as soon as the 24 header bytes are present and consumes only those; the
//! caller then reads exactly [`DataHeader::len`] bytes straight into their
//! destination (the replica ring). On the sending side
//! [`DataHeader::encode`] produces the 24 bytes on their own, so the payload
//! can be sent from the mapped ring with an iovec. A receiver that wants to
//! avoid over-reading reads [`HEADER_LEN`] bytes, parses them with
//! [`FrameHeader::parse`], then reads [`FrameHeader::prefix_len`] bytes in
//! total before calling [`decode`].
//!
//! # Example
//!
//! ```
//! use shmbus_bridge::proto::frame::{decode, Ack, Decoded, Frame};
//!
//! let mut buf = [0u8; 64];
//! let n = Frame::Ack(Ack { stream: 7, position: 4096 }).encode(&mut buf)?;
//! match decode(&buf[..n])? {
//!     Decoded::Frame { frame, consumed } => {
//!         assert_eq!(consumed, n);
//!         assert_eq!(frame, Frame::Ack(Ack { stream: 7, position: 4096 }));
//!     }
//!     Decoded::Incomplete { .. } => unreachable!("the whole frame is there"),
//! }
//! # Ok::<(), shmbus_bridge::proto::frame::FrameError>(())
//! ```

use std::fmt;

/// Magic at the start of every frame header: the bytes `"SB"`.
pub const FRAME_MAGIC: u16 = u16::from_le_bytes(*b"SB");
/// Magic inside HELLO, identifying the shmbus bridge protocol family.
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"shmbusBR");
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Length of the fixed part of a DATA body (stream, start position, length).
pub const DATA_FIXED_LEN: usize = 16;
/// Length of an encoded [`DataHeader`]: frame header plus the fixed DATA body.
pub const DATA_HEADER_LEN: usize = HEADER_LEN + DATA_FIXED_LEN;
/// Largest DATA payload. Senders split larger ring slices into several frames.
pub const MAX_DATA_LEN: u32 = 16 << 20;
/// Largest peer, topic or publisher name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest type name in a STREAM_ANNOUNCE, in bytes.
pub const MAX_TYPE_NAME_LEN: usize = 1024;
/// Largest ERROR message, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Largest number of entries in one HEARTBEAT.
pub const MAX_HEARTBEAT_ENTRIES: usize = 1024;
/// Length of the HELLO nonce.
pub const NONCE_LEN: usize = 32;
/// Largest Noise handshake message in a NOISE frame.
pub const MAX_NOISE_LEN: usize = 256;
/// SUBSCRIBE `resume_position` meaning "from the oldest position you still
/// hold": a receiver with no data of the stream yet. Never a real position
/// (positions are byte counts and stay far below `u64::MAX`).
pub const RESUME_OLDEST: u64 = u64::MAX;

const HELLO_FIXED_LEN: usize = 8 + 2 + 4 + NONCE_LEN;
const ANNOUNCE_FIXED_LEN: usize = 4 + 8 + 8 + 8 + 4;
const HEARTBEAT_ENTRY_LEN: usize = 12;

mod types;
pub use types::*;

/// The type byte of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Handshake opener: versions, nonce, peer name.
    Hello = 1,
    /// A ring the sender offers.
    StreamAnnounce = 4,
    /// The receiver wants a stream from a position.
    Subscribe = 5,
    /// Raw ring bytes.
    Data = 6,
    /// The receiver has applied a stream up to a position.
    Ack = 7,
    /// The sender no longer holds a range of a stream.
    Gap = 8,
    /// Liveness plus the sender's tails.
    Heartbeat = 9,
    /// A fatal or informative error.
    Error = 10,
    /// The stream's publisher is gone; nothing follows a position.
    End = 11,
    /// A Noise handshake message.
    Noise = 12,
    /// The receiver has room in its replica up to a position.
    Credit = 13,
}

impl FrameType {
    /// Maps a wire type byte to a frame type.
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Hello,
            4 => Self::StreamAnnounce,
            5 => Self::Subscribe,
            6 => Self::Data,
            7 => Self::Ack,
            8 => Self::Gap,
            9 => Self::Heartbeat,
            10 => Self::Error,
            11 => Self::End,
            12 => Self::Noise,
            13 => Self::Credit,
            _ => return None,
        })
    }

    /// Largest body length this frame type may declare.
    pub const fn max_body_len(self) -> u32 {
        let len = match self {
            Self::Hello => HELLO_FIXED_LEN + 2 + MAX_NAME_LEN,
            Self::StreamAnnounce => {
                ANNOUNCE_FIXED_LEN + 3 * 2 + 2 * MAX_NAME_LEN + MAX_TYPE_NAME_LEN
            }
            Self::Ack | Self::End | Self::Credit => 12,
            Self::Subscribe => 20,
            Self::Data => DATA_FIXED_LEN + MAX_DATA_LEN as usize,
            Self::Gap => 28,
            Self::Heartbeat => 2 + MAX_HEARTBEAT_ENTRIES * HEARTBEAT_ENTRY_LEN,
            Self::Error => 2 + 2 + MAX_ERROR_MESSAGE_LEN,
            Self::Noise => MAX_NOISE_LEN,
        };
        len as u32
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Hello => "HELLO",
            Self::StreamAnnounce => "STREAM_ANNOUNCE",
            Self::Subscribe => "SUBSCRIBE",
            Self::Data => "DATA",
            Self::Ack => "ACK",
            Self::Gap => "GAP",
            Self::Heartbeat => "HEARTBEAT",
            Self::Error => "ERROR",
            Self::End => "END",
            Self::Noise => "NOISE",
            Self::Credit => "CREDIT",
        };
        f.write_str(name)
    }
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not [`FRAME_MAGIC`]: the peer is not speaking this protocol or the stream lost sync.
    #[error("bad frame magic {found:#06x} (expected {FRAME_MAGIC:#06x}): peer is not a shmbus bridge or the stream is out of sync")]
    BadMagic {
        /// The value found.
        found: u16,
    },
    /// The type byte names no known frame.
    #[error("unknown frame type {code}: peer speaks a newer or different protocol")]
    UnknownType {
        /// The type byte found.
        code: u8,
    },
    /// The reserved header flags are not zero.
    #[error(
        "reserved frame flags {flags:#04x} are set: peer speaks a newer or different protocol"
    )]
    ReservedFlags {
        /// The flags found.
        flags: u8,
    },
    /// The declared body length exceeds the maximum for this frame type.
    #[error("{frame_type} body of {len} bytes exceeds the maximum of {max}")]
    BodyTooLarge {
        /// The frame type.
        frame_type: FrameType,
        /// The declared length.
        len: u32,
        /// The maximum for this type.
        max: u32,
    },
    /// The body does not have the structure its type requires.
    #[error("malformed {frame_type} frame: {reason}")]
    Malformed {
        /// The frame type.
        frame_type: FrameType,
        /// What is wrong.
        reason: &'static str,
    },
    /// A string field is longer than allowed.
    #[error("{field} is {len} bytes long, the maximum is {max}")]
    StringTooLong {
        /// The field name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A string field that must not be empty is empty.
    #[error("{field} must not be empty")]
    EmptyString {
        /// The field name.
        field: &'static str,
    },
    /// A string field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field name.
        field: &'static str,
    },
    /// A HEARTBEAT has more entries than allowed.
    #[error("heartbeat has {count} entries, the maximum is {MAX_HEARTBEAT_ENTRIES}")]
    TooManyEntries {
        /// The number of entries.
        count: usize,
    },
    /// A DATA payload is longer than [`MAX_DATA_LEN`].
    #[error("data payload of {len} bytes exceeds the maximum of {MAX_DATA_LEN}; split the slice")]
    DataTooLong {
        /// The payload length.
        len: u64,
    },
    /// A GAP whose range is empty or reversed.
    #[error("gap [{from}, {to}) is empty or reversed")]
    InvalidGap {
        /// Start of the range.
        from: u64,
        /// End of the range.
        to: u64,
    },
    /// A STREAM_ANNOUNCE with an impossible ring geometry.
    #[error("ring capacity {capacity} must be a power of two and max message {max_message} in 1..=capacity")]
    InvalidRing {
        /// The announced capacity.
        capacity: u64,
        /// The announced maximum message size.
        max_message: u64,
    },
    /// A STREAM_ANNOUNCE with flag bits this version does not know.
    #[error("unknown stream flags {flags:#x}: peer speaks a newer protocol")]
    UnknownStreamFlags {
        /// The flags found.
        flags: u32,
    },
    /// The output buffer is too small for the encoded frame.
    #[error("output buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

/// The fixed 8-byte header of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame type.
    pub frame_type: FrameType,
    /// Body length (for DATA: 16 + payload length), already checked against
    /// [`FrameType::max_body_len`].
    pub body_len: u32,
}

impl FrameHeader {
    /// Parses and validates a frame header.
    ///
    /// # Errors
    ///
    /// [`FrameError::BadMagic`], [`FrameError::UnknownType`],
    /// [`FrameError::ReservedFlags`] or [`FrameError::BodyTooLarge`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bridge::proto::frame::{FrameHeader, FrameType, HEADER_LEN};
    ///
    /// let bytes: [u8; HEADER_LEN] = [b'S', b'B', 7, 0, 12, 0, 0, 0];
    /// let h = FrameHeader::parse(&bytes)?;
    /// assert_eq!(h.frame_type, FrameType::Ack);
    /// assert_eq!(h.prefix_len(), HEADER_LEN + 12);
    /// # Ok::<(), shmbus_bridge::proto::frame::FrameError>(())
    /// ```
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let frame_type =
            FrameType::from_u8(bytes[2]).ok_or(FrameError::UnknownType { code: bytes[2] })?;
        if bytes[3] != 0 {
            return Err(FrameError::ReservedFlags { flags: bytes[3] });
        }
        let body_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let max = frame_type.max_body_len();
        if body_len > max {
            return Err(FrameError::BodyTooLarge {
                frame_type,
                len: body_len,
                max,
            });
        }
        Ok(Self {
            frame_type,
            body_len,
        })
    }

    /// How many bytes, counted from the start of the frame, [`decode`] needs
    /// to return this frame: the whole frame for control frames, the
    /// [`DATA_HEADER_LEN`] bytes of the header for DATA (the payload is read
    /// separately).
    pub fn prefix_len(&self) -> usize {
        match self.frame_type {
            FrameType::Data => DATA_HEADER_LEN,
            _ => HEADER_LEN + self.body_len as usize,
        }
    }

    fn write(frame_type: FrameType, body_len: usize, out: &mut [u8]) {
        // Callers checked `out.len() >= HEADER_LEN` and `body_len <= max_body_len`.
        out[0..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[2] = frame_type as u8;
        out[3] = 0;
        out[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    }
}

/// Result of [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete frame.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes of the input it occupies. For DATA this is
        /// [`DATA_HEADER_LEN`]: the payload follows and is not consumed.
        consumed: usize,
    },
    /// More input is needed.
    Incomplete {
        /// Total bytes (from the frame start) needed before decoding can
        /// progress; always more than the input length.
        needed: usize,
    },
}

/// Decodes one frame from the start of `buf`.
///
/// Never panics and never reads past `buf`. A header with an oversized length
/// is rejected as soon as the 8 header bytes are present, before waiting for
/// the body.
///
/// # Errors
///
/// A [`FrameError`] describing the first problem found.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::Incomplete { needed: HEADER_LEN });
    };
    let header = FrameHeader::parse(header_bytes)?;
    let needed = header.prefix_len();
    let Some(frame_bytes) = buf.get(..needed) else {
        return Ok(Decoded::Incomplete { needed });
    };
    let body = &frame_bytes[HEADER_LEN..];
    let frame = decode_body(header, body)?;
    Ok(Decoded::Frame {
        frame,
        consumed: needed,
    })
}

fn decode_body(header: FrameHeader, body: &[u8]) -> Result<Frame<'_>, FrameError> {
    let ft = header.frame_type;
    let mut r = Reader::new(ft, body);
    let frame = match ft {
        FrameType::Hello => {
            let hello_magic = r.u64()?;
            let protocol_version = r.u16()?;
            let layout_version = r.u32()?;
            let nonce = r.array::<NONCE_LEN>()?;
            let peer_name = r.str16("peer name", 1, MAX_NAME_LEN)?;
            Frame::Hello(Hello {
                hello_magic,
                protocol_version,
                layout_version,
                nonce,
                peer_name,
            })
        }
        FrameType::Noise => {
            let msg = r.bytes(body.len())?;
            if msg.is_empty() {
                return Err(FrameError::Malformed {
                    frame_type: ft,
                    reason: "empty Noise message",
                });
            }
            Frame::Noise(msg)
        }
        FrameType::StreamAnnounce => {
            let stream = r.u32()?;
            let type_fingerprint = r.u64()?;
            let ring_capacity = r.u64()?;
            let max_message = r.u64()?;
            let flags = r.u32()?;
            let topic = r.str16("topic", 1, MAX_NAME_LEN)?;
            let publisher = r.str16("publisher id", 1, MAX_NAME_LEN)?;
            let type_name = r.str16("type name", 0, MAX_TYPE_NAME_LEN)?;
            let announce = StreamAnnounce {
                stream,
                topic,
                publisher,
                type_name,
                type_fingerprint,
                ring_capacity,
                max_message,
                flags: StreamFlags::from_bits(flags)
                    .ok_or(FrameError::UnknownStreamFlags { flags })?,
            };
            check_ring(announce.ring_capacity, announce.max_message)?;
            Frame::StreamAnnounce(announce)
        }
        FrameType::Subscribe => Frame::Subscribe(Subscribe {
            stream: r.u32()?,
            resume_position: r.u64()?,
            window: r.u64()?,
        }),
        FrameType::Credit => Frame::Credit(Credit {
            stream: r.u32()?,
            limit: r.u64()?,
        }),
        FrameType::Data => {
            let data = DataHeader {
                stream: r.u32()?,
                start_position: r.u64()?,
                len: r.u32()?,
            };
            // `body` holds only the fixed part here; the header's length must
            // account for exactly the announced payload.
            if u64::from(header.body_len) != DATA_FIXED_LEN as u64 + u64::from(data.len) {
                return Err(FrameError::Malformed {
                    frame_type: ft,
                    reason: "body length does not equal 16 + payload length",
                });
            }
            Frame::Data(data)
        }
        FrameType::Ack => Frame::Ack(Ack {
            stream: r.u32()?,
            position: r.u64()?,
        }),
        FrameType::End => Frame::End(End {
            stream: r.u32()?,
            position: r.u64()?,
        }),
        FrameType::Gap => {
            let gap = Gap {
                stream: r.u32()?,
                from: r.u64()?,
                to: r.u64()?,
                next_seq: r.u64()?,
            };
            if gap.from >= gap.to {
                return Err(FrameError::InvalidGap {
                    from: gap.from,
                    to: gap.to,
                });
            }
            Frame::Gap(gap)
        }
        FrameType::Heartbeat => {
            let count = usize::from(r.u16()?);
            if count > MAX_HEARTBEAT_ENTRIES {
                return Err(FrameError::TooManyEntries { count });
            }
            let entries = r.bytes(count * HEARTBEAT_ENTRY_LEN)?;
            Frame::Heartbeat(Heartbeat::from_wire(entries))
        }
        FrameType::Error => Frame::Error(ErrorFrame {
            code: ErrorCode::from_u16(r.u16()?),
            message: r.str16("error message", 0, MAX_ERROR_MESSAGE_LEN)?,
        }),
    };
    r.finish()?;
    Ok(frame)
}

fn check_ring(capacity: u64, max_message: u64) -> Result<(), FrameError> {
    if !capacity.is_power_of_two() || max_message == 0 || max_message > capacity {
        return Err(FrameError::InvalidRing {
            capacity,
            max_message,
        });
    }
    Ok(())
}

fn check_str(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), FrameError> {
    if s.len() > max {
        return Err(FrameError::StringTooLong {
            field,
            len: s.len(),
            max,
        });
    }
    if s.len() < min {
        return Err(FrameError::EmptyString { field });
    }
    Ok(())
}

impl Frame<'_> {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Noise(_) => FrameType::Noise,
            Self::StreamAnnounce(_) => FrameType::StreamAnnounce,
            Self::Subscribe(_) => FrameType::Subscribe,
            Self::Data(_) => FrameType::Data,
            Self::Ack(_) => FrameType::Ack,
            Self::Gap(_) => FrameType::Gap,
            Self::Heartbeat(_) => FrameType::Heartbeat,
            Self::Error(_) => FrameType::Error,
            Self::End(_) => FrameType::End,
            Self::Credit(_) => FrameType::Credit,
        }
    }

    /// Checks the frame against the limits the decoder enforces.
    fn validate(&self) -> Result<(), FrameError> {
        match self {
            Self::Hello(h) => check_str("peer name", h.peer_name, 1, MAX_NAME_LEN),
            Self::StreamAnnounce(a) => {
                check_str("topic", a.topic, 1, MAX_NAME_LEN)?;
                check_str("publisher id", a.publisher, 1, MAX_NAME_LEN)?;
                check_str("type name", a.type_name, 0, MAX_TYPE_NAME_LEN)?;
                check_ring(a.ring_capacity, a.max_message)
            }
            Self::Data(d) if d.len > MAX_DATA_LEN => Err(FrameError::DataTooLong {
                len: u64::from(d.len),
            }),
            Self::Gap(g) if g.from >= g.to => Err(FrameError::InvalidGap {
                from: g.from,
                to: g.to,
            }),
            Self::Heartbeat(h) if h.len() > MAX_HEARTBEAT_ENTRIES => {
                Err(FrameError::TooManyEntries { count: h.len() })
            }
            Self::Error(e) => check_str("error message", e.message, 0, MAX_ERROR_MESSAGE_LEN),
            Self::Noise(m) if m.is_empty() || m.len() > MAX_NOISE_LEN => {
                Err(FrameError::Malformed {
                    frame_type: FrameType::Noise,
                    reason: "Noise message must be 1 to 256 bytes",
                })
            }
            _ => Ok(()),
        }
    }

    /// Body length excluding any DATA payload.
    fn encoded_body_len(&self) -> usize {
        match self {
            Self::Hello(h) => HELLO_FIXED_LEN + 2 + h.peer_name.len(),
            Self::Noise(m) => m.len(),
            Self::StreamAnnounce(a) => {
                ANNOUNCE_FIXED_LEN + 6 + a.topic.len() + a.publisher.len() + a.type_name.len()
            }
            Self::Ack(_) | Self::End(_) | Self::Credit(_) => 12,
            Self::Subscribe(_) => 20,
            Self::Data(_) => DATA_FIXED_LEN,
            Self::Gap(_) => 28,
            Self::Heartbeat(h) => 2 + h.len() * HEARTBEAT_ENTRY_LEN,
            Self::Error(e) => 4 + e.message.len(),
        }
    }

    /// Number of bytes [`Frame::encode`] writes. For DATA this is
    /// [`DATA_HEADER_LEN`]: the payload is sent separately.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.encoded_body_len()
    }

    /// Encodes the frame at the start of `out` and returns the length written.
    /// For DATA only the header is written (see [`DataHeader::encode`]).
    ///
    /// # Errors
    ///
    /// [`FrameError::BufferTooSmall`] if `out` is shorter than
    /// [`Frame::encoded_len`], or the error the decoder would report for an
    /// out-of-range field (too-long string, empty gap, ...).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        self.validate()?;
        let total = self.encoded_len();
        let available = out.len();
        let out = out.get_mut(..total).ok_or(FrameError::BufferTooSmall {
            needed: total,
            available,
        })?;
        if let Self::Data(d) = self {
            out.copy_from_slice(&d.encode()?);
            return Ok(total);
        }
        let (head, body) = out.split_at_mut(HEADER_LEN);
        FrameHeader::write(self.frame_type(), body.len(), head);
        let mut w = Writer { out: body, pos: 0 };
        match self {
            Self::Hello(h) => {
                w.put(&h.hello_magic.to_le_bytes());
                w.put(&h.protocol_version.to_le_bytes());
                w.put(&h.layout_version.to_le_bytes());
                w.put(&h.nonce);
                w.str16(h.peer_name);
            }
            Self::Noise(m) => w.put(m),
            Self::Data(_) => {}
            Self::StreamAnnounce(a) => {
                w.put(&a.stream.to_le_bytes());
                w.put(&a.type_fingerprint.to_le_bytes());
                w.put(&a.ring_capacity.to_le_bytes());
                w.put(&a.max_message.to_le_bytes());
                w.put(&a.flags.bits().to_le_bytes());
                w.str16(a.topic);
                w.str16(a.publisher);
                w.str16(a.type_name);
            }
            Self::Subscribe(s) => {
                w.put(&s.stream.to_le_bytes());
                w.put(&s.resume_position.to_le_bytes());
                w.put(&s.window.to_le_bytes());
            }
            Self::Credit(c) => {
                w.put(&c.stream.to_le_bytes());
                w.put(&c.limit.to_le_bytes());
            }
            Self::Ack(a) => {
                w.put(&a.stream.to_le_bytes());
                w.put(&a.position.to_le_bytes());
            }
            Self::End(e) => {
                w.put(&e.stream.to_le_bytes());
                w.put(&e.position.to_le_bytes());
            }
            Self::Gap(g) => {
                w.put(&g.stream.to_le_bytes());
                w.put(&g.from.to_le_bytes());
                w.put(&g.to.to_le_bytes());
                w.put(&g.next_seq.to_le_bytes());
            }
            Self::Heartbeat(h) => {
                // `validate` bounded the count by MAX_HEARTBEAT_ENTRIES < u16::MAX.
                w.put(&(h.len() as u16).to_le_bytes());
                for e in h.iter() {
                    w.put(&e.stream.to_le_bytes());
                    w.put(&e.tail.to_le_bytes());
                }
            }
            Self::Error(e) => {
                w.put(&e.code.to_u16().to_le_bytes());
                w.str16(e.message);
            }
        }
        debug_assert_eq!(w.pos, w.out.len(), "encoded_body_len disagrees with encode");
        Ok(total)
    }

    /// Appends the encoded frame to `out` and returns the length appended.
    ///
    /// # Errors
    ///
    /// As [`Frame::encode`], except that the buffer never is too small; on
    /// error `out` is unchanged.
    pub fn encode_to_vec(&self, out: &mut Vec<u8>) -> Result<usize, FrameError> {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        match self.encode(&mut out[start..]) {
            Ok(n) => Ok(n),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// Bounds-checked little-endian reader over a frame body.
struct Reader<'a> {
    frame_type: FrameType,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(frame_type: FrameType, buf: &'a [u8]) -> Self {
        Self { frame_type, buf }
    }

    fn truncated(&self) -> FrameError {
        FrameError::Malformed {
            frame_type: self.frame_type,
            reason: "body is shorter than its fields",
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if n > self.buf.len() {
            return Err(self.truncated());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated())?;
        self.buf = tail;
        Ok(*head)
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_le_bytes)
    }

    fn str16(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<&'a str, FrameError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(FrameError::StringTooLong { field, len, max });
        }
        if len < min {
            return Err(FrameError::EmptyString { field });
        }
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8 { field })
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed {
                frame_type: self.frame_type,
                reason: "trailing bytes after the last field",
            })
        }
    }
}

/// Writer over a buffer sized exactly by `encoded_body_len`.
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        // The buffer was sized from `encoded_body_len`, which mirrors the
        // writes below; `get_mut` keeps a mismatch from panicking in release.
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.pos += bytes.len();
    }

    fn str16(&mut self, s: &str) {
        // Callers validated `s.len() <= MAX_TYPE_NAME_LEN < u16::MAX`.
        self.put(&(s.len() as u16).to_le_bytes());
        self.put(s.as_bytes());
    }
}

#[cfg(test)]
mod tests;
