//! Daemon configuration: a TOML file plus command-line overrides.
//!
//! Precedence, highest first: command-line flags, the `SHMBUS_ROOT`
//! environment variable (root only), the file, the defaults. A list given on
//! the command line (`--peer`, `--export`, `--import`) replaces the file's
//! list. Everything is validated up front with messages that say what to
//! change; the node's private key and the allowlist of peer keys are read
//! and checked here too (see [`identity`](crate::identity)).
//!
//! # File format
//!
//! ```toml
//! node_name = "robot-1"            # default: the host name
//! bus = "default"                  # default "default"
//! root = "/dev/shm/shmbus"         # default "/dev/shm/shmbus"
//! listen = "127.0.0.1:7878"        # default; "off" only dials; a non-loopback address needs:
//! allow_non_loopback_listen = false
//! key_file = "/etc/shmbus/bridge.key"   # required: this node's private key (`shmbus-bridge keygen`), mode 0600
//! allowlist = "/etc/shmbus/peers"       # required: `<public key> <node name>` per peer; reloaded on SIGHUP
//! protection = "auth"              # auth (default: every frame authenticated, zero-copy) | encrypt (copies)
//! handshake_timeout_ms = 3000      # absolute deadline for a handshake, however bytes trickle in
//! max_pending_handshakes = 64      # unauthenticated connections at once, in total
//! max_pending_per_address = 8      # ... and per source address
//! max_streams_per_peer = 1024      # remote publishers mirrored per peer
//! max_replica_bytes_per_peer = 4294967296  # sum of their replica ring capacities
//! max_exports_per_peer = 1024      # subscriber slots a peer may take on local rings
//! peer_state_expiry_s = 3600       # state of a peer absent this long is dropped
//! log_level = "info"               # error | warn | info | debug | trace
//! heartbeat_interval_ms = 1000
//! peer_timeout_ms = 5000           # at least twice the heartbeat interval
//! zerocopy = true                  # MSG_ZEROCOPY for large sends (falls back by itself)
//! chunk_bytes = 262144             # largest DATA payload per frame (more if a record needs it)
//! notsent_lowat = 131072           # TCP_NOTSENT_LOWAT: unsent bytes queued before DATA waits (control frames never wait behind more)
//! pin_deadline_ms = 250            # untethered: longest the kernel may hold a zero-copy send of ring bytes; then the connection is reset
//! durable_lease_ms = 60000         # tethered: how long an export's slot outlives a dead bridge (a restart within it loses nothing)
//! export_hold_max_age_s = 86400    # an export hold (a gone publisher's ring kept for a peer) not claimed this long is removed
//! zerocopy_always = false          # MSG_ZEROCOPY for every DATA payload, whatever its size or the kernel's copies (tests)
//! max_replica_capacity = 1073741824  # largest remote ring this bridge mirrors
//! stats_file = "/run/shmbus-bridge.stats"  # rewritten every second, on SIGUSR1 and at exit
//! metrics_listen = "127.0.0.1:9465"  # Prometheus text metrics at GET /metrics; default off
//! rescan_interval_ms = 2000        # full bus rescan, a safety net behind inotify
//!
//! [[peer]]                         # bridges to connect to
//! name = "base-station"            # the peer's allowlist name (its key is looked up there)
//! address = "10.0.0.2:7878"
//!
//! [[export]]                       # local topics offered to peers
//! topics = "imu*"                  # glob: * any run, ? one character
//! mode = "untethered"              # default
//! retention_bytes = 67108864       # default 64 MiB (untethered only)
//!
//! [[export]]
//! topics = "commands"
//! mode = "tethered"
//!
//! [[import]]                       # remote topics accepted from peers
//! topics = "*"
//! ```
//!
//! # Exports: tethered or untethered
//!
//! The default mode is **untethered**: the bridge never holds local
//! publishers back. It keeps up to `retention_bytes` of unacknowledged data
//! per stream for resending after a reconnect; when a slow or absent peer
//! falls further behind, the oldest data is dropped for that peer only and
//! the peer receives an exact GAP. This is the default because a bridge is a
//! subscriber of every exported ring: if it were tethered, one slow remote
//! link would stall every local publisher of the topic and so degrade every
//! local subscriber, silently, far from the cause. **Tethered** exports are
//! lossless end to end and opt-in for topics where the remote copy must be
//! complete and local back-pressure is acceptable.
//!
//! Allow-lists deny by default: a topic is exported only if an export
//! pattern matches it (the first matching rule decides the mode), and
//! imported only if an import pattern matches.
//!
//! # Reload (SIGHUP)
//!
//! The daemon re-reads the file with the same command-line flags
//! ([`Config::reload`]). Peers, exports, imports, the key file and the
//! allowlist take effect; so do the timing and size settings, which are read
//! where they are used. The settings listed in [`RESTART_ONLY`] (sockets
//! already bound, the bus being watched, the node's name) keep their running
//! values, with a warning. A file that does not parse or validate is refused
//! and the running configuration stays.

