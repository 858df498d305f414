//! Unit tests of configuration loading.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use clap::Parser;

use super::*;

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// `tag` must be unique per test (tests run in parallel).
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shmbus-bridge-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A key file and an allowlist naming the peers the tests use.
fn key_files(dir: &TempDir) -> (PathBuf, PathBuf) {
    let key = dir.0.join("bridge.key");
    if !key.exists() {
        StaticKeypair::generate()
            .unwrap()
            .write_new(&key, "node-a")
            .unwrap();
    }
    let list: String = ["base", "cam-host", "p", "q", "x"]
        .iter()
        .map(|n| format!("{} {n}\n", StaticKeypair::generate().unwrap().public()))
        .collect();
    let allow = dir.file("peers", list.as_bytes(), 0o644);
    (key, allow)
}

fn key_config(dir: &TempDir) -> String {
    let (key, allow) = key_files(dir);
    format!(
        "node_name = \"node-a\"\nkey_file = {:?}\nallowlist = {:?}\n",
        key.display().to_string(),
        allow.display().to_string()
    )
}

fn load(text: &str, cli: &Cli) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"), cli)
}

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["shmbus-bridge"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap()
}

fn err_text(r: Result<Config, ConfigError>) -> String {
    r.expect_err("config should be rejected").to_string()
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let dir = TempDir::new("minimal");
    let c = load(&key_config(&dir), &Cli::default()).unwrap();
    assert_eq!(c.node_name, "node-a");
    assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
    assert_eq!(c.bus, DEFAULT_BUS);
    assert_eq!(c.root, Path::new(DEFAULT_ROOT));
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
    assert_eq!(c.peer_timeout, DEFAULT_PEER_TIMEOUT);
    assert!(c.peers.is_empty());
    // Allow-lists deny by default.
    assert!(c.export_rule("anything").is_none());
    assert!(!c.imports_topic("anything"));
    assert_eq!(c.allowlist.entries().len(), 5);
    assert_eq!(c.protection, Protection::Auth, "auth is the default");
    assert_eq!(c.limits, Limits::default());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn full_file() {
    let dir = TempDir::new("full");
    let text = format!(
        r#"{}
bus = "plant"
root = "/dev/shm/other"
listen = "[::1]:9000"
log_level = "debug"
heartbeat_interval_ms = 200
peer_timeout_ms = 400

[[peer]]
name = "base"
address = "10.0.0.2:7878"

[[peer]]
name = "cam-host"
address = "[fd00::2]:7878"

[[export]]
topics = "cmd*"
mode = "tethered"

[[export]]
topics = "imu.?"
retention_bytes = 1048576

[[export]]
topics = "*"

[[import]]
topics = "remote.*"
"#,
        key_config(&dir)
    );
    let c = load(&text, &Cli::default()).unwrap();
    assert_eq!(c.bus, "plant");
    assert_eq!(c.root, Path::new("/dev/shm/other"));
    assert_eq!(c.listen, Some("[::1]:9000".parse().unwrap()));
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(200));
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peers[1].address, "[fd00::2]:7878");
    assert_eq!(c.export_rule("cmd.arm").unwrap().mode, ExportMode::Tethered);
    assert_eq!(
        c.export_rule("imu.1").unwrap().mode,
        ExportMode::Untethered {
            retention_bytes: 1 << 20
        }
    );
    // First match wins; the catch-all gets the default mode.
    assert_eq!(c.export_rule("imu.12").unwrap().mode, ExportMode::default());
    assert!(c.imports_topic("remote.x"));
    assert!(!c.imports_topic("local.x"));
}

#[test]
fn command_line_overrides_the_file() {
    let dir = TempDir::new("cli");
    let text = format!(
        "{}listen = \"127.0.0.1:1\"\n[[peer]]\nname = \"p\"\naddress = \"h:1\"\n[[export]]\ntopics = \"file\"\n",
        key_config(&dir)
    );
    let other_key = dir.0.join("other.key");
    StaticKeypair::generate()
        .unwrap()
        .write_new(&other_key, "cli-node")
        .unwrap();
    let c = load(
        &text,
        &cli(&[
            "--listen",
            "127.0.0.2:9",
            "--node-name",
            "cli-node",
            "--root",
            "/dev/shm/cli",
            "--peer",
            "q=example.org:7878",
            "--export",
            "a*:tethered",
            "--export",
            "b:untethered=2M",
            "--export",
            "c",
            "--import",
            "*",
            "--key-file",
            other_key.to_str().unwrap(),
            "--log-level",
            "trace",
        ]),
    )
    .unwrap();
    assert_eq!(c.listen, Some("127.0.0.2:9".parse().unwrap()));
    assert_eq!(c.node_name, "cli-node");
    assert_eq!(c.root, Path::new("/dev/shm/cli"));
    assert_eq!(
        c.peers,
        [PeerConfig {
            name: "q".into(),
            address: "example.org:7878".into()
        }]
    );
    assert_eq!(c.exports.len(), 3, "CLI exports replace the file's");
    assert_eq!(c.exports[0].mode, ExportMode::Tethered);
    assert_eq!(
        c.exports[1].mode,
        ExportMode::Untethered {
            retention_bytes: 2 << 20
        }
    );
    assert_eq!(c.exports[2].mode, ExportMode::default());
    assert!(c.export_rule("file").is_none());
    assert!(c.imports_topic("x"));
    assert_eq!(c.key_file, other_key);
    assert_eq!(c.log_level, LogLevel::Trace);
}

