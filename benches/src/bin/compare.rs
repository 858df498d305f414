//! Side-by-side IPC comparison: shmbus's neighbours and the hardware floor.
//!
//! ```text
//! cargo run --release -p shmbus-benches --bin compare [-- OPTIONS]
//! cargo run --release -p shmbus-benches --features iceoryx2 --bin compare
//! ```
//!
//! Prints a markdown report on stdout and progress on stderr. See `--help`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use shmbus_benches::cell::{Bench, RoleArgs, Timing};
use shmbus_benches::machine::Machine;
use shmbus_benches::runner::{self, Plan};
use shmbus_benches::{chart, os, payload, report, roles, systems};

const HELP: &str = "\
compare: side-by-side IPC benchmark (markdown on stdout, progress on stderr)

OPTIONS
  --quick              smoke run: 1 round, short measurements
  --rows LIST          rows to run: latency,throughput,blocking,fanout (default: all)
  --systems LIST       systems to run (default: all built in; see --list); quote
                       names with spaces: --systems 'floor,shmbus (raw bytes)'
  --sizes LIST         latency payload sizes in bytes (default: 8,64,1024,65536,1048576;
                       8 B gives the bare ring ÷ floor yardstick check)
  --throughput-sizes LIST   (default: 64,4096)
  --blocking-sizes LIST     (default: 64)
  --fanout LIST        fan-out receiver counts (default: 1,2,4); payload 64 B
  --rounds N           rounds, systems interleaved per round (default: 5, quick: 1)
  --warmup-ms N        ping-pong warm-up per run (default: 50)
  --measure-ms N       measuring time per run (default: 300, quick: 40)
  --max-iters N        max recorded round trips per run (default: 300000)
  --warmup-msgs N      stream warm-up messages (default: 20000)
  --cpus A,B           cpu of the sender / of the receivers (default: 0,1)
  --shm-dir DIR        where run directories go (default: /dev/shm)
  --out FILE           also write the report to FILE, and its chart (SVG:
                       latency percentiles and rates per system) beside it,
                       FILE with the extension .svg
  --chart FILE         write the chart to FILE (default: beside --out)
  --list               list the systems built into this binary
  -h, --help           this text

The report has one table per row (latency rows: median and p99, ratios to
the floor, the bare ring and iceoryx2), the yardstick check (bare ring ÷
floor at 8 B) and a \"Goals (issue 9)\" section: shmbus raw and typed against
the bare ring and iceoryx2, each goal met, missed or not measured.

THE FULL RUN (every system, every row; after all branches are merged, on an
otherwise idle machine):
  cargo run --release -p shmbus-benches --features iceoryx2 --bin compare -- \\
      --out target/compare/report.md
A quick sanity check of the yardstick against shmbus:
  cargo run --release -p shmbus-benches --bin compare -- \\
      --systems 'floor,bare ring,shmbus (raw bytes),shmbus (checked)'
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--role") {
        child(&args)
    } else {
        parent(&args)
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A role process: pin, run, report through files in the run directory.
fn child(args: &[String]) -> Result<()> {
    let ra = RoleArgs::parse(args)?;
    os::pin_to_cpu(ra.cpu)?;
    let system = systems::by_name(&ra.cell.system)
        .ok_or_else(|| anyhow!("system {:?} is not built into this binary", ra.cell.system))?;
    roles::run_role(&ra, system.as_ref())
        .with_context(|| format!("{} as {}", ra.cell.system, ra.role.tag()))
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| anyhow!("{what}: {x:?} is not a number"))
        })
        .collect()
}