use std::{
    fmt, fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    identity::{Allowlist, KeyFileError, StaticKeypair},
    proto::{frame::MAX_NAME_LEN, seal::Protection},
};

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Default bus name.
pub const DEFAULT_BUS: &str = "default";
/// Default root directory of the bus.
pub const DEFAULT_ROOT: &str = "/dev/shm/shmbus";
/// Default retention budget of an untethered export, per stream.
pub const DEFAULT_RETENTION_BYTES: u64 = 64 << 20;
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time without any frame after which a peer is considered dead.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest DATA payload per frame.
pub const DEFAULT_CHUNK_BYTES: u64 = 256 << 10;
/// Default largest remote ring capacity mirrored into a local replica.
pub const DEFAULT_MAX_REPLICA_CAPACITY: u64 = 1 << 30;
/// Default absolute deadline of a handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default limit on unauthenticated connections in total.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;
/// Default limit on unauthenticated connections per source address.
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 8;
/// Default limit on import streams per peer.
pub const DEFAULT_MAX_STREAMS_PER_PEER: usize = 1024;
/// Default limit on the replica ring bytes per peer.
pub const DEFAULT_MAX_REPLICA_BYTES_PER_PEER: u64 = 4 << 30;
/// Default limit on export readers (subscriber slots) per peer.
pub const DEFAULT_MAX_EXPORTS_PER_PEER: usize = 1024;
/// Default time after which an absent peer's state is dropped.
pub const DEFAULT_PEER_STATE_EXPIRY: Duration = Duration::from_secs(3600);
/// Default period of the full bus rescan behind inotify.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Settings a reload cannot change: they keep their running values.
pub const RESTART_ONLY: &[&str] = &[
    "node_name",
    "bus",
    "root",
    "listen",
    "metrics_listen",
    "log_level",
];

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The config file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A setting has an invalid value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting (file key or flag).
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The listen address is not loopback and that was not explicitly allowed.
    #[error("listen address {addr} is not a loopback address; set `allow_non_loopback_listen = true` (or pass --allow-non-loopback-listen) to accept bridges from other hosts")]
    NonLoopbackListen {
        /// The address.
        addr: SocketAddr,
    },
    /// No key file was configured.
    #[error("no private key configured: set `key_file` in the config or pass --key-file (create one with `shmbus-bridge keygen FILE`)")]
    MissingKeyFile,
    /// No allowlist was configured.
    #[error("no allowlist configured: set `allowlist` in the config or pass --allowlist (one `<public key> <node name>` line per peer, from the peers' `.pub` files)")]
    MissingAllowlist,
    /// The key file or the allowlist is unusable.
    #[error(transparent)]
    Key(#[from] KeyFileError),
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Per-connection detail.
    Debug,
    /// Per-frame detail.
    Trace,
}

/// A topic-name glob: `*` matches any run of characters (also none), `?`
/// exactly one; everything else matches itself.
///
/// # Examples
///
/// ```
/// use shmbus_bridge::config::TopicPattern;
/// let p = TopicPattern::new("imu.?.raw*")?;
/// assert!(p.matches("imu.1.raw"));
/// assert!(p.matches("imu.2.raw-v2"));
/// assert!(!p.matches("imu.12.raw"));
/// # Ok::<(), shmbus_bridge::config::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    chars: Vec<char>,
}

impl TopicPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] if it is empty, longer than a topic name may
    /// be, or contains `/` or control characters.
    pub fn new(text: &str) -> Result<Self, ConfigError> {
        check_pattern("topic pattern", text)?;
        Ok(Self {
            text: text.to_owned(),
            chars: text.chars().collect(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches. Linear-time backtracking over the last `*`,
    /// so hostile patterns cannot blow up.
    pub fn matches(&self, topic: &str) -> bool {
        let p = &self.chars;
        let t: Vec<char> = topic.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", self.text)
    }
}

/// How an exported topic treats a slow peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMode {
    /// Lossless: the bridge gates local publishers until the peer has
    /// acknowledged (and the kernel released) the data.
    Tethered,
    /// Local publishers never wait on the network; the bridge retains up to
    /// `retention_bytes` per stream for the peer and reports an exact GAP
    /// beyond that.
    Untethered {
        /// Retention budget per stream, in bytes (> 0).
        retention_bytes: u64,
    },
}

impl Default for ExportMode {
    /// Untethered with [`DEFAULT_RETENTION_BYTES`]: see the module docs.
    fn default() -> Self {
        Self::Untethered {
            retention_bytes: DEFAULT_RETENTION_BYTES,
        }
    }
}

/// One export allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRule {
    /// Topics it covers.
    pub pattern: TopicPattern,
    /// Their mode.
    pub mode: ExportMode,
}

/// One import allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRule {
    /// Topics it covers.
    pub pattern: TopicPattern,
}

