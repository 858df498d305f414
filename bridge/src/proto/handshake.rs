//! Mutual authentication of two bridges with Noise IK, sans-IO.
//!
//! # Why IK
//!
//! Each node has a static X25519 key pair and an allowlist of peer public
//! keys (with the node name each key may use). The node that dials knows
//! whom it dials — a `[[peer]]` entry names the peer, and the allowlist gives
//! that name's key — so the initiator knows the responder's static key in
//! advance: the **IK** pattern fits, and takes one round trip:
//!
//! ```text
//! -> e, es, s, ss    (initiator's static key, encrypted, in message 1)
//! <- e, ee, se
//! ```
//!
//! The responder, however, does not know who is calling until message 1
//! arrives: with **KK** it would have to know the initiator's key *before*
//! reading message 1, i.e. try every allowlisted key in turn. With IK the
//! responder reads the initiator's static key out of message 1, looks it up
//! in the allowlist, and if it is not there closes the connection without
//! sending a single byte (an unknown key learns nothing, not even that this
//! is a bridge with the right key). The cost of IK: message 1 can be
//! replayed by someone who recorded it; a replay cannot finish the handshake
//! (it lacks the initiator's ephemeral key), and the responder does not
//! consider the peer authenticated — nor take over its streams — until the
//! first *transport* frame from the initiator opens under the new session
//! keys (key confirmation, see below).
//!
//! # Messages
//!
//! 1. Initiator → responder: a HELLO frame, laid out as in protocol
//!    version 1 (`hello_magic`, [`PROTOCOL_VERSION`] = 3, ring layout
//!    version, 32 random bytes, the node name it *claims*), then a NOISE
//!    frame with Noise message 1, whose payload is the initiator's wanted
//!    [`Protection`]. An older bridge decodes the HELLO, sees version 3,
//!    and refuses with "peer speaks bridge protocol version 3, this bridge
//!    speaks 1" (or 2: version 2 had no CREDIT frame and shorter SUBSCRIBE
//!    and GAP bodies); a version-1 HELLO arriving here is
//!    refused as clearly (a [`HandshakeError::VersionMismatch`] naming
//!    pre-shared keys).
//! 2. Responder → initiator: a NOISE frame with message 2, whose payload is
//!    the agreed protection (the stronger of the two wishes).
//! 3. Initiator → responder: the first sealed frame, an empty HEARTBEAT
//!    (counter 0): key confirmation.
//!
//! The HELLO bytes are the Noise prologue, so the claimed name, versions and
//! random bytes are covered by the handshake: a change on the way makes it
//! fail. The responder accepts the initiator only if its static key is on
//! the allowlist **and** the name it claims is the one listed for that key;
//! the peer's name is the allowlisted one. The initiator accepts the
//! responder only if message 2 decrypts, which needs the private key of the
//! allowlisted public key it dialed.
//!
//! # What the peer is told
//!
//! Before the peer is authenticated the responder only answers a HELLO it
//! cannot work with at all (another protocol version or ring layout) with an
//! ERROR frame, so an older bridge logs a clear reason. Anything else — bad
//! magic, garbage, an unknown key, a name that is not the key's — ends the
//! connection with no reply; the reason is logged locally.
//!
//! # After the handshake
//!
//! [`Session::keys`] holds one key and one frame counter per direction
//! (see [`seal`](super::seal)).

use std::fmt;

use super::{
    frame::{
        ErrorCode, ErrorFrame, Frame, FrameError, FrameType, Heartbeat, Hello, HELLO_MAGIC,
        MAX_NAME_LEN, MAX_NOISE_LEN, NONCE_LEN,
    },
    seal::{Protection, SessionKeys, TAG_LEN},
};
use crate::identity::{Allowlist, PublicKey, StaticKeypair};

/// The bridge protocol version this build speaks. Peers must match exactly.
/// Version 1 was the pre-shared-key handshake with unauthenticated frames;
/// version 2 had no per-stream credit (CREDIT, SUBSCRIBE's window) and no
/// sequence number in GAP.
pub const PROTOCOL_VERSION: u16 = 3;

/// The Noise protocol: pattern IK, X25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Prefix of the Noise prologue (followed by the initiator's HELLO frame).
const PROLOGUE_LABEL: &[u8] = b"shmbus-bridge v2 prologue";

/// Which end of the TCP connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection (`connect`): the Noise initiator.
    Initiator,
    /// Accepted the connection (`accept`): the Noise responder.
    Acceptor,
}

/// What this side is and wants.
#[derive(Debug, Clone)]
pub struct HandshakeParams {
    /// This node's name (as allowlisted by its peers).
    pub local_name: String,
    /// This node's static key pair.
    pub keypair: StaticKeypair,
    /// The ring layout version of the local bus; the peer's must match.
    pub layout_version: u32,
    /// The protection this side wants (the stronger wish of the two wins).
    pub protection: Protection,
}

