//! The attachment the gateway sends with every sample: who published the
//! message on which shmbus bus, its sequence number and its type. It is
//! the only metadata on the wire; the payload is the message's archived
//! bytes, unchanged (so a plain Zenoh subscriber reads them as they are).
//!
//! Layout (little-endian), version 1:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SBZ` and version `1` |
//! | 4 | kind: 0 message, 1 gap (messages before `seq` were lost), 2 end (the publisher is gone; `seq` is its next number) |
//! | 5..8 | zero |
//! | 8..16 | sequence number |
//! | 16..24 | type fingerprint (0: raw bytes) |
//! | 24 | origin length `n` (1..=96), then the origin gateway's node name |
//! | | publisher id length `m` (1..=96), then the publisher id |
//! | | type name length (u16, at most [`MAX_TYPE_NAME`]), then the type name (UTF-8) |
//!
//! Nothing may follow. Names are checked as shmbus names
//! ([`shmbus_bus::validate_name`]), since the importer makes file names of
//! them. Every field is checked by [`Meta::decode`]: it is data from the
//! network.

use shmbus_bus::validate_name;

/// Magic and version.
const MAGIC: [u8; 4] = *b"SBZ\x01";
/// Longest type name carried.
pub const MAX_TYPE_NAME: usize = 256;

/// What a sample says about the stream it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message numbered `seq`.
    Message,
    /// The messages before `seq` that were not sent are lost (the exporter
    /// was lapped); the next message is numbered `seq` or later.
    Gap,
    /// The publisher is gone; it would have numbered its next message `seq`.
    End,
}

/// The decoded attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Sample kind.
    pub kind: Kind,
    /// Sequence number (see [`Kind`]).
    pub seq: u64,
    /// The publishing gateway's node name.
    pub origin: String,
    /// The shmbus publisher id on the origin's bus.
    pub publisher: String,
    /// Message type name.
    pub type_name: String,
    /// Message type fingerprint (0: raw bytes).
    pub type_fingerprint: u64,
}

/// Why an attachment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Shorter than its fields say.
    #[error("attachment truncated at byte {0}")]
    Truncated(usize),
    /// Not a shmbus attachment, or another version.
    #[error("attachment has no shmbus magic (or another version)")]
    Magic,
    /// A field has a value the layout does not allow.
    #[error("attachment field {0} is invalid")]
    Field(&'static str),
    /// Bytes after the last field.
    #[error("attachment has {0} bytes after its last field")]
    Trailing(usize),
}

/// A decoded attachment that borrows its names from the bytes (the import
/// path decodes every sample; this allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRef<'a> {
    /// Sample kind.
    pub kind: Kind,
    /// Sequence number (see [`Kind`]).
    pub seq: u64,
    /// The publishing gateway's node name.
    pub origin: &'a str,
    /// The shmbus publisher id on the origin's bus.
    pub publisher: &'a str,
    /// Message type name.
    pub type_name: &'a str,
    /// Message type fingerprint (0: raw bytes).
    pub type_fingerprint: u64,
    /// The bytes that name the stream: type fingerprint, origin,
    /// publisher and type name (everything but kind and number).
    pub identity: &'a [u8],
}

/// Offset of the kind byte.
const KIND_AT: usize = 4;
/// Offset of the sequence number.
const SEQ_AT: usize = 8;

/// Sets kind and sequence number in encoded attachment bytes (an exporter
/// encodes its constant part once and patches these per message).
///
/// # Examples
///
/// ```
/// use shmbus_zenoh::meta::{set_kind_and_seq, Kind, Meta};
/// let m = Meta {
///     kind: Kind::Message,
///     seq: 0,
///     origin: "a".into(),
///     publisher: "p".into(),
///     type_name: String::new(),
///     type_fingerprint: 0,
/// };
/// let mut bytes = m.encode();
/// set_kind_and_seq(&mut bytes, Kind::End, 9);
/// assert_eq!(Meta::decode(&bytes), Ok(Meta { kind: Kind::End, seq: 9, ..m }));
/// ```
pub fn set_kind_and_seq(bytes: &mut [u8], kind: Kind, seq: u64) {
    if bytes.len() >= SEQ_AT + 8 {
        bytes[KIND_AT] = kind_byte(kind);
        bytes[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    }
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Message => 0,
        Kind::Gap => 1,
        Kind::End => 2,
    }
}

/// The attachment's per-sample part, checked, and the bytes after it
/// unchecked: what the import reads of every sample before it knows
/// whether the stream is one it has seen (whose identity bytes it checked
/// with [`MetaRef::decode`] when the stream was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Sample kind.
    pub kind: Kind,
    /// Sequence number (below `u64::MAX`).
    pub seq: u64,
    /// The bytes that name the stream, not checked: equal to
    /// [`MetaRef::identity`] of the same bytes.
    pub identity: &'a [u8],
}