/// A bridge to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node name; its public key is the allowlist's entry for it.
    pub name: String,
    /// `host:port` (a host name, an IPv4 address or a bracketed IPv6 address),
    /// resolved when connecting.
    pub address: String,
}

/// Command-line flags. Each one overrides the config file.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "shmbus-bridge",
    version,
    about = "Forwards shmbus topics between hosts over TCP with MSG_ZEROCOPY"
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name, presented to peers [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Bus name [default: default].
    #[arg(long, value_name = "NAME")]
    pub bus: Option<String>,
    /// Bus root directory [default: /dev/shm/shmbus].
    #[arg(long, env = "SHMBUS_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Address to accept peers on, or `off` to only dial [default: 127.0.0.1:7878].
    #[arg(long, value_name = "IP:PORT|off")]
    pub listen: Option<String>,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    pub allow_non_loopback_listen: bool,
    /// Peer to connect to; repeatable; replaces the file's peers.
    #[arg(long = "peer", value_name = "NAME=HOST:PORT")]
    pub peers: Vec<String>,
    /// Topic pattern to export, with an optional mode; repeatable; replaces
    /// the file's exports. Sizes take K, M, G suffixes (binary).
    #[arg(long = "export", value_name = "PATTERN[:tethered|:untethered[=BYTES]]")]
    pub exports: Vec<String>,
    /// Topic pattern to import; repeatable; replaces the file's imports.
    #[arg(long = "import", value_name = "PATTERN")]
    pub imports: Vec<String>,
    /// This node's private key file (from `keygen`; mode 0600, owned by this user).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Allowlist of peers: `<base64 public key> <node name>` per line.
    #[arg(long, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,
    /// Frame protection: auth (default; every frame authenticated, ring
    /// bytes sent zero-copy) or encrypt (also encrypted; copies).
    #[arg(long, value_enum)]
    pub protection: Option<ProtectionName>,
    /// Absolute handshake deadline in milliseconds [default: 3000].
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Unauthenticated connections at once, in total [default: 64].
    #[arg(long, value_name = "N")]
    pub max_pending_handshakes: Option<usize>,
    /// Unauthenticated connections at once per source address [default: 8].
    #[arg(long, value_name = "N")]
    pub max_pending_per_address: Option<usize>,
    /// Remote publishers mirrored per peer [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_streams_per_peer: Option<usize>,
    /// Sum of replica ring capacities per peer, e.g. 4G [default: 4G].
    #[arg(long, value_name = "BYTES")]
    pub max_replica_bytes_per_peer: Option<String>,
    /// Export readers (subscriber slots on local rings) per peer [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_exports_per_peer: Option<usize>,
    /// Seconds after which the state of an absent peer is dropped [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub peer_state_expiry_s: Option<u64>,
    /// Subcommand (none: run the daemon).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log verbosity [default: info].
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Heartbeat interval in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Peer timeout in milliseconds [default: 5000].
    #[arg(long, value_name = "MS")]
    pub peer_timeout_ms: Option<u64>,
    /// Never use MSG_ZEROCOPY (plain copying sends only).
    #[arg(long)]
    pub no_zerocopy: bool,
    /// Largest DATA payload per frame, e.g. 256K [default: 256K].
    #[arg(long, value_name = "BYTES")]
    pub chunk_bytes: Option<String>,
    /// Largest remote ring capacity to mirror, e.g. 1G [default: 1G].
    #[arg(long, value_name = "BYTES")]
    pub max_replica_capacity: Option<String>,
    /// File to write counters to (every second, on SIGUSR1 and at exit).
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (GET /metrics), or `off` [default: off].
    #[arg(long, value_name = "IP:PORT|off")]
    pub metrics_listen: Option<String>,
    /// Period of the full bus rescan behind inotify, in milliseconds [default: 2000].
    #[arg(long, value_name = "MS")]
    pub rescan_interval_ms: Option<u64>,
}

/// Subcommands of `shmbus-bridge`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Writes a new key pair: FILE (private, mode 0600, never overwritten)
    /// and FILE.pub (`<public key> <node name>`, the peers' allowlist line).
    Keygen {
        /// The private key file to create.
        file: PathBuf,
        /// The node name to put in the `.pub` line [default: --node-name or the host name].
        #[arg(long)]
        name: Option<String>,
    },
}

/// `protection` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProtectionName {
    /// Every frame authenticated; ring bytes sent zero-copy.
    Auth,
    /// Every frame authenticated and encrypted; ring bytes copied.
    Encrypt,
}

impl From<ProtectionName> for Protection {
    fn from(p: ProtectionName) -> Self {
        match p {
            ProtectionName::Auth => Self::Auth,
            ProtectionName::Encrypt => Self::Encrypt,
        }
    }
}

