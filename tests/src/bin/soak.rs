//! `soak`: the chaos mix without kills, for a long time, with subscribers
//! leaving and joining; samples resources every `--sample-s` seconds.
//!
//! ```text
//! soak [--duration-s 3600] [--sample-s 10] [--seed S] [--rate MSGS_PER_S]
//!      [--out DIR] [--publishers 4] [--subscribers 8]
//! soak --chart CSV --svg FILE [--title T]
//! ```
//!
//! The second form draws a CSV written by the first as an SVG chart
//! (`chaos::chart`) and prints the first, last, smallest and largest value
//! of each curve.
//!
//! Writes `<out>/soak.csv` (one row per sample: total and per-role RSS and
//! open fds, ring files and all files under the bus roots, their bytes, the
//! bytes used on `/dev/shm`), `<out>/logs/` (every process's log), and at
//! the end prints the checker's figures, the leak check, and the first,
//! last and largest sample of each curve. Exit 0 if no invariant was broken
//! and nothing leaked, 1 otherwise. The `peer` and `bridge` helpers are
//! taken from the directory of this executable, so a copy of the three
//! binaries runs on while the tree is rebuilt.

use std::{
    fs::File,
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use shmbus_tests::{
    args::Args,
    chaos::{chart, checker, driver, leaks, sampler, topology},
};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let mut args = Args::parse(std::env::args().skip(1), &[])?;
    if let Some(csv) = args.opt::<PathBuf>("chart")? {
        let svg: PathBuf = args.req("svg")?;
        let title: String = args.or("title", "shmbus soak".to_string())?;
        args.finish()?;
        let text = std::fs::read_to_string(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
        let rows = sampler::parse_csv(&text);
        print_curves(&rows);
        let doc = chart::render(&rows, &title)?;
        std::fs::write(&svg, doc).map_err(|e| format!("{}: {e}", svg.display()))?;
        println!("chart: {}", svg.display());
        return Ok(true);
    }
    let duration = Duration::from_secs(args.or("duration-s", 3600u64)?);
    let every = Duration::from_secs(args.or("sample-s", 10u64)?);
    let seed: u64 = args.or("seed", 1u64)?;
    let rate: u32 = args.or("rate", 1000u32)?;
    let publishers: u32 = args.or("publishers", 4u32)?;
    let subscribers: u32 = args.or("subscribers", 8u32)?;
    let out: PathBuf = args.or("out", PathBuf::from("target/soak"))?;
    args.finish()?;
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = here.parent().ok_or("no executable directory")?;
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let mut layout = topology::Layout::create(
        "soak",
        &out.join("logs"),
        &dir.join("peer"),
        &dir.join("bridge"),
    )
    .map_err(|e| format!("cannot set up the run: {e}"))?;
    layout.rate = rate;
    let roles = topology::mix(publishers, subscribers);
    let names: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
    let csv_path = out.join("soak.csv");
    let mut csv = File::create(&csv_path).map_err(|e| e.to_string())?;
    let _ = writeln!(csv, "{}", sampler::csv_header(&names));
    let roots = vec![layout.root_a.clone(), layout.root_b.clone()];
    let started = Instant::now();
    let mut next = Instant::now();
    let mut samples = 0u64;
    println!(
        "soak: {} s, {} processes, {rate} msgs/s per publisher, seed {seed}; samples to {}",
        duration.as_secs(),
        roles.len(),
        csv_path.display()
    );
    let outcome = driver::run(
        &layout,
        roles,
        &driver::Disturb::Soak {
            duration,
            churn_ms: (5_000, 15_000),
        },
        seed,
        |pids| {
            if Instant::now() >= next {
                next += every;
                let s = sampler::sample(started.elapsed().as_secs_f64(), pids, &roots);
                let _ = writeln!(csv, "{}", sampler::csv_row(&s, &names));
                let _ = csv.flush();
                samples += 1;
            }
        },
    )
    .map_err(|e| format!("cannot start the mix: {e}"))?;
    let verdict = checker::check(&outcome);
    let left = leaks::check(&[&layout.root_a, &layout.root_b]);
    print!("{}", checker::figures(&outcome, &verdict, &left));
    let text = std::fs::read_to_string(&csv_path).unwrap_or_default();
    print_curves(&sampler::parse_csv(&text));
    println!("samples: {samples} in {}", csv_path.display());
    let ok = verdict.violations.is_empty() && left.after_gc.is_empty();
    if ok {
        let _ = std::fs::remove_dir_all(layout.base());
    }
    Ok(ok)
}

fn print_curves(rows: &[[f64; 7]]) {
    let names = [
        "rss_kib",
        "fds",
        "ring_files",
        "files",
        "file_bytes",
        "fs_used_bytes",
    ];
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return;
    };
    for (i, n) in names.iter().enumerate() {
        let max = rows.iter().map(|r| r[i + 1]).fold(f64::MIN, f64::max);
        let min = rows.iter().map(|r| r[i + 1]).fold(f64::MAX, f64::min);
        println!(
            "{n}: start {} end {} min {min} max {max}",
            first[i + 1],
            last[i + 1]
        );
    }
}