/// An authenticated peer and the keys of the connection.
#[derive(Debug)]
pub struct Session {
    /// The peer's node name, from the allowlist.
    pub peer_name: String,
    /// The peer's static public key.
    pub peer_key: PublicKey,
    /// The agreed protection.
    pub protection: Protection,
    /// Per-direction keys and counters.
    pub keys: SessionKeys,
}

/// Why the handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The HELLO magic is wrong: the peer is not a shmbus bridge.
    #[error("peer sent HELLO magic {found:#018x}, expected {HELLO_MAGIC:#018x}: it is not a shmbus bridge")]
    BadHelloMagic {
        /// The magic received.
        found: u64,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks bridge protocol version {peer}, this bridge speaks {local}{}: upgrade one side", if *peer == 1 { " (version 1 used pre-shared keys; later versions use a key pair per node and an allowlist)" } else { "" })]
    VersionMismatch {
        /// Our version.
        local: u16,
        /// The peer's version.
        peer: u16,
    },
    /// The peer's bus uses another ring layout.
    #[error("peer's ring layout version is {peer}, ours is {local}: run the same shmbus version on both hosts")]
    LayoutMismatch {
        /// Our layout version.
        local: u32,
        /// The peer's layout version.
        peer: u32,
    },
    /// The Noise message did not verify (garbage, a tampered message, or
    /// for the initiator: the responder does not hold the allowlisted key).
    #[error("{0}")]
    Noise(String),
    /// The initiator's static key is not on the allowlist.
    #[error("unknown key {key}: not on the allowlist (peer claimed the name {claimed:?})")]
    UnknownKey {
        /// The key (base64).
        key: String,
        /// The name it claimed (validated, so safe to print).
        claimed: String,
    },
    /// The initiator claims a name other than the one its key is listed with.
    #[error(
        "key {key} is allowlisted as {listed:?} but the peer claims the name {claimed:?}; refused"
    )]
    NameMismatch {
        /// The key (short form).
        key: String,
        /// The allowlisted name.
        listed: String,
        /// The claimed name.
        claimed: String,
    },
    /// The peer presented this node's own key.
    #[error(
        "peer presented this node's own public key: refusing a connection to self or a reflection"
    )]
    SelfConnection,
    /// The claimed name is not a valid node name.
    #[error("peer claims an invalid node name ({0})")]
    BadName(String),
    /// The peer asked for a protection mode this version does not know.
    #[error("peer asked for unknown protection mode {0}")]
    BadProtection(u8),
    /// The responder's agreed protection is weaker than ours.
    #[error(
        "responder agreed to protection {got:?}, weaker than the {wanted:?} this bridge asked for"
    )]
    Downgrade {
        /// Ours.
        wanted: Protection,
        /// Theirs.
        got: Protection,
    },
    /// A frame arrived that is not valid at this point of the handshake.
    #[error("unexpected {got} frame during the handshake, expected {expected}")]
    UnexpectedFrame {
        /// What was expected.
        expected: &'static str,
        /// What arrived.
        got: FrameType,
    },
    /// The key confirmation frame did not open under the session key.
    #[error("the initiator's first frame failed authentication (a replayed handshake message?)")]
    ConfirmationFailed,
    /// The peer sent ERROR.
    #[error("peer rejected the handshake ({code:?}): {message}")]
    PeerRejected {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's message, with control characters escaped.
        message: String,
    },
    /// A handshake frame could not be decoded or encoded.
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
}

impl HandshakeError {
    /// The ERROR frame the responder sends for this failure, if any (only
    /// for HELLOs it cannot work with: see the module docs).
    pub fn reply(&self) -> Option<Vec<u8>> {
        let code = match self {
            Self::VersionMismatch { .. } => ErrorCode::ProtocolVersion,
            Self::LayoutMismatch { .. } => ErrorCode::LayoutVersion,
            _ => return None,
        };
        let mut message = self.to_string();
        // Our own messages are short; cut at a character boundary if not.
        let mut end = message.len().min(super::frame::MAX_ERROR_MESSAGE_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        let mut out = Vec::new();
        Frame::Error(ErrorFrame {
            code,
            message: &message,
        })
        .encode_to_vec(&mut out)
        .ok()?;
        Some(out)
    }
}

/// Validates a node name: 1..=255 bytes of `[A-Za-z0-9._-]`.
///
/// # Errors
///
/// A message saying what is wrong.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a node name must be 1 to {MAX_NAME_LEN} bytes long, not {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{} may contain only letters, digits, '.', '_' and '-'",
            crate::log::sanitize(name)
        ));
    }
    Ok(())
}

