use std::{fs, os::unix::fs::PermissionsExt};

use super::*;
use crate::proto::handshake::check_node_name;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("shmbus-identity-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn keygen_writes_0600_and_a_pub_line_and_loads_back() {
    let d = Dir::new("keygen");
    let path = d.0.join("node.key");
    let kp = StaticKeypair::generate().unwrap();
    let pub_path = kp.write_new(&path, "robot-1").unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let line = fs::read_to_string(&pub_path).unwrap();
    assert_eq!(line, format!("{} robot-1\n", kp.public()));
    let back = StaticKeypair::load(&path).unwrap();
    assert_eq!(back.public(), kp.public());
    assert_eq!(back.private_bytes(), kp.private_bytes());
    // The .pub line is a valid allowlist.
    let list = Allowlist::parse(&line, check_node_name).unwrap();
    assert_eq!(list.name_of(&kp.public()), Some("robot-1"));
    // Never overwrites: not the key, not through a planted link.
    assert!(matches!(
        kp.write_new(&path, "robot-1"),
        Err(KeyFileError::Exists { .. })
    ));
    let target = d.0.join("victim");
    fs::write(&target, b"precious").unwrap();
    let link = d.0.join("link.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(kp.write_new(&link, "x").is_err());
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    // Debug never shows the private key.
    let dbg = format!("{kp:?}");
    assert!(dbg.contains("redacted"), "{dbg}");
    assert!(!dbg.contains(&STANDARD.encode(kp.private_bytes())), "{dbg}");
}

#[test]
fn a_symlinked_key_file_is_refused() {
    let d = Dir::new("symlink");
    let real = d.0.join("real.key");
    StaticKeypair::generate()
        .unwrap()
        .write_new(&real, "n")
        .unwrap();
    let link = d.0.join("link.key");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = StaticKeypair::load(&link).unwrap_err();
    assert!(matches!(e, KeyFileError::Symlink { .. }), "{e:?}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[test]
fn group_or_other_access_is_refused() {
    let d = Dir::new("mode");
    let path = d.0.join("k.key");
    StaticKeypair::generate()
        .unwrap()
        .write_new(&path, "n")
        .unwrap();
    for mode in [0o640, 0o604, 0o620, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let e = StaticKeypair::load(&path).unwrap_err();
        assert!(
            matches!(e, KeyFileError::Mode { mode: m, .. } if m == mode),
            "{mode:o}: {e:?}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(StaticKeypair::load(&path).is_ok());
}

#[test]
fn a_key_file_of_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to chown a file to another user");
        return;
    }
    let d = Dir::new("owner");
    let path = d.0.join("k.key");
    StaticKeypair::generate()
        .unwrap()
        .write_new(&path, "n")
        .unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let e = StaticKeypair::load(&path).unwrap_err();
    assert!(
        matches!(
            e,
            KeyFileError::Owner {
                owner: 65534,
                euid: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    // The allowlist may belong to root or to us, not to someone else.
    let list = d.0.join("peers");
    fs::write(&list, b"").unwrap();
    std::os::unix::fs::chown(&list, Some(65534), None).unwrap();
    assert!(matches!(
        Allowlist::load(&list, check_node_name),
        Err(KeyFileError::Owner { .. })
    ));
}

#[test]
fn bad_key_files_are_refused_with_a_reason() {
    let d = Dir::new("content");
    let write = |name: &str, bytes: &[u8]| {
        let p = d.0.join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    for (name, bytes, why) in [
        ("empty", &b""[..], "no key"),
        ("comment", b"# only a comment\n", "no key"),
        ("short", b"AAAA\n", "not 32 bytes"),
        ("garbage", b"not base64 at all!\n", "not base64"),
        ("two", b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "more than one"),
    ] {
        let p = write(name, bytes);
        let e = StaticKeypair::load(&p).unwrap_err().to_string();
        assert!(e.contains(why), "{name}: {e}");
    }
    let huge = write("huge", &vec![b'A'; MAX_KEY_FILE_LEN + 1]);
    assert!(StaticKeypair::load(&huge)
        .unwrap_err()
        .to_string()
        .contains("larger than"));
    let dir = d.0.join("a-dir");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(matches!(
        StaticKeypair::load(&dir),
        Err(KeyFileError::NotRegular { .. })
    ));
}

#[test]
fn allowlist_parsing() {
    let a = StaticKeypair::generate().unwrap().public();
    let b = StaticKeypair::generate().unwrap().public();
    let text = format!("# peers\n\n{a} robot-1\n  {b}   base  \n");
    let list = Allowlist::parse(&text, check_node_name).unwrap();
    assert_eq!(list.name_of(&a), Some("robot-1"));
    assert_eq!(list.key_of("base"), Some(b));
    assert!(list.allows("base", &b));
    assert!(!list.allows("base", &a));
    for (bad, why) in [
        (format!("{a}\n"), "expected"),
        (format!("{a} x y\n"), "expected"),
        (format!("{a} bad/name\n"), "may contain only"),
        (format!("{a} x\n{a} y\n"), "listed twice"),
        (format!("{a} x\n{b} x\n"), "listed twice"),
        ("AAAA x\n".to_owned(), "not 32"),
    ] {
        let e = Allowlist::parse(&bad, check_node_name).unwrap_err();
        assert!(e.contains(why) && e.contains("line"), "{bad:?}: {e}");
    }
}

#[test]
fn public_key_text_round_trip() {
    let k = StaticKeypair::generate().unwrap().public();
    assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
    assert_eq!(k.to_string().len(), 44);
    assert_eq!(k.short().len(), 12);
    // The public key is X25519 of the private key: same result twice.
    let kp = StaticKeypair::generate().unwrap();
    let again = StaticKeypair::from_private(Zeroizing::new(*kp.private_bytes()));
    assert_eq!(again.public(), kp.public());
}
