use super::*;
use crate::proto::frame::{decode, Ack, Decoded, HEADER_LEN};

fn params(name: &str, protection: Protection) -> HandshakeParams {
    HandshakeParams {
        local_name: name.to_owned(),
        keypair: StaticKeypair::generate().unwrap(),
        layout_version: 7,
        protection,
    }
}

fn allow(entries: &[(&HandshakeParams, &str)]) -> Allowlist {
    let text: String = entries
        .iter()
        .map(|(p, name)| format!("{} {name}\n", p.keypair.public()))
        .collect();
    Allowlist::parse(&text, check_node_name).unwrap()
}

/// Splits message 1 into (hello bytes, hello, noise message).
fn split_msg1(bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let Decoded::Frame { consumed, .. } = decode(bytes).unwrap() else {
        panic!("incomplete")
    };
    let (hello, rest) = bytes.split_at(consumed);
    let Decoded::Frame {
        frame: Frame::Noise(m),
        consumed: c2,
    } = decode(rest).unwrap()
    else {
        panic!("no NOISE frame")
    };
    assert_eq!(c2, rest.len());
    (hello.to_vec(), m.to_vec())
}

fn hello_of(bytes: &[u8]) -> Hello<'_> {
    match decode(bytes).unwrap() {
        Decoded::Frame {
            frame: Frame::Hello(h),
            ..
        } => h,
        other => panic!("{other:?}"),
    }
}

struct Outcome {
    initiator: Result<Session, HandshakeError>,
    responder: Result<Session, HandshakeError>,
}

/// Runs the whole handshake between `i` (dialing `expect` with `expect_key`)
/// and `r` (with `allowlist`).
fn run(
    i: &HandshakeParams,
    expect: &str,
    expect_key: &PublicKey,
    r: &HandshakeParams,
    allowlist: &Allowlist,
) -> Outcome {
    let mut m1 = Vec::new();
    let init = Initiator::start(i, expect, expect_key, [5; 32], &mut m1).unwrap();
    let (hello_bytes, noise) = split_msg1(&m1);
    let mut m2 = Vec::new();
    let resp = match Responder::respond(
        r,
        allowlist,
        &hello_bytes,
        &hello_of(&hello_bytes),
        &noise,
        &mut m2,
    ) {
        Ok(resp) => resp,
        Err(e) => {
            assert!(m2.is_empty(), "nothing is written on failure");
            return Outcome {
                initiator: Err(HandshakeError::Noise("no reply".into())),
                responder: Err(e),
            };
        }
    };
    let Decoded::Frame { frame, .. } = decode(&m2).unwrap() else {
        panic!()
    };
    let mut m3 = Vec::new();
    let initiator = init.finish(&frame, &mut m3);
    let responder = if initiator.is_ok() {
        let at = m3.len() - TAG_LEN;
        let (body, tag) = m3.split_at_mut(at);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().unwrap();
        resp.confirm(body, &tag)
    } else {
        Err(HandshakeError::ConfirmationFailed)
    };
    Outcome {
        initiator,
        responder,
    }
}

#[test]
fn both_sides_agree_and_frames_flow() {
    let a = params("a", Protection::Auth);
    let b = params("b", Protection::Encrypt);
    let out = run(&a, "b", &b.keypair.public(), &b, &allow(&[(&a, "a")]));
    let mut si = out.initiator.unwrap();
    let mut sr = out.responder.unwrap();
    assert_eq!(si.peer_name, "b");
    assert_eq!(sr.peer_name, "a");
    assert_eq!(sr.peer_key, a.keypair.public());
    // The stronger wish wins on both sides.
    assert_eq!(
        (si.protection, sr.protection),
        (Protection::Encrypt, Protection::Encrypt)
    );
    // Key confirmation used counter 0 of initiator -> responder.
    assert_eq!(si.keys.send.next_counter(), 1);
    assert_eq!(sr.keys.recv.next_counter(), 1);
    let mut f = Vec::new();
    Frame::Ack(Ack {
        stream: 1,
        position: 16,
    })
    .encode_to_vec(&mut f)
    .unwrap();
    let plain = f.clone();
    sr.keys.send.seal_control(&mut f, 0).unwrap();
    let (body, tag) = f.split_at_mut(plain.len());
    si.keys
        .recv
        .open_control(body, &(&*tag).try_into().unwrap())
        .unwrap();
    assert_eq!(body, &plain[..]);
}

#[test]
fn unknown_key_is_refused_without_reply() {
    let a = params("a", Protection::Auth);
    let b = params("b", Protection::Auth);
    let other = params("c", Protection::Auth);
    let out = run(&a, "b", &b.keypair.public(), &b, &allow(&[(&other, "c")]));
    assert!(
        matches!(&out.responder, Err(HandshakeError::UnknownKey { claimed, .. }) if claimed == "a"),
        "{:?}",
        out.responder.err()
    );
    assert!(out.responder.as_ref().err().unwrap().reply().is_none());
}

#[test]
fn the_name_comes_from_the_allowlist_and_a_false_claim_is_refused() {
    // `c` holds its own allowlisted key but claims to be `a`.
    let a = params("a", Protection::Auth);
    let c = params("a", Protection::Auth);
    let b = params("b", Protection::Auth);
    let list = allow(&[(&a, "a"), (&c, "c")]);
    let out = run(&c, "b", &b.keypair.public(), &b, &list);
    assert!(
        matches!(&out.responder, Err(HandshakeError::NameMismatch { listed, claimed, .. }) if listed == "c" && claimed == "a"),
        "{:?}",
        out.responder.err()
    );
}

