//! The gateway's configuration: a TOML file and command-line flags (flags
//! win; `--export`/`--import` add rules to the file's). Zenoh's own
//! configuration (mode, endpoints, scouting, TLS, ACL) stays in Zenoh's
//! file format, passed through by `zenoh_config`; a few flags set the
//! common parts of it.
//!
//! ```toml
//! node_name = "robot-1"          # names this gateway in attachments and replica names
//! bus = "default"
//! key_prefix = "shmbus/default"  # keys are <key_prefix>/<topic>
//! zenoh_config = "/etc/shmbus/zenoh.json5"
//!
//! [[export]]
//! topics = "sensors.*"           # topic glob: * any run, ? one character
//! reliability = "reliable"       # or "best_effort"
//! congestion = "block"           # or "drop"
//!
//! [[import]]
//! key = "shmbus/*/sensors.$*"    # Zenoh key expression (`$*` inside a chunk); the topic is its last chunk
//! raw = false                    # accept samples without shmbus metadata as raw bytes
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use shmbus_bridge::config::{LogLevel, TopicPattern};
use shmbus_bus::{validate_name, MAX_NAME_LEN};
use zenoh::key_expr::KeyExpr;

/// How an export's samples are routed by Zenoh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reliability {
    /// Zenoh's reliable channel (the default).
    #[default]
    Reliable,
    /// Zenoh's best-effort channel (over TCP it is still delivered in order;
    /// over UDP links it may be dropped, and the importer counts the loss).
    BestEffort,
}

/// What an export does when Zenoh's queues are full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Congestion {
    /// Wait (the default): the export falls behind its ring, and if the
    /// ring laps it, the messages it missed arrive as an exact loss.
    #[default]
    Block,
    /// Drop the sample; importers count it as lost.
    Drop,
}

/// One export rule: local topics put to Zenoh.
#[derive(Debug, Clone)]
pub struct ExportRule {
    /// Which local topics.
    pub topics: TopicPattern,
    /// Zenoh reliability.
    pub reliability: Reliability,
    /// Zenoh congestion control.
    pub congestion: Congestion,
    /// Zenoh express (no batching: lower latency, lower throughput).
    pub express: bool,
}

/// One import rule: Zenoh samples written into local replica rings.
#[derive(Debug, Clone)]
pub struct ImportRule {
    /// Zenoh key expression to subscribe to.
    pub key: String,
    /// The local topic; by default the key's last chunk.
    pub topic: Option<String>,
    /// Accept samples without a shmbus attachment (plain Zenoh
    /// publishers) as raw byte messages.
    pub raw: bool,
}

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// This gateway's name (unique among the gateways that share a Zenoh
    /// network): the origin in attachments, the stem of replica names.
    pub node_name: String,
    /// The bus root directory.
    pub root: PathBuf,
    /// The local bus.
    pub bus: String,
    /// Keys of exported topics are `<key_prefix>/<topic>`.
    pub key_prefix: String,
    /// Export rules.
    pub exports: Vec<ExportRule>,
    /// Import rules.
    pub imports: Vec<ImportRule>,
    /// Zenoh's configuration file, if any.
    pub zenoh_config: Option<PathBuf>,
    /// Zenoh mode override (`peer`, `client`, `router`).
    pub mode: Option<String>,
    /// Zenoh endpoints to connect to (added to the file's).
    pub connect: Vec<String>,
    /// Zenoh endpoints to listen on (added to the file's).
    pub listen: Vec<String>,
    /// Turns Zenoh's multicast scouting off.
    pub no_multicast_scouting: bool,
    /// Replica ring size for imported streams (bytes, a power of two).
    pub import_capacity: u64,
    /// How long an import waits for local subscribers to make room in a
    /// full replica before it drops the message (counted as lost); once
    /// per spell of fullness (until a message fits again, that replica's
    /// messages are dropped without waiting).
    pub import_full_wait: Duration,
    /// How often the bus is scanned for new rings to export.
    pub scan_interval: Duration,
    /// How long an export thread keeps polling its ring (yielding the CPU
    /// between polls) after the ring runs empty, before it sleeps on the
    /// ring's futex: a message within the window is sent without a
    /// wake-up; the thread may use a core meanwhile. Zero: sleep at once
    /// (after the bus's short default spin).
    pub export_spin: Duration,
    /// Log level (`RUST_LOG` wins).
    pub log_level: LogLevel,
}

