//! Fuzz target: the bridge's frame decoder against the reference decoder.
//!
//! The input is one byte string as it would start a connection's stream.
//! Properties checked on every input:
//!
//! - `shmbus_bridge::proto::frame::decode` and `shmbus_fuzz::wire_ref::decode`
//!   (written from `docs/bridge-protocol.md`) agree: the same frame with the
//!   same fields and bytes consumed, the same bytes needed, or the same
//!   refusal; a refusal's message is not empty.
//! - `Incomplete { needed }` asks for more than the input holds.
//! - An accepted frame re-encodes to exactly the bytes it was decoded from
//!   (the encoding is canonical), and decoding does not depend on what
//!   follows the frame or on how much of it has arrived.

use shmbus_bridge::proto::frame::{decode, Decoded, Frame, FrameError};
use shmbus_fuzz::wire_ref::{self, RefDecoded, RefFrame, Refusal};

/// The bridge's frame in the reference's terms.
fn to_ref(f: &Frame<'_>) -> RefFrame {
    match *f {
        Frame::Hello(h) => RefFrame::Hello {
            magic: h.hello_magic,
            version: h.protocol_version,
            layout: h.layout_version,
            nonce: h.nonce,
            name: h.peer_name.to_owned(),
        },
        Frame::StreamAnnounce(a) => RefFrame::Announce {
            stream: a.stream,
            fingerprint: a.type_fingerprint,
            capacity: a.ring_capacity,
            max_message: a.max_message,
            flags: a.flags.bits(),
            topic: a.topic.to_owned(),
            publisher: a.publisher.to_owned(),
            type_name: a.type_name.to_owned(),
        },
        Frame::Subscribe(s) => RefFrame::Subscribe {
            stream: s.stream,
            resume: s.resume_position,
            window: s.window,
        },
        Frame::Data(d) => RefFrame::Data {
            stream: d.stream,
            start: d.start_position,
            len: d.len,
        },
        Frame::Ack(a) => RefFrame::Ack {
            stream: a.stream,
            position: a.position,
        },
        Frame::Gap(g) => RefFrame::Gap {
            stream: g.stream,
            from: g.from,
            to: g.to,
            next_seq: g.next_seq,
        },
        Frame::Heartbeat(h) => RefFrame::Heartbeat(h.iter().map(|e| (e.stream, e.tail)).collect()),
        Frame::Error(e) => RefFrame::Error {
            code: e.code.to_u16(),
            message: e.message.to_owned(),
        },
        Frame::End(e) => RefFrame::End {
            stream: e.stream,
            position: e.position,
        },
        Frame::Noise(m) => RefFrame::Noise(m.to_vec()),
        Frame::Credit(c) => RefFrame::Credit {
            stream: c.stream,
            limit: c.limit,
        },
    }
}

/// The bridge's refusal in the reference's terms (the spec's table).
/// `Malformed` carries its rule only as text, so the text is matched here.
fn refusal(e: &FrameError) -> Refusal {
    match e {
        FrameError::BadMagic { .. } => Refusal::BadMagic,
        FrameError::UnknownType { .. } => Refusal::UnknownType,
        FrameError::ReservedFlags { .. } => Refusal::ReservedFlags,
        FrameError::BodyTooLarge { .. } => Refusal::BodyTooLarge,
        FrameError::Malformed { reason, .. } => match *reason {
            "body is shorter than its fields" => Refusal::Truncated,
            "trailing bytes after the last field" => Refusal::Trailing,
            "body length does not equal 16 + payload length" => Refusal::DataLengthMismatch,
            "empty Noise message" => Refusal::EmptyNoise,
            other => panic!("decoder refused with a reason the spec does not list: {other}"),
        },
        FrameError::StringTooLong { .. } => Refusal::StringTooLong,
        FrameError::EmptyString { .. } => Refusal::EmptyString,
        FrameError::InvalidUtf8 { .. } => Refusal::InvalidUtf8,
        FrameError::TooManyEntries { .. } => Refusal::TooManyEntries,
        FrameError::InvalidGap { .. } => Refusal::InvalidGap,
        FrameError::InvalidRing { .. } => Refusal::InvalidRing,
        FrameError::UnknownStreamFlags { .. } => Refusal::UnknownStreamFlags,
        FrameError::DataTooLong { .. } | FrameError::BufferTooSmall { .. } => {
            panic!("decoder returned an encoder-only error: {e:?}")
        }
    }
}

/// The bridge's outcome in the reference's terms.
fn bridge_outcome(buf: &[u8]) -> Result<RefDecoded, Refusal> {
    match decode(buf) {
        Ok(Decoded::Frame { frame, consumed }) => Ok(RefDecoded::Frame {
            frame: to_ref(&frame),
            consumed,
        }),
        Ok(Decoded::Incomplete { needed }) => {
            assert!(needed > buf.len(), "needs {needed} but has {}", buf.len());
            Ok(RefDecoded::Incomplete { needed })
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal must say why");
            Err(refusal(&e))
        }
    }
}

fn check(data: &[u8]) {
    let got = bridge_outcome(data);
    let want = wire_ref::decode(data);
    assert_eq!(got, want, "bridge decoder and reference disagree");

    let Ok(Decoded::Frame { frame, consumed }) = decode(data) else {
        return;
    };
    // Canonical: encoding gives back the bytes decoded.
    let mut out = Vec::new();
    let n = frame
        .encode_to_vec(&mut out)
        .expect("a decoded frame encodes");
    assert_eq!(n, consumed);
    assert_eq!(out, data[..consumed], "re-encoding differs from the input");
    if let Frame::Data(d) = frame {
        let header = d.encode().expect("a decoded DATA header encodes");
        assert_eq!(header[..], data[..consumed]);
    }
    // The same frame whatever follows it.
    let mut longer = data[..consumed].to_vec();
    longer.extend_from_slice(b"SB\x07\0garbage after the frame");
    assert_eq!(bridge_outcome(&longer), got);
    // Any shorter prefix of the frame is incomplete, never a refusal.
    for cut in [
        0,
        1,
        wire_ref::HEADER_LEN - 1,
        wire_ref::HEADER_LEN,
        consumed - 1,
    ] {
        if cut < consumed {
            let want_needed = if cut < wire_ref::HEADER_LEN {
                wire_ref::HEADER_LEN
            } else {
                consumed
            };
            assert_eq!(
                bridge_outcome(&data[..cut]),
                Ok(RefDecoded::Incomplete {
                    needed: want_needed
                }),
                "prefix of {cut} bytes"
            );
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}
