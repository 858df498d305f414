//! `shmbus-bridge`: the bridge daemon.
//!
//! Loads the configuration (file and flags, see `shmbus_bridge::config`),
//! then runs [`Daemon`] until SIGTERM or SIGINT. SIGUSR1 prints the counters
//! to standard error (and the stats file, if configured); they are printed
//! at exit too.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use shmbus_bridge::{
    config::{Cli, Config},
    daemon::Daemon,
    log,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