/// A configuration error, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {reason}")]
    Invalid {
        /// The setting.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The file as written (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    node_name: Option<String>,
    root: Option<PathBuf>,
    bus: Option<String>,
    key_prefix: Option<String>,
    zenoh_config: Option<PathBuf>,
    mode: Option<String>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    no_multicast_scouting: bool,
    import_capacity: Option<u64>,
    import_full_wait_ms: Option<u64>,
    scan_interval_ms: Option<u64>,
    export_spin_us: Option<u64>,
    log_level: Option<LogLevel>,
    #[serde(default)]
    export: Vec<FileExport>,
    #[serde(default)]
    import: Vec<FileImport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExport {
    topics: String,
    #[serde(default)]
    reliability: Reliability,
    #[serde(default)]
    congestion: Congestion,
    #[serde(default)]
    express: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileImport {
    key: String,
    topic: Option<String>,
    #[serde(default)]
    raw: bool,
}

/// Command-line settings (see `main.rs`), merged over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--root`.
    pub root: Option<PathBuf>,
    /// `--bus`.
    pub bus: Option<String>,
    /// `--key-prefix`.
    pub key_prefix: Option<String>,
    /// `--zenoh-config`.
    pub zenoh_config: Option<PathBuf>,
    /// `--mode`.
    pub mode: Option<String>,
    /// `--connect`.
    pub connect: Vec<String>,
    /// `--listen`.
    pub listen: Vec<String>,
    /// `--no-multicast-scouting`.
    pub no_multicast_scouting: bool,
    /// `--export TOPICS[:OPTION,...]`.
    pub exports: Vec<String>,
    /// `--import KEY[:raw]`.
    pub imports: Vec<String>,
    /// `--import-full-wait-ms`.
    pub import_full_wait_ms: Option<u64>,
    /// `--import-capacity`.
    pub import_capacity: Option<u64>,
    /// `--export-spin-us`.
    pub export_spin_us: Option<u64>,
    /// `--log-level`.
    pub log_level: Option<LogLevel>,
}

/// Longest `export_spin_us`: one second (longer is a busy loop; say
/// so with a dedicated core instead).
pub const MAX_EXPORT_SPIN_US: u64 = 1_000_000;

/// Default replica size of imported streams: 4 MiB.
pub const DEFAULT_IMPORT_CAPACITY: u64 = 4 << 20;

impl Config {
    /// Reads `file` (if any) and applies `flags`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, line or setting.
    pub fn load(file: Option<&Path>, flags: Overrides) -> Result<Self, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        Self::build(parsed, flags)
    }

    /// Parses TOML text.
    ///
    /// # Errors
    ///
    /// The parser's message, with line and column.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks and merges.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn build(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let node_name = match flags.node_name.or(file.node_name) {
            Some(n) => n,
            None => hostname()?,
        };
        validate_name("node name", &node_name).map_err(|e| invalid("node_name", e.to_string()))?;
        if node_name.len() > MAX_NAME_LEN / 2 {
            return Err(invalid(
                "node_name",
                format!("longer than {} bytes", MAX_NAME_LEN / 2),
            ));
        }
        let bus = flags
            .bus
            .or(file.bus)
            .unwrap_or_else(|| shmbus_bus::DEFAULT_BUS.to_owned());
        validate_name("bus", &bus).map_err(|e| invalid("bus", e.to_string()))?;
        let root = flags
            .root
            .or(file.root)
            .unwrap_or_else(shmbus_bus::default_root);
        let key_prefix = flags
            .key_prefix
            .or(file.key_prefix)
            .unwrap_or_else(|| format!("shmbus/{bus}"));
        check_key("key_prefix", &key_prefix)?;
        if key_prefix.contains('*') || key_prefix.contains('$') {
            return Err(invalid("key_prefix", "must not contain wildcards"));
        }
        let mut exports = Vec::new();
        for e in file.export {
            exports.push(ExportRule {
                topics: TopicPattern::new(&e.topics)
                    .map_err(|err| invalid("export.topics", err.to_string()))?,
                reliability: e.reliability,
                congestion: e.congestion,
                express: e.express,
            });
        }
        for flag in &flags.exports {
            exports.push(parse_export_flag(flag)?);
        }
        let mut imports = Vec::new();
        for i in file.import {
            imports.push(import_rule(i.key, i.topic, i.raw)?);
        }
        for flag in &flags.imports {
            let (key, raw) = match flag.strip_suffix(":raw") {
                Some(key) => (key.to_owned(), true),
                None => (flag.clone(), false),
            };
            imports.push(import_rule(key, None, raw)?);
        }
        let import_capacity = flags
            .import_capacity
            .or(file.import_capacity)
            .unwrap_or(DEFAULT_IMPORT_CAPACITY);
        if !import_capacity.is_power_of_two() || !(4096..=1 << 34).contains(&import_capacity) {
            return Err(invalid(
                "import_capacity",
                "must be a power of two from 4096 to 16 GiB",
            ));
        }
        let import_full_wait_ms = flags
            .import_full_wait_ms
            .or(file.import_full_wait_ms)
            .unwrap_or(5);
        if import_full_wait_ms > 10_000 {
            return Err(invalid("import_full_wait_ms", "at most 10000"));
        }
        let export_spin_us = flags.export_spin_us.or(file.export_spin_us).unwrap_or(0);
        if export_spin_us > MAX_EXPORT_SPIN_US {
            return Err(invalid("export_spin_us", "at most 1000000 (1 s)"));
        }
        let scan_interval_ms = file.scan_interval_ms.unwrap_or(250);
        if !(10..=60_000).contains(&scan_interval_ms) {
            return Err(invalid("scan_interval_ms", "from 10 to 60000"));
        }
        let mode = flags.mode.or(file.mode);
        if let Some(m) = &mode {
            if !matches!(m.as_str(), "peer" | "client" | "router") {
                return Err(invalid("mode", "one of peer, client, router"));
            }
        }
        let zenoh_config = flags.zenoh_config.or(file.zenoh_config);
        let mut connect = file.connect;
        connect.extend(flags.connect);
        let mut listen = file.listen;
        listen.extend(flags.listen);
        for (key, list) in [("connect", &connect), ("listen", &listen)] {
            for endpoint in list {
                endpoint
                    .parse::<zenoh::config::EndPoint>()
                    .map_err(|e| invalid(key, format!("{endpoint}: {e}")))?;
            }
        }
        Ok(Self {
            node_name,
            root,
            bus,
            key_prefix,
            exports,
            imports,
            zenoh_config,
            mode,
            connect,
            listen,
            no_multicast_scouting: flags.no_multicast_scouting || file.no_multicast_scouting,
            import_capacity,
            import_full_wait: Duration::from_millis(import_full_wait_ms),
            scan_interval: Duration::from_millis(scan_interval_ms),
            export_spin: Duration::from_micros(export_spin_us),
            log_level: flags.log_level.or(file.log_level).unwrap_or_default(),
        })
    }

    /// The export rule for `topic`, the first that matches.
    pub fn export_rule(&self, topic: &str) -> Option<&ExportRule> {
        self.exports.iter().find(|r| r.topics.matches(topic))
    }

    /// The Zenoh key of a local topic.
    pub fn key_of(&self, topic: &str) -> String {
        format!("{}/{topic}", self.key_prefix)
    }

    /// Zenoh's configuration: the file's (or Zenoh's defaults) with the
    /// flags applied.
    ///
    /// # Errors
    ///
    /// Zenoh's error for the file or a value.
    pub fn zenoh(&self) -> Result<zenoh::Config, ConfigError> {
        let mut z = match &self.zenoh_config {
            Some(path) => zenoh::Config::from_file(path)
                .map_err(|e| invalid("zenoh_config", format!("{}: {e}", path.display())))?,
            None => zenoh::Config::default(),
        };
        let set = |z: &mut zenoh::Config, key: &str, value: String| {
            z.insert_json5(key, &value)
                .map_err(|e| invalid(key.to_owned(), e.to_string()))
        };
        if let Some(mode) = &self.mode {
            set(&mut z, "mode", format!("{mode:?}"))?;
        }
        let json_list = |list: &[String]| {
            let quoted: Vec<String> = list.iter().map(|e| format!("{e:?}")).collect();
            format!("[{}]", quoted.join(","))
        };
        if !self.connect.is_empty() {
            set(&mut z, "connect/endpoints", json_list(&self.connect))?;
        }
        if !self.listen.is_empty() {
            set(&mut z, "listen/endpoints", json_list(&self.listen))?;
        }
        if self.no_multicast_scouting {
            set(&mut z, "scouting/multicast/enabled", "false".into())?;
        }
        Ok(z)
    }
}

