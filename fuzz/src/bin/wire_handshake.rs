//! Fuzz target: the Noise IK handshake (both roles) and frames sealed after
//! it, with fixed test keys.
//!
//! Input: `mode u8`, then per mode:
//!
//! - 0, responder / edited message 1: `setup u8` (which allowlist, which
//!   layout version and protection the responder has), then edits (below)
//!   applied to a genuine message 1 (HELLO + NOISE) from `Initiator::start`.
//! - 1, responder / raw message 1: `setup u8`, then the bytes received.
//! - 2, initiator / edited message 2: `setup u8`, then edits applied to the
//!   genuine reply of a real responder.
//! - 3, responder / edited key confirmation: `setup u8`, then edits applied
//!   to the initiator's first sealed frame.
//! - 4, sealed frames after the handshake (keys derived as the handshake
//!   does, from fixed split keys): `setup u8`, then `n u8` frame lengths
//!   and bodies, then edits applied to the sealed stream.
//!
//! An edit is `op u8, at u16, value u8`: flip bits, cut the input there,
//! insert a byte, or overwrite one.
//!
//! Properties: a handshake message is accepted exactly when its bytes are
//! the genuine ones (any change is refused: the HELLO is the prologue, the
//! NOISE message is authenticated); an accepted handshake gives both sides
//! the same keys in opposite directions; the responder accepts only an
//! allowlisted key claiming its listed name, never its own key; an ERROR
//! reply is offered only for a version or layout mismatch and decodes as
//! one; sealed frames open only if unchanged and in order.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path, sync::OnceLock};

use shmbus_bridge::{
    identity::{Allowlist, StaticKeypair},
    proto::{
        frame::{decode, Decoded, Frame, Hello},
        handshake::{
            check_node_name, HandshakeError, HandshakeParams, Initiator, Responder, Session,
        },
        seal::{Protection, SessionKeys, TAG_LEN},
    },
};

const INIT_NAME: &str = "init-node";
const RESP_NAME: &str = "resp-node";
const LAYOUT: u32 = 7;
const NONCE: [u8; 32] = [7; 32];

struct Keys {
    init: StaticKeypair,
    resp: StaticKeypair,
    stranger: StaticKeypair,
}

fn load_key(dir: &Path, name: &str, b64: &str) -> StaticKeypair {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("key file");
    writeln!(f, "{b64}").expect("key file");
    let kp = StaticKeypair::load(&path).expect("fixed key loads");
    let _ = std::fs::remove_file(&path);
    kp
}

/// The fixed test keys: private keys of 0x11, 0x22 and 0x33 bytes.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shmbus-fuzz-wire-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let k = Keys {
            init: load_key(&dir, "init", "ERERERERERERERERERERERERERERERERERERERERERE="),
            resp: load_key(&dir, "resp", "IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI="),
            stranger: load_key(
                &dir,
                "stranger",
                "MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM=",
            ),
        };
        let _ = std::fs::remove_dir(&dir);
        k
    })
}

/// What the responder knows, chosen by the `setup` byte.
struct Setup {
    allowlist: Allowlist,
    /// The initiator's key is listed under `INIT_NAME`.
    init_listed_as_itself: bool,
    /// The responder holds the initiator's own key (a reflection).
    responder_is_initiator: bool,
    resp_layout: u32,
    init_protection: Protection,
    resp_protection: Protection,
}

fn setup(byte: u8) -> Setup {
    let k = keys();
    let init = k.init.public();
    let list = match byte & 3 {
        0 | 3 => format!("{init} {INIT_NAME}\n{} stranger\n", k.stranger.public()),
        1 => format!("{} {INIT_NAME}\n", k.stranger.public()),
        _ => format!("{init} other-name\n"),
    };
    let protection = |bit: u8| {
        if byte & bit != 0 {
            Protection::Encrypt
        } else {
            Protection::Auth
        }
    };
    Setup {
        allowlist: Allowlist::parse(&list, check_node_name).expect("fixed allowlist"),
        init_listed_as_itself: matches!(byte & 3, 0 | 3),
        responder_is_initiator: byte & 3 == 3,
        resp_layout: if byte & 4 != 0 { LAYOUT + 1 } else { LAYOUT },
        init_protection: protection(8),
        resp_protection: protection(16),
    }
}

fn params(name: &str, kp: &StaticKeypair, layout: u32, protection: Protection) -> HandshakeParams {
    HandshakeParams {
        local_name: name.to_owned(),
        keypair: kp.clone(),
        layout_version: layout,
        protection,
    }
}

/// Applies `op, at u16, value` edits; returns the edited bytes.
fn edit(mut bytes: Vec<u8>, edits: &[u8]) -> Vec<u8> {
    for e in edits.chunks_exact(4) {
        let at = usize::from(u16::from_le_bytes([e[1], e[2]]));
        let value = e[3];
        match e[0] % 4 {
            0 if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] ^= value;
            }
            1 => bytes.truncate(at),
            2 => bytes.insert(at.min(bytes.len()), value),
            3 if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            _ => {}
        }
    }
    bytes
}

