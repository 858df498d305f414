//! Unit tests of the handshake state machine.

use super::*;
use crate::proto::frame::{decode, Ack, Decoded};

fn params(role: Role, name: &str) -> HandshakeParams {
    HandshakeParams {
        role,
        local_name: name.to_owned(),
        expected_peer: None,
        layout_version: 7,
    }
}

fn key(k: &[u8]) -> PresharedKey {
    PresharedKey::new(k).unwrap()
}

fn side(role: Role, name: &str, k: &[u8], nonce: u8) -> Handshake {
    Handshake::new(params(role, name), key(k), Nonce::from_bytes([nonce; 32])).unwrap()
}

/// Decodes every frame in `bytes` into owned wire chunks.
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Decoded::Frame { consumed, .. } = decode(rest).unwrap() else {
            panic!("incomplete frame in test buffer")
        };
        out.push(rest[..consumed].to_vec());
        rest = &rest[consumed..];
    }
    out
}

fn feed(h: &mut Handshake, wire: &[u8], out: &mut Vec<u8>) -> Result<Status, HandshakeError> {
    let Decoded::Frame { frame, .. } = decode(wire).unwrap() else {
        panic!("incomplete")
    };
    h.handle(&frame, out)
}

/// Feeds every frame in `inbox` to `h` until it finishes.
fn pump(
    h: &mut Handshake,
    inbox: &[u8],
    outbox: &mut Vec<u8>,
    result: &mut Option<Result<PeerInfo, HandshakeError>>,
) {
    for f in frames(inbox) {
        if result.is_some() {
            return;
        }
        match feed(h, &f, outbox) {
            Ok(Status::InProgress) => {}
            Ok(Status::Complete(p)) => *result = Some(Ok(p)),
            Err(e) => *result = Some(Err(e)),
        }
    }
}

/// Runs two sides against each other; returns each side's final result.
fn run_pair(
    a: &mut Handshake,
    b: &mut Handshake,
) -> (
    Result<PeerInfo, HandshakeError>,
    Result<PeerInfo, HandshakeError>,
) {
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    a.start(&mut to_b).unwrap();
    b.start(&mut to_a).unwrap();
    let mut results = [None, None];
    for _round in 0..10 {
        let inbox_a = std::mem::take(&mut to_a);
        pump(a, &inbox_a, &mut to_b, &mut results[0]);
        let inbox_b = std::mem::take(&mut to_b);
        pump(b, &inbox_b, &mut to_a, &mut results[1]);
        if results.iter().all(Option::is_some) {
            break;
        }
    }
    let [ra, rb] = results.map(|r| r.expect("handshake did not finish"));
    (ra, rb)
}

#[test]
fn success_both_sides_learn_each_other() {
    let mut a = side(Role::Initiator, "alpha", b"k3y", 1);
    let mut b = side(Role::Acceptor, "beta", b"k3y", 2);
    let (ra, rb) = run_pair(&mut a, &mut b);
    let pa = ra.unwrap();
    let pb = rb.unwrap();
    assert_eq!(pa.name, "beta");
    assert_eq!(pb.name, "alpha");
    assert_eq!(pa.nonce, Nonce::from_bytes([2; 32]));
    assert!(a.is_complete() && b.is_complete());
    assert_eq!(a.peer(), Some(&pa));
}

#[test]
fn expected_peer_name_is_enforced() {
    let mut a = Handshake::new(
        HandshakeParams {
            expected_peer: Some("gamma".into()),
            ..params(Role::Initiator, "alpha")
        },
        key(b"k"),
        Nonce::from_bytes([1; 32]),
    )
    .unwrap();
    let mut b = side(Role::Acceptor, "beta", b"k", 2);
    let (ra, rb) = run_pair(&mut a, &mut b);
    assert_eq!(
        ra.unwrap_err(),
        HandshakeError::UnexpectedPeer {
            expected: "gamma".into(),
            found: "beta".into()
        }
    );
    // b hears why.
    assert!(matches!(
        rb.unwrap_err(),
        HandshakeError::PeerRejected {
            code: ErrorCode::UnexpectedPeer,
            ..
        }
    ));
}

