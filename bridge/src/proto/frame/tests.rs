//! Unit tests of the frame codec.

use super::*;
use crate::test_util::Rng;

fn sample_frames(tails: &[StreamTail]) -> Vec<Frame<'_>> {
    vec![
        Frame::Hello(Hello {
            hello_magic: HELLO_MAGIC,
            protocol_version: 1,
            layout_version: 3,
            nonce: [7; NONCE_LEN],
            peer_name: "node-a",
        }),
        Frame::Noise(&[0xAB; 96]),
        Frame::StreamAnnounce(StreamAnnounce {
            stream: 42,
            topic: "imu",
            publisher: "pub-1234-5",
            type_name: "robot::Imu",
            type_fingerprint: 0xDEAD_BEEF_0123_4567,
            ring_capacity: 1 << 20,
            max_message: 4096,
            flags: StreamFlags::UNTETHERED,
        }),
        Frame::Subscribe(Subscribe {
            stream: 42,
            resume_position: 1 << 40,
            window: 1 << 20,
        }),
        Frame::Credit(Credit {
            stream: 42,
            limit: (1 << 40) + (1 << 20),
        }),
        Frame::Data(DataHeader {
            stream: 42,
            start_position: 12345,
            len: 999,
        }),
        Frame::Ack(Ack {
            stream: 42,
            position: u64::MAX,
        }),
        Frame::Gap(Gap {
            stream: 1,
            from: 10,
            to: 20,
            next_seq: 7,
        }),
        Frame::Heartbeat(Heartbeat::new(tails)),
        Frame::Heartbeat(Heartbeat::new(&[])),
        Frame::Error(ErrorFrame {
            code: ErrorCode::AuthFailed,
            message: "wrong key",
        }),
        Frame::Error(ErrorFrame {
            code: ErrorCode::Other(999),
            message: "",
        }),
        Frame::End(End {
            stream: 9,
            position: 1 << 33,
        }),
    ]
}

fn tails() -> Vec<StreamTail> {
    (0..5)
        .map(|i| StreamTail {
            stream: i,
            tail: u64::from(i) * 1000,
        })
        .collect()
}

fn encode_vec(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    f.encode_to_vec(&mut v).expect("sample frames are valid");
    v
}

#[test]
fn round_trip_every_frame_type() {
    let t = tails();
    for frame in sample_frames(&t) {
        let bytes = encode_vec(&frame);
        assert_eq!(bytes.len(), frame.encoded_len());
        match decode(&bytes).unwrap() {
            Decoded::Frame {
                frame: got,
                consumed,
            } => {
                assert_eq!(got, frame);
                assert_eq!(consumed, bytes.len());
            }
            other => panic!("{frame:?}: {other:?}"),
        }
    }
}

#[test]
fn every_strict_prefix_is_incomplete() {
    let t = tails();
    for frame in sample_frames(&t) {
        let bytes = encode_vec(&frame);
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Ok(Decoded::Incomplete { needed }) => assert!(needed > cut),
                other => panic!("{frame:?} cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn trailing_input_is_not_consumed() {
    let t = tails();
    let mut stream = Vec::new();
    let frames = sample_frames(&t);
    for f in &frames {
        f.encode_to_vec(&mut stream).unwrap();
        if let Frame::Data(d) = f {
            stream.extend(std::iter::repeat_n(0x5A, d.len as usize));
        }
    }
    let mut rest = &stream[..];
    for f in &frames {
        let Decoded::Frame { frame, consumed } = decode(rest).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(&frame, f);
        rest = &rest[consumed..];
        if let Frame::Data(d) = frame {
            let (payload, tail) = rest.split_at(d.len as usize);
            assert!(payload.iter().all(|&b| b == 0x5A));
            rest = tail;
        }
    }
    assert!(rest.is_empty());
}

#[test]
fn data_header_layout_is_fixed() {
    let h = DataHeader {
        stream: 0x0102_0304,
        start_position: 0x1112_1314_1516_1718,
        len: 0x20,
    };
    let b = h.encode().unwrap();
    assert_eq!(&b[0..2], b"SB");
    assert_eq!(b[2], FrameType::Data as u8);
    assert_eq!(b[3], 0);
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 16 + 0x20);
    assert_eq!(&b[8..12], &[4, 3, 2, 1]);
    assert_eq!(
        &b[12..20],
        &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]
    );
    assert_eq!(&b[20..24], &[0x20, 0, 0, 0]);
    assert_eq!(h.end_position(), 0x1112_1314_1516_1738);
}

