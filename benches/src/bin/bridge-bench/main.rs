//! `bridge-bench`: throughput of the shmbus bridge against plain TCP.
//!
//! ```text
//! bridge-bench [--rounds N] [--quick] [--only TEXT]...
//! ```
//!
//! `--only TEXT` (repeatable; a row must pass each) keeps the rows whose
//! variant name contains TEXT if TEXT is part of a variant name (`auth`,
//! `encrypt`, `bridge`; the TCP rows of the same path and size stay, for
//! the ratios), else whose "path size" contains it (`loopback`, `veth`,
//! `4096`), e.g. `--only loopback --only 65536 --only auth`.
//!
//! For 64 B, 4 KiB and 64 KiB messages, over loopback and over a veth pair
//! between two network namespaces (root only), it moves a fixed volume
//! four ways and prints a markdown table:
//!
//! - `plain TCP`: a sender process writes the messages (batched ~256 KiB
//!   writes) to a receiver process that discards them.
//! - `TCP + same AEAD`: the same, and each write is followed by a
//!   ChaCha20-Poly1305 tag over it (the bridge's own sealing code, `auth`
//!   construction, one counter per write), which the receiver checks: the
//!   honest ceiling for an authenticated link.
//! - `bridge, auth` / `bridge, encrypt`: a publisher process writes the same
//!   messages into a ring on bus root A; an exporting bridge (tethered, so
//!   lossless) sends them to an importing bridge that writes a replica ring
//!   on root B; this process drains it and checks every message's sequence
//!   number and check byte. The bridges run `--protection auth` (the
//!   default: tags over the ring bytes, zero-copy allowed) or
//!   `--protection encrypt`.
//!
//! Sender CPU is getrusage (via `wait4`) of the sending processes: the
//! publisher plus the exporting bridge, or the TCP sender, over their whole
//! life (setup included). Receiver CPU is the importing bridge's (whole
//! life) plus this process's draining thread (during the run), or the TCP
//! receiver's. The exporting bridge's counters say which sends were really
//! zero-copy.

mod child;
mod netns;
mod payload;
mod roles;
mod run;

use std::time::Instant;

use anyhow::{bail, Result};

use crate::run::{Baselines, Path, Row, Variant};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(role @ ("bridge" | "publish" | "tcp-send" | "tcp-recv")) => {
            roles::run(role, &args[1..])
        }
        _ => drive(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Message size and the payload volume moved per run for it.
const SIZES: [(usize, u64); 3] = [(64, 128 << 20), (4 << 10, 1 << 30), (64 << 10, 1 << 30)];

fn drive(args: &[String]) -> Result<()> {
    let mut rounds = 3usize;
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&r| r > 0)
                    .ok_or_else(|| anyhow::anyhow!("--rounds needs a positive number"))?;
            }
            "--quick" => quick = true,
            "--only" => only.push(
                it.next()
                    .ok_or_else(|| anyhow::anyhow!("--only needs a text"))?
                    .clone(),
            ),
            "-h" | "--help" => {
                println!("usage: bridge-bench [--rounds N] [--quick] [--only TEXT]...");
                return Ok(());
            }
            other => {
                bail!("unknown argument {other:?} (usage: bridge-bench [--rounds N] [--quick] [--only TEXT]...)")
            }
        }
    }
    let started = Instant::now();
    println!("{}", machine());
    let veth = match netns::unavailable() {
        Some(why) => {
            println!("veth rows skipped: {why}\n");
            None
        }
        None => Some(netns::VethPair::create()?),
    };
    let mut paths = vec![Path::Loopback];
    if let Some(pair) = &veth {
        paths.push(Path::Veth(pair));
    }
    let mut rows = Vec::new();
    for path in &paths {
        for &(size, volume) in &SIZES {
            let volume = if quick { volume / 8 } else { volume };
            let count = volume / size as u64;
            let mut base = Baselines::default();
            for variant in Variant::ALL {
                let wanted = wanted(&only, path.name(), size, variant);
                if !wanted {
                    continue;
                }
                let row = Row::measure(path, variant, size, count, rounds)?;
                eprintln!("{}", row.progress());
                match variant {
                    Variant::Tcp => base.tcp = Some(row.gbps()),
                    Variant::TcpAead => base.ceiling = Some(row.gbps()),
                    _ => {}
                }
                rows.push((row, base));
            }
        }
    }
    println!("{}", run::table(&rows));
    println!(
        "{rounds} rounds per row, median shown; total run {:.0} s; load average at end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}

/// Whether a row passes every `--only` text: a text naming a variant (a
/// part of any variant's name) must match the row's variant, except that
/// TCP rows always pass those (they give the ratios); any other text must
/// match the row's "path size" (e.g. `loopback`, `4096`).
fn wanted(only: &[String], path: &str, size: usize, variant: Variant) -> bool {
    let place = format!("{path} {size}");
    only.iter().all(|o| {
        let names_variant = Variant::ALL.iter().any(|v| v.name().contains(o.as_str()));
        if names_variant {
            variant.is_tcp() || variant.name().contains(o.as_str())
        } else {
            place.contains(o.as_str())
        }
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One paragraph describing the machine.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    format!(
        "# bridge-bench\n\nMachine: Linux {}, {cpus} CPUs ({cpu}), {mem_gib:.0} GiB RAM; load average at start: {}\n",
        kernel.trim(),
        loadavg()
    )
}
