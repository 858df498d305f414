//! `bridge`: the `shmbus-bridge` daemon, built into this package so tests can
//! run the real daemon without depending on another package's binaries.
//!
//! ```text
//! bridge [shmbus-bridge flags...]
//! ```
//!
//! Takes exactly the flags of `shmbus-bridge` (`--node-name`, `--root`,
//! `--listen`, `--peer`, `--export`, `--import`, `--key-file`,
//! `--allowlist`, `--protection`, `--stats-file`, ...), loads them with
//! `shmbus_bridge::config::Config` and runs `shmbus_bridge::daemon::Daemon`
//! until SIGTERM or SIGINT, or until its standard input reaches EOF (so a
//! test that closes the pipe, or dies, stops it). SIGUSR1 prints the
//! counters to stderr and the stats file and SIGHUP reloads the configuration,
//! as the real daemon does; the counters are printed and written at exit
//! too.
//! The process also dies with the thread that started it
//! (`PR_SET_PDEATHSIG`). Exit codes: 0 clean shutdown, 1 daemon failure, 2
//! invalid configuration.

use std::{io::Read as _, process::ExitCode, thread};

use shmbus_bridge::{
    config::{Cli, Config, LogLevel},
    daemon::Daemon,
    log,
};

fn main() -> ExitCode {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let argv = std::iter::once("shmbus-bridge".to_string()).chain(std::env::args().skip(1));
    let cli = match <Cli as clap::Parser>::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bridge: {e}");
            return ExitCode::from(2);
        }
    };
    log::init(config.log_level, &config.node_name);
    for w in &config.warnings {
        log::write(LogLevel::Warn, format_args!("{w}"));
    }
    let daemon = Daemon::new(config);
    if let Err(e) = shmbus_bridge::signals::handle_signals(&daemon) {
        eprintln!("bridge: cannot set up signal handling: {e}");
        return ExitCode::FAILURE;
    }
    let on_eof = daemon.clone();
    let spawned = thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut buf = [0u8; 256];
        // EOF (or an error) on stdin: whoever started us is done with us.
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        on_eof.shutdown();
    });
    if let Err(e) = spawned {
        eprintln!("bridge: cannot start the stdin thread: {e}");
        return ExitCode::FAILURE;
    }
    let result = daemon.run();
    eprint!("{}", daemon.stats_text());
    daemon.write_stats_file();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge: bridge daemon failed: {e}");
            ExitCode::FAILURE
        }
    }
}