#[test]
fn initiator_refuses_a_responder_without_the_allowlisted_key() {
    let a = params("a", Protection::Auth);
    let b = params("b", Protection::Auth);
    let impostor = params("b", Protection::Auth);
    // `a` dials "b" with b's real key, but an impostor answers.
    let out = run(
        &a,
        "b",
        &b.keypair.public(),
        &impostor,
        &allow(&[(&a, "a")]),
    );
    // The impostor cannot even read message 1 (it is encrypted to b's key).
    assert!(matches!(out.responder, Err(HandshakeError::Noise(_))));
}

#[test]
fn own_key_is_refused() {
    let a = params("a", Protection::Auth);
    let mut a2 = params("z", Protection::Auth);
    a2.keypair = a.keypair.clone();
    let out = run(&a2, "a", &a.keypair.public(), &a, &allow(&[(&a, "z")]));
    assert_eq!(out.responder.err(), Some(HandshakeError::SelfConnection));
}

#[test]
fn tampered_hello_breaks_the_handshake() {
    let a = params("a", Protection::Auth);
    let b = params("b", Protection::Auth);
    let list = allow(&[(&a, "a")]);
    let mut m1 = Vec::new();
    Initiator::start(&a, "b", &b.keypair.public(), [5; 32], &mut m1).unwrap();
    let (mut hello_bytes, noise) = split_msg1(&m1);
    // Change one of the random bytes (the prologue), not a checked field.
    hello_bytes[HEADER_LEN + 14] ^= 1;
    let err = Responder::respond(
        &b,
        &list,
        &hello_bytes,
        &hello_of(&hello_bytes),
        &noise,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(matches!(err, HandshakeError::Noise(_)), "{err:?}");
}

#[test]
fn replayed_message_1_cannot_confirm() {
    let a = params("a", Protection::Auth);
    let b = params("b", Protection::Auth);
    let list = allow(&[(&a, "a")]);
    let mut m1 = Vec::new();
    Initiator::start(&a, "b", &b.keypair.public(), [5; 32], &mut m1).unwrap();
    let (hello_bytes, noise) = split_msg1(&m1);
    // The attacker replays message 1: the responder answers...
    let resp = Responder::respond(
        &b,
        &list,
        &hello_bytes,
        &hello_of(&hello_bytes),
        &noise,
        &mut Vec::new(),
    )
    .unwrap();
    // ...but the attacker cannot produce the confirmation frame.
    let mut forged = Vec::new();
    Frame::Heartbeat(Heartbeat::new(&[]))
        .encode_to_vec(&mut forged)
        .unwrap();
    assert_eq!(
        resp.confirm(&mut forged, &[0; TAG_LEN]).err(),
        Some(HandshakeError::ConfirmationFailed)
    );
}

/// A version-1 HELLO (pre-shared keys) is refused with a clear error and an
/// ERROR reply, and a version-1 bridge's reply to our HELLO is reported.
#[test]
fn version_1_peers_are_refused_clearly() {
    let b = params("b", Protection::Auth);
    let old = Hello {
        hello_magic: HELLO_MAGIC,
        protocol_version: 1,
        layout_version: 7,
        nonce: [1; 32],
        peer_name: "old",
    };
    let err = check_hello(&old, 7).unwrap_err();
    assert!(err.to_string().contains("pre-shared keys"), "{err}");
    let reply = err.reply().expect("an ERROR for the old peer");
    match decode(&reply).unwrap() {
        Decoded::Frame {
            frame: Frame::Error(e),
            ..
        } => assert_eq!(e.code, ErrorCode::ProtocolVersion),
        other => panic!("{other:?}"),
    }
    // As initiator: the old bridge's own HELLO arrives first.
    let a = params("a", Protection::Auth);
    let init = Initiator::start(&a, "b", &b.keypair.public(), [5; 32], &mut Vec::new()).unwrap();
    let err = init
        .finish(&Frame::Hello(old), &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::VersionMismatch {
                peer: 1,
                local: PROTOCOL_VERSION
            }
        ),
        "{err:?}"
    );
    // And its ERROR, with control characters escaped.
    let init = Initiator::start(&a, "b", &b.keypair.public(), [5; 32], &mut Vec::new()).unwrap();
    let err = init
        .finish(
            &Frame::Error(ErrorFrame {
                code: ErrorCode::ProtocolVersion,
                message: "peer speaks 2\nFAKE LOG LINE\x1b[31m",
            }),
            &mut Vec::new(),
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n') && !text.contains('\x1b'), "{text:?}");
}

#[test]
fn names_are_checked_before_use() {
    assert!(check_node_name("robot-1.base_2").is_ok());
    for bad in ["", "a b", "a\nb", "a/b", "ä", &"x".repeat(256)] {
        assert!(check_node_name(bad).is_err(), "{bad:?}");
    }
    let b = params("b", Protection::Auth);
    let h = Hello {
        hello_magic: HELLO_MAGIC,
        protocol_version: PROTOCOL_VERSION,
        layout_version: 7,
        nonce: [1; 32],
        peer_name: "evil\u{1b}[2J",
    };
    assert!(matches!(
        check_hello(&h, b.layout_version),
        Err(HandshakeError::BadName(_))
    ));
    let h = Hello {
        layout_version: 8,
        peer_name: "ok",
        ..h
    };
    assert!(matches!(
        check_hello(&h, 7),
        Err(HandshakeError::LayoutMismatch { local: 7, peer: 8 })
    ));
}
