//! Mutual authentication of two bridges, sans-IO.
//!
//! # Protocol
//!
//! Both sides send HELLO at once (no ordering between the two directions):
//! [`HELLO_MAGIC`], [`PROTOCOL_VERSION`], the bus ring layout version, a fresh
//! 32-byte random nonce and the node name. On receiving the peer's HELLO a
//! side checks magic, protocol version and layout version (exact match; a
//! mismatch is a typed error and an ERROR frame to the peer), refuses a peer
//! that claims its own name or echoes its own nonce, checks the peer name
//! against the expected one if configured, and sends AUTH with its proof:
//!
//! ```text
//! proof = HMAC-SHA256(psk, "shmbus-bridge auth v1" || role(prover)
//!                          || protocol_version u16 || layout_version u32
//!                          || nonce(prover) || nonce(verifier)
//!                          || len u16 || name(prover) || len u16 || name(verifier))
//! ```
//!
//! `role(prover)` is `"initiator"` for the side that opened the TCP
//! connection and `"acceptor"` for the other. On receiving the peer's AUTH, a
//! side recomputes the proof the peer must have made and compares in constant
//! time ([`hmac::Mac::verify_slice`]); on success it sends AUTH_OK. The
//! handshake is complete when the peer's AUTH verified *and* the peer's
//! AUTH_OK arrived. The peer's frames therefore arrive in the fixed order
//! HELLO, AUTH, AUTH_OK; anything else is an error.
//!
//! # Why these inputs
//!
//! - Both nonces: a proof is bound to this connection; a recorded proof is
//!   useless on another one.
//! - The role label: a side's own proof, reflected back to it on the same
//!   connection, does not verify, because it expects the *other* role's label.
//! - Both names, and refusing a peer that claims our own name: an attacker
//!   who opens a second connection to us (or makes us dial it) and relays our
//!   proof from one connection to the other would have to present our own
//!   name as its own, which is refused.
//! - The versions: a downgrade by rewriting HELLO fields breaks the proof.
//!
//! The key is never sent; only a MAC over fresh nonces is. Timeouts are the
//! caller's business (no clock here): drop the connection if the handshake
//! does not complete within the configured peer timeout.
//!
//! # Example
//!
//! ```
//! use shmbus_bridge::proto::frame::{decode, Decoded};
//! use shmbus_bridge::proto::handshake::*;
//!
//! let key = PresharedKey::new(b"correct horse battery staple").unwrap();
//! let params = |role, name: &str| HandshakeParams {
//!     role,
//!     local_name: name.to_owned(),
//!     expected_peer: None,
//!     layout_version: 1,
//! };
//! let mut a = Handshake::new(params(Role::Initiator, "a"), key.clone(), Nonce::random()?)?;
//! let mut b = Handshake::new(params(Role::Acceptor, "b"), key, Nonce::random()?)?;
//! let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
//! a.start(&mut to_b)?;
//! b.start(&mut to_a)?;
//! // Shuttle bytes until both sides are done (a socket would carry them).
//! fn pump(side: &mut Handshake, inbox: &mut Vec<u8>, outbox: &mut Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//!     let bytes = std::mem::take(inbox);
//!     let mut rest = &bytes[..];
//!     while let Decoded::Frame { frame, consumed } = decode(rest)? {
//!         side.handle(&frame, outbox)?;
//!         rest = &rest[consumed..];
//!     }
//!     Ok(())
//! }
//! while !(a.is_complete() && b.is_complete()) {
//!     pump(&mut a, &mut to_a, &mut to_b)?;
//!     pump(&mut b, &mut to_b, &mut to_a)?;
//! }
//! assert_eq!(a.peer().unwrap().name, "b");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{fmt, io};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{
    Auth, ErrorCode, ErrorFrame, Frame, FrameError, FrameType, Hello, HELLO_MAGIC, MAX_NAME_LEN,
    NONCE_LEN,
};

/// The bridge protocol version this build speaks. Peers must match exactly.
pub const PROTOCOL_VERSION: u16 = 1;

const DOMAIN: &[u8] = b"shmbus-bridge auth v1";

type HmacSha256 = Hmac<Sha256>;

/// The pre-shared key both bridges hold.
///
/// Only the keyed HMAC state is kept, not the raw bytes, and `Debug` does not
/// print it.
#[derive(Clone)]
pub struct PresharedKey {
    mac: HmacSha256,
    len: usize,
}

