//! `docs/troubleshooting.md` cannot rot silently: every message it quotes
//! (each line of its `text` blocks) is still produced by the code.
//!
//! - Messages of the public error types (`shmbus::Error`,
//!   `shmbus_bus::Error`, the bridge's configuration, key-file, handshake,
//!   authentication and connection errors) are produced here, for real
//!   where that is cheap (bad names and options, a type mismatch, a full
//!   ring, a timeout, refused directories as root) and by constructing the
//!   error otherwise. Each one must appear verbatim in the guide, and every
//!   variant of the two client-facing enums must have one (a new variant
//!   without a guide entry fails).
//! - Log lines and `shmbus doctor` findings, which are not error values,
//!   are quoted as templates with `<placeholders>`: every literal piece
//!   between placeholders must occur in the sources (`bus/`, `client/`,
//!   `bridge/`, `cli/`).
//!
//! A guide line that is neither produced nor found fails the test.

use std::{
    collections::BTreeSet,
    io,
    net::SocketAddr,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use shmbus::{Bus, Error, Policy};
use shmbus_bridge::{
    config::ConfigError,
    daemon::DaemonError,
    identity::KeyFileError,
    io::frame_reader::ReadError,
    proto::{
        frame::FrameError,
        handshake::HandshakeError,
        seal::{Protection, SealError},
    },
};
use shmbus_bus::Error as BusError;
use shmbus_tests::{harness::TestEnv, isolation::is_root};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const GUIDE: &str = "docs/troubleshooting.md";
/// What the guide shows in place of a test's private root.
const SHOWN_ROOT: &str = "/dev/shm/shmbus-1000";
/// The refusal produced only as root (it needs a directory of another uid).
const ROOT_ONLY: &str = "directory is owned by uid 64201";
/// The example publisher id the guide shows.
const EXAMPLE_ID: &str = "imu-driver-4242.1700000000-0";
/// The example ring the constructed errors name.
const RING: &str = "/dev/shm/shmbus-1000/default/imu/imu-driver-4242.1700000000-0.ring";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .into()
}

/// Every line of every ```` ```text ```` block of the guide.
fn guide_lines() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join(GUIDE)).expect("read the guide");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("```") {
            inside = !inside && line.trim() == "```text";
        } else if inside && !line.trim().is_empty() {
            lines.push(line.to_owned());
        }
    }
    lines
}

