//! Authentication (and optionally encryption) of every frame after the
//! handshake, sans-IO.
//!
//! # Construction
//!
//! Each direction of a connection has its own 256-bit key
//! ([`SessionKeys::derive`]: HKDF-SHA256 over the Noise split, salted with
//! the handshake hash, one label per direction and protection mode) and its
//! own implicit 64-bit frame counter, starting at 0 and shared by every
//! frame kind. Frame `n` of a direction is sealed with ChaCha20-Poly1305
//! (RFC 8439) under that key with the 96-bit nonce `0u32 ‖ n` (little
//! endian), and its 16-byte tag follows the frame on the wire. The counter
//! is never sent: a receiver opens frame `n` with nonce `n`, so an injected,
//! replayed, reordered or dropped frame fails authentication, and the
//! connection is closed (it cannot resynchronise, by design).
//!
//! What goes where, per [`Protection`]:
//!
//! - [`Protection::Auth`] (default): the plaintext is empty; the associated
//!   data is the whole frame — the 8-byte header, the fixed DATA fields and
//!   the ring bytes as they are. The tag is exactly the AEAD's tag over
//!   (AAD = frame, plaintext = ""). Ring bytes are only read, so the sender
//!   still hands them to the kernel with `MSG_ZEROCOPY`.
//! - [`Protection::Encrypt`]: the associated data is the frame header (for
//!   DATA plus the 16 fixed bytes: stream, position, length); the rest (a
//!   control frame's body, a DATA payload) is the plaintext, encrypted in
//!   place. The sender copies ring bytes into a buffer to encrypt them.
//!
//! # Why hand-assembled from `chacha20` and `poly1305`
//!
//! The `chacha20poly1305` crate takes the associated data as one `&[u8]`,
//! but a DATA frame's AAD is a header on the stack followed by ring bytes in
//! a shared mapping (and on the receiving side, bytes spread over the
//! replica ring's buffers). [`FrameSeal`] is the RFC 8439 §2.8 construction,
//! step for step as that crate does it — Poly1305 key from keystream block
//! 0, AAD padded to 16, ciphertext from block 1 padded to 16, then the two
//! lengths — with the AAD and the ciphertext accepted in pieces. The tests
//! check it against the RFC's test vector and against `chacha20poly1305`.
//! Tags are compared in constant time (`poly1305`'s `verify`, built on
//! `subtle`). Poly1305 is never used with a static key: its one-time key
//! comes from ChaCha20 under a fresh nonce per frame.

use chacha20::{
    cipher::{KeyIvInit, StreamCipher, StreamCipherSeek},
    ChaCha20,
};
use hkdf::Hkdf;
use poly1305::{
    universal_hash::{generic_array::GenericArray, KeyInit, UniversalHash},
    Poly1305,
};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of the tag after every frame.
pub const TAG_LEN: usize = 16;
/// Length of a direction key.
pub const KEY_LEN: usize = 32;

/// How frames after the handshake are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Protection {
    /// Every frame authenticated, nothing encrypted; ring bytes are sent
    /// from the ring (zero-copy).
    #[default]
    Auth,
    /// Every frame authenticated and its body encrypted; ring bytes are
    /// copied to be encrypted.
    Encrypt,
}

impl Protection {
    /// The wire value (in the handshake payloads).
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Auth => 1,
            Self::Encrypt => 2,
        }
    }

    /// Maps a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Auth),
            2 => Some(Self::Encrypt),
            _ => None,
        }
    }

    /// The name used in the configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Encrypt => "encrypt",
        }
    }
}

/// A frame failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The tag does not match: the frame was injected, replayed, reordered,
    /// corrupted, or a frame before it was dropped.
    #[error("frame {counter} failed authentication (injected, replayed, reordered or corrupted on the way)")]
    BadTag {
        /// The counter the frame was expected to carry.
        counter: u64,
    },
    /// 2^64 - 1 frames were sent or received on this connection.
    #[error("frame counter exhausted; reconnect")]
    CounterExhausted,
}