impl PresharedKey {
    /// Builds a key from raw bytes; `None` if `bytes` is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_bridge::proto::handshake::PresharedKey;
    /// assert!(PresharedKey::new(b"").is_none());
    /// assert_eq!(PresharedKey::new(b"secret").unwrap().len(), 6);
    /// ```
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() {
            return None;
        }
        // HMAC accepts keys of any length, so this only fails for the empty
        // key excluded above.
        let mac = <HmacSha256 as Mac>::new_from_slice(bytes).ok()?;
        Some(Self {
            mac,
            len: bytes.len(),
        })
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty key cannot be built.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresharedKey(<{} bytes, redacted>)", self.len)
    }
}

/// Which end of the TCP connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection (`connect`).
    Initiator,
    /// Accepted the connection (`accept`).
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Initiator => b"initiator",
            Self::Acceptor => b"acceptor",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Initiator => Self::Acceptor,
            Self::Acceptor => Self::Initiator,
        }
    }
}

/// A 32-byte handshake nonce.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// Wraps given bytes (tests, or a caller with its own randomness source).
    /// A nonce must never be reused.
    pub const fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh nonce from the operating system's CSPRNG (`getrandom(2)`).
    ///
    /// # Errors
    ///
    /// The OS error if the kernel cannot provide random bytes.
    pub fn random() -> io::Result<Self> {
        let mut bytes = [0u8; NONCE_LEN];
        crate::io::random::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..)")
    }
}

/// What this side is and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeParams {
    /// Which end of the connection this side is.
    pub role: Role,
    /// This node's name (1..=255 bytes).
    pub local_name: String,
    /// If set, the peer must present exactly this name.
    pub expected_peer: Option<String>,
    /// The ring layout version of the local bus; the peer's must match.
    pub layout_version: u32,
}

/// The authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node name.
    pub name: String,
    /// The peer's nonce.
    pub nonce: Nonce,
    /// The peer's protocol version (equal to ours).
    pub protocol_version: u16,
    /// The peer's ring layout version (equal to ours).
    pub layout_version: u32,
}