/// Decodes one whole frame at the start of `bytes`.
fn frame_at(bytes: &[u8]) -> Option<(Frame<'_>, usize)> {
    match decode(bytes) {
        Ok(Decoded::Frame { frame, consumed }) if !matches!(frame, Frame::Data(_)) => {
            Some((frame, consumed))
        }
        _ => None,
    }
}

/// Feeds message 1 (`bytes`: HELLO then NOISE) to a responder.
fn respond(s: &Setup, bytes: &[u8]) -> Option<(Result<Responder, HandshakeError>, Vec<u8>, usize)> {
    let k = keys();
    let (hello, n1) = frame_at(bytes)?;
    let Frame::Hello(hello) = hello else {
        return None;
    };
    let (noise, n2) = frame_at(&bytes[n1..])?;
    let Frame::Noise(noise) = noise else {
        return None;
    };
    let kp = if s.responder_is_initiator {
        &k.init
    } else {
        &k.resp
    };
    let p = params(RESP_NAME, kp, s.resp_layout, s.resp_protection);
    let mut out = Vec::new();
    let r = Responder::respond(&p, &s.allowlist, &bytes[..n1], &hello, noise, &mut out);
    check_responder(s, &hello, &r, &out);
    Some((r, out, n1 + n2))
}

/// What any responder outcome must satisfy.
fn check_responder(
    s: &Setup,
    hello: &Hello<'_>,
    r: &Result<Responder, HandshakeError>,
    out: &[u8],
) {
    match r {
        Ok(resp) => {
            assert!(
                s.init_listed_as_itself && !s.responder_is_initiator,
                "accepted a key it must refuse"
            );
            assert_eq!(resp.peer_name(), INIT_NAME);
            assert_eq!(
                hello.peer_name, INIT_NAME,
                "accepted a claimed name that is not the listed one"
            );
            let (f, n) = frame_at(out).expect("message 2 is a frame");
            assert!(matches!(f, Frame::Noise(_)) && n == out.len());
        }
        Err(e) => {
            assert!(out.is_empty(), "refused but wrote a reply: {e}");
            assert!(!e.to_string().is_empty());
            match e.reply() {
                Some(reply) => {
                    assert!(
                        matches!(
                            e,
                            HandshakeError::VersionMismatch { .. }
                                | HandshakeError::LayoutMismatch { .. }
                        ),
                        "{e}"
                    );
                    let (f, n) = frame_at(&reply).expect("reply is a frame");
                    assert!(matches!(f, Frame::Error(_)) && n == reply.len());
                }
                None => assert!(!matches!(
                    e,
                    HandshakeError::VersionMismatch { .. } | HandshakeError::LayoutMismatch { .. }
                )),
            }
        }
    }
}

/// A genuine message 1.
fn start(s: &Setup) -> (Initiator, Vec<u8>) {
    let k = keys();
    let p = params(INIT_NAME, &k.init, LAYOUT, s.init_protection);
    let mut out = Vec::new();
    let i = Initiator::start(&p, RESP_NAME, &k.resp.public(), NONCE, &mut out).expect("message 1");
    (i, out)
}

/// Checks that two sessions hold the same keys in opposite directions.
fn check_pair(mut a: Session, mut b: Session) {
    assert_eq!(a.protection, b.protection);
    pass(&mut a.keys, &mut b.keys);
    pass(&mut b.keys, &mut a.keys);
    fn pass(from: &mut SessionKeys, to: &mut SessionKeys) {
        let mut f = b"SB\x07\0\x0c\0\0\0stream+position".to_vec();
        f.truncate(20);
        let plain = f.clone();
        from.send.seal_control(&mut f, 0).expect("seal");
        let tag: [u8; TAG_LEN] = f[20..].try_into().expect("tag");
        to.recv
            .open_control(&mut f[..20], &tag)
            .expect("the other side opens it");
        assert_eq!(f[..20], plain[..]);
    }
}

/// A genuine message 1 per protection wish, made once per process: the
/// responder does not need the initiator's state, and each X25519 operation
/// saved here is a large share of an execution.
fn message_1(s: &Setup) -> &'static [u8] {
    static M1: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    let m = M1.get_or_init(|| {
        let with = |p| {
            start(&Setup {
                init_protection: p,
                ..setup(0)
            })
            .1
        };
        [with(Protection::Auth), with(Protection::Encrypt)]
    });
    &m[usize::from(s.init_protection == Protection::Encrypt)]
}

fn mode_edited_message_1(s: &Setup, edits: &[u8]) {
    let genuine = message_1(s).to_vec();
    let bytes = edit(genuine.clone(), edits);
    let Some((r, _, used)) = respond(s, &bytes) else {
        return;
    };
    let unchanged = bytes[..used] == genuine[..];
    let acceptable =
        s.init_listed_as_itself && !s.responder_is_initiator && s.resp_layout == LAYOUT;
    assert_eq!(
        r.is_ok(),
        unchanged && acceptable,
        "message 1 changed: {}, outcome {:?}",
        !unchanged,
        r.err()
    );
}