#[test]
fn non_loopback_listen_must_be_explicit() {
    let dir = TempDir::new("listen");
    let text = format!("{}listen = \"0.0.0.0:7878\"\n", key_config(&dir));
    let e = err_text(load(&text, &Cli::default()));
    assert!(e.contains("allow_non_loopback_listen"), "{e}");
    assert!(load(&text, &cli(&["--allow-non-loopback-listen"])).is_ok());
    let allowed = format!("{text}allow_non_loopback_listen = true\n");
    assert_eq!(
        load(&allowed, &Cli::default()).unwrap().listen,
        Some("0.0.0.0:7878".parse().unwrap())
    );
    let off = format!("{}listen = \"off\"\n", key_config(&dir));
    assert_eq!(load(&off, &Cli::default()).unwrap().listen, None);
}

#[test]
fn data_path_settings() {
    let dir = TempDir::new("datapath");
    let c = load(&key_config(&dir), &Cli::default()).unwrap();
    assert!(c.zerocopy);
    assert_eq!(c.chunk_bytes, DEFAULT_CHUNK_BYTES);
    assert_eq!(c.max_replica_capacity, DEFAULT_MAX_REPLICA_CAPACITY);
    assert_eq!(c.stats_file, None);
    let text = format!(
        "{}zerocopy = false\nchunk_bytes = 65536\nmax_replica_capacity = 8388608\nstats_file = \"/tmp/s\"\n",
        key_config(&dir)
    );
    let c = load(&text, &Cli::default()).unwrap();
    assert!(!c.zerocopy);
    assert_eq!(c.chunk_bytes, 65536);
    assert_eq!(c.max_replica_capacity, 8 << 20);
    assert_eq!(c.stats_file.as_deref(), Some(Path::new("/tmp/s")));
    let c = load(
        &key_config(&dir),
        &cli(&[
            "--no-zerocopy",
            "--chunk-bytes",
            "1M",
            "--max-replica-capacity",
            "64M",
        ]),
    )
    .unwrap();
    assert!(!c.zerocopy);
    assert_eq!(c.chunk_bytes, 1 << 20);
    assert_eq!(c.max_replica_capacity, 64 << 20);
    for bad in [
        "chunk_bytes = 100\n",
        "chunk_bytes = 33554432\n",
        "max_replica_capacity = 1\n",
    ] {
        let text = format!("{}{bad}", key_config(&dir));
        assert!(load(&text, &Cli::default()).is_err(), "{bad}");
    }
}

#[test]
fn bad_settings_give_clear_errors() {
    let dir = TempDir::new("bad");
    let base = key_config(&dir);
    let cases: &[(&str, &str)] = &[
        ("nonsense = 1\n", "unknown field"),
        ("listen = 7878\n", "invalid type"),
        ("listen = \"localhost:7878\"\n", "is not IP:PORT"),
        ("log_level = \"loud\"\n", "unknown variant"),
        ("bus = \"a/b\"\n", "must not be"),
        ("bus = \"..\"\n", "must not be"),
        ("root = \"relative/dir\"\n", "not an absolute path"),
        ("heartbeat_interval_ms = 0\n", "at least 1"),
        ("heartbeat_interval_ms = 1000\npeer_timeout_ms = 1500\n", "at least twice"),
        ("[[peer]]\nname = \"x\"\naddress = \"nohost\"\n", "is not HOST:PORT"),
        ("[[peer]]\nname = \"x\"\naddress = \"h:0\"\n", "is not HOST:PORT"),
        ("[[peer]]\nname = \"x\"\naddress = \"[zz]:1\"\n", "is not HOST:PORT"),
        ("[[peer]]\nname = \"bad name\"\naddress = \"h:1\"\n", "may contain only"),
        ("[[peer]]\nname = \"node-a\"\naddress = \"h:1\"\n", "own name"),
        (
            "[[peer]]\nname = \"x\"\naddress = \"h:1\"\n[[peer]]\nname = \"x\"\naddress = \"h:2\"\n",
            "listed twice",
        ),
        ("[[export]]\ntopics = \"t\"\nmode = \"tethered\"\nretention_bytes = 5\n", "only applies"),
        ("[[export]]\ntopics = \"t\"\nretention_bytes = 0\n", "greater than 0"),
        ("[[export]]\ntopics = \"t\"\nmode = \"lossy\"\n", "unknown variant"),
        ("[[export]]\ntopics = \"a/b\"\n", "must not contain '/'"),
        ("[[import]]\ntopics = \"\"\n", "1 to 255 bytes"),
    ];
    for (extra, needle) in cases {
        let e = err_text(load(&format!("{base}{extra}"), &Cli::default()));
        assert!(e.contains(needle), "{extra:?}: {e:?} lacks {needle:?}");
    }
    let e = err_text(load(
        &format!("{base}node_name = \"dup\"\n"),
        &Cli::default(),
    ));
    assert!(e.contains("test.toml"), "parse errors name the file: {e}");
    for (flag, needle) in [
        (&["--export", "t:tetherd"][..], "unknown mode"),
        (&["--export", "t:untethered=12X"][..], "not a size"),
        (&["--peer", "no-equals-sign"][..], "NAME=HOST:PORT"),
        (&["--node-name", ""][..], "1 to 255 bytes"),
    ] {
        let e = err_text(load(&base, &cli(flag)));
        assert!(e.contains(needle), "{flag:?}: {e:?} lacks {needle:?}");
    }
}

