use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit as _};

use super::*;
use crate::proto::frame::{Ack, Frame};

const RFC_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
const RFC_AAD: [u8; 12] = [
    0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
];
const RFC_NONCE: [u8; 12] = [
    0x07, 0x00, 0x00, 0x00, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
];
const RFC_TAG: [u8; 16] = [
    0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91,
];

fn rfc_key() -> [u8; 32] {
    std::array::from_fn(|i| 0x80 + i as u8)
}

/// RFC 8439 §2.8.2, fed in uneven pieces.
#[test]
fn rfc8439_aead_test_vector() {
    for split in [0, 1, 5, 12] {
        let mut seal = FrameSeal::with_nonce(&rfc_key(), &RFC_NONCE);
        seal.aad(&RFC_AAD[..split]);
        seal.aad(&RFC_AAD[split..]);
        let mut msg = RFC_PLAINTEXT.to_vec();
        let (a, b) = msg.split_at_mut(17 + split);
        seal.encrypt(a);
        seal.encrypt(b);
        assert_eq!(
            &msg[..16],
            &[
                0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb, 0x7b, 0x86, 0xaf, 0xbc, 0x53, 0xef,
                0x7e, 0xc2
            ]
        );
        assert_eq!(seal.tag(), RFC_TAG, "split {split}");
    }
}

fn reference(key: &[u8; 32], counter: u64, aad: &[u8], msg: &[u8]) -> (Vec<u8>, [u8; 16]) {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    let mut buf = msg.to_vec();
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(&nonce.into(), aad, &mut buf)
        .unwrap();
    (buf, tag.into())
}

/// Same result as `chacha20poly1305` for every length up to 200 bytes (and
/// a few above) cut into pieces at several places, in both uses: AAD only
/// (auth) and AAD + message (encrypt). Crosses every position of the
/// 64-byte feeding buffer.
#[test]
fn equals_chacha20poly1305_for_any_pieces() {
    let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);
    let data: Vec<u8> = (0..300u32).map(|i| (i * 31 % 251) as u8).collect();
    for len in (0usize..=200).chain([255, 256, 257, 300]) {
        let all = &data[..len];
        for cut in [0, 1, len / 3, len / 2, len.saturating_sub(1), len] {
            let cut = cut.min(len);
            for counter in [0u64, 1, 0x0123_4567_89ab_cdef] {
                // Auth: empty plaintext, everything AAD.
                let (_, want) = reference(&key, counter, all, &[]);
                let mut s = FrameSeal::new(&key, counter);
                s.aad(&all[..cut]);
                s.aad(&all[cut..]);
                assert_eq!(s.tag(), want, "auth len {len} cut {cut}");
                // Encrypt: first 8 bytes AAD, rest message, message in two pieces.
                let h = len.min(8);
                let (want_ct, want_tag) = reference(&key, counter, &all[..h], &all[h..]);
                let mut s = FrameSeal::new(&key, counter);
                s.aad(&all[..h]);
                let mut msg = all[h..].to_vec();
                let c = cut.saturating_sub(h).min(msg.len());
                let (a, b) = msg.split_at_mut(c);
                s.encrypt(a);
                s.encrypt(b);
                assert_eq!(msg, want_ct, "encrypt len {len} cut {cut}");
                assert_eq!(s.tag(), want_tag, "encrypt tag len {len} cut {cut}");
                // And opening it back in pieces.
                let mut s = FrameSeal::new(&key, counter);
                s.aad(&all[..h]);
                let (a, b) = msg.split_at_mut(c);
                s.absorb_ciphertext(a);
                s.absorb_ciphertext(b);
                let mut ks = s.verify(&want_tag).unwrap();
                ks.apply(a);
                ks.apply(b);
                assert_eq!(msg, &all[h..]);
            }
        }
    }
}

fn pair(protection: Protection) -> (SessionKeys, SessionKeys) {
    let i2r = [1u8; 32];
    let r2i = [2u8; 32];
    let hash = [9u8; 32];
    (
        SessionKeys::derive(&i2r, &r2i, &hash, true, protection),
        SessionKeys::derive(&i2r, &r2i, &hash, false, protection),
    )
}

fn ack(stream: u32, position: u64) -> Vec<u8> {
    let mut v = Vec::new();
    Frame::Ack(Ack { stream, position })
        .encode_to_vec(&mut v)
        .unwrap();
    v
}

