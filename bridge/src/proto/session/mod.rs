//! The per-connection protocol machines, sans-IO: which frame is legal
//! when, and what each side does about it.
//!
//! After the handshake a connection carries two independent directions of
//! streams: the streams this bridge *exports* (it sends STREAM_ANNOUNCE,
//! DATA, GAP, END and receives SUBSCRIBE, ACK, CREDIT for them) and the
//! streams it *imports* (the reverse). [`route`] says which half a decoded
//! frame belongs to; [`export::ExportSession`] is the sender half,
//! [`import::ImportSession`] the receiver half.
//!
//! Nothing here touches a socket, a ring or a clock: the caller passes ring
//! progress, kernel completions and the time in, and carries the decisions
//! out.

pub mod export;
pub mod import;

use super::{
    frame::{ErrorCode, Frame, FrameType},
    stream::StreamError,
};

/// Which half of the connection handles a frame received after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A request about a stream this bridge exports (SUBSCRIBE, ACK, CREDIT).
    Export,
    /// A frame of a stream this bridge imports (STREAM_ANNOUNCE, DATA, GAP, END).
    Import,
    /// About the connection as a whole (HEARTBEAT, ERROR).
    Connection,
    /// Never legal after the handshake (HELLO, NOISE).
    Illegal,
}

/// The half of the connection a frame of type `t` belongs to.
pub fn route(t: FrameType) -> Route {
    match t {
        FrameType::Subscribe | FrameType::Ack | FrameType::Credit => Route::Export,
        FrameType::StreamAnnounce | FrameType::Data | FrameType::Gap | FrameType::End => {
            Route::Import
        }
        FrameType::Heartbeat | FrameType::Error => Route::Connection,
        FrameType::Hello | FrameType::Noise => Route::Illegal,
    }
}

/// [`route`] of a decoded frame.
pub fn route_frame(f: &Frame<'_>) -> Route {
    route(f.frame_type())
}

/// A peer's frame that breaks the protocol: the connection ends with an
/// ERROR carrying [`Violation::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A frame names a stream that was never announced on this connection.
    #[error("{frame} for stream {stream}, which was not announced on this connection")]
    UnknownStream {
        /// The frame's type.
        frame: FrameType,
        /// Its stream id.
        stream: u32,
    },
    /// A frame that is not legal in the stream's current state.
    #[error("{frame} for stream {stream}: {why}")]
    Unexpected {
        /// The frame's type.
        frame: FrameType,
        /// Its stream id.
        stream: u32,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A frame whose positions are inconsistent with the stream.
    #[error("{frame} for stream {stream}: {error}")]
    Positions {
        /// The frame's type.
        frame: FrameType,
        /// Its stream id.
        stream: u32,
        /// What is wrong with its positions.
        error: StreamError,
    },
}

impl Violation {
    /// The ERROR code sent to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownStream { .. } => ErrorCode::UnknownStream,
            Self::Unexpected { .. } | Self::Positions { .. } => ErrorCode::UnexpectedFrame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_type_has_one_half() {
        use FrameType::*;
        let export = [Subscribe, Ack, Credit];
        let import = [StreamAnnounce, Data, Gap, End];
        for t in [
            Hello,
            StreamAnnounce,
            Subscribe,
            Data,
            Ack,
            Gap,
            Heartbeat,
            Error,
            End,
            Noise,
            Credit,
        ] {
            let want = if export.contains(&t) {
                Route::Export
            } else if import.contains(&t) {
                Route::Import
            } else if matches!(t, Heartbeat | Error) {
                Route::Connection
            } else {
                Route::Illegal
            };
            assert_eq!(route(t), want, "{t}");
        }
        let v = Violation::UnknownStream {
            frame: Ack,
            stream: 3,
        };
        assert_eq!(v.code(), ErrorCode::UnknownStream);
        assert_eq!(
            v.to_string(),
            "ACK for stream 3, which was not announced on this connection"
        );
    }
}