fn builder(prologue: &[u8]) -> Result<snow::Builder<'_>, HandshakeError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| HandshakeError::Noise(format!("Noise parameters: {e:?}")))?;
    snow::Builder::new(params)
        .prologue(prologue)
        .map_err(|e| HandshakeError::Noise(e.to_string()))
}

fn prologue(hello: &[u8]) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(hello);
    p
}

fn noise_err(what: &str) -> impl Fn(snow::Error) -> HandshakeError + '_ {
    move |e| HandshakeError::Noise(format!("{what}: {e}"))
}

fn session(
    hs: &mut snow::HandshakeState,
    initiator: bool,
    protection: Protection,
    peer_name: String,
    peer_key: PublicKey,
) -> Session {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (i2r, r2i) = (zeroize::Zeroizing::new(i2r), zeroize::Zeroizing::new(r2i));
    let keys = SessionKeys::derive(&i2r, &r2i, hs.get_handshake_hash(), initiator, protection);
    Session {
        peer_name,
        peer_key,
        protection,
        keys,
    }
}

fn peer_protection(payload: &[u8]) -> Result<Protection, HandshakeError> {
    let v = *payload
        .first()
        .ok_or_else(|| HandshakeError::Noise("empty handshake payload".into()))?;
    Protection::from_u8(v).ok_or(HandshakeError::BadProtection(v))
}

/// Checks the cleartext HELLO fields that need no key: magic, protocol
/// version, ring layout version, name syntax.
///
/// # Errors
///
/// [`HandshakeError::BadHelloMagic`], [`HandshakeError::VersionMismatch`],
/// [`HandshakeError::LayoutMismatch`] or [`HandshakeError::BadName`].
pub fn check_hello(hello: &Hello<'_>, layout_version: u32) -> Result<(), HandshakeError> {
    if hello.hello_magic != HELLO_MAGIC {
        return Err(HandshakeError::BadHelloMagic {
            found: hello.hello_magic,
        });
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            local: PROTOCOL_VERSION,
            peer: hello.protocol_version,
        });
    }
    if hello.layout_version != layout_version {
        return Err(HandshakeError::LayoutMismatch {
            local: layout_version,
            peer: hello.layout_version,
        });
    }
    check_node_name(hello.peer_name).map_err(HandshakeError::BadName)
}