/// The limits that hold before and after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Absolute deadline of a handshake.
    pub handshake_timeout: Duration,
    /// Unauthenticated connections at once, in total.
    pub max_pending_handshakes: usize,
    /// Unauthenticated connections at once per source address.
    pub max_pending_per_address: usize,
    /// Import streams (replicas) per peer.
    pub max_streams_per_peer: usize,
    /// Sum of replica ring capacities per peer.
    pub max_replica_bytes_per_peer: u64,
    /// Export readers (subscriber slots on local rings) per peer.
    pub max_exports_per_peer: usize,
    /// An absent peer's state is dropped after this long.
    pub peer_state_expiry: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
            max_streams_per_peer: DEFAULT_MAX_STREAMS_PER_PEER,
            max_replica_bytes_per_peer: DEFAULT_MAX_REPLICA_BYTES_PER_PEER,
            max_exports_per_peer: DEFAULT_MAX_EXPORTS_PER_PEER,
            peer_state_expiry: DEFAULT_PEER_STATE_EXPIRY,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    bus: Option<String>,
    root: Option<PathBuf>,
    listen: Option<String>,
    allow_non_loopback_listen: Option<bool>,
    key_file: Option<PathBuf>,
    allowlist: Option<PathBuf>,
    protection: Option<ProtectionName>,
    handshake_timeout_ms: Option<u64>,
    max_pending_handshakes: Option<usize>,
    max_pending_per_address: Option<usize>,
    max_streams_per_peer: Option<usize>,
    max_replica_bytes_per_peer: Option<u64>,
    max_exports_per_peer: Option<usize>,
    peer_state_expiry_s: Option<u64>,
    log_level: Option<LogLevel>,
    heartbeat_interval_ms: Option<u64>,
    peer_timeout_ms: Option<u64>,
    zerocopy: Option<bool>,
    chunk_bytes: Option<u64>,
    notsent_lowat: Option<u32>,
    pin_deadline_ms: Option<u64>,
    durable_lease_ms: Option<u64>,
    export_hold_max_age_s: Option<u64>,
    zerocopy_always: Option<bool>,
    max_replica_capacity: Option<u64>,
    stats_file: Option<PathBuf>,
    metrics_listen: Option<String>,
    rescan_interval_ms: Option<u64>,
    #[serde(default, rename = "peer")]
    peers: Vec<FilePeer>,
    #[serde(default, rename = "export")]
    exports: Vec<FileExport>,
    #[serde(default, rename = "import")]
    imports: Vec<FileImport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    name: String,
    address: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    Tethered,
    Untethered,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExport {
    topics: String,
    mode: Option<ModeName>,
    retention_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileImport {
    topics: String,
}

/// The validated configuration of a bridge daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (1..=255 bytes of `[A-Za-z0-9._-]`).
    pub node_name: String,
    /// Bus name.
    pub bus: String,
    /// Bus root directory (absolute).
    pub root: PathBuf,
    /// Address to accept peers on; `None`: only dial.
    pub listen: Option<SocketAddr>,
    /// Bridges to connect to (unique names).
    pub peers: Vec<PeerConfig>,
    /// Export allow-list, in order; the first match decides.
    pub exports: Vec<ExportRule>,
    /// Import allow-list.
    pub imports: Vec<ImportRule>,
    /// Where the private key was read from.
    pub key_file: PathBuf,
    /// This node's static key pair.
    pub keypair: StaticKeypair,
    /// Where the allowlist was read from (re-read on SIGHUP).
    pub allowlist_file: PathBuf,
    /// The peers accepted, with their names.
    pub allowlist: Allowlist,
    /// How frames after the handshake are protected.
    pub protection: Protection,
    /// Limits before and after authentication.
    pub limits: Limits,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// How often to send HEARTBEAT.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is dropped.
    pub peer_timeout: Duration,
    /// Whether large sends may use `MSG_ZEROCOPY`.
    pub zerocopy: bool,
    /// Largest DATA payload per frame (a frame carries more when one record
    /// is larger), 4 KiB to 16 MiB.
    pub chunk_bytes: u64,
    /// How exports are sent: flow and protection of ring bytes.
    pub send: SendConfig,
    /// Largest remote ring capacity mirrored into a replica; larger streams
    /// are not imported.
    pub max_replica_capacity: u64,
    /// Where to write counters, if anywhere.
    pub stats_file: Option<PathBuf>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Period of the full bus rescan (inotify reports changes in between).
    pub rescan_interval: Duration,
    /// The config file and flags this configuration was loaded from; a
    /// reload reads the file again and applies the same flags.
    pub source: Cli,
    /// Problems that do not stop the daemon; the daemon logs them at startup.
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads the configuration: reads the file named by `--config` (if any),
    /// applies the command-line overrides, validates, and reads the key.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting and what to do.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let (text, path) = match &cli.config {
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                (text, path.clone())
            }
            None => (String::new(), PathBuf::from("<none>")),
        };
        Self::from_toml(&text, &path, cli)
    }

    /// Like [`Config::load`] with the file's contents given as `text`
    /// (`path` is only used in messages).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting and what to do.
    pub fn from_toml(text: &str, path: &Path, cli: &Cli) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::resolve(file, cli)
    }

    /// Loads the configuration again from the file and flags it came from,
    /// for a reload: the settings in [`RESTART_ONLY`] keep their values from
    /// `self`, each one that differs adds a line to `warnings`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] as for [`Config::load`]; `self` stays usable.
    pub fn reload(&self) -> Result<Self, ConfigError> {
        let mut new = Self::load(&self.source)?;
        let changed = [
            ("node_name", new.node_name != self.node_name),
            ("bus", new.bus != self.bus),
            ("root", new.root != self.root),
            ("listen", new.listen != self.listen),
            ("metrics_listen", new.metrics_listen != self.metrics_listen),
            ("log_level", new.log_level != self.log_level),
        ];
        for (name, differs) in changed {
            if differs {
                new.warnings.push(format!(
                    "{name} changed in the config file; it takes effect at the next restart"
                ));
            }
        }
        new.node_name.clone_from(&self.node_name);
        new.bus.clone_from(&self.bus);
        new.root.clone_from(&self.root);
        new.listen = self.listen;
        new.metrics_listen = self.metrics_listen;
        new.log_level = self.log_level;
        Ok(new)
    }

    fn resolve(file: FileConfig, cli: &Cli) -> Result<Self, ConfigError> {
        let warnings = Vec::new();

        let node_name = match cli.node_name.clone().or(file.node_name) {
            Some(n) => n,
            None => host_name()?,
        };
        check_node_name("node_name", &node_name)?;

        let bus = cli
            .bus
            .clone()
            .or(file.bus)
            .unwrap_or_else(|| DEFAULT_BUS.to_owned());
        check_bus_name(&bus)?;

        let root = cli
            .root
            .clone()
            .or(file.root)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        if !root.is_absolute() {
            return Err(invalid(
                "root",
                format!("{} is not an absolute path", root.display()),
            ));
        }

        let listen_text = cli
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: Option<SocketAddr> = if listen_text == "off" {
            None
        } else {
            Some(listen_text.parse().map_err(|_| {
                invalid(
                    "listen",
                    format!("{listen_text:?} is not IP:PORT (e.g. 127.0.0.1:7878 or [::1]:7878) or \"off\""),
                )
            })?)
        };
        let allow_remote =
            cli.allow_non_loopback_listen || file.allow_non_loopback_listen.unwrap_or(false);
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() && !allow_remote {
                return Err(ConfigError::NonLoopbackListen { addr });
            }
        }

        let peers = if cli.peers.is_empty() {
            file.peers
                .into_iter()
                .map(|p| PeerConfig {
                    name: p.name,
                    address: p.address,
                })
                .collect()
        } else {
            cli.peers
                .iter()
                .map(|s| parse_peer_flag(s))
                .collect::<Result<Vec<_>, _>>()?
        };
        for (i, p) in peers.iter().enumerate() {
            check_node_name("peer name", &p.name)?;
            check_peer_address(&p.address)?;
            if p.name == node_name {
                return Err(invalid(
                    "peer name",
                    format!("{:?} is this node's own name", p.name),
                ));
            }
            if peers[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    "peer name",
                    format!("{:?} is listed twice", p.name),
                ));
            }
        }

        let exports = if cli.exports.is_empty() {
            file.exports
                .into_iter()
                .map(|e| {
                    Ok(ExportRule {
                        pattern: TopicPattern::new(&e.topics)?,
                        mode: export_mode(e.mode, e.retention_bytes)?,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?
        } else {
            cli.exports
                .iter()
                .map(|s| parse_export_flag(s))
                .collect::<Result<Vec<_>, _>>()?
        };

        let imports = if cli.imports.is_empty() {
            file.imports
                .into_iter()
                .map(|i| TopicPattern::new(&i.topics).map(|pattern| ImportRule { pattern }))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            cli.imports
                .iter()
                .map(|s| TopicPattern::new(s).map(|pattern| ImportRule { pattern }))
                .collect::<Result<Vec<_>, _>>()?
        };

        let heartbeat_ms = cli
            .heartbeat_interval_ms
            .or(file.heartbeat_interval_ms)
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL.as_millis() as u64);
        let timeout_ms = cli
            .peer_timeout_ms
            .or(file.peer_timeout_ms)
            .unwrap_or(DEFAULT_PEER_TIMEOUT.as_millis() as u64);
        if heartbeat_ms == 0 {
            return Err(invalid("heartbeat_interval_ms", "must be at least 1"));
        }
        if timeout_ms < heartbeat_ms.saturating_mul(2) {
            return Err(invalid(
                "peer_timeout_ms",
                format!("{timeout_ms} must be at least twice heartbeat_interval_ms ({heartbeat_ms}), or one late heartbeat drops the peer"),
            ));
        }

        let chunk_bytes = match &cli.chunk_bytes {
            Some(s) => parse_size(s)?,
            None => file.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES),
        };
        if !(4096..=u64::from(crate::proto::frame::MAX_DATA_LEN)).contains(&chunk_bytes) {
            return Err(invalid(
                "chunk_bytes",
                format!("{chunk_bytes} must be from 4K to 16M"),
            ));
        }
        let max_replica_capacity = match &cli.max_replica_capacity {
            Some(s) => parse_size(s)?,
            None => file
                .max_replica_capacity
                .unwrap_or(DEFAULT_MAX_REPLICA_CAPACITY),
        };
        if max_replica_capacity < 4096 {
            return Err(invalid(
                "max_replica_capacity",
                format!("{max_replica_capacity} must be at least 4K (the smallest ring)"),
            ));
        }
        let zerocopy = !cli.no_zerocopy && file.zerocopy.unwrap_or(true);
        let send = SendConfig {
            notsent_lowat: file.notsent_lowat.unwrap_or(DEFAULT_NOTSENT_LOWAT),
            pin_deadline: Duration::from_millis(
                file.pin_deadline_ms
                    .unwrap_or(DEFAULT_PIN_DEADLINE.as_millis() as u64),
            ),
            durable_lease: Duration::from_millis(
                file.durable_lease_ms
                    .unwrap_or(DEFAULT_DURABLE_LEASE.as_millis() as u64),
            ),
            export_hold_max_age: file
                .export_hold_max_age_s
                .map_or(DEFAULT_EXPORT_HOLD_MAX_AGE, Duration::from_secs),
            zerocopy_always: file.zerocopy_always.unwrap_or(false),
        };
        if send.pin_deadline.is_zero() || send.notsent_lowat < 4096 {
            return Err(invalid(
                "pin_deadline_ms / notsent_lowat",
                "the pin deadline must be positive and notsent_lowat at least 4096".to_owned(),
            ));
        }
        let stats_file = cli.stats_file.clone().or(file.stats_file);
        let metrics_listen = match cli.metrics_listen.clone().or(file.metrics_listen) {
            None => None,
            Some(text) if text == "off" => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    invalid(
                        "metrics_listen",
                        format!("{text:?} is not IP:PORT (e.g. 127.0.0.1:9465) or \"off\""),
                    )
                })?;
                if !addr.ip().is_loopback() && !allow_remote {
                    return Err(invalid(
                        "metrics_listen",
                        format!("{addr} is not a loopback address; the metrics name peers and topics, so set `allow_non_loopback_listen = true` to serve them to other hosts"),
                    ));
                }
                Some(addr)
            }
        };
        let rescan_ms = cli
            .rescan_interval_ms
            .or(file.rescan_interval_ms)
            .unwrap_or(DEFAULT_RESCAN_INTERVAL.as_millis() as u64);
        if !(100..=3_600_000).contains(&rescan_ms) {
            return Err(invalid(
                "rescan_interval_ms",
                format!("{rescan_ms} must be from 100 to 3600000"),
            ));
        }

        let key_file = cli
            .key_file
            .clone()
            .or(file.key_file)
            .ok_or(ConfigError::MissingKeyFile)?;
        let keypair = StaticKeypair::load(&key_file)?;
        let allowlist_file = cli
            .allowlist
            .clone()
            .or(file.allowlist)
            .ok_or(ConfigError::MissingAllowlist)?;
        let allowlist = load_allowlist(&allowlist_file)?;
        if let Some(name) = allowlist.name_of(&keypair.public()) {
            return Err(invalid(
                "allowlist",
                format!(
                    "{} lists this node's own key (as {name:?}); a node never accepts itself",
                    allowlist_file.display()
                ),
            ));
        }
        for p in &peers {
            if allowlist.key_of(&p.name).is_none() {
                return Err(invalid(
                    "peer name",
                    format!(
                        "{:?} is not in the allowlist {}; add its `.pub` line there",
                        p.name,
                        allowlist_file.display()
                    ),
                ));
            }
        }
        let protection = cli
            .protection
            .or(file.protection)
            .map_or(Protection::Auth, Protection::from);
        let handshake_ms = cli
            .handshake_timeout_ms
            .or(file.handshake_timeout_ms)
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64);
        if !(100..=60_000).contains(&handshake_ms) {
            return Err(invalid(
                "handshake_timeout_ms",
                format!("{handshake_ms} must be from 100 to 60000"),
            ));
        }
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(invalid(field, "must be at least 1"))
            } else {
                Ok(v)
            }
        };
        let max_replica_bytes_per_peer = match &cli.max_replica_bytes_per_peer {
            Some(s) => parse_size(s)?,
            None => file
                .max_replica_bytes_per_peer
                .unwrap_or(DEFAULT_MAX_REPLICA_BYTES_PER_PEER),
        };
        let limits = Limits {
            handshake_timeout: Duration::from_millis(handshake_ms),
            max_pending_handshakes: positive(
                "max_pending_handshakes",
                cli.max_pending_handshakes
                    .or(file.max_pending_handshakes)
                    .unwrap_or(DEFAULT_MAX_PENDING_HANDSHAKES),
            )?,
            max_pending_per_address: positive(
                "max_pending_per_address",
                cli.max_pending_per_address
                    .or(file.max_pending_per_address)
                    .unwrap_or(DEFAULT_MAX_PENDING_PER_ADDRESS),
            )?,
            max_streams_per_peer: positive(
                "max_streams_per_peer",
                cli.max_streams_per_peer
                    .or(file.max_streams_per_peer)
                    .unwrap_or(DEFAULT_MAX_STREAMS_PER_PEER),
            )?,
            max_replica_bytes_per_peer,
            max_exports_per_peer: positive(
                "max_exports_per_peer",
                cli.max_exports_per_peer
                    .or(file.max_exports_per_peer)
                    .unwrap_or(DEFAULT_MAX_EXPORTS_PER_PEER),
            )?,
            peer_state_expiry: Duration::from_secs(
                cli.peer_state_expiry_s
                    .or(file.peer_state_expiry_s)
                    .unwrap_or(DEFAULT_PEER_STATE_EXPIRY.as_secs())
                    .max(1),
            ),
        };

        Ok(Self {
            node_name,
            bus,
            root,
            listen,
            peers,
            exports,
            imports,
            key_file,
            keypair,
            allowlist_file,
            allowlist,
            protection,
            limits,
            log_level: cli.log_level.or(file.log_level).unwrap_or_default(),
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            peer_timeout: Duration::from_millis(timeout_ms),
            zerocopy,
            chunk_bytes,
            send,
            max_replica_capacity,
            stats_file,
            metrics_listen,
            rescan_interval: Duration::from_millis(rescan_ms),
            source: cli.clone(),
            warnings,
        })
    }

    /// The export rule for `topic`: the first whose pattern matches, or
    /// `None` if the topic must not be exported.
    pub fn export_rule(&self, topic: &str) -> Option<&ExportRule> {
        self.exports.iter().find(|r| r.pattern.matches(topic))
    }

    /// Whether a remote `topic` may be imported.
    pub fn imports_topic(&self, topic: &str) -> bool {
        self.imports.iter().any(|r| r.pattern.matches(topic))
    }
}