#[test]
fn config_file_errors() {
    let e = Config::load(&Cli {
        config: Some(PathBuf::from("/nonexistent/shmbus/bridge.toml")),
        ..Cli::default()
    })
    .unwrap_err();
    assert!(matches!(e, ConfigError::ReadFile { .. }));
    assert!(e.to_string().contains("/nonexistent/shmbus/bridge.toml"));
    let dir = TempDir::new("cfgfile");
    let path = dir.file("bridge.toml", key_config(&dir).as_bytes(), 0o600);
    let c = Config::load(&Cli {
        config: Some(path),
        ..Cli::default()
    })
    .unwrap();
    assert_eq!(c.node_name, "node-a");
}

#[test]
fn key_file_checks() {
    let dir = TempDir::new("key");
    let (key, allow) = key_files(&dir);
    let with = |key: &Path, allow: &Path| {
        format!(
            "node_name = \"n\"\nkey_file = {:?}\nallowlist = {:?}\n",
            key.display().to_string(),
            allow.display().to_string()
        )
    };
    assert!(matches!(
        load("node_name = \"n\"\n", &Cli::default()),
        Err(ConfigError::MissingKeyFile)
    ));
    assert!(matches!(
        load(
            &format!(
                "node_name = \"n\"\nkey_file = {:?}\n",
                key.display().to_string()
            ),
            &Cli::default()
        ),
        Err(ConfigError::MissingAllowlist)
    ));
    let missing = dir.0.join("missing.key");
    let e = load(&with(&missing, &allow), &Cli::default()).unwrap_err();
    assert!(e.to_string().contains("missing.key"), "{e}");
    let world = dir.file("world.key", &fs::read(&key).unwrap(), 0o644);
    let e = err_text(load(&with(&world, &allow), &Cli::default()));
    assert!(e.contains("chmod 600"), "{e}");
    // The allowlist may be world-readable, not group-writable.
    let writable = dir.file("writable", &fs::read(&allow).unwrap(), 0o664);
    let e = err_text(load(&with(&key, &writable), &Cli::default()));
    assert!(e.contains("chmod 644"), "{e}");
    // A peer to dial must be on the allowlist.
    let e = err_text(load(
        &format!(
            "{}[[peer]]\nname = \"zz\"\naddress = \"h:1\"\n",
            with(&key, &allow)
        ),
        &Cli::default(),
    ));
    assert!(e.contains("not in the allowlist"), "{e}");
    // The node's own key on its allowlist is a mistake.
    let own = fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let self_list = dir.file("self-list", own.replace("node-a", "me").as_bytes(), 0o644);
    let e = err_text(load(&with(&key, &self_list), &Cli::default()));
    assert!(e.contains("own key"), "{e}");
    // Flags for the new settings.
    let c = load(
        &with(&key, &allow),
        &cli(&[
            "--protection",
            "encrypt",
            "--handshake-timeout-ms",
            "500",
            "--max-pending-per-address",
            "2",
            "--max-replica-bytes-per-peer",
            "1G",
        ]),
    )
    .unwrap();
    assert_eq!(c.protection, Protection::Encrypt);
    assert_eq!(
        c.limits.handshake_timeout,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(c.limits.max_pending_per_address, 2);
    assert_eq!(c.limits.max_replica_bytes_per_peer, 1 << 30);
    assert!(load(&with(&key, &allow), &cli(&["--handshake-timeout-ms", "5"])).is_err());
}

#[test]
fn topic_patterns() {
    let cases = [
        ("*", "", true),
        ("*", "anything.at.all", true),
        ("imu", "imu", true),
        ("imu", "imu2", false),
        ("imu*", "imu", true),
        ("imu*", "imu.raw", true),
        ("*raw", "imu.raw", true),
        ("*raw", "imu.raw.x", false),
        ("i?u", "imu", true),
        ("i?u", "iu", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("*.*", "a.b", true),
        ("*.*", "ab", false),
        ("**x", "x", true),
        ("?é?", "aéb", true),
        ("?", "é", true),
    ];
    for (pattern, topic, expected) in cases {
        assert_eq!(
            TopicPattern::new(pattern).unwrap().matches(topic),
            expected,
            "{pattern:?} vs {topic:?}"
        );
    }
    // Backtracking stays linear-ish on a hostile pattern.
    let p = TopicPattern::new(&format!("{}b", "a*".repeat(100))).unwrap();
    assert!(!p.matches(&"a".repeat(200)));
    for bad in ["", "a/b", "tab\there"] {
        assert!(TopicPattern::new(bad).is_err(), "{bad:?}");
    }
    assert!(TopicPattern::new(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("64K").unwrap(), 64 << 10);
    assert_eq!(parse_size("3MiB").unwrap(), 3 << 20);
    assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    for bad in ["", "K", "1T", "-1", "1.5M", "99999999999999999999G"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn metrics_and_rescan_settings() {
    let dir = TempDir::new("ops-settings");
    let base = key_config(&dir);
    let c = load(&base, &cli(&[])).unwrap();
    assert_eq!(c.metrics_listen, None, "metrics are off by default");
    assert_eq!(c.rescan_interval, DEFAULT_RESCAN_INTERVAL);
    let c = load(
        &format!("{base}metrics_listen = \"127.0.0.1:9465\"\nrescan_interval_ms = 60000\n"),
        &cli(&[]),
    )
    .unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9465".parse().unwrap()));
    assert_eq!(c.rescan_interval, Duration::from_secs(60));
    let c = load(
        &format!("{base}metrics_listen = \"127.0.0.1:9465\"\n"),
        &cli(&["--metrics-listen", "off"]),
    )
    .unwrap();
    assert_eq!(c.metrics_listen, None, "the flag overrides the file");
    let e = err_text(load(
        &format!("{base}metrics_listen = \"0.0.0.0:9465\"\n"),
        &cli(&[]),
    ));
    assert!(
        e.contains("metrics_listen") && e.contains("loopback"),
        "{e}"
    );
    let e = err_text(load(
        &format!("{base}metrics_listen = \"9465\"\n"),
        &cli(&[]),
    ));
    assert!(e.contains("is not IP:PORT"), "{e}");
    let e = err_text(load(&format!("{base}rescan_interval_ms = 10\n"), &cli(&[])));
    assert!(e.contains("rescan_interval_ms"), "{e}");
}

#[test]
fn reload_rereads_the_file_and_keeps_restart_only_settings() {
    let dir = TempDir::new("ops-reload");
    let base = key_config(&dir);
    let path = dir.file(
        "bridge.toml",
        format!("{base}bus = \"one\"\n[[export]]\ntopics = \"a\"\n").as_bytes(),
        0o644,
    );
    let c = Config::load(&cli(&["--config", path.to_str().unwrap()])).unwrap();
    assert_eq!(c.exports.len(), 1);

    fs::write(
        &path,
        format!("{base}bus = \"two\"\n[[export]]\ntopics = \"a\"\n[[export]]\ntopics = \"b\"\n[[peer]]\nname = \"base\"\naddress = \"10.0.0.2:7878\"\n"),
    )
    .unwrap();
    let r = c.reload().unwrap();
    assert_eq!(r.exports.len(), 2, "exports are reloaded");
    assert_eq!(r.peers.len(), 1, "peers are reloaded");
    assert_eq!(r.bus, "one", "bus keeps its running value");
    assert!(
        r.warnings.iter().any(|w| w.starts_with("bus changed")),
        "{:?}",
        r.warnings
    );
    assert!(RESTART_ONLY.contains(&"bus"));

    // A file that does not parse, or does not validate, is an error; the
    // running config is untouched.
    fs::write(&path, format!("{base}[[export]\n")).unwrap();
    assert!(matches!(c.reload(), Err(ConfigError::Parse { .. })));
    fs::write(
        &path,
        format!("{base}[[peer]]\nname = \"stranger\"\naddress = \"10.0.0.9:1\"\n"),
    )
    .unwrap();
    let e = c
        .reload()
        .expect_err("a peer not on the allowlist")
        .to_string();
    assert!(e.contains("not in the allowlist"), "{e}");
    assert_eq!(c.exports.len(), 1);
}