#[test]
fn wrong_key_fails_on_both_sides() {
    let mut a = side(Role::Initiator, "alpha", b"key-one", 1);
    let mut b = side(Role::Acceptor, "beta", b"key-two", 2);
    let (ra, rb) = run_pair(&mut a, &mut b);
    assert_eq!(ra.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(rb.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert!(!a.is_complete() && !b.is_complete());
}

#[test]
fn reflected_proof_is_rejected() {
    // The attacker talks to `a` with its own nonce and name, then sends
    // `a`'s own AUTH back to it.
    let mut a = side(Role::Acceptor, "alpha", b"secret", 1);
    let mut out = Vec::new();
    a.start(&mut out).unwrap();
    let attacker_hello = {
        let mut v = Vec::new();
        Frame::Hello(Hello {
            hello_magic: HELLO_MAGIC,
            protocol_version: PROTOCOL_VERSION,
            layout_version: 7,
            nonce: [9; 32],
            peer_name: "mallory",
        })
        .encode_to_vec(&mut v)
        .unwrap();
        v
    };
    out.clear();
    assert_eq!(
        feed(&mut a, &attacker_hello, &mut out),
        Ok(Status::InProgress)
    );
    let a_auth = frames(&out).remove(0);
    out.clear();
    assert_eq!(
        feed(&mut a, &a_auth, &mut out),
        Err(HandshakeError::AuthenticationFailed)
    );
    let err_frame = frames(&out).remove(0);
    assert!(matches!(
        decode(&err_frame),
        Ok(Decoded::Frame {
            frame: Frame::Error(ErrorFrame {
                code: ErrorCode::AuthFailed,
                ..
            }),
            ..
        })
    ));
}

#[test]
fn cross_connection_relay_needs_our_own_name_and_is_refused() {
    // Relaying `a`'s proof from one connection to another only works if
    // the attacker presents `a`'s own name and nonce; both are refused.
    for (nonce, name, expected) in [
        ([1u8; 32], "mallory", HandshakeError::ReflectedNonce),
        (
            [9u8; 32],
            "alpha",
            HandshakeError::SelfConnection {
                name: "alpha".into(),
            },
        ),
    ] {
        let mut a = side(Role::Acceptor, "alpha", b"secret", 1);
        let mut out = Vec::new();
        a.start(&mut out).unwrap();
        let mut hello = Vec::new();
        Frame::Hello(Hello {
            hello_magic: HELLO_MAGIC,
            protocol_version: PROTOCOL_VERSION,
            layout_version: 7,
            nonce,
            peer_name: name,
        })
        .encode_to_vec(&mut hello)
        .unwrap();
        assert_eq!(feed(&mut a, &hello, &mut out), Err(expected));
    }
}

#[test]
fn same_role_on_both_ends_fails() {
    // Proofs are bound to the prover's role, so two initiators (a
    // misconfiguration or a relay) cannot authenticate each other.
    let mut a = side(Role::Initiator, "alpha", b"k", 1);
    let mut b = side(Role::Initiator, "beta", b"k", 2);
    let (ra, rb) = run_pair(&mut a, &mut b);
    assert_eq!(ra.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(rb.unwrap_err(), HandshakeError::AuthenticationFailed);
}

#[test]
fn wrong_version_layout_and_magic() {
    let cases: [(u64, u16, u32, HandshakeError, ErrorCode); 3] = [
        (
            HELLO_MAGIC,
            PROTOCOL_VERSION + 1,
            7,
            HandshakeError::VersionMismatch {
                local: PROTOCOL_VERSION,
                peer: PROTOCOL_VERSION + 1,
            },
            ErrorCode::ProtocolVersion,
        ),
        (
            HELLO_MAGIC,
            PROTOCOL_VERSION,
            8,
            HandshakeError::LayoutMismatch { local: 7, peer: 8 },
            ErrorCode::LayoutVersion,
        ),
        (
            0x1234,
            PROTOCOL_VERSION,
            7,
            HandshakeError::BadHelloMagic { found: 0x1234 },
            ErrorCode::Malformed,
        ),
    ];
    for (magic, version, layout, expected, code) in cases {
        let mut a = side(Role::Acceptor, "alpha", b"k", 1);
        let mut out = Vec::new();
        a.start(&mut out).unwrap();
        out.clear();
        let mut hello = Vec::new();
        Frame::Hello(Hello {
            hello_magic: magic,
            protocol_version: version,
            layout_version: layout,
            nonce: [3; 32],
            peer_name: "beta",
        })
        .encode_to_vec(&mut hello)
        .unwrap();
        assert_eq!(feed(&mut a, &hello, &mut out), Err(expected.clone()));
        let Ok(Decoded::Frame {
            frame: Frame::Error(e),
            ..
        }) = decode(&out)
        else {
            panic!("no ERROR frame for {expected:?}")
        };
        assert_eq!(e.code, code);
        assert!(e.message.contains("version") || e.message.contains("magic"));
        // The state machine stays failed.
        assert!(matches!(
            feed(&mut a, &hello, &mut out),
            Err(HandshakeError::InvalidState(_))
        ));
    }
}

#[test]
fn out_of_order_and_garbage() {
    // AUTH before HELLO.
    let mut a = side(Role::Acceptor, "alpha", b"k", 1);
    let mut out = Vec::new();
    a.start(&mut out).unwrap();
    let mut v = Vec::new();
    Frame::Auth(Auth { proof: [0; 32] })
        .encode_to_vec(&mut v)
        .unwrap();
    assert_eq!(
        feed(&mut a, &v, &mut out),
        Err(HandshakeError::UnexpectedFrame {
            expected: "HELLO",
            got: FrameType::Auth
        })
    );
    // A data-plane frame in the middle of the handshake.
    let mut a = side(Role::Acceptor, "alpha", b"k", 1);
    a.start(&mut out).unwrap();
    v.clear();
    Frame::Ack(Ack {
        stream: 0,
        position: 0,
    })
    .encode_to_vec(&mut v)
    .unwrap();
    assert!(matches!(
        feed(&mut a, &v, &mut out),
        Err(HandshakeError::UnexpectedFrame {
            got: FrameType::Ack,
            ..
        })
    ));
    // Garbage bytes: the caller's decode fails and reports it here.
    let mut a = side(Role::Acceptor, "alpha", b"k", 1);
    out.clear();
    a.start(&mut out).unwrap();
    out.clear();
    let err = decode(b"GET / HTTP/1.1\r\n").unwrap_err();
    let e = a.on_decode_error(err, &mut out);
    assert!(matches!(
        e,
        HandshakeError::Frame(FrameError::BadMagic { .. })
    ));
    assert!(matches!(
        decode(&out),
        Ok(Decoded::Frame {
            frame: Frame::Error(ErrorFrame {
                code: ErrorCode::Malformed,
                ..
            }),
            ..
        })
    ));
    // Misuse.
    assert!(matches!(
        a.start(&mut out),
        Err(HandshakeError::InvalidState(_))
    ));
    let mut fresh = side(Role::Acceptor, "alpha", b"k", 1);
    assert!(matches!(
        fresh.handle(&Frame::AuthOk, &mut out),
        Err(HandshakeError::InvalidState(_))
    ));
}

#[test]
fn invalid_local_name_and_empty_key() {
    assert!(PresharedKey::new(&[]).is_none());
    let long = "n".repeat(MAX_NAME_LEN + 1);
    for name in ["", long.as_str()] {
        assert!(matches!(
            Handshake::new(
                params(Role::Initiator, name),
                key(b"k"),
                Nonce::from_bytes([0; 32])
            ),
            Err(HandshakeError::Frame(_))
        ));
    }
    // Debug never shows key material.
    assert_eq!(
        format!("{:?}", key(b"topsecret")),
        "PresharedKey(<9 bytes, redacted>)"
    );
}

#[test]
fn random_nonces_differ() {
    let a = Nonce::random().unwrap();
    let b = Nonce::random().unwrap();
    assert_ne!(a, b);
}