#[test]
fn header_errors() {
    assert_eq!(
        decode(b"XXxxxxxx"),
        Err(FrameError::BadMagic {
            found: u16::from_le_bytes(*b"XX")
        })
    );
    assert_eq!(
        decode(&[b'S', b'B', 0, 0, 0, 0, 0, 0]),
        Err(FrameError::UnknownType { code: 0 })
    );
    assert_eq!(
        decode(&[b'S', b'B', 200, 0, 0, 0, 0, 0]),
        Err(FrameError::UnknownType { code: 200 })
    );
    assert_eq!(
        decode(&[b'S', b'B', 7, 1, 0, 0, 0, 0]),
        Err(FrameError::ReservedFlags { flags: 1 })
    );
    // AUTH and AUTH_OK of protocol version 1 are gone.
    for code in [2, 3] {
        assert_eq!(
            decode(&[b'S', b'B', code, 0, 0, 0, 0, 0]),
            Err(FrameError::UnknownType { code })
        );
    }
    // A huge declared length is refused from the header alone.
    assert!(matches!(
        decode(&[b'S', b'B', 7, 0, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(FrameError::BodyTooLarge {
            frame_type: FrameType::Ack,
            ..
        })
    ));
    assert!(matches!(
        decode(&[b'S', b'B', 6, 0, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(FrameError::BodyTooLarge {
            frame_type: FrameType::Data,
            ..
        })
    ));
}

#[test]
fn body_errors() {
    // ACK with a short body.
    let short = [b'S', b'B', 7, 0, 4, 0, 0, 0, 1, 0, 0, 0];
    assert!(matches!(
        decode(&short),
        Err(FrameError::Malformed { reason, .. }) if reason.contains("shorter")
    ));
    // ACK with a longer body: refused from the header alone.
    assert!(matches!(
        decode(&[b'S', b'B', 7, 0, 13, 0, 0, 0, 9]),
        Err(FrameError::BodyTooLarge { max: 12, .. })
    ));
    // NOISE: empty or over 256 bytes refused.
    assert!(matches!(
        decode(&[b'S', b'B', 12, 0, 0, 0, 0, 0]),
        Err(FrameError::Malformed { .. })
    ));
    assert!(matches!(
        decode(&[b'S', b'B', 12, 0, 1, 1, 0, 0]),
        Err(FrameError::BodyTooLarge { max: 256, .. })
    ));
    // ERROR whose body has one byte after its last field.
    let trailing = [b'S', b'B', 10, 0, 6, 0, 0, 0, 1, 0, 1, 0, b'a', 0];
    assert!(matches!(
        decode(&trailing),
        Err(FrameError::Malformed { reason, .. }) if reason.contains("trailing")
    ));
    // DATA whose frame length disagrees with its payload length.
    let mut d = DataHeader {
        stream: 1,
        start_position: 0,
        len: 10,
    }
    .encode()
    .unwrap();
    d[4] = 17;
    assert!(matches!(decode(&d), Err(FrameError::Malformed { .. })));
    // GAP reversed.
    let mut g = encode_vec(&Frame::Gap(Gap {
        stream: 1,
        from: 1,
        to: 2,
        next_seq: 3,
    }));
    g[12] = 5; // from = 5 > to = 2
    assert_eq!(decode(&g), Err(FrameError::InvalidGap { from: 5, to: 2 }));
    // ERROR with invalid UTF-8.
    let mut e = encode_vec(&Frame::Error(ErrorFrame {
        code: ErrorCode::Internal,
        message: "ab",
    }));
    let n = e.len();
    e[n - 1] = 0xFF;
    assert_eq!(
        decode(&e),
        Err(FrameError::InvalidUtf8 {
            field: "error message"
        })
    );
    // HEARTBEAT count larger than its body.
    let mut hb = encode_vec(&Frame::Heartbeat(Heartbeat::new(&[StreamTail {
        stream: 1,
        tail: 2,
    }])));
    hb[8] = 2;
    assert!(matches!(decode(&hb), Err(FrameError::Malformed { .. })));
}

#[test]
fn announce_checks() {
    let mut a = StreamAnnounce {
        stream: 1,
        topic: "t",
        publisher: "p",
        type_name: "T",
        type_fingerprint: 0,
        ring_capacity: 3000,
        max_message: 10,
        flags: StreamFlags::empty(),
    };
    let mut buf = [0u8; 512];
    assert!(matches!(
        Frame::StreamAnnounce(a).encode(&mut buf),
        Err(FrameError::InvalidRing { .. })
    ));
    a.ring_capacity = 4096;
    let n = Frame::StreamAnnounce(a).encode(&mut buf).unwrap();
    // Unknown flag bit.
    buf[36] = 0x80;
    assert_eq!(
        decode(&buf[..n]),
        Err(FrameError::UnknownStreamFlags { flags: 0x80 })
    );
    a.topic = "";
    assert_eq!(
        Frame::StreamAnnounce(a).encode(&mut buf),
        Err(FrameError::EmptyString { field: "topic" })
    );
    let long = "x".repeat(MAX_NAME_LEN + 1);
    a.topic = &long;
    assert!(matches!(
        Frame::StreamAnnounce(a).encode(&mut buf),
        Err(FrameError::StringTooLong { field: "topic", .. })
    ));
}

#[test]
fn encoder_limits() {
    let mut small = [0u8; 10];
    assert_eq!(
        Frame::Ack(Ack {
            stream: 1,
            position: 1
        })
        .encode(&mut small),
        Err(FrameError::BufferTooSmall {
            needed: 20,
            available: 10
        })
    );
    assert!(matches!(
        DataHeader {
            stream: 0,
            start_position: 0,
            len: MAX_DATA_LEN + 1
        }
        .encode(),
        Err(FrameError::DataTooLong { .. })
    ));
    let many = vec![StreamTail { stream: 0, tail: 0 }; MAX_HEARTBEAT_ENTRIES + 1];
    let mut v = vec![1, 2, 3];
    assert!(matches!(
        Frame::Heartbeat(Heartbeat::new(&many)).encode_to_vec(&mut v),
        Err(FrameError::TooManyEntries { .. })
    ));
    assert_eq!(v, [1, 2, 3], "failed encode leaves the vec unchanged");
    let full = vec![StreamTail { stream: 9, tail: 9 }; MAX_HEARTBEAT_ENTRIES];
    let f = Frame::Heartbeat(Heartbeat::new(&full));
    let bytes = encode_vec(&f);
    assert_eq!(
        bytes.len() - HEADER_LEN,
        FrameType::Heartbeat.max_body_len() as usize
    );
    assert!(matches!(decode(&bytes), Ok(Decoded::Frame { frame, .. }) if frame == f));
}

/// Checks the canonical-encoding property on whatever `decode` accepts.
fn check_input(input: &[u8]) {
    match decode(input) {
        Ok(Decoded::Frame { frame, consumed }) => {
            assert!(consumed <= input.len());
            let re = encode_vec(&frame);
            assert_eq!(
                &re[..],
                &input[..consumed],
                "non-canonical decode of {frame:?}"
            );
        }
        Ok(Decoded::Incomplete { needed }) => assert!(needed > input.len()),
        Err(_) => {}
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng::new(0x5eed);
    let iterations = if cfg!(miri) { 200 } else { 50_000 };
    let mut buf = vec![0u8; 600];
    for _ in 0..iterations {
        let len = rng.below(buf.len());
        for b in &mut buf[..len] {
            *b = rng.next_u64() as u8;
        }
        // Half of the inputs get a valid magic and type so the body
        // parsers are exercised, not just the header check.
        if len >= HEADER_LEN && rng.below(2) == 0 {
            buf[0..2].copy_from_slice(b"SB");
            buf[2] = 1 + rng.below(10) as u8;
            buf[3] = 0;
            let body = (rng.below(len - HEADER_LEN + 8)) as u32;
            buf[4..8].copy_from_slice(&body.to_le_bytes());
        }
        check_input(&buf[..len]);
    }
}

#[test]
fn mutated_frames_never_panic() {
    let t = tails();
    let mut rng = Rng::new(42);
    let iterations = if cfg!(miri) { 100 } else { 20_000 };
    let encoded: Vec<Vec<u8>> = sample_frames(&t).iter().map(encode_vec).collect();
    for _ in 0..iterations {
        let mut bytes = encoded[rng.below(encoded.len())].clone();
        for _ in 0..=rng.below(3) {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        let cut = rng.below(bytes.len() + 1);
        check_input(&bytes[..cut]);
        check_input(&bytes);
    }
}
