//! Two-process measurements as criterion benchmarks: a leader process pinned
//! to cpu 0 and a follower pinned to cpu 1, started once per benchmark by
//! re-executing this binary ([`shmbus_benches::pair`]), then driven batch by
//! batch from `iter_custom`. Every message is written in full by its sender
//! and checked in full by its receiver; both sides busy-poll.
//!
//! - `latency_64B`: one-way latency of a 64 B message, reported as round
//!   trip / 2.
//! - `throughput_64B`, `throughput_4KiB`: one sender streaming to one
//!   receiver (shmbus receives with `drain`, in batches); time per message.
//! - `transfer_1MiB`: a 1 MiB message written in place (loaned) on one core,
//!   read back in full on the other, acknowledged with a 64 B message; time
//!   per transfer.
//!
//! Each runs for floor (the hardware floor), the three shmbus paths, and
//! iceoryx2 when built with `--features iceoryx2`.
//!
//! ```text
//! cargo bench -p shmbus-benches --bench two_process
//! ```

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput};
use shmbus_benches::pair::{self, Job, Pair, PairSpec};
use shmbus_benches::systems;

/// (benchmark id, system name) of every system compared here.
const SYSTEMS: [(&str, &str); 5] = [
    ("floor", systems::FLOOR),
    ("shmbus_raw", systems::shmbus::raw::NAME),
    ("shmbus_unchecked", systems::shmbus::typed::UNCHECKED),
    ("shmbus_checked", systems::shmbus::typed::CHECKED),
    ("iceoryx2", systems::ICEORYX2),
];

fn exe() -> PathBuf {
    std::env::current_exe().expect("locating this bench binary")
}

/// Benchmarks `job` for every system built in; `per_iter` turns the leader's
/// time for `iters` iterations into what criterion records.
fn run_group(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    job: Job,
    size: usize,
    reply_size: usize,
    per_iter: fn(Duration) -> Duration,
) {
    for (id, system) in SYSTEMS {
        if systems::by_name(system).is_none() {
            continue;
        }
        let spec = PairSpec {
            system: system.to_owned(),
            job,
            size,
            reply_size,
            cpus: [0, 1],
            shm_root: PathBuf::from("/dev/shm"),
        };
        // Started on first use, so filtered-out benchmarks start nothing.
        let mut pair: Option<Pair> = None;
        g.bench_function(id, |b| {
            let p = pair.get_or_insert_with(|| {
                Pair::spawn(&exe(), &spec)
                    .unwrap_or_else(|e| panic!("starting the {system} pair: {e:#}"))
            });
            b.iter_custom(|iters| {
                per_iter(
                    p.run(iters)
                        .unwrap_or_else(|e| panic!("{system} pair failed: {e:#}")),
                )
            })
        });
    }
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_process/latency_64B");
    run_group(&mut g, Job::PingPong, 64, 64, |rtt| rtt / 2);
    g.finish();
}

fn throughput(c: &mut Criterion) {
    for (name, size) in [("throughput_64B", 64), ("throughput_4KiB", 4096)] {
        let mut g = c.benchmark_group(format!("two_process/{name}"));
        g.throughput(Throughput::Elements(1));
        run_group(&mut g, Job::Stream, size, 64, |t| t);
        g.finish();
    }
}

fn transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_process/transfer_1MiB");
    g.throughput(Throughput::Bytes(1 << 20));
    run_group(&mut g, Job::PingPong, 1 << 20, 64, |t| t);
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(400))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(20)
        .nresamples(10_000)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if pair::is_role(&args) {
        if let Err(e) = pair::child_main(&args) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let mut c = config().configure_from_args();
    latency(&mut c);
    throughput(&mut c);
    transfer(&mut c);
    c.final_summary();
}