impl<'a> Header<'a> {
    /// Checks magic, kind, the reserved bytes and the sequence number.
    ///
    /// # Errors
    ///
    /// [`MetaError`] as [`MetaRef::decode`] gives for these fields.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_zenoh::meta::{Header, Kind, Meta, MetaRef};
    /// let m = Meta {
    ///     kind: Kind::Gap,
    ///     seq: 7,
    ///     origin: "a".into(),
    ///     publisher: "p".into(),
    ///     type_name: String::new(),
    ///     type_fingerprint: 0,
    /// };
    /// let bytes = m.encode();
    /// let h = Header::parse(&bytes).unwrap();
    /// assert_eq!((h.kind, h.seq), (Kind::Gap, 7));
    /// assert_eq!(h.identity, MetaRef::decode(&bytes).unwrap().identity);
    /// ```
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MetaError> {
        let fixed = bytes
            .get(..SEQ_AT + 8)
            .ok_or(MetaError::Truncated(bytes.len()))?;
        if fixed[..4] != MAGIC {
            return Err(MetaError::Magic);
        }
        let kind = match fixed[KIND_AT] {
            0 => Kind::Message,
            1 => Kind::Gap,
            2 => Kind::End,
            _ => return Err(MetaError::Field("kind")),
        };
        if fixed[KIND_AT + 1..SEQ_AT] != [0; 3] {
            return Err(MetaError::Field("reserved"));
        }
        let seq = u64_le(&fixed[SEQ_AT..]);
        if seq == u64::MAX {
            return Err(MetaError::Field("sequence number"));
        }
        Ok(Self {
            kind,
            seq,
            identity: &bytes[SEQ_AT + 8..],
        })
    }
}

impl<'a> MetaRef<'a> {
    /// Decodes and checks an attachment without copying its names.
    ///
    /// # Errors
    ///
    /// [`MetaError`] naming the first field that is wrong.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, MetaError> {
        // Magic, kind, reserved bytes and number: the per-sample header.
        let Header { kind, seq, .. } = Header::parse(bytes)?;
        let mut at = SEQ_AT + 8;
        let mut take = |n: usize| -> Result<&'a [u8], MetaError> {
            let end = at + n;
            let field = bytes
                .get(at..end)
                .ok_or(MetaError::Truncated(bytes.len()))?;
            at = end;
            Ok(field)
        };
        let type_fingerprint = u64_le(take(8)?);
        let mut name = |what: &'static str| -> Result<&'a str, MetaError> {
            let len = usize::from(take(1)?[0]);
            let text = std::str::from_utf8(take(len)?).map_err(|_| MetaError::Field(what))?;
            validate_name(what, text).map_err(|_| MetaError::Field(what))?;
            Ok(text)
        };
        let origin = name("origin")?;
        let publisher = name("publisher")?;
        let type_len = usize::from(u16::from_le_bytes([take(1)?[0], take(1)?[0]]));
        if type_len > MAX_TYPE_NAME {
            return Err(MetaError::Field("type name length"));
        }
        let type_name = std::str::from_utf8(take(type_len)?)
            .ok()
            .filter(|t| !t.chars().any(char::is_control))
            .ok_or(MetaError::Field("type name"))?;
        if at != bytes.len() {
            return Err(MetaError::Trailing(bytes.len() - at));
        }
        Ok(Self {
            kind,
            seq,
            origin,
            publisher,
            type_name,
            type_fingerprint,
            identity: &bytes[SEQ_AT + 8..],
        })
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Meta {
        Meta {
            kind: self.kind,
            seq: self.seq,
            origin: self.origin.to_owned(),
            publisher: self.publisher.to_owned(),
            type_name: self.type_name.to_owned(),
            type_fingerprint: self.type_fingerprint,
        }
    }
}

