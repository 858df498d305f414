//! `shmbus`: see, tail, publish to and clean up a live bus, and diagnose a
//! host.
//!
//! Everything it reads goes through `shmbus-bus`'s public API
//! ([`shmbus_bus::RingStatus`], [`shmbus_bus::RingObserver`],
//! [`shmbus_bus::list_rings`]), with the bus's own validation: a damaged ring
//! is reported with the reason, never a crash. Observing never takes a
//! subscriber slot and never holds a publisher back.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod bench;
mod doctor;
mod gc;
mod ls;
mod model;
mod publish;
mod stat;
mod tail;
mod text;

/// Where the bus lives, shared by every command.
#[derive(Debug, Clone, clap::Args)]
struct Where {
    /// Root of all buses (default: $SHMBUS_ROOT, else /dev/shm/shmbus-<uid>).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Bus name.
    #[arg(long, global = true, default_value = shmbus_bus::DEFAULT_BUS)]
    bus: String,
    /// Machine-readable output (JSON; one object per line for streams).
    #[arg(long, global = true)]
    json: bool,
}

impl Where {
    fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(shmbus_bus::default_root)
    }

    /// `<root>/<bus>`, the bus name validated.
    fn bus_dir(&self) -> anyhow::Result<PathBuf> {
        shmbus_bus::validate_name("bus", &self.bus)?;
        Ok(self.root().join(&self.bus))
    }

    /// `<root>/<bus>/<topic>`, both names validated.
    fn topic_dir(&self, topic: &str) -> anyhow::Result<PathBuf> {
        Ok(shmbus_bus::topic_dir(&self.root(), &self.bus, topic)?)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "shmbus",
    version,
    about = "Look at, tail, publish to and clean up a shmbus bus; diagnose a host"
)]
struct Cli {
    #[command(flatten)]
    place: Where,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Topics, publishers and subscribers (with their lag), damaged and orphaned rings.
    Ls(ls::Args),
    /// Live view refreshed every second: messages/s, bytes/s, lag, ring fill, publishers finding it full.
    Stat(stat::Args),
    /// Follow a topic without a subscriber slot (never holds a publisher back).
    Tail(tail::Args),
    /// Publish raw payloads from stdin: one per line, or length-prefixed with --framed.
    Pub(publish::Args),
    /// Remove rings of dead publishers nobody needs, stale hold links, leftover files.
    Gc(gc::Args),
    /// Check this host for shmbus and say what to fix.
    Doctor(doctor::Args),
    /// A one-minute self-benchmark of this host: latency and throughput, raw and typed.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Ls(a) => ls::run(&cli.place, a),
        Command::Stat(a) => stat::run(&cli.place, a),
        Command::Tail(a) => tail::run(&cli.place, a),
        Command::Pub(a) => publish::run(&cli.place, a),
        Command::Gc(a) => gc::run(&cli.place, a),
        Command::Doctor(a) => doctor::run(&cli.place, a),
        Command::Bench(a) => bench::run(&cli.place, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`shmbus tail | head`) is a normal end.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("shmbus: {e:#}");
            ExitCode::from(1)
        }
    }
}