/// Default [`SendConfig::notsent_lowat`]: 128 KiB.
pub const DEFAULT_NOTSENT_LOWAT: u32 = 128 << 10;
/// Default [`SendConfig::pin_deadline`]: far inside any retention budget
/// (at the bridge's rates, 64 MiB last seconds), yet long enough for a
/// healthy link's completions.
pub const DEFAULT_PIN_DEADLINE: Duration = Duration::from_millis(250);
/// Default [`SendConfig::durable_lease`].
pub const DEFAULT_DURABLE_LEASE: Duration = Duration::from_secs(60);

/// Default [`SendConfig::export_hold_max_age`]: as the receiver's holds
/// (`daemon::MARKER_EXPIRY`).
pub const DEFAULT_EXPORT_HOLD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How exports are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendConfig {
    /// `TCP_NOTSENT_LOWAT` of peer sockets: the sender writes DATA only while
    /// fewer unsent bytes are queued, so a control frame waits behind at most
    /// this plus one DATA frame.
    pub notsent_lowat: u32,
    /// Untethered exports: the longest the kernel may hold a zero-copy send
    /// of ring bytes (pinning them) before the connection is reset.
    pub pin_deadline: Duration,
    /// Tethered exports: how long the export's durable slot keeps gating the
    /// publisher after this bridge died, so a restart within it loses nothing.
    pub durable_lease: Duration,
    /// How long an export hold (a ring kept for a peer after its publisher
    /// and names are gone, see `daemon::export_hold`) waits for its peer
    /// before it is removed.
    pub export_hold_max_age: Duration,
    /// Send every DATA payload with `MSG_ZEROCOPY`, however small, and keep
    /// doing so when completions come back COPIED (on loopback and veth they
    /// always do); for tests of the zero-copy paths.
    pub zerocopy_always: bool,
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            notsent_lowat: DEFAULT_NOTSENT_LOWAT,
            pin_deadline: DEFAULT_PIN_DEADLINE,
            durable_lease: DEFAULT_DURABLE_LEASE,
            export_hold_max_age: DEFAULT_EXPORT_HOLD_MAX_AGE,
            zerocopy_always: false,
        }
    }
}

