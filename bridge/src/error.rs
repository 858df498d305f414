//! The crate-level error type.

use std::io;

use crate::{
    config::ConfigError,
    proto::{frame::FrameError, handshake::HandshakeError, zc::ZcError},
};

/// Any error of the bridge library.
///
/// Each module has its own precise error type; this one wraps them all (plus
/// I/O errors with the operation that failed) for code that drives several.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A frame could not be decoded or encoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake with the peer failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Zero-copy completion bookkeeping found an inconsistency; drop the connection.
    #[error(transparent)]
    ZeroCopy(#[from] ZcError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A caller passed an argument outside the documented range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl BridgeError {
    /// Wraps an I/O error with the operation that failed.
    pub fn io(op: &'static str, source: io::Error) -> Self {
        Self::Io { op, source }
    }

    /// The underlying I/O error kind, if this is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}