/// `TOPICS[:OPTION,...]` with options `reliable`, `best_effort`, `block`,
/// `drop`, `express`.
fn parse_export_flag(flag: &str) -> Result<ExportRule, ConfigError> {
    let (topics, options) = flag.split_once(':').unwrap_or((flag, ""));
    let mut rule = ExportRule {
        topics: TopicPattern::new(topics).map_err(|e| invalid("--export", e.to_string()))?,
        reliability: Reliability::default(),
        congestion: Congestion::default(),
        express: false,
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "reliable" => rule.reliability = Reliability::Reliable,
            "best_effort" => rule.reliability = Reliability::BestEffort,
            "block" => rule.congestion = Congestion::Block,
            "drop" => rule.congestion = Congestion::Drop,
            "express" => rule.express = true,
            other => {
                return Err(invalid(
                    "--export",
                    format!(
                        "unknown option {other:?} (reliable, best_effort, block, drop, express)"
                    ),
                ))
            }
        }
    }
    Ok(rule)
}

fn import_rule(key: String, topic: Option<String>, raw: bool) -> Result<ImportRule, ConfigError> {
    check_key("import.key", &key)?;
    if let Some(t) = &topic {
        validate_name("topic", t).map_err(|e| invalid("import.topic", e.to_string()))?;
    }
    Ok(ImportRule { key, topic, raw })
}