/// Seals `frame` with `dir`; returns (frame bytes as sent, tag).
fn sealed(dir: &mut Direction, frame: &[u8]) -> (Vec<u8>, [u8; TAG_LEN]) {
    let mut v = frame.to_vec();
    dir.seal_control(&mut v, 0).unwrap();
    let tag: [u8; TAG_LEN] = v[v.len() - TAG_LEN..].try_into().unwrap();
    v.truncate(v.len() - TAG_LEN);
    (v, tag)
}

#[test]
fn frames_open_in_order_in_both_modes() {
    for p in [Protection::Auth, Protection::Encrypt] {
        let (mut i, mut r) = pair(p);
        for n in 0..5u64 {
            let plain = ack(1, n * 16);
            let (mut wire, tag) = sealed(&mut i.send, &plain);
            assert_eq!(
                wire == plain,
                p == Protection::Auth,
                "{p:?}: body encrypted?"
            );
            assert_eq!(wire[..8], plain[..8], "the header stays readable");
            r.recv.open_control(&mut wire, &tag).unwrap();
            assert_eq!(wire, plain);
        }
        // The other direction has its own key and counter.
        let (mut wire, tag) = sealed(&mut r.send, &ack(2, 0));
        i.recv.open_control(&mut wire, &tag).unwrap();
        assert_eq!(i.send.next_counter(), 5);
        assert_eq!(i.recv.next_counter(), 1);
    }
}

/// Injection, replay, reorder and corruption all fail, and the failed
/// counter is the one expected.
#[test]
fn injected_replayed_reordered_frames_fail() {
    let (mut i, _) = pair(Protection::Auth);
    let f0 = sealed(&mut i.send, &ack(1, 16));
    let f1 = sealed(&mut i.send, &ack(1, 32));
    let open = |frames: &[&(Vec<u8>, [u8; 16])]| {
        let (_, mut r) = pair(Protection::Auth);
        let mut results = Vec::new();
        for (bytes, tag) in frames {
            let mut b = bytes.clone();
            results.push(r.recv.open_control(&mut b, tag));
        }
        results
    };
    assert_eq!(open(&[&f0, &f1]), [Ok(()), Ok(())]);
    // Replay of frame 0 in place of frame 1.
    assert_eq!(
        open(&[&f0, &f0]),
        [Ok(()), Err(SealError::BadTag { counter: 1 })]
    );
    // Reorder.
    assert_eq!(open(&[&f1])[0], Err(SealError::BadTag { counter: 0 }));
    // Injection: a frame made without the key (any tag).
    let forged = (ack(1, 1 << 40), [0u8; 16]);
    assert_eq!(
        open(&[&f0, &forged]),
        [Ok(()), Err(SealError::BadTag { counter: 1 })]
    );
    // One bit flipped in the header or the body.
    for at in [2, 12] {
        let mut bad = f0.clone();
        bad.0[at] ^= 1;
        assert_eq!(open(&[&bad])[0], Err(SealError::BadTag { counter: 0 }));
    }
    // A frame of the other direction (reflection) does not open either.
    let (_, mut r) = pair(Protection::Auth);
    let reflected = sealed(&mut r.send, &ack(1, 16));
    assert_eq!(
        open(&[&reflected])[0],
        Err(SealError::BadTag { counter: 0 })
    );
}

#[test]
fn modes_and_transcripts_give_different_keys() {
    let hash_a = [9u8; 32];
    let hash_b = [8u8; 32];
    let k = |hash: &[u8; 32], p| SessionKeys::derive(&[1; 32], &[2; 32], hash, true, p);
    let mut frames = Vec::new();
    for (hash, p) in [
        (&hash_a, Protection::Auth),
        (&hash_a, Protection::Encrypt),
        (&hash_b, Protection::Auth),
    ] {
        let mut keys = k(hash, p);
        frames.push(sealed(&mut keys.send, &ack(1, 16)).1);
    }
    assert_ne!(frames[0], frames[1]);
    assert_ne!(frames[0], frames[2]);
}

#[test]
fn counter_exhaustion_is_an_error() {
    let mut d = Direction::new([0; 32], Protection::Auth);
    d.next = u64::MAX - 1;
    assert!(d.begin().is_ok());
    assert_eq!(d.begin().err(), Some(SealError::CounterExhausted));
}

#[test]
fn debug_does_not_print_keys() {
    let d = Direction::new([0xAB; 32], Protection::Auth);
    let text = format!("{d:?}");
    assert!(
        !text.contains("171") && !text.to_lowercase().contains("ab, "),
        "{text}"
    );
}
