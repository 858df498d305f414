//! `shmbus-bridge`: the bridge daemon.
//!
//! Loads the configuration (file and flags, see `shmbus_bridge::config`),
//! then runs [`Daemon`] until SIGTERM or SIGINT. SIGUSR1 prints the counters
//! to standard error (and the stats file, if configured); they are printed
//! at exit too. SIGHUP reloads the configuration (peers, keys, allowlist,
//! exports, imports; a broken file is refused and the running one stays).
//! Logs go to standard error through `tracing` (`RUST_LOG` filters them);
//! under systemd the daemon reports readiness and feeds the watchdog
//! (`Type=notify`, see `bridge/systemd/`).
//!
//! `shmbus-bridge keygen FILE [--name NAME]` writes a new key pair.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use shmbus_bridge::{
    config::{Cli, Command, Config},
    daemon::Daemon,
    identity::StaticKeypair,
    log,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen { file, name }) = &cli.command {
        return keygen(file, name.as_deref().or(cli.node_name.as_deref()));
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shmbus-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbus-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `shmbus-bridge keygen FILE [--name NAME]`.
fn keygen(file: &std::path::Path, name: Option<&str>) -> ExitCode {
    let name = match name {
        Some(n) => n.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
    };
    if let Err(e) = shmbus_bridge::proto::handshake::check_node_name(&name) {
        eprintln!("shmbus-bridge keygen: invalid node name: {e} (pass --name)");
        return ExitCode::from(2);
    }
    let written = StaticKeypair::generate().and_then(|k| {
        let public = k.public();
        k.write_new(file, &name).map(|p| (p, public))
    });
    match written {
        Ok((pub_path, public)) => {
            println!(
                "wrote {} (private, mode 0600) and {}\nallowlist line for the peers of {name}:\n{public} {name}",
                file.display(),
                pub_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shmbus-bridge keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    log::init(config.log_level, &config.node_name);
    for w in &config.warnings {
        log::write(shmbus_bridge::config::LogLevel::Warn, format_args!("{w}"));
    }
    let daemon = Daemon::new(config);
    shmbus_bridge::signals::handle_signals(&daemon).context("cannot set up signal handling")?;
    let result = daemon.run();
    eprint!("{}", daemon.stats_text());
    daemon.write_stats_file();
    result.context("bridge daemon failed")
}
