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
    let signals = block_signals().context("cannot block signals for the signal thread")?;
    let daemon = Daemon::new(config);
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(&signals, &d))
        .context("cannot start the signal thread")?;
    let result = daemon.run();
    eprint!("{}", daemon.stats_text());
    daemon.write_stats_file();
    result.context("bridge daemon failed")
}

/// Blocks SIGTERM, SIGINT and SIGUSR1 in this thread and so in every thread
/// it starts; the signal thread takes them with `sigwait`.
fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(set)
}

fn signal_loop(set: &libc::sigset_t, daemon: &Daemon) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t whose signals are blocked
        // in every thread; `sig` is a live c_int.
        let r = unsafe { libc::sigwait(set, &mut sig) };
        if r != 0 {
            continue;
        }
        match sig {
            libc::SIGUSR1 => {
                eprint!("{}", daemon.stats_text());
                daemon.write_stats_file();
            }
            _ => {
                log::write(
                    shmbus_bridge::config::LogLevel::Info,
                    format_args!("signal {sig}: shutting down"),
                );
                daemon.shutdown();
                return;
            }
        }
    }
}