fn parent(args: &[String]) -> Result<()> {
    let built: Vec<String> = systems::all().iter().map(|s| s.name().to_owned()).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut plan = Plan {
        exe: std::env::current_exe().context("locating this binary")?,
        shm_root: PathBuf::from("/dev/shm"),
        rows: Bench::ALL.to_vec(),
        systems: built.clone(),
        latency_sizes: vec![8, 64, 1024, 64 * 1024, 1024 * 1024],
        throughput_sizes: vec![64, 4096],
        blocking_sizes: vec![64],
        fanout_size: 64,
        fanout_receivers: vec![1, 2, 4],
        rounds: if quick { 1 } else { 5 },
        timing: if quick {
            Timing {
                warmup_ms: 10,
                measure_ms: 40,
                max_iters: 20_000,
                warmup_msgs: 2_000,
            }
        } else {
            Timing {
                warmup_ms: 50,
                measure_ms: 300,
                max_iters: 300_000,
                warmup_msgs: 20_000,
            }
        },
        cpus: [0, 1],
    };
    let mut out_file = None;
    let mut chart_file = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--quick" => {}
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "--list" => {
                for s in &built {
                    println!("{s}");
                }
                return Ok(());
            }
            "--rows" => {
                plan.rows = val()?
                    .split(',')
                    .map(|r| Bench::parse(r.trim()).ok_or_else(|| anyhow!("unknown row {r:?}")))
                    .collect::<Result<_>>()?;
            }
            "--systems" => {
                let want: Vec<String> = val()?.split(',').map(|s| s.trim().to_owned()).collect();
                for w in &want {
                    if !built.contains(w) {
                        if w == systems::ICEORYX2 {
                            bail!(
                                "iceoryx2 is not built in: add `--features iceoryx2` to the \
                                 cargo command"
                            );
                        }
                        bail!("unknown system {w:?}; built in: {}", built.join(", "));
                    }
                }
                plan.systems = want;
            }
            "--sizes" => plan.latency_sizes = list(val()?, "--sizes")?,
            "--throughput-sizes" => plan.throughput_sizes = list(val()?, "--throughput-sizes")?,
            "--blocking-sizes" => plan.blocking_sizes = list(val()?, "--blocking-sizes")?,
            "--fanout" => plan.fanout_receivers = list(val()?, "--fanout")?,
            "--rounds" => plan.rounds = val()?.parse().context("--rounds")?,
            "--warmup-ms" => plan.timing.warmup_ms = val()?.parse().context("--warmup-ms")?,
            "--measure-ms" => plan.timing.measure_ms = val()?.parse().context("--measure-ms")?,
            "--max-iters" => plan.timing.max_iters = val()?.parse().context("--max-iters")?,
            "--warmup-msgs" => plan.timing.warmup_msgs = val()?.parse().context("--warmup-msgs")?,
            "--cpus" => {
                let c: Vec<usize> = list(val()?, "--cpus")?;
                let [a, b] = c[..] else {
                    bail!("--cpus takes two cpu numbers, e.g. 0,1");
                };
                plan.cpus = [a, b];
            }
            "--shm-dir" => plan.shm_root = PathBuf::from(val()?),
            "--out" => out_file = Some(PathBuf::from(val()?)),
            "--chart" => chart_file = Some(PathBuf::from(val()?)),
            other => bail!("unknown option {other:?} (see --help)"),
        }
    }
    validate(&plan)?;

    let machine = Machine::describe();
    let start = Instant::now();
    let results = runner::run(&plan)?;
    let text = report::render(&plan, &results, &machine, start.elapsed().as_secs_f64());
    print!("{text}");
    if let Some(p) = &out_file {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = chart_file.or_else(|| out_file.as_deref().map(chart::path_beside)) {
        let cpu = machine.facts.iter().find(|(k, _)| k == "CPU");
        let title = match cpu {
            Some((_, v)) => format!("shmbus IPC comparison — {v}"),
            None => "shmbus IPC comparison".to_owned(),
        };
        match chart::render(&plan, &results, &title)? {
            Some(svg) => {
                std::fs::write(&p, svg).with_context(|| format!("writing {}", p.display()))?;
                eprintln!("chart: {}", p.display());
            }
            None => eprintln!("chart: nothing was measured, none written"),
        }
    }
    Ok(())
}

fn validate(plan: &Plan) -> Result<()> {
    let all_sizes = plan
        .latency_sizes
        .iter()
        .chain(&plan.throughput_sizes)
        .chain(&plan.blocking_sizes)
        .chain(std::iter::once(&plan.fanout_size));
    for &s in all_sizes {
        if s < payload::MIN_LEN {
            bail!(
                "payload sizes must be at least {} bytes (got {s})",
                payload::MIN_LEN
            );
        }
    }
    if plan.fanout_receivers.iter().any(|&n| n == 0 || n > 64) {
        bail!("fan-out receiver counts must be 1..=64");
    }
    if plan.rounds == 0 || plan.timing.warmup_msgs == 0 || plan.timing.max_iters == 0 {
        bail!("--rounds, --warmup-msgs and --max-iters must be at least 1");
    }
    let cpus = os::online_cpus();
    if plan.cpus.iter().any(|&c| c >= cpus) {
        bail!("--cpus {:?}: this machine has cpus 0..{}", plan.cpus, cpus);
    }
    if plan.cpus[0] == plan.cpus[1] {
        eprintln!("warning: sender and receivers share cpu {}", plan.cpus[0]);
    }
    if !plan.shm_root.is_dir() {
        bail!("--shm-dir {} is not a directory", plan.shm_root.display());
    }
    Ok(())
}
