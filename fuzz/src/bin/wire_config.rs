//! Fuzz target: the bridge daemon's TOML configuration parser.
//!
//! The input is the text of a config file (UTF-8, as `Config::load` reads
//! it). The key file and the allowlist come from the command line (fixed
//! files made once per process), so every input is judged on its own text.
//!
//! Properties:
//!
//! - Accepted: every value is within the bounds the module docs promise
//!   (names, sizes, intervals, limits, loopback unless allowed, peers unique,
//!   allowlisted and not this node), and topic patterns match exactly what
//!   a reference glob matcher matches.
//! - Refused: the error names its reason; a parse error gives the line, an
//!   invalid value names its key.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use shmbus_bridge::{
    config::{Cli, Config, ConfigError, ExportMode, TopicPattern},
    identity::StaticKeypair,
};

/// Names in the allowlist (the peers a config may name).
const ALLOWED: [&str; 3] = ["base-station", "peer-a", "peer-b"];

/// Makes the key file and the allowlist once per process.
fn cli() -> &'static Cli {
    static CLI: OnceLock<Cli> = OnceLock::new();
    CLI.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("shmbus-fuzz-wire-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key_file = dir.join("node.key");
        if !key_file.exists() {
            let kp = StaticKeypair::generate().expect("key");
            kp.write_new(&key_file, "fuzz-node").expect("key file");
        }
        let mut list = String::new();
        for name in ALLOWED {
            let kp = StaticKeypair::generate().expect("key");
            list.push_str(&format!("{} {name}\n", kp.public()));
        }
        let allowlist = dir.join("peers");
        write_private(&allowlist, &list);
        Cli {
            key_file: Some(key_file),
            allowlist: Some(allowlist),
            ..Cli::default()
        }
    })
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("allowlist");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("allowlist");
}

/// Reference glob: `*` any run, `?` one character, the rest itself
/// (dynamic programming over characters, written from the doc comment).
fn glob(p: &[char], t: &[char]) -> bool {
    // m[j]: p[..i] matches t[..j].
    let mut m = vec![false; t.len() + 1];
    m[0] = true;
    for &c in p {
        let mut next = vec![false; t.len() + 1];
        if c == '*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= m[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = m[j - 1] && (c == '?' || c == t[j - 1]);
            }
        }
        m = next;
    }
    m[t.len()]
}

/// Topics to try a pattern on: the pattern with its wildcards filled in
/// three ways, and the input's first line.
fn probes(pattern: &str, text: &str) -> Vec<String> {
    let fill = |star: &str, q: &str| pattern.replace('*', star).replace('?', q);
    let mut v = vec![fill("", "x"), fill("ab", "?"), fill("*x*", "")];
    v.push(text.lines().next().unwrap_or("").chars().take(64).collect());
    v
}

fn check_pattern(p: &TopicPattern, text: &str) {
    let pc: Vec<char> = p.as_str().chars().collect();
    for t in probes(p.as_str(), text) {
        let tc: Vec<char> = t.chars().collect();
        assert_eq!(
            p.matches(&t),
            glob(&pc, &tc),
            "pattern {:?} on {t:?}",
            p.as_str()
        );
    }
}

fn valid_name(n: &str) -> bool {
    (1..=255).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_accepted(c: &Config, text: &str) {
    assert!(valid_name(&c.node_name), "node_name {:?}", c.node_name);
    assert!(
        (1..=255).contains(&c.bus.len()) && !c.bus.contains('/'),
        "bus {:?}",
        c.bus
    );
    assert!(c.root.is_absolute());
    let allowed_remote = text.contains("allow_non_loopback_listen");
    if let Some(a) = c.listen {
        assert!(a.ip().is_loopback() || allowed_remote, "listen {a}");
    }
    if let Some(a) = c.metrics_listen {
        assert!(a.ip().is_loopback() || allowed_remote, "metrics_listen {a}");
    }
    for (i, p) in c.peers.iter().enumerate() {
        assert!(
            valid_name(&p.name) && p.name != c.node_name,
            "peer {:?}",
            p.name
        );
        assert!(
            ALLOWED.contains(&p.name.as_str()),
            "peer {:?} not allowlisted",
            p.name
        );
        assert!(
            c.peers[..i].iter().all(|q| q.name != p.name),
            "peer {:?} twice",
            p.name
        );
        let (host, port) = p.address.rsplit_once(':').expect("HOST:PORT");
        assert!(
            !host.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0),
            "{:?}",
            p.address
        );
    }
    for r in &c.exports {
        if let ExportMode::Untethered { retention_bytes } = r.mode {
            assert!(retention_bytes > 0);
        }
        check_pattern(&r.pattern, text);
    }
    for r in &c.imports {
        check_pattern(&r.pattern, text);
    }
    assert!(
        (4096..=16 << 20).contains(&c.chunk_bytes),
        "chunk_bytes {}",
        c.chunk_bytes
    );
    assert!(c.max_replica_capacity >= 4096);
    assert!(!c.heartbeat_interval.is_zero());
    assert!(c.peer_timeout >= c.heartbeat_interval * 2);
    let hs = c.limits.handshake_timeout.as_millis();
    assert!((100..=60_000).contains(&hs), "handshake {hs}");
    assert!(c.limits.max_pending_handshakes >= 1 && c.limits.max_pending_per_address >= 1);
    assert!(c.limits.max_streams_per_peer >= 1 && c.limits.max_exports_per_peer >= 1);
    assert!(c.limits.peer_state_expiry.as_secs() >= 1);
    assert!(!c.send.pin_deadline.is_zero() && c.send.notsent_lowat >= 4096);
    let rescan = c.rescan_interval.as_millis();
    assert!((100..=3_600_000).contains(&rescan), "rescan {rescan}");
}

fn check_refused(e: &ConfigError) {
    let shown = e.to_string();
    match e {
        ConfigError::Parse { message, .. } => {
            assert!(
                message.contains("line"),
                "parse error without a line: {shown:?}"
            );
        }
        ConfigError::Invalid { field, reason } => {
            assert!(!field.is_empty() && !reason.is_empty(), "{shown:?}");
        }
        ConfigError::NonLoopbackListen { .. } => {}
        other => panic!("the fixed key files were refused: {other}"),
    }
}

fn main() {
    let cli = cli();
    let path = PathBuf::from("fuzz.toml");
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match Config::from_toml(text, &path, cli) {
            Ok(c) => check_accepted(&c, text),
            Err(e) => check_refused(&e),
        }
    });
}