/// The dialing side, between message 1 and message 2.
pub struct Initiator {
    hs: snow::HandshakeState,
    peer_name: String,
    peer_key: PublicKey,
    protection: Protection,
    layout_version: u32,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("peer_name", &self.peer_name)
            .field("peer_key", &self.peer_key)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Builds message 1 (HELLO + NOISE frames, appended to `out`) for a
    /// connection to `peer_name`, whose allowlisted key is `peer_key`.
    /// `random` fills the HELLO's 32 random bytes.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Noise`] or [`HandshakeError::Frame`] (a bad local name).
    pub fn start(
        params: &HandshakeParams,
        peer_name: &str,
        peer_key: &PublicKey,
        random: [u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        let start = out.len();
        Frame::Hello(Hello {
            hello_magic: HELLO_MAGIC,
            protocol_version: PROTOCOL_VERSION,
            layout_version: params.layout_version,
            nonce: random,
            peer_name: &params.local_name,
        })
        .encode_to_vec(out)?;
        let prologue = prologue(&out[start..]);
        let mut hs = builder(&prologue)?
            .local_private_key(params.keypair.private_bytes())
            .and_then(|b| b.remote_public_key(peer_key.as_bytes()))
            .and_then(snow::Builder::build_initiator)
            .map_err(noise_err("cannot start the handshake"))?;
        let mut msg = [0u8; MAX_NOISE_LEN];
        let n = hs
            .write_message(&[params.protection.to_u8()], &mut msg)
            .map_err(noise_err("cannot write handshake message 1"))?;
        Frame::Noise(&msg[..n]).encode_to_vec(out)?;
        Ok(Self {
            hs,
            peer_name: peer_name.to_owned(),
            peer_key: *peer_key,
            protection: params.protection,
            layout_version: params.layout_version,
        })
    }

    /// Processes the responder's reply (message 2, or an ERROR, or a
    /// version-1 HELLO) and, on success, appends the key confirmation frame
    /// (sealed) to `out`.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`]; close the connection.
    pub fn finish(
        mut self,
        frame: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Session, HandshakeError> {
        let msg = match frame {
            Frame::Noise(m) => *m,
            Frame::Error(e) => {
                return Err(HandshakeError::PeerRejected {
                    code: e.code,
                    message: crate::log::sanitize(e.message),
                })
            }
            Frame::Hello(h) => {
                // A version-1 bridge sends its HELLO first, unasked.
                check_hello(h, self.layout_version)?;
                return Err(HandshakeError::UnexpectedFrame {
                    expected: "NOISE",
                    got: FrameType::Hello,
                });
            }
            other => {
                return Err(HandshakeError::UnexpectedFrame {
                    expected: "NOISE",
                    got: other.frame_type(),
                })
            }
        };
        let mut payload = [0u8; MAX_NOISE_LEN];
        let n = self.hs.read_message(msg, &mut payload).map_err(|e| {
            HandshakeError::Noise(format!(
                "handshake message 2 does not verify ({e}): the peer does not hold the private key allowlisted for {:?}, or the message was changed on the way",
                self.peer_name
            ))
        })?;
        let agreed = peer_protection(&payload[..n])?;
        if agreed < self.protection {
            return Err(HandshakeError::Downgrade {
                wanted: self.protection,
                got: agreed,
            });
        }
        let mut s = session(&mut self.hs, true, agreed, self.peer_name, self.peer_key);
        let start = out.len();
        Frame::Heartbeat(Heartbeat::new(&[])).encode_to_vec(out)?;
        s.keys
            .send
            .seal_control(out, start)
            .map_err(|e| HandshakeError::Noise(e.to_string()))?;
        Ok(s)
    }
}

/// The accepting side, after message 1: message 2 was written, the key
/// confirmation frame is awaited.
pub struct Responder {
    session: Session,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("peer_name", &self.session.peer_name)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Processes message 1: `hello_bytes` is the HELLO frame exactly as
    /// received (the prologue), `hello` its decoding, `noise` the NOISE
    /// frame's message. On success appends message 2 to `out`.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`]; send [`HandshakeError::reply`] if it has one, then
    /// close.
    pub fn respond(
        params: &HandshakeParams,
        allowlist: &Allowlist,
        hello_bytes: &[u8],
        hello: &Hello<'_>,
        noise: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        check_hello(hello, params.layout_version)?;
        let prologue = prologue(hello_bytes);
        let mut hs = builder(&prologue)?
            .local_private_key(params.keypair.private_bytes())
            .and_then(snow::Builder::build_responder)
            .map_err(noise_err("cannot start the handshake"))?;
        let mut payload = [0u8; MAX_NOISE_LEN];
        let n = hs
            .read_message(noise, &mut payload)
            .map_err(noise_err("handshake message 1 does not verify"))?;
        let key = hs
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .ok_or_else(|| HandshakeError::Noise("no static key in message 1".into()))?;
        if key == params.keypair.public() {
            return Err(HandshakeError::SelfConnection);
        }
        let Some(listed) = allowlist.name_of(&key) else {
            return Err(HandshakeError::UnknownKey {
                key: key.to_string(),
                claimed: hello.peer_name.to_owned(),
            });
        };
        if listed != hello.peer_name {
            return Err(HandshakeError::NameMismatch {
                key: key.short(),
                listed: listed.to_owned(),
                claimed: hello.peer_name.to_owned(),
            });
        }
        let wanted = peer_protection(&payload[..n])?;
        let agreed = wanted.max(params.protection);
        let mut msg = [0u8; MAX_NOISE_LEN];
        let n = hs
            .write_message(&[agreed.to_u8()], &mut msg)
            .map_err(noise_err("cannot write handshake message 2"))?;
        Frame::Noise(&msg[..n]).encode_to_vec(out)?;
        let session = session(&mut hs, false, agreed, listed.to_owned(), key);
        Ok(Self { session })
    }

    /// The peer this responder is talking to (authenticated only once
    /// [`Responder::confirm`] succeeds).
    pub fn peer_name(&self) -> &str {
        &self.session.peer_name
    }

    /// Opens the initiator's first sealed frame (`frame` without its tag,
    /// then `tag`), which must be an empty HEARTBEAT: the initiator holds
    /// the session keys, so this is not a replayed message 1.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::ConfirmationFailed`] or
    /// [`HandshakeError::UnexpectedFrame`].
    pub fn confirm(
        mut self,
        frame: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<Session, HandshakeError> {
        self.session
            .keys
            .recv
            .open_control(frame, tag)
            .map_err(|_| HandshakeError::ConfirmationFailed)?;
        match super::frame::decode(frame)? {
            super::frame::Decoded::Frame {
                frame: Frame::Heartbeat(h),
                ..
            } if h.is_empty() => Ok(self.session),
            super::frame::Decoded::Frame { frame, .. } => Err(HandshakeError::UnexpectedFrame {
                expected: "empty HEARTBEAT (key confirmation)",
                got: frame.frame_type(),
            }),
            super::frame::Decoded::Incomplete { .. } => Err(HandshakeError::UnexpectedFrame {
                expected: "empty HEARTBEAT (key confirmation)",
                got: FrameType::Heartbeat,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