/// The variant names of `pub enum Error` in `file`.
fn variants(file: &str) -> BTreeSet<String> {
    let src = std::fs::read_to_string(workspace().join(file)).expect("read source");
    let body = src.split("pub enum Error {").nth(1).expect("enum Error");
    let body = &body[..body.find("\n}").expect("end of enum")];
    body.lines()
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|l| {
            l.split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The variant name at the start of a `Debug` rendering.
fn debug_name(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}

/// The bus layer's errors, one per variant, with the guide's example values.
fn bus_errors() -> Vec<BusError> {
    let ctl = RING.replace(".ring", ".ctl");
    vec![
        shmbus_bus::validate_name("topic", "imu/front").unwrap_err(),
        shmbus_bus::RingConfig {
            capacity: 1000,
            ..Default::default()
        }
        .validate()
        .unwrap_err(),
        BusError::Io {
            path: path(RING),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        },
        BusError::AlreadyExists(path(RING)),
        BusError::NotFound(path(RING)),
        BusError::NotInitialized(path(RING)),
        BusError::NotASegment(path(RING)),
        BusError::VersionMismatch {
            path: path(RING),
            found: 1,
            expected: shmbus_bus::layout::LAYOUT_VERSION,
        },
        BusError::SizeMismatch {
            path: path(RING),
            expected: 4_202_496,
            found: 4096,
        },
        BusError::Corrupt {
            path: path(&ctl),
            what: "slot 3 position 17 is not 16-aligned".into(),
        },
        BusError::NoFreeSlot(path(RING)),
        BusError::Full,
        BusError::Timeout,
        BusError::TooLarge {
            len: 2_000_000,
            max: 1_048_576,
        },
        BusError::Evicted,
        BusError::SlotLost,
    ]
}

/// The client's own errors (not `Bus`), one per variant.
fn client_errors() -> Vec<Error> {
    vec![
        Error::Full,
        Error::Timeout(Duration::from_millis(100)),
        Error::TooLarge { len: 308, max: 256 },
        Error::TypeMismatch {
            topic: "pose".into(),
            expected: "u64".into(),
            found: "String".into(),
        },
        // As produced for real in `real_errors`.
        Error::InvalidMessage {
            topic: "raw".into(),
            publisher: EXAMPLE_ID.into(),
            type_name: "Vec<u8>".into(),
            reason: "subtree pointer overran range: ptr <address> size 16 in range \
                     <address>..<address> (in a 8-byte payload)"
                .into(),
        },
        Error::Serialize("a custom Serialize impl failed".into()),
        Error::Evicted {
            topic: "pose".into(),
            publisher: "imu-driver-4242.1700000000-0".into(),
        },
        Error::Bus(BusError::NotFound(path(RING))),
    ]
}

/// Errors triggered for real through the public API, with the test's root
/// shown as [`SHOWN_ROOT`].
fn real_errors(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for bad in ["", ".hidden", "imu/front"] {
        let e = Bus::builder().root(root).name(bad).build().unwrap_err();
        out.push(e.to_string());
    }
    let b = || Bus::builder().root(root);
    let options = [
        ("max_message", b().capacity(65536).max_message(65536)),
        ("slots", b().slots(0)),
        (
            "evict_after",
            b().policy(Policy::Overwrite)
                .evict_after(Some(Duration::from_secs(1))),
        ),
        ("capacity", b().capacity(3 << 20)),
    ];
    for (what, builder) in options {
        let e = builder.build().unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
        out.push(e.to_string());
    }
    let bus = Bus::builder()
        .root(root)
        .capacity(4096)
        .max_message(256)
        .build()
        .unwrap();
    // A subscriber of another type than the topic's publisher.
    let _pose = bus.publisher::<String>("pose").unwrap();
    let e = bus.subscriber::<u64>("pose").unwrap_err();
    assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
    out.push(e.to_string());
    // A message larger than max_message.
    let mut big = bus.publisher::<Vec<u8>>("big").unwrap();
    let e = big.send(&vec![7u8; 300]).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    out.push(e.to_string());
    // A ring that a subscriber which does not read has filled.
    let sub = bus.subscriber::<Vec<u8>>("full").unwrap();
    let mut full = bus.publisher::<Vec<u8>>("full").unwrap();
    let e = loop {
        if let Err(e) = full.try_send(&vec![1u8; 100]) {
            break e;
        }
    };
    assert!(matches!(e, Error::Full), "{e:?}");
    out.push(e.to_string());
    // Bytes that are not an archive of the topic's type.
    // A Vec<u8> is a relative pointer and a length: here 256 bytes past
    // the end of the 8-byte message, 16 bytes long.
    let mut reader = bus.subscriber::<Vec<u8>>("raw").unwrap();
    let mut raw = bus.publisher::<Vec<u8>>("raw").unwrap();
    raw.send_bytes(&[0, 1, 0, 0, 16, 0, 0, 0]).unwrap();
    let e = reader.recv_timeout(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, Error::InvalidMessage { .. }), "{e:?}");
    out.push(addresses(&e.to_string().replace(raw.id(), EXAMPLE_ID)));
    let mut empty = bus.subscriber::<Vec<u8>>("empty").unwrap();
    let e = empty.recv_timeout(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    out.push(e.to_string());
    drop(sub);
    out.extend(refusals(root, &bus));
    out.into_iter()
        .map(|m| m.replace(&root.display().to_string(), SHOWN_ROOT))
        .collect()
}

/// `s` with every 64-bit hex address (`0x` and 16 digits, which differ
/// from run to run) shown as `<address>`.
fn addresses(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("0x") {
        let digits = rest[i + 2..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        out.push_str(&rest[..i]);
        if digits == 16 {
            out.push_str("<address>");
        } else {
            out.push_str(&rest[i..i + 2 + digits]);
        }
        rest = &rest[i + 2 + digits..];
    }
    out.push_str(rest);
    out
}

/// The refusals of a symbolic link, a directory others may write and (as
/// root, which can chown) a tree another user controls.
fn refusals(root: &Path, bus: &Bus) -> Vec<String> {
    let dir = |t: &str| root.join("default").join(t);
    let mut topics = vec!["linked", "open"];
    symlink(dir("pose"), dir("linked")).unwrap();
    std::fs::create_dir_all(dir("open")).unwrap();
    std::fs::set_permissions(dir("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    if is_root() {
        std::fs::create_dir_all(dir("foreign")).unwrap();
        std::os::unix::fs::chown(dir("foreign"), Some(64201), Some(64201)).unwrap();
        topics.push("foreign");
    }
    let mut out = Vec::new();
    for topic in topics {
        let e = bus.subscriber::<u64>(topic).unwrap_err();
        let io = matches!(&e, Error::Bus(BusError::Io { source, .. })
            if source.kind() == io::ErrorKind::PermissionDenied);
        assert!(io, "{topic}: not a refusal: {e:?}");
        out.push(e.to_string());
    }
    out
}

/// The bridge's errors an operator meets: at start (configuration, key
/// files, the listen address), in the handshake log lines, and when a
/// connection closes.
fn bridge_errors() -> Vec<String> {
    let addr: SocketAddr = "10.0.0.1:7878".parse().unwrap();
    let key = path("/etc/shmbus/bridge.key");
    let key_error = |e: KeyFileError| ConfigError::from(e).to_string();
    vec![
        ConfigError::NonLoopbackListen { addr }.to_string(),
        ConfigError::MissingKeyFile.to_string(),
        ConfigError::MissingAllowlist.to_string(),
        key_error(KeyFileError::Mode {
            what: "private key file",
            path: key.clone(),
            mode: 0o644,
            forbidden: "readable or writable",
            fix: "600",
        }),
        key_error(KeyFileError::Owner {
            what: "private key file",
            path: key.clone(),
            owner: 0,
            euid: 998,
        }),
        key_error(KeyFileError::Symlink {
            what: "private key file",
            path: key.clone(),
        }),
        key_error(KeyFileError::Exists { path: key }),
        DaemonError::Bind {
            addr,
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        }
        .to_string(),
        HandshakeError::UnknownKey {
            key: "oDexspcRaiON".into(),
            claimed: "robot-9".into(),
        }
        .to_string(),
        HandshakeError::NameMismatch {
            key: "oDexspcRaiON".into(),
            listed: "robot-1".into(),
            claimed: "base".into(),
        }
        .to_string(),
        // What an HTTP request to the bridge port gives (seen in a run:
        // `curl http://127.0.0.1:PORT/` against a real bridge).
        FrameError::BadMagic {
            found: u16::from_le_bytes(*b"GE"),
        }
        .to_string(),
        HandshakeError::VersionMismatch { local: 2, peer: 1 }.to_string(),
        HandshakeError::LayoutMismatch { local: 2, peer: 1 }.to_string(),
        HandshakeError::SelfConnection.to_string(),
        HandshakeError::Downgrade {
            wanted: Protection::Encrypt,
            got: Protection::Auth,
        }
        .to_string(),
        SealError::BadTag { counter: 1234 }.to_string(),
        ReadError::Idle(Duration::from_secs(10)).to_string(),
        ReadError::Eof.to_string(),
    ]
}

/// All Rust sources of the crates whose messages the guide quotes.
fn sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = String::new();
    for krate in ["bus/src", "client/src", "bridge/src", "cli/src"] {
        walk(&workspace().join(krate), &mut out);
    }
    out
}

/// The literal pieces of a template line, between `<placeholder>`s.
fn pieces(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').map(|c| open + c);
        let is_placeholder = close.is_some_and(|c| {
            rest[open + 1..c]
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == ' ' || ch == '-')
        });
        match close {
            Some(c) if is_placeholder => {
                out.push(&rest[..open]);
                rest = &rest[c + 1..];
            }
            _ => break,
        }
    }
    out.push(rest);
    out.into_iter().filter(|p| p.trim().len() >= 4).collect()
}

#[test]
fn every_error_in_the_guide_is_still_produced_and_every_error_is_in_the_guide() {
    let env = TestEnv::new("guide-errors", PEER, Duration::from_secs(60));
    let lines = guide_lines();

    let bus = bus_errors();
    let client = client_errors();
    let covered = |names: &[String], file: &str| {
        let have: BTreeSet<String> = names.iter().cloned().collect();
        let missing: Vec<_> = variants(file).difference(&have).cloned().collect();
        assert!(
            missing.is_empty(),
            "{file}: variants without a guide entry (add them here and to {GUIDE}): {missing:?}"
        );
    };
    covered(
        &bus.iter()
            .map(|e| debug_name(&format!("{e:?}")))
            .collect::<Vec<_>>(),
        "bus/src/error.rs",
    );
    covered(
        &client
            .iter()
            .map(|e| debug_name(&format!("{e:?}")))
            .collect::<Vec<_>>(),
        "client/src/error.rs",
    );

    let mut produced: Vec<String> = bus.iter().map(ToString::to_string).collect();
    produced.extend(client.iter().map(ToString::to_string));
    produced.extend(real_errors(env.root()));
    produced.extend(bridge_errors());
    let missing: Vec<&String> = produced.iter().filter(|m| !lines.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "messages the code produces that {GUIDE} does not quote verbatim:\n{}",
        missing
            .iter()
            .map(|m| format!("  {m}\n"))
            .collect::<String>()
    );

    assert!(lines.len() > 40, "too few messages in {GUIDE}: {lines:?}");
    let src = sources();
    let stale: Vec<&String> = lines
        .iter()
        .filter(|l| !produced.contains(l))
        .filter(|l| {
            let root_only = l.contains(ROOT_ONLY);
            if root_only && !is_root() {
                eprintln!("SKIPPED (needs root to chown): {l}");
            }
            is_root() || !root_only
        })
        .filter(|l| {
            let p = pieces(l);
            p.iter().all(|p| p.len() < 20) || p.iter().any(|p| !src.contains(p))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "lines of {GUIDE} that the code no longer produces (a template's pieces between \
         <placeholders> must occur in bus/, client/, bridge/ or cli/ sources, one of them \
         at least 20 bytes long):\n{}",
        stale.iter().map(|m| format!("  {m}\n")).collect::<String>()
    );
}

#[test]
fn placeholder_pieces_split_where_the_guide_marks_them() {
    assert_eq!(
        pieces("<error>: this process reached its open file limit"),
        [": this process reached its open file limit"]
    );
    assert_eq!(
        pieces("refused <side> connection <addr>: handshake failed: <reason>"),
        ["refused ", " connection ", ": handshake failed: "]
    );
    // Not a placeholder (punctuation inside): the rest is kept whole.
    assert_eq!(
        pieces("RUST_LOG=<a,b> is kept whole"),
        ["RUST_LOG=<a,b> is kept whole"]
    );
}
