//! `chaos`: kill chaos for long runs (issue 13).
//!
//! ```text
//! chaos [--kills 1000] [--seed S] [--interval-ms 50..200] [--rate MSGS_PER_S]
//!       [--publishers 4] [--subscribers 8] [--out DIR]
//! ```
//!
//! Runs the mix of `shmbus_tests::chaos::topology` (publishers, tethered,
//! untethered and overwrite subscribers, a bridge pair over loopback),
//! SIGKILLs a random process every `--interval-ms` (uniform in the range)
//! and restarts it, `--kills` times; then stops everything in order, checks
//! the invariants (`chaos::checker`) and what is left behind
//! (`chaos::leaks`), and prints the figures. Exit 0 if nothing was broken,
//! 1 otherwise (the logs stay in `<out>/logs`). The `peer` and `bridge`
//! helpers are taken from the directory of this executable.

use std::{path::PathBuf, process::ExitCode};

use shmbus_tests::{
    args::Args,
    chaos::{checker, driver, leaks, topology},
};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::from(2)
        }
    }
}

fn range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s.split_once("..").ok_or("--interval-ms LO..HI")?;
    let lo: u64 = lo
        .parse()
        .map_err(|_| "--interval-ms: LO is not a number")?;
    let hi: u64 = hi
        .parse()
        .map_err(|_| "--interval-ms: HI is not a number")?;
    if lo > hi {
        return Err("--interval-ms: LO > HI".into());
    }
    Ok((lo, hi))
}

fn run() -> Result<bool, String> {
    let mut args = Args::parse(std::env::args().skip(1), &[])?;
    let kills: u64 = args.or("kills", 1000u64)?;
    let seed: u64 = args.or("seed", 1u64)?;
    let interval = range(&args.or("interval-ms", "50..200".to_string())?)?;
    let rate: u32 = args.or("rate", 1000u32)?;
    let publishers: u32 = args.or("publishers", 4u32)?;
    let subscribers: u32 = args.or("subscribers", 8u32)?;
    let out: PathBuf = args.or("out", PathBuf::from("target/chaos"))?;
    args.finish()?;
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = here.parent().ok_or("no executable directory")?;
    let mut layout = topology::Layout::create(
        &format!("run{seed}"),
        &out.join("logs"),
        &dir.join("peer"),
        &dir.join("bridge"),
    )
    .map_err(|e| format!("cannot set up the run: {e}"))?;
    layout.rate = rate;
    let roles = topology::mix(publishers, subscribers);
    println!(
        "chaos: {kills} kills every {}..{} ms, {} processes, {rate} msgs/s per publisher, seed {seed}",
        interval.0,
        interval.1,
        roles.len()
    );
    let outcome = driver::run(
        &layout,
        roles,
        &driver::Disturb::Kill {
            kills,
            interval_ms: interval,
        },
        seed,
        |_| {},
    )
    .map_err(|e| format!("cannot start the mix: {e}"))?;
    let verdict = checker::check(&outcome);
    let left = leaks::check(&[&layout.root_a, &layout.root_b]);
    print!("{}", checker::figures(&outcome, &verdict, &left));
    let ok = verdict.violations.is_empty() && left.after_gc.is_empty();
    if ok {
        let _ = std::fs::remove_dir_all(layout.base());
    }
    Ok(ok)
}