impl Meta {
    /// The attachment bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_zenoh::meta::{Kind, Meta};
    /// let m = Meta {
    ///     kind: Kind::Message,
    ///     seq: 7,
    ///     origin: "host-a".into(),
    ///     publisher: "p-12.34-0".into(),
    ///     type_name: "demo::Pose".into(),
    ///     type_fingerprint: 0xfeed,
    /// };
    /// assert_eq!(Meta::decode(&m.encode()), Ok(m));
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            27 + self.origin.len() + self.publisher.len() + self.type_name.len(),
        );
        out.extend_from_slice(&MAGIC);
        out.push(kind_byte(self.kind));
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.type_fingerprint.to_le_bytes());
        for name in [&self.origin, &self.publisher] {
            // Names are at most 96 bytes (checked where they are made).
            out.push(name.len().min(255) as u8);
            out.extend_from_slice(name.as_bytes());
        }
        let type_len = self.type_name.len().min(MAX_TYPE_NAME) as u16;
        out.extend_from_slice(&type_len.to_le_bytes());
        out.extend_from_slice(self.type_name.as_bytes());
        out
    }

    /// Decodes and checks an attachment.
    ///
    /// # Errors
    ///
    /// [`MetaError`] naming the first field that is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        MetaRef::decode(bytes).map(|m| m.to_owned())
    }
}

fn u64_le(b: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(b);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            kind: Kind::Gap,
            seq: 1 << 40,
            origin: "node-1".into(),
            publisher: "p-1.2-3".into(),
            type_name: "a::B<u8>".into(),
            type_fingerprint: u64::MAX,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in [Kind::Message, Kind::Gap, Kind::End] {
            let m = Meta { kind, ..sample() };
            assert_eq!(Meta::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Meta::decode(&bytes[..n]).is_err(), "{n} bytes accepted");
        }
    }

    #[test]
    fn hostile_fields_are_refused_by_name() {
        let good = sample().encode();
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Meta::decode(&trailing), Err(MetaError::Trailing(1)));
        let mut magic = good.clone();
        magic[3] = 2;
        assert_eq!(Meta::decode(&magic), Err(MetaError::Magic));
        let mut kind = good.clone();
        kind[4] = 3;
        assert_eq!(Meta::decode(&kind), Err(MetaError::Field("kind")));
        let mut reserved = good.clone();
        reserved[6] = 1;
        assert_eq!(Meta::decode(&reserved), Err(MetaError::Field("reserved")));
        // A path in the origin: it would become a file name.
        let evil = Meta {
            origin: "../etc".into(),
            ..sample()
        };
        assert_eq!(
            Meta::decode(&evil.encode()),
            Err(MetaError::Field("origin"))
        );
        let evil = Meta {
            publisher: String::new(),
            ..sample()
        };
        assert_eq!(
            Meta::decode(&evil.encode()),
            Err(MetaError::Field("publisher"))
        );
        let evil = Meta {
            type_name: "a\nb".into(),
            ..sample()
        };
        assert_eq!(
            Meta::decode(&evil.encode()),
            Err(MetaError::Field("type name"))
        );
        let evil = Meta {
            seq: u64::MAX,
            ..sample()
        };
        assert_eq!(
            Meta::decode(&evil.encode()),
            Err(MetaError::Field("sequence number"))
        );
        let mut long_type = good[..good.len() - sample().type_name.len() - 2].to_vec();
        long_type.extend_from_slice(&(MAX_TYPE_NAME as u16 + 1).to_le_bytes());
        long_type.extend(std::iter::repeat_n(b'a', MAX_TYPE_NAME + 1));
        assert_eq!(
            Meta::decode(&long_type),
            Err(MetaError::Field("type name length"))
        );
    }

    /// A cheap deterministic sweep (xorshift): 20 000 copies of a good
    /// attachment, each with one byte among its first `span` changed and
    /// then cut at a random length.
    fn mutations(seed: u64, span: usize, mut check: impl FnMut(&[u8])) {
        let mut x = seed;
        let good = sample().encode();
        let span = span.min(good.len()) as u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = good.clone();
            bytes[(x % span) as usize] = (x >> 32) as u8;
            bytes.truncate((x >> 40) as usize % (bytes.len() + 1));
            check(&bytes);
        }
    }

    /// Whatever `decode` accepts, `parse` accepts with the same kind,
    /// number and identity; whatever `parse` refuses, `decode` refuses.
    #[test]
    fn header_agrees_with_the_full_decode() {
        mutations(0x2545_f491_4f6c_dd1d, SEQ_AT + 8, |bytes| {
            match (Header::parse(bytes), MetaRef::decode(bytes)) {
                (Ok(h), Ok(m)) => {
                    assert_eq!((h.kind, h.seq, h.identity), (m.kind, m.seq, m.identity))
                }
                (Err(_), Ok(m)) => panic!("decode took {m:?}, parse refused"),
                _ => {}
            }
        });
        let mut max = sample().encode();
        max[SEQ_AT..SEQ_AT + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Header::parse(&max),
            Err(MetaError::Field("sequence number"))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        mutations(0x9e37_79b9_7f4a_7c15, usize::MAX, |bytes| {
            let _ = Meta::decode(bytes);
        });
    }
}