/// Reads and checks an allowlist file (see [`identity`](crate::identity)).
///
/// # Errors
///
/// [`ConfigError::Key`] naming the file, the line and the problem.
pub fn load_allowlist(path: &Path) -> Result<Allowlist, ConfigError> {
    Ok(Allowlist::load(
        path,
        crate::proto::handshake::check_node_name,
    )?)
}

fn host_name() -> Result<String, ConfigError> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| {
        invalid(
            "node_name",
            format!("not set and the host name is unreadable ({e}); set node_name"),
        )
    })?;
    let name = name.trim().to_owned();
    check_node_name("node_name", &name).map_err(|_| {
        invalid(
            "node_name",
            format!("not set and the host name {name:?} is not a valid node name; set node_name"),
        )
    })?;
    Ok(name)
}

fn check_node_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("{name:?} must be 1 to {MAX_NAME_LEN} bytes long"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            field,
            format!("{name:?} may contain only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

fn check_bus_name(bus: &str) -> Result<(), ConfigError> {
    if bus.is_empty() || bus.len() > MAX_NAME_LEN {
        return Err(invalid(
            "bus",
            format!("{bus:?} must be 1 to {MAX_NAME_LEN} bytes long"),
        ));
    }
    if bus == "." || bus == ".." || bus.contains('/') || bus.chars().any(char::is_control) {
        return Err(invalid(
            "bus",
            format!("{bus:?} must not be '.' or '..' or contain '/' or control characters"),
        ));
    }
    Ok(())
}

fn check_pattern(field: &str, text: &str) -> Result<(), ConfigError> {
    if text.is_empty() || text.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("{text:?} must be 1 to {MAX_NAME_LEN} bytes long"),
        ));
    }
    if text.contains('/') || text.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{text:?} must not contain '/' or control characters (topic names cannot)"),
        ));
    }
    Ok(())
}