/// One direction's key and frame counter.
pub struct Direction {
    key: Zeroizing<[u8; KEY_LEN]>,
    next: u64,
    protection: Protection,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction")
            .field("key", &"<redacted>")
            .field("next", &self.next)
            .field("protection", &self.protection)
            .finish()
    }
}

impl Direction {
    /// A direction with `key`, starting at counter 0.
    pub fn new(key: [u8; KEY_LEN], protection: Protection) -> Self {
        Self {
            key: Zeroizing::new(key),
            next: 0,
            protection,
        }
    }

    /// The protection mode.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// The counter of the next frame.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Starts sealing or opening the next frame (and counts it).
    ///
    /// # Errors
    ///
    /// [`SealError::CounterExhausted`] after 2^64 - 1 frames.
    pub fn begin(&mut self) -> Result<FrameSeal, SealError> {
        if self.next == u64::MAX {
            return Err(SealError::CounterExhausted);
        }
        let counter = self.next;
        self.next += 1;
        Ok(FrameSeal::new(&self.key, counter))
    }

    /// Seals the control frame in `frame` (header and body, as encoded) and
    /// appends its tag: in [`Protection::Encrypt`] the body is encrypted in
    /// place first.
    ///
    /// # Errors
    ///
    /// [`SealError::CounterExhausted`].
    pub fn seal_control(&mut self, frame: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        let protection = self.protection;
        let mut seal = self.begin()?;
        let bytes = &mut frame[start..];
        let split = super::frame::HEADER_LEN.min(bytes.len());
        let (header, body) = bytes.split_at_mut(split);
        seal.aad(header);
        match protection {
            Protection::Auth => seal.aad(body),
            Protection::Encrypt => seal.encrypt(body),
        }
        frame.extend_from_slice(&seal.tag());
        Ok(())
    }

    /// Opens a control frame received as `frame` (header and body) with
    /// `tag`: verifies, then in [`Protection::Encrypt`] decrypts the body in
    /// place.
    ///
    /// # Errors
    ///
    /// [`SealError`]; `frame` is unchanged then.
    pub fn open_control(&mut self, frame: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), SealError> {
        let protection = self.protection;
        let counter = self.next;
        let mut seal = self.begin()?;
        let split = super::frame::HEADER_LEN.min(frame.len());
        let (header, body) = frame.split_at_mut(split);
        seal.aad(header);
        match protection {
            Protection::Auth => {
                seal.aad(body);
                seal.verify(tag)
                    .map_err(|()| SealError::BadTag { counter })?;
            }
            Protection::Encrypt => {
                seal.absorb_ciphertext(body);
                let mut ks = seal
                    .verify(tag)
                    .map_err(|()| SealError::BadTag { counter })?;
                ks.apply(body);
            }
        }
        Ok(())
    }
}

/// The keys of one connection: what this side sends and receives with.
#[derive(Debug)]
pub struct SessionKeys {
    /// Frames this side sends.
    pub send: Direction,
    /// Frames this side receives.
    pub recv: Direction,
}