fn mode_edited_message_2(s: &Setup, edits: &[u8]) {
    let (init, m1) = start(s);
    let Some((Ok(resp), m2, _)) = respond(s, &m1) else {
        return;
    };
    let bytes = edit(m2.clone(), edits);
    let Some((frame, used)) = frame_at(&bytes) else {
        return;
    };
    let unchanged = bytes[..used] == m2[..];
    let mut confirm = Vec::new();
    match init.finish(&frame, &mut confirm) {
        Ok(session) => {
            assert!(unchanged, "initiator accepted a changed message 2");
            assert_eq!(session.peer_name, RESP_NAME);
            assert!(session.protection >= s.init_protection);
            let n = confirm.len() - TAG_LEN;
            let tag: [u8; TAG_LEN] = confirm[n..].try_into().expect("tag");
            let other = resp
                .confirm(&mut confirm[..n], &tag)
                .expect("genuine confirmation");
            check_pair(session, other);
        }
        Err(e) => {
            // The agreed protection is never below the initiator's wish, so a
            // genuine reply always completes.
            assert!(!unchanged, "genuine message 2 refused: {e}");
            assert!(confirm.is_empty());
        }
    }
}

fn mode_edited_confirmation(s: &Setup, edits: &[u8]) {
    let (init, m1) = start(s);
    let Some((Ok(resp), m2, _)) = respond(s, &m1) else {
        return;
    };
    let (frame, _) = frame_at(&m2).expect("message 2");
    let mut confirm = Vec::new();
    let Ok(session) = init.finish(&frame, &mut confirm) else {
        return;
    };
    let bytes = edit(confirm.clone(), edits);
    let Some(n) = bytes.len().checked_sub(TAG_LEN) else {
        return;
    };
    let mut body = bytes[..n].to_vec();
    let tag: [u8; TAG_LEN] = bytes[n..].try_into().expect("tag");
    match resp.confirm(&mut body, &tag) {
        Ok(other) => {
            assert_eq!(bytes, confirm, "responder confirmed a changed frame");
            check_pair(session, other);
        }
        Err(e) => assert_ne!(bytes, confirm, "genuine confirmation refused: {e}"),
    }
}

/// Mode 4: control frames sealed in order, then the stream edited.
fn mode_sealed_frames(s: &Setup, rest: &[u8]) {
    let [n, rest @ ..] = rest else { return };
    let keys = |initiator| {
        SessionKeys::derive(
            &[0x44; 32],
            &[0x55; 32],
            &[0x66; 64],
            initiator,
            s.init_protection,
        )
    };
    let (mut sender, mut receiver) = (keys(true), keys(false));
    let mut bodies = rest;
    let mut frames = Vec::new();
    let mut wire = Vec::new();
    for _ in 0..(n % 8) {
        let Some((&len, tail)) = bodies.split_first() else {
            break;
        };
        let len = usize::from(len).min(tail.len());
        let (body, tail) = tail.split_at(len);
        bodies = tail;
        let start = wire.len();
        wire.extend_from_slice(b"SB\x0a\0");
        wire.extend_from_slice(&(len as u32).to_le_bytes());
        wire.extend_from_slice(body);
        let plain = wire[start..].to_vec();
        sender.send.seal_control(&mut wire, start).expect("seal");
        frames.push((plain, start..wire.len()));
    }
    let edited = edit(wire.clone(), bodies);
    // The receiver opens frame by frame at the original boundaries.
    for (i, (plain, range)) in frames.iter().enumerate() {
        let Some(bytes) = edited.get(range.clone()) else {
            return;
        };
        let n = bytes.len() - TAG_LEN;
        let mut frame = bytes[..n].to_vec();
        let tag: [u8; TAG_LEN] = bytes[n..].try_into().expect("tag");
        let unchanged = bytes == &wire[range.clone()];
        match receiver.recv.open_control(&mut frame, &tag) {
            Ok(()) => {
                assert!(unchanged, "frame {i} opened though changed");
                assert_eq!(&frame, plain, "frame {i} opened to other bytes");
            }
            Err(e) => {
                assert!(!unchanged, "unchanged frame {i} refused: {e}");
                return;
            }
        }
    }
}

fn run(data: &[u8]) {
    let [mode, setup_byte, rest @ ..] = data else {
        return;
    };
    let s = setup(*setup_byte);
    match mode % 5 {
        0 => mode_edited_message_1(&s, rest),
        1 => {
            let _ = respond(&s, rest);
        }
        2 => mode_edited_message_2(&s, rest),
        3 => mode_edited_confirmation(&s, rest),
        _ => mode_sealed_frames(&s, rest),
    }
}

fn main() {
    message_1(&setup(0));
    afl::fuzz!(|data: &[u8]| {
        run(data);
    });
}
