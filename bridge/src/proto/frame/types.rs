//! The frame bodies: one type per frame, plus [`Frame`] over all of them.

use std::fmt;

use super::{
    FrameError, FrameHeader, FrameType, Reader, DATA_FIXED_LEN, DATA_HEADER_LEN,
    HEARTBEAT_ENTRY_LEN, MAX_DATA_LEN, NONCE_LEN,
};

/// An error code carried by an ERROR frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The peer's protocol version is not supported.
    ProtocolVersion,
    /// The peer's ring layout version differs.
    LayoutVersion,
    /// Authentication failed.
    AuthFailed,
    /// A frame arrived that is not valid in the current state.
    UnexpectedFrame,
    /// A frame could not be decoded.
    Malformed,
    /// The requested stream or topic is not allowed by the allow-lists.
    NotAllowed,
    /// The peer's name is not the expected one.
    UnexpectedPeer,
    /// The stream id is unknown.
    UnknownStream,
    /// The sender is shutting down.
    Shutdown,
    /// An internal error on the sending side.
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::ProtocolVersion => 1,
            Self::LayoutVersion => 2,
            Self::AuthFailed => 3,
            Self::UnexpectedFrame => 4,
            Self::Malformed => 5,
            Self::NotAllowed => 6,
            Self::UnexpectedPeer => 7,
            Self::UnknownStream => 8,
            Self::Shutdown => 9,
            Self::Internal => 10,
            Self::Other(code) => code,
        }
    }

    /// Maps a wire value; unknown values become [`ErrorCode::Other`].
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::ProtocolVersion,
            2 => Self::LayoutVersion,
            3 => Self::AuthFailed,
            4 => Self::UnexpectedFrame,
            5 => Self::Malformed,
            6 => Self::NotAllowed,
            7 => Self::UnexpectedPeer,
            8 => Self::UnknownStream,
            9 => Self::Shutdown,
            10 => Self::Internal,
            other => Self::Other(other),
        }
    }
}

/// Flags of a STREAM_ANNOUNCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StreamFlags(u32);

impl StreamFlags {
    /// The ring is itself a bridge replica; a bridge must not export it again
    /// (loop prevention).
    pub const BRIDGED: Self = Self(1 << 0);
    /// The export is untethered: the receiver may see GAP frames.
    pub const UNTETHERED: Self = Self(1 << 1);
    const KNOWN: u32 = Self::BRIDGED.0 | Self::UNTETHERED.0;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The wire value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Builds flags from a wire value, refusing unknown bits.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::KNOWN != 0 {
            None
        } else {
            Some(Self(bits))
        }
    }

    /// Whether all bits of `other` are set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both flag sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// HELLO: opens the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Must be [`HELLO_MAGIC`](super::HELLO_MAGIC); checked by the handshake, not the decoder, so
    /// that the peer gets a precise error.
    pub hello_magic: u64,
    /// Bridge protocol version.
    pub protocol_version: u16,
    /// Ring layout version of the sender's bus.
    pub layout_version: u32,
    /// Fresh random bytes (part of the Noise prologue).
    pub nonce: [u8; NONCE_LEN],
    /// The node name the sender claims; checked against its key's allowlist entry.
    pub peer_name: &'a str,
}

/// STREAM_ANNOUNCE: a ring the sender can forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAnnounce<'a> {
    /// Stream id, chosen by the sender, unique per connection.
    pub stream: u32,
    /// Topic name.
    pub topic: &'a str,
    /// Publisher id (the ring's file stem).
    pub publisher: &'a str,
    /// Message type name (empty for untyped bytes).
    pub type_name: &'a str,
    /// Message layout fingerprint.
    pub type_fingerprint: u64,
    /// Ring capacity in bytes (a power of two).
    pub ring_capacity: u64,
    /// Largest record the ring accepts.
    pub max_message: u64,
    /// Flags.
    pub flags: StreamFlags,
}

/// SUBSCRIBE: the receiver wants a stream from a position on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe {
    /// Stream id from the STREAM_ANNOUNCE.
    pub stream: u32,
    /// First absolute ring position the receiver does not hold.
    pub resume_position: u64,
    /// Initial credit: the sender may send DATA up to this many bytes past
    /// `resume_position` (for [`RESUME_OLDEST`](super::RESUME_OLDEST): past
    /// the first position it sends), even when it starts later with a GAP:
    /// the receiver measured its room from where it is (see [`Credit`]).
    pub window: u64,
}

/// CREDIT: the receiver has reserved room for the stream up to `limit`.
///
/// Per-stream flow control, like an HTTP/2 or QUIC stream window but in
/// absolute ring positions: the sender never sends a DATA frame whose end
/// lies past the latest limit (the SUBSCRIBE's window counts as the first
/// one), so a receiver never waits for replica space and a full replica
/// stops only its own stream. Limits only grow. GAP and END need no credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Stream id.
    pub stream: u32,
    /// Absolute ring position up to which DATA may be sent.
    pub limit: u64,
}

/// The header of a DATA frame; `len` payload bytes follow it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Stream id.
    pub stream: u32,
    /// Absolute ring position of the first payload byte.
    pub start_position: u64,
    /// Payload length, at most [`MAX_DATA_LEN`](super::MAX_DATA_LEN).
    pub len: u32,
}