impl SessionKeys {
    /// Derives both directions from the Noise handshake's raw split
    /// (`initiator_to_responder`, `responder_to_initiator`) and its handshake
    /// hash: `key = HKDF-SHA256(salt = handshake hash, ikm = split key,
    /// info = "shmbus-bridge v2 " ‖ direction ‖ " " ‖ protection)`.
    ///
    /// The labels keep the two directions apart even if the split keys were
    /// equal, and bind the keys to the protection mode both sides agreed on.
    pub fn derive(
        initiator_to_responder: &[u8; KEY_LEN],
        responder_to_initiator: &[u8; KEY_LEN],
        handshake_hash: &[u8],
        this_side_is_initiator: bool,
        protection: Protection,
    ) -> Self {
        let derive = |ikm: &[u8; KEY_LEN], dir: &str| {
            let hk = Hkdf::<Sha256>::new(Some(handshake_hash), ikm);
            let info = format!("shmbus-bridge v2 {dir} {}", protection.name());
            let mut okm = [0u8; KEY_LEN];
            // Cannot fail: 32 bytes is far below HKDF-SHA256's 8160-byte limit.
            let _ = hk.expand(info.as_bytes(), &mut okm);
            let d = Direction::new(okm, protection);
            okm.zeroize();
            d
        };
        let i2r = derive(initiator_to_responder, "initiator->responder");
        let r2i = derive(responder_to_initiator, "responder->initiator");
        if this_side_is_initiator {
            Self {
                send: i2r,
                recv: r2i,
            }
        } else {
            Self {
                send: r2i,
                recv: i2r,
            }
        }
    }
}

/// Bytes [`MacStream`] hands to Poly1305 at a time: four blocks, the
/// width of the AVX2 backend's parallel path.
const MAC_CHUNK: usize = 64;

/// Streaming Poly1305 over pieces of any length.
///
/// The `poly1305` AVX2 backend takes its four-blocks-at-once fast path only
/// while it holds no cached single blocks, and `universal-hash` 0.5 does not
/// realign it: once fed a lone block (a 24-byte DATA header is one block
/// and a half) it would process every later block one by one, at about
/// half the speed. So this buffers up to four blocks and feeds Poly1305
/// only whole multiples of 64 bytes until the end of the message.
struct MacStream {
    mac: Poly1305,
    buf: [u8; MAC_CHUNK],
    fill: usize,
}

impl MacStream {
    fn feed(mac: &mut Poly1305, bytes: &[u8]) {
        // `bytes` is a multiple of 16 long here, so no padding is added.
        debug_assert_eq!(bytes.len() % 16, 0);
        mac.update_padded(bytes);
    }

    fn absorb(&mut self, mut data: &[u8]) {
        if self.fill > 0 {
            let take = (MAC_CHUNK - self.fill).min(data.len());
            self.buf[self.fill..self.fill + take].copy_from_slice(&data[..take]);
            self.fill += take;
            data = &data[take..];
            if self.fill < MAC_CHUNK {
                return;
            }
            Self::feed(&mut self.mac, &self.buf);
            self.fill = 0;
        }
        let whole = data.len() / MAC_CHUNK * MAC_CHUNK;
        if whole > 0 {
            Self::feed(&mut self.mac, &data[..whole]);
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    /// Ends a section (AAD or ciphertext): zero-pads to a 16-byte block.
    fn pad(&mut self) {
        let padded = self.fill.div_ceil(16) * 16;
        self.buf[self.fill..padded].fill(0);
        self.fill = padded;
        if self.fill == MAC_CHUNK {
            Self::feed(&mut self.mac, &self.buf);
            self.fill = 0;
        }
    }

    /// Adds the final lengths block (after [`MacStream::pad`]) and returns
    /// the MAC with everything fed.
    fn finish(mut self, lengths: &[u8; 16]) -> Poly1305 {
        // After `pad`, fill is a multiple of 16 below 64: room for 16 more.
        self.buf[self.fill..self.fill + 16].copy_from_slice(lengths);
        self.fill += 16;
        Self::feed(&mut self.mac, &self.buf[..self.fill]);
        self.mac
    }
}

/// ChaCha20-Poly1305 (RFC 8439) for one frame, with the associated data and
/// the message fed in pieces: first every AAD piece ([`FrameSeal::aad`]),
/// then every message piece ([`FrameSeal::encrypt`] to seal,
/// [`FrameSeal::absorb_ciphertext`] to open), then [`FrameSeal::tag`] or
/// [`FrameSeal::verify`].
pub struct FrameSeal {
    cipher: ChaCha20,
    mac: MacStream,
    aad_len: u64,
    msg_len: u64,
    in_msg: bool,
}

impl std::fmt::Debug for FrameSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSeal")
            .field("aad_len", &self.aad_len)
            .field("msg_len", &self.msg_len)
            .finish_non_exhaustive()
    }
}

