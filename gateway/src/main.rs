//! `shmbus-zenoh`: the gateway daemon. See the crate's README.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use shmbus_bridge::config::LogLevel;
use shmbus_zenoh::{
    config::{Config, Overrides},
    Gateway,
};

/// Gateway between a shmbus bus and Zenoh.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (flags below win over it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// This gateway's name among the gateways of the Zenoh network
    /// (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The bus root directory (default: $SHMBUS_ROOT, else /dev/shm/shmbus-<uid>).
    #[arg(long, env = "SHMBUS_ROOT")]
    root: Option<PathBuf>,
    /// The local bus.
    #[arg(long)]
    bus: Option<String>,
    /// Zenoh key prefix of exported topics (default: shmbus/<bus>).
    #[arg(long)]
    key_prefix: Option<String>,
    /// Export topics matching a glob: TOPICS[:OPTION,...] with options
    /// reliable, best_effort, block, drop, express. Repeatable.
    #[arg(long = "export", value_name = "TOPICS[:OPTIONS]")]
    exports: Vec<String>,
    /// Import a Zenoh key expression (the topic is its last chunk);
    /// KEY:raw also accepts samples of plain Zenoh publishers. Repeatable.
    #[arg(long = "import", value_name = "KEY[:raw]")]
    imports: Vec<String>,
    /// Zenoh's own configuration file (JSON5): mode, endpoints, TLS, ACL.
    #[arg(long)]
    zenoh_config: Option<PathBuf>,
    /// Zenoh mode: peer, client or router.
    #[arg(long)]
    mode: Option<String>,
    /// Zenoh endpoint to connect to, e.g. tcp/10.0.0.2:7447. Repeatable.
    #[arg(long)]
    connect: Vec<String>,
    /// Zenoh endpoint to listen on, e.g. tcp/0.0.0.0:7447. Repeatable.
    #[arg(long)]
    listen: Vec<String>,
    /// Turn Zenoh's multicast scouting off (use explicit endpoints).
    #[arg(long)]
    no_multicast_scouting: bool,
    /// How long an import waits for local subscribers to make room in a
    /// full replica before it drops the message (counted lost); once per
    /// spell of fullness, then that replica's messages drop at once until
    /// one fits [default: 5].
    #[arg(long)]
    import_full_wait_ms: Option<u64>,
    /// Replica ring size of imported streams (bytes, a power of two;
    /// default 4 MiB).
    #[arg(long)]
    import_capacity: Option<u64>,
    /// How long (µs) an export thread keeps polling an empty ring before
    /// it sleeps: lower latency for the next message, a core's time while
    /// it polls (default 0: sleep at once).
    #[arg(long)]
    export_spin_us: Option<u64>,
    /// Log level (RUST_LOG wins).
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let flags = Overrides {
        node_name: args.node_name,
        root: args.root,
        bus: args.bus,
        key_prefix: args.key_prefix,
        zenoh_config: args.zenoh_config,
        mode: args.mode,
        connect: args.connect,
        listen: args.listen,
        no_multicast_scouting: args.no_multicast_scouting,
        exports: args.exports,
        imports: args.imports,
        import_full_wait_ms: args.import_full_wait_ms,
        import_capacity: args.import_capacity,
        export_spin_us: args.export_spin_us,
        log_level: args.log_level,
    };
    let config = match Config::load(args.config.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shmbus-zenoh: {e}");
            return ExitCode::from(2);
        }
    };
    shmbus_bridge::log::init(config.log_level, &config.node_name);
    // Signals are taken synchronously by this thread: block them before
    // any other thread (Zenoh's runtime) exists, so every thread inherits
    // the mask.
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shmbus-zenoh: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::start(config) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shmbus-zenoh: {e}");
            return ExitCode::FAILURE;
        }
    };
    while signals.wait() == libc::SIGUSR1 {
        tracing::info!("stats: {}", gateway.stats().summary());
    }
    gateway.stop();
    ExitCode::SUCCESS
}

/// SIGTERM, SIGINT, SIGHUP and SIGUSR1, blocked and taken with `sigwait`.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    fn block() -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initializes it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: `set` is initialized; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Self { set })
    }

    /// The next signal of the set.
    fn wait(&self) -> libc::c_int {
        let mut sig = 0;
        // SAFETY: `set` is initialized and blocked in every thread; `sig`
        // is writable.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return libc::SIGTERM;
        }
        sig
    }
}