impl DataHeader {
    /// Encodes the header on its own, for sending the payload from other
    /// memory with an iovec.
    ///
    /// # Errors
    ///
    /// [`FrameError::DataTooLong`] if `len > MAX_DATA_LEN`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bridge::proto::frame::{DataHeader, DATA_HEADER_LEN};
    ///
    /// let hdr = DataHeader { stream: 1, start_position: 0, len: 4096 }.encode()?;
    /// assert_eq!(hdr.len(), DATA_HEADER_LEN);
    /// # Ok::<(), shmbus_bridge::proto::frame::FrameError>(())
    /// ```
    pub fn encode(&self) -> Result<[u8; DATA_HEADER_LEN], FrameError> {
        if self.len > MAX_DATA_LEN {
            return Err(FrameError::DataTooLong {
                len: u64::from(self.len),
            });
        }
        let mut out = [0u8; DATA_HEADER_LEN];
        FrameHeader::write(
            FrameType::Data,
            DATA_FIXED_LEN + self.len as usize,
            &mut out,
        );
        out[8..12].copy_from_slice(&self.stream.to_le_bytes());
        out[12..20].copy_from_slice(&self.start_position.to_le_bytes());
        out[20..24].copy_from_slice(&self.len.to_le_bytes());
        Ok(out)
    }

    /// Absolute ring position just past the payload.
    pub fn end_position(&self) -> u64 {
        self.start_position.saturating_add(u64::from(self.len))
    }
}

/// ACK: the receiver has applied a stream up to `position` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Stream id.
    pub stream: u32,
    /// First position not yet applied.
    pub position: u64,
}

/// GAP: the sender no longer holds `[from, to)` of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Stream id.
    pub stream: u32,
    /// First lost position.
    pub from: u64,
    /// First position after the loss; `from < to`.
    pub to: u64,
    /// Sequence number of the first message at `to`: the receiver's
    /// subscribers lost exactly `next_seq` minus the number they expect next.
    pub next_seq: u64,
}

/// END: the stream's publisher is gone and every byte before `position` has
/// been sent; no DATA or GAP for the stream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Stream id.
    pub stream: u32,
    /// The stream's final position (the publisher's last tail).
    pub position: u64,
}

/// One HEARTBEAT entry: a stream and the sender's published tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTail {
    /// Stream id.
    pub stream: u32,
    /// The sender ring's published tail.
    pub tail: u64,
}

/// HEARTBEAT: liveness plus the sender's tails, so that the receiver can
/// detect lost tail data.
///
/// Borrowed either from a slice (to encode) or from the wire (decoded).
#[derive(Clone, Copy)]
pub struct Heartbeat<'a> {
    repr: HeartbeatRepr<'a>,
}

#[derive(Clone, Copy)]
enum HeartbeatRepr<'a> {
    Entries(&'a [StreamTail]),
    /// Validated: length is a multiple of the entry size, at most the maximum.
    Wire(&'a [u8]),
}

impl<'a> Heartbeat<'a> {
    /// Wraps validated wire bytes: a multiple of the entry size, at most
    /// the maximum number of entries.
    pub(super) fn from_wire(entries: &'a [u8]) -> Self {
        Self {
            repr: HeartbeatRepr::Wire(entries),
        }
    }

    /// A heartbeat carrying `entries` (at most [`MAX_HEARTBEAT_ENTRIES`](super::MAX_HEARTBEAT_ENTRIES); the
    /// encoder refuses more).
    pub fn new(entries: &'a [StreamTail]) -> Self {
        Self {
            repr: HeartbeatRepr::Entries(entries),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self.repr {
            HeartbeatRepr::Entries(e) => e.len(),
            HeartbeatRepr::Wire(b) => b.len() / HEARTBEAT_ENTRY_LEN,
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = StreamTail> + 'a {
        let (entries, wire): (&'a [StreamTail], &'a [u8]) = match self.repr {
            HeartbeatRepr::Entries(e) => (e, &[]),
            HeartbeatRepr::Wire(b) => (&[], b),
        };
        entries
            .iter()
            .copied()
            .chain(wire.chunks_exact(HEARTBEAT_ENTRY_LEN).map(|c| {
                let mut r = Reader::new(FrameType::Heartbeat, c);
                // The chunk is exactly 12 bytes, so both reads succeed; the
                // fallbacks are unreachable but keep this panic-free.
                StreamTail {
                    stream: r.u32().unwrap_or(0),
                    tail: r.u64().unwrap_or(0),
                }
            }))
    }
}

impl PartialEq for Heartbeat<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Heartbeat<'_> {}

impl fmt::Debug for Heartbeat<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// ERROR: a reason the sender is closing the connection (or a warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: &'a str,
}

/// A decoded or to-be-encoded frame. Strings borrow from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// A Noise handshake message (see [`handshake`](crate::proto::handshake)).
    Noise(&'a [u8]),
    /// See [`StreamAnnounce`].
    StreamAnnounce(StreamAnnounce<'a>),
    /// See [`Subscribe`].
    Subscribe(Subscribe),
    /// See [`Credit`].
    Credit(Credit),
    /// See [`DataHeader`]; the payload is not part of the value.
    Data(DataHeader),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Gap`].
    Gap(Gap),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat<'a>),
    /// See [`ErrorFrame`].
    Error(ErrorFrame<'a>),
    /// See [`End`].
    End(End),
}