impl FrameSeal {
    /// The AEAD under `key` with the nonce of frame `counter`.
    pub fn new(key: &[u8; KEY_LEN], counter: u64) -> Self {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        Self::with_nonce(key, &nonce)
    }

    /// The AEAD under `key` with an explicit 96-bit nonce (test vectors).
    pub fn with_nonce(key: &[u8; KEY_LEN], nonce: &[u8; 12]) -> Self {
        let mut cipher = ChaCha20::new(key.into(), nonce.into());
        let mut mac_key = Zeroizing::new([0u8; 32]);
        cipher.apply_keystream(&mut mac_key[..]);
        let mac = Poly1305::new(GenericArray::from_slice(&mac_key[..]));
        // The message is encrypted from block 1 on.
        cipher.seek(64u64);
        Self {
            cipher,
            mac: MacStream {
                mac,
                buf: [0; MAC_CHUNK],
                fill: 0,
            },
            aad_len: 0,
            msg_len: 0,
            in_msg: false,
        }
    }

    /// Feeds associated data. Call before any message piece; a piece given
    /// after one is a bug and is ignored in release builds.
    pub fn aad(&mut self, piece: &[u8]) {
        debug_assert!(!self.in_msg, "AAD after the message");
        if self.in_msg {
            return;
        }
        self.mac.absorb(piece);
        self.aad_len += piece.len() as u64;
    }

    fn start_msg(&mut self) {
        if !self.in_msg {
            self.mac.pad();
            self.in_msg = true;
        }
    }

    /// Encrypts a message piece in place and authenticates the ciphertext.
    pub fn encrypt(&mut self, piece: &mut [u8]) {
        self.start_msg();
        self.cipher.apply_keystream(piece);
        self.mac.absorb(piece);
        self.msg_len += piece.len() as u64;
    }

    /// Authenticates a received ciphertext piece (decrypt it after
    /// [`FrameSeal::verify`] succeeded).
    pub fn absorb_ciphertext(&mut self, piece: &[u8]) {
        self.start_msg();
        self.mac.absorb(piece);
        self.msg_len += piece.len() as u64;
    }

    /// Pads the message, adds the two lengths; the MAC is then complete.
    fn finish(mut self) -> (ChaCha20, Poly1305) {
        self.start_msg();
        self.mac.pad();
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&self.aad_len.to_le_bytes());
        block[8..].copy_from_slice(&self.msg_len.to_le_bytes());
        (self.cipher, self.mac.finish(&block))
    }

    /// The tag.
    pub fn tag(self) -> [u8; TAG_LEN] {
        self.finish().1.finalize().into()
    }

    /// Checks `tag` in constant time (`poly1305`'s `verify`); on success
    /// returns the keystream to decrypt the message pieces with, in order.
    ///
    /// # Errors
    ///
    /// `Err(())` if the tag does not match.
    #[allow(clippy::result_unit_err)]
    pub fn verify(self, tag: &[u8; TAG_LEN]) -> Result<Keystream, ()> {
        let (cipher, mac) = self.finish();
        mac.verify(GenericArray::from_slice(tag))
            .map(|()| Keystream(cipher))
            .map_err(|_| ())
    }
}

/// Decrypts message pieces after a successful [`FrameSeal::verify`].
pub struct Keystream(ChaCha20);

impl std::fmt::Debug for Keystream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keystream(..)")
    }
}

impl Keystream {
    /// Decrypts the next message piece in place.
    pub fn apply(&mut self, piece: &mut [u8]) {
        self.0.apply_keystream(piece);
    }
}

#[cfg(test)]
mod tests;