/// Progress reported by [`Handshake::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Keep feeding frames.
    InProgress,
    /// Both sides are authenticated; normal frames may flow.
    Complete(PeerInfo),
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
    #[error(
        "peer speaks bridge protocol version {peer}, this bridge speaks {local}: upgrade one side"
    )]
    VersionMismatch {
        /// Our version.
        local: u16,
        /// The peer's version.
        peer: u16,
    },
    /// The peer's bus uses another ring layout, so ring bytes cannot be forwarded verbatim.
    #[error("peer's ring layout version is {peer}, ours is {local}: run the same shmbus version on both hosts")]
    LayoutMismatch {
        /// Our layout version.
        local: u32,
        /// The peer's layout version.
        peer: u32,
    },
    /// The peer's proof did not verify.
    #[error("peer failed authentication: its proof does not match; check that both bridges use the same pre-shared key")]
    AuthenticationFailed,
    /// The peer echoed our own nonce (a reflection attempt or a self-connection).
    #[error("peer echoed this bridge's own nonce: refusing a reflected handshake")]
    ReflectedNonce,
    /// The peer claims this node's own name.
    #[error("peer claims this node's own name {name:?}: refusing a connection to self or a reflection attempt")]
    SelfConnection {
        /// The name.
        name: String,
    },
    /// The peer's name is not the configured one.
    #[error("peer is named {found:?} but {expected:?} was expected: check the peer's node name and this bridge's peer list")]
    UnexpectedPeer {
        /// The configured name.
        expected: String,
        /// The name presented.
        found: String,
    },
    /// A frame arrived that is not valid at this point of the handshake.
    #[error("unexpected {got} frame during the handshake, expected {expected}")]
    UnexpectedFrame {
        /// What the state machine waited for.
        expected: &'static str,
        /// What arrived.
        got: FrameType,
    },
    /// The peer sent ERROR.
    #[error("peer rejected the handshake ({code:?}): {message}")]
    PeerRejected {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// A handshake frame could not be decoded or encoded.
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
    /// The state machine was used after it completed or failed, or started twice.
    #[error("handshake state machine misuse: {0}")]
    InvalidState(&'static str),
}

impl HandshakeError {
    /// The ERROR frame to tell the peer about this failure, if any.
    fn wire_code(&self) -> Option<ErrorCode> {
        Some(match self {
            Self::BadHelloMagic { .. } | Self::Frame(_) => ErrorCode::Malformed,
            Self::VersionMismatch { .. } => ErrorCode::ProtocolVersion,
            Self::LayoutMismatch { .. } => ErrorCode::LayoutVersion,
            Self::AuthenticationFailed | Self::ReflectedNonce => ErrorCode::AuthFailed,
            Self::SelfConnection { .. } | Self::UnexpectedPeer { .. } => ErrorCode::UnexpectedPeer,
            Self::UnexpectedFrame { .. } => ErrorCode::UnexpectedFrame,
            Self::PeerRejected { .. } | Self::InvalidState(_) => return None,
        })
    }
}

#[derive(Debug)]
enum State {
    New,
    AwaitHello,
    AwaitAuth(PeerInfo),
    AwaitAuthOk(PeerInfo),
    Done(PeerInfo),
    Failed,
}

/// The handshake state machine of one connection.
///
/// Feed it every frame the peer sends (decoded with
/// [`decode`](super::frame::decode)) until it reports
/// [`Status::Complete`]; send whatever it appends to the output buffer. On
/// any error it has appended an ERROR frame for the peer (where one applies):
/// flush it, then close the connection.
#[derive(Debug)]
pub struct Handshake {
    params: HandshakeParams,
    key: PresharedKey,
    nonce: Nonce,
    state: State,
}

impl Handshake {
    /// Creates the state machine.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Frame`] if the local name is empty or too long.
    pub fn new(
        params: HandshakeParams,
        key: PresharedKey,
        nonce: Nonce,
    ) -> Result<Self, HandshakeError> {
        if params.local_name.is_empty() {
            return Err(FrameError::EmptyString { field: "peer name" }.into());
        }
        if params.local_name.len() > MAX_NAME_LEN {
            return Err(FrameError::StringTooLong {
                field: "peer name",
                len: params.local_name.len(),
                max: MAX_NAME_LEN,
            }
            .into());
        }
        Ok(Self {
            params,
            key,
            nonce,
            state: State::New,
        })
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.params.role
    }

    /// Whether the handshake completed.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// The authenticated peer, once complete.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.state {
            State::Done(p) => Some(p),
            _ => None,
        }
    }

    /// Appends this side's HELLO to `out`. Call once, before [`Handshake::handle`].
    ///
    /// # Errors
    ///
    /// [`HandshakeError::InvalidState`] if called twice.
    pub fn start(&mut self, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
        if !matches!(self.state, State::New) {
            return Err(HandshakeError::InvalidState("start called twice"));
        }
        Frame::Hello(Hello {
            hello_magic: HELLO_MAGIC,
            protocol_version: PROTOCOL_VERSION,
            layout_version: self.params.layout_version,
            nonce: self.nonce.0,
            peer_name: &self.params.local_name,
        })
        .encode_to_vec(out)?;
        self.state = State::AwaitHello;
        Ok(())
    }

    /// Processes one frame from the peer, appending any reply to `out`.
    ///
    /// # Errors
    ///
    /// Any [`HandshakeError`]; the state machine is then failed and an ERROR
    /// frame for the peer has been appended to `out` where one applies.
    pub fn handle(
        &mut self,
        frame: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Status, HandshakeError> {
        let result = self.step(frame, out);
        if let Err(e) = &result {
            if !matches!(e, HandshakeError::InvalidState(_)) {
                self.fail(e, out);
            }
        }
        result
    }

    /// Records that the peer's bytes could not be decoded: fails the state
    /// machine, appends an ERROR frame for the peer and returns the error to
    /// report.
    pub fn on_decode_error(&mut self, err: FrameError, out: &mut Vec<u8>) -> HandshakeError {
        let e = HandshakeError::Frame(err);
        self.fail(&e, out);
        e
    }

    fn fail(&mut self, e: &HandshakeError, out: &mut Vec<u8>) {
        self.state = State::Failed;
        if let Some(code) = e.wire_code() {
            let message = e.to_string();
            // Our own messages are short; cut at a char boundary if needed.
            let mut end = message.len().min(super::frame::MAX_ERROR_MESSAGE_LEN);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            // Cannot fail: the message was bounded above.
            let _ = Frame::Error(ErrorFrame {
                code,
                message: &message[..end],
            })
            .encode_to_vec(out);
        }
    }

    fn step(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<Status, HandshakeError> {
        if let Frame::Error(e) = frame {
            if !matches!(self.state, State::Done(_) | State::Failed) {
                return Err(HandshakeError::PeerRejected {
                    code: e.code,
                    message: e.message.to_owned(),
                });
            }
        }
        match (std::mem::replace(&mut self.state, State::Failed), frame) {
            (State::AwaitHello, Frame::Hello(hello)) => {
                let peer = self.check_hello(hello)?;
                let proof = self.proof(
                    self.params.role,
                    &self.nonce,
                    &peer.nonce,
                    &self.params.local_name,
                    &peer.name,
                );
                Frame::Auth(Auth { proof }).encode_to_vec(out)?;
                self.state = State::AwaitAuth(peer);
                Ok(Status::InProgress)
            }
            (State::AwaitAuth(peer), Frame::Auth(auth)) => {
                self.verify(&peer, &auth.proof)?;
                Frame::AuthOk.encode_to_vec(out)?;
                self.state = State::AwaitAuthOk(peer);
                Ok(Status::InProgress)
            }
            (State::AwaitAuthOk(peer), Frame::AuthOk) => {
                self.state = State::Done(peer.clone());
                Ok(Status::Complete(peer))
            }
            (State::New, _) => {
                self.state = State::New;
                Err(HandshakeError::InvalidState("handle called before start"))
            }
            (state @ (State::Done(_) | State::Failed), _) => {
                self.state = state;
                Err(HandshakeError::InvalidState("handshake already finished"))
            }
            (State::AwaitHello, f) => Err(HandshakeError::UnexpectedFrame {
                expected: "HELLO",
                got: f.frame_type(),
            }),
            (State::AwaitAuth(_), f) => Err(HandshakeError::UnexpectedFrame {
                expected: "AUTH",
                got: f.frame_type(),
            }),
            (State::AwaitAuthOk(_), f) => Err(HandshakeError::UnexpectedFrame {
                expected: "AUTH_OK",
                got: f.frame_type(),
            }),
        }
    }

    fn check_hello(&self, hello: &Hello<'_>) -> Result<PeerInfo, HandshakeError> {
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
        if hello.layout_version != self.params.layout_version {
            return Err(HandshakeError::LayoutMismatch {
                local: self.params.layout_version,
                peer: hello.layout_version,
            });
        }
        if hello.nonce == self.nonce.0 {
            return Err(HandshakeError::ReflectedNonce);
        }
        if hello.peer_name == self.params.local_name {
            return Err(HandshakeError::SelfConnection {
                name: hello.peer_name.to_owned(),
            });
        }
        if let Some(expected) = &self.params.expected_peer {
            if hello.peer_name != expected {
                return Err(HandshakeError::UnexpectedPeer {
                    expected: expected.clone(),
                    found: hello.peer_name.to_owned(),
                });
            }
        }
        Ok(PeerInfo {
            name: hello.peer_name.to_owned(),
            nonce: Nonce(hello.nonce),
            protocol_version: hello.protocol_version,
            layout_version: hello.layout_version,
        })
    }

    fn transcript(
        &self,
        prover: Role,
        prover_nonce: &Nonce,
        verifier_nonce: &Nonce,
        prover_name: &str,
        verifier_name: &str,
    ) -> HmacSha256 {
        let mut mac = self.key.mac.clone();
        mac.update(DOMAIN);
        mac.update(prover.label());
        mac.update(&PROTOCOL_VERSION.to_le_bytes());
        mac.update(&self.params.layout_version.to_le_bytes());
        mac.update(&prover_nonce.0);
        mac.update(&verifier_nonce.0);
        for name in [prover_name, verifier_name] {
            // Names are at most MAX_NAME_LEN bytes (checked), so they fit a u16.
            mac.update(&(name.len() as u16).to_le_bytes());
            mac.update(name.as_bytes());
        }
        mac
    }

    fn proof(
        &self,
        prover: Role,
        prover_nonce: &Nonce,
        verifier_nonce: &Nonce,
        prover_name: &str,
        verifier_name: &str,
    ) -> [u8; 32] {
        self.transcript(
            prover,
            prover_nonce,
            verifier_nonce,
            prover_name,
            verifier_name,
        )
        .finalize()
        .into_bytes()
        .into()
    }

    fn verify(&self, peer: &PeerInfo, proof: &[u8; 32]) -> Result<(), HandshakeError> {
        self.transcript(
            self.params.role.other(),
            &peer.nonce,
            &self.nonce,
            &peer.name,
            &self.params.local_name,
        )
        // Constant-time comparison of the tags.
        .verify_slice(proof)
        .map_err(|_| HandshakeError::AuthenticationFailed)
    }
}

#[cfg(test)]
mod tests;