fn check_key(what: &str, key: &str) -> Result<(), ConfigError> {
    KeyExpr::try_from(key.to_owned())
        .map(|_| ())
        .map_err(|e| invalid(what, format!("{key:?} is not a Zenoh key expression: {e}")))
}

/// The host name, as a node name.
fn hostname() -> Result<String, ConfigError> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length; gethostname NUL-terminates
    // within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = (rc == 0)
        .then(|| {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        })
        .filter(|n| validate_name("node name", n).is_ok());
    name.ok_or_else(|| {
        invalid(
            "node_name",
            "not set, and the host name is not a valid name: set --node-name",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Overrides {
        Overrides {
            node_name: Some("gw-a".into()),
            root: Some("/dev/shm/x".into()),
            ..Overrides::default()
        }
    }

    #[test]
    fn a_file_and_flags_merge() {
        let file = Config::parse(
            r#"
            bus = "b"
            connect = ["tcp/127.0.0.1:7447"]
            [[export]]
            topics = "imu.*"
            congestion = "drop"
            [[import]]
            key = "shmbus/*/imu.$*"
            "#,
        )
        .unwrap();
        let c = Config::build(
            file,
            Overrides {
                exports: vec!["cam:best_effort,express".into()],
                imports: vec!["demo/**:raw".into()],
                ..flags()
            },
        )
        .unwrap();
        assert_eq!(c.key_prefix, "shmbus/b");
        assert_eq!(c.key_of("imu.0"), "shmbus/b/imu.0");
        assert_eq!(c.export_rule("imu.0").unwrap().congestion, Congestion::Drop);
        let cam = c.export_rule("cam").unwrap();
        assert_eq!(
            (cam.reliability, cam.express),
            (Reliability::BestEffort, true)
        );
        assert!(c.export_rule("other").is_none());
        assert_eq!(c.imports.len(), 2);
        assert!(c.imports[1].raw && c.imports[1].key == "demo/**");
        assert!(c.zenoh().is_ok());
        assert_eq!(c.export_spin, Duration::ZERO);
    }

    #[test]
    fn the_export_spin_flag_wins_over_the_file() {
        let file = Config::parse("export_spin_us = 50").unwrap();
        let c = Config::build(file, flags()).unwrap();
        assert_eq!(c.export_spin, Duration::from_micros(50));
        let file = Config::parse("export_spin_us = 50").unwrap();
        let o = Overrides {
            export_spin_us: Some(MAX_EXPORT_SPIN_US),
            ..flags()
        };
        let c = Config::build(file, o).unwrap();
        assert_eq!(c.export_spin, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_their_setting() {
        let bad = |text: &str, o: Overrides| match Config::build(Config::parse(text).unwrap(), o) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(bad("bus = '../x'", flags()), "bus");
        assert_eq!(bad("key_prefix = 'a/*'", flags()), "key_prefix");
        assert_eq!(bad("key_prefix = 'a//b'", flags()), "key_prefix");
        assert_eq!(bad("import_capacity = 5000", flags()), "import_capacity");
        assert_eq!(bad("mode = 'mesh'", flags()), "mode");
        assert_eq!(bad("export_spin_us = 1000001", flags()), "export_spin_us");
        assert_eq!(bad("connect = ['nonsense']", flags()), "connect");
        assert_eq!(bad("[[import]]\nkey = 'a//b'", flags()), "import.key");
        assert_eq!(
            bad("[[import]]\nkey = 'a'\ntopic = 'x/y'", flags()),
            "import.topic"
        );
        assert_eq!(
            bad(
                "",
                Overrides {
                    exports: vec!["t:sometimes".into()],
                    ..flags()
                }
            ),
            "--export"
        );
        assert_eq!(
            bad(
                "",
                Overrides {
                    node_name: Some("a b".into()),
                    ..flags()
                }
            ),
            "node_name"
        );
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_parse_errors_with_a_line() {
        let e = Config::parse("bus = 'b'\nexprot = 1\n").unwrap_err();
        assert!(e.contains("exprot") && e.contains("line 2"), "{e}");
        let e = Config::parse("bus = \n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