fn check_peer_address(address: &str) -> Result<(), ConfigError> {
    let bad = || {
        invalid(
            "peer address",
            format!("{address:?} is not HOST:PORT (e.g. 10.0.0.2:7878, bridge.example:7878 or [fd00::2]:7878)"),
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() {
        return Err(bad());
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(bad)?;
        inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
    } else if host.contains(':') || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(bad());
    }
    Ok(())
}

fn export_mode(mode: Option<ModeName>, retention: Option<u64>) -> Result<ExportMode, ConfigError> {
    match (mode.unwrap_or(ModeName::Untethered), retention) {
        (ModeName::Tethered, Some(_)) => Err(invalid(
            "retention_bytes",
            "only applies to untethered exports (a tethered export retains everything unacknowledged)",
        )),
        (ModeName::Tethered, None) => Ok(ExportMode::Tethered),
        (ModeName::Untethered, Some(0)) => Err(invalid("retention_bytes", "must be greater than 0")),
        (ModeName::Untethered, r) => Ok(ExportMode::Untethered {
            retention_bytes: r.unwrap_or(DEFAULT_RETENTION_BYTES),
        }),
    }
}

/// `NAME=HOST:PORT`.
fn parse_peer_flag(s: &str) -> Result<PeerConfig, ConfigError> {
    let (name, address) = s
        .split_once('=')
        .ok_or_else(|| invalid("--peer", format!("{s:?} is not NAME=HOST:PORT")))?;
    Ok(PeerConfig {
        name: name.to_owned(),
        address: address.to_owned(),
    })
}

/// `PATTERN`, `PATTERN:tethered`, `PATTERN:untethered` or
/// `PATTERN:untethered=SIZE`.
fn parse_export_flag(s: &str) -> Result<ExportRule, ConfigError> {
    let Some((pattern, mode)) = s.rsplit_once(':') else {
        return Ok(ExportRule {
            pattern: TopicPattern::new(s)?,
            mode: ExportMode::default(),
        });
    };
    let (name, size) = match mode.split_once('=') {
        Some((n, size)) => (n, Some(parse_size(size)?)),
        None => (mode, None),
    };
    let name = match name {
        "tethered" => ModeName::Tethered,
        "untethered" => ModeName::Untethered,
        other => {
            return Err(invalid(
                "--export",
                format!("unknown mode {other:?} in {s:?}; use PATTERN, PATTERN:tethered or PATTERN:untethered[=SIZE]"),
            ))
        }
    };
    Ok(ExportRule {
        pattern: TopicPattern::new(pattern)?,
        mode: export_mode(Some(name), size)?,
    })
}

/// A byte count with an optional binary suffix: `4096`, `64K`, `64M`, `1G`
/// (also `KiB`, `MiB`, `GiB`).
fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || {
        invalid(
            "size",
            format!("{s:?} is not a size like 65536, 64K, 64M or 1G"),
        )
    };
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match suffix {
        "" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests;
