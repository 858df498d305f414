//! Renders the results as markdown: machine, method, one table per row, notes.

use std::fmt::Write as _;

use crate::cell::{Bench, Cell};
use crate::goals;
use crate::machine::Machine;
use crate::runner::{Plan, Results, Summary};
use crate::systems::{self, BARE, FLOOR, ICEORYX2};

/// Collects footnotes and hands out their numbers.
#[derive(Debug, Default)]
struct Notes {
    items: Vec<String>,
}

impl Notes {
    fn mark(&mut self, text: String) -> String {
        let i = match self.items.iter().position(|t| *t == text) {
            Some(i) => i,
            None => {
                self.items.push(text);
                self.items.len() - 1
            }
        };
        format!("[{}]", i + 1)
    }
}

/// Human-readable duration from nanoseconds.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 10.0 {
        format!("{ns:.1} ns")
    } else if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// Human-readable message rate.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Human-readable payload size.
pub fn fmt_size(b: usize) -> String {
    if b >= 1 << 20 && b & ((1 << 20) - 1) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 && b & ((1 << 10) - 1) == 0 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && x.is_finite() => format!("{:.2}", x / b),
        _ => "n/a".to_owned(),
    }
}

fn title(b: Bench) -> &'static str {
    match b {
        Bench::Latency => "One-way latency, receivers spinning (ping-pong RTT / 2)",
        Bench::Throughput => "Throughput, one sender to one spinning receiver",
        Bench::Blocking => "One-way latency, receivers blocking in the kernel (RTT / 2)",
        Bench::Fanout => "Fan-out throughput, one sender to N receivers sharing one core",
    }
}

fn explain(b: Bench) -> &'static str {
    match b {
        Bench::Latency => {
            "Both sides busy-poll. Every message is written in full by its sender and read and \
             checked in full by its receiver, in both directions. Ratios are latency / reference \
             (higher is slower), given as median / p99."
        }
        Bench::Throughput => {
            "The sender publishes as fast as it can; the receiver busy-polls and checks every \
             message. GB/s counts payload bytes (10^9). Ratios are rate / reference (lower is \
             slower). The rate is the median over rounds; the slowest and fastest round \
             show how much the machine's load moved it."
        }
        Bench::Blocking => {
            "Each receiver sleeps in the system's blocking primitive (futex, blocking read, \
             iceoryx2 listener) until woken; no spinning. Ratios as in the spinning table."
        }
        Bench::Fanout => {
            "Every receiver gets and checks every message. All receivers share the second core, \
             so every waiting loop (sender and receivers) calls sched_yield after an empty poll. \
             Rate is per receiver, over the span from the first receiver's start to the last \
             receiver's end. Ratios are rate / reference."
        }
    }
}

/// Looks up a reference summary for a cell shape.
fn reference(results: &Results, cell: &Cell, system: &str) -> Option<Summary> {
    let c = Cell {
        system: system.to_owned(),
        ..cell.clone()
    };
    results.summary(&c)
}

fn latency_of(s: &Option<Summary>) -> Option<(f64, f64)> {
    match s {
        Some(Summary::Latency { one_way, .. }) => Some((one_way.median_ns, one_way.p99_ns)),
        _ => None,
    }
}

/// The slowest and fastest round of a rate cell.
fn spread_of(s: &Option<Summary>) -> Option<(f64, f64)> {
    match s {
        Some(Summary::Rate {
            min_per_s,
            max_per_s,
            ..
        }) => Some((*min_per_s, *max_per_s)),
        _ => None,
    }
}

fn rate_of(s: &Option<Summary>) -> Option<f64> {
    match s {
        Some(Summary::Rate { msgs_per_s, .. }) => Some(*msgs_per_s),
        _ => None,
    }
}

fn preempted_of(s: &Option<Summary>) -> String {
    match s {
        Some(Summary::Latency { preempted, .. } | Summary::Rate { preempted, .. }) => {
            preempted.to_string()
        }
        _ => String::new(),
    }
}

fn missing(s: Option<Summary>, notes: &mut Notes, system: &str) -> String {
    match s {
        Some(Summary::Unsupported(why)) => {
            format!("n/a {}", notes.mark(format!("{system}: {why}")))
        }
        Some(Summary::Failed(e)) => format!("error {}", notes.mark(format!("{system}: {e}"))),
        _ => "not run".to_owned(),
    }
}

/// Renders the whole report.
pub fn render(plan: &Plan, results: &Results, machine: &Machine, wall_s: f64) -> String {
    let mut out = String::new();
    let mut notes = Notes::default();
    let iox_built = systems::by_name(ICEORYX2).is_some();
    let iox_in_plan = plan.systems.iter().any(|s| s == ICEORYX2);
    let iox_note = if !iox_built {
        Some(notes.mark(
            "iceoryx2 not built in: `cargo run --release -p shmbus-benches --features iceoryx2 \
             --bin compare`"
                .to_owned(),
        ))
    } else if !iox_in_plan {
        Some(notes.mark("iceoryx2 not selected with --systems".to_owned()))
    } else {
        None
    };

    let _ = writeln!(out, "# shmbus IPC comparison\n");
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    for (k, v) in &machine.facts {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    let _ = writeln!(out, "| Load average at end | {} |", load_now());
    let _ = writeln!(out);
    let t = &plan.timing;
    let _ = writeln!(
        out,
        "Method: each measurement runs in fresh processes started by re-executing this binary; \
         the sender/initiator is pinned to cpu {}, the receiver(s) to cpu {} (sched_setaffinity). \
         {} round(s), systems interleaved and rotated within each round. Ping-pong: {} ms \
         warm-up, then up to {} ms or {} round trips per round, percentiles over all rounds' \
         samples. Streams: {} warm-up messages, then {} ms of sending per round, median over \
         rounds. Wall time {:.0} s.\n",
        plan.cpus[0],
        plan.cpus[1],
        plan.rounds,
        t.warmup_ms,
        t.measure_ms,
        t.max_iters,
        t.warmup_msgs,
        t.measure_ms,
        wall_s
    );

    for group_bench in &plan.rows {
        let groups: Vec<Vec<Cell>> = plan
            .groups()
            .into_iter()
            .filter(|g| g.first().is_some_and(|c| c.bench == *group_bench))
            .collect();
        if groups.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {}\n", title(*group_bench));
        let _ = writeln!(out, "{}\n", explain(*group_bench));
        let iox_head = match &iox_note {
            Some(n) => format!("÷ iceoryx2 {n}"),
            None => "÷ iceoryx2".to_owned(),
        };
        if group_bench.is_pingpong() {
            let _ = writeln!(
                out,
                "| payload | system | median | p99 | ÷ floor | ÷ bare ring | {iox_head} | preempted |\n|---|---|---:|---:|---:|---:|---:|---:|"
            );
        } else {
            let first = if *group_bench == Bench::Fanout {
                "receivers"
            } else {
                "payload"
            };
            let _ = writeln!(
                out,
                "| {first} | system | msg/s (median) | rounds min – max | GB/s | ÷ floor | ÷ bare ring | {iox_head} | preempted |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
            );
        }
        for group in groups {
            for cell in &group {
                let s = results.summary(cell);
                let pre = preempted_of(&s);
                let shape = if *group_bench == Bench::Fanout {
                    format!("{} × {}", cell.receivers, fmt_size(cell.size))
                } else {
                    fmt_size(cell.size)
                };
                let floor = reference(results, cell, FLOOR);
                let bare = reference(results, cell, BARE);
                let iox = reference(results, cell, ICEORYX2);
                let line = if group_bench.is_pingpong() {
                    match latency_of(&s) {
                        Some((m, p)) => {
                            let f = latency_of(&floor);
                            let b = latency_of(&bare);
                            let i = latency_of(&iox);
                            format!(
                                "{} | {} | {} / {} | {} / {} | {} / {}",
                                fmt_ns(m),
                                fmt_ns(p),
                                ratio(m, f.map(|x| x.0)),
                                ratio(p, f.map(|x| x.1)),
                                ratio(m, b.map(|x| x.0)),
                                ratio(p, b.map(|x| x.1)),
                                ratio(m, i.map(|x| x.0)),
                                ratio(p, i.map(|x| x.1)),
                            )
                        }
                        None => {
                            let m = missing(s, &mut notes, &cell.system);
                            format!("{m} | | | |")
                        }
                    }
                } else {
                    match rate_of(&s) {
                        Some(r) => format!(
                            "{} | {} | {:.2} | {} | {} | {}",
                            fmt_rate(r),
                            spread_of(&s).map_or(String::new(), |(lo, hi)| format!(
                                "{} – {}",
                                fmt_rate(lo),
                                fmt_rate(hi)
                            )),
                            r * cell.size as f64 / 1e9,
                            ratio(r, rate_of(&floor)),
                            ratio(r, rate_of(&bare)),
                            ratio(r, rate_of(&iox)),
                        ),
                        None => {
                            let m = missing(s, &mut notes, &cell.system);
                            format!("{m} | | | | |")
                        }
                    }
                };
                let _ = writeln!(out, "| {shape} | {} | {line} | {pre} |", cell.system);
            }
        }
        let _ = writeln!(out);
        if *group_bench == Bench::Latency {
            let _ = writeln!(out, "{}\n", yardstick_line(results));
        }
    }

    let _ = writeln!(out, "{}", goals::render(results));

    for name in &plan.systems {
        if let Some(sys) = systems::by_name(name) {
            // Systems may share a footnote (the shmbus variants do): once each.
            for n in sys.notes() {
                if !notes.items.iter().any(|t| t == n) {
                    notes.items.push((*n).to_owned());
                }
            }
        }
    }
    notes.items.push(
        "Queue depth: 2 messages in ping-pong rows, 256 in stream rows for systems with a \
         configurable queue (floor, iceoryx2, shmbus: a ring holding that many records); uds and \
         pipe use the kernel's default buffers."
            .to_owned(),
    );
    notes.items.push(
        "preempted: involuntary context switches of all processes of the measurement while it \
         measured, summed over rounds. Non-zero counts mean other load took the cores away \
         (this machine is shared); they inflate p99 and lower rates. In fan-out rows the \
         receivers sharing a core hand it over with sched_yield, which the kernel counts too."
            .to_owned(),
    );
    notes.items.push(
        "Timing: CLOCK_MONOTONIC (vDSO) read around every round trip; its cost (tens of ns) is \
         inside every latency figure, the same for every system."
            .to_owned(),
    );
    if !notes.items.is_empty() {
        let _ = writeln!(out, "## Notes\n");
        for (i, n) in notes.items.iter().enumerate() {
            let _ = writeln!(out, "{}. {n}", i + 1);
        }
    }
    out
}

/// The honesty check of the yardstick, printed beside the latency table:
/// the bare ring's 8 B one-way latency over the floor's (a one-line
/// ping-pong), median and p99. A bare ring made slow would flatter shmbus.
fn yardstick_line(results: &Results) -> String {
    let cell = |system: &str| Cell {
        bench: Bench::Latency,
        size: 8,
        receivers: 1,
        system: system.to_owned(),
    };
    let bare = latency_of(&results.summary(&cell(BARE)));
    let floor = latency_of(&results.summary(&cell(FLOOR)));
    match (bare, floor) {
        (Some(b), Some(f)) => format!(
            "Yardstick check: bare ring ÷ floor at 8 B one-way = **{} median, {} p99** \
             ({} / {} median; issue 9 saw 1.3x). The bare ring must stay close to the floor: \
             the shmbus ratios below are taken against it.",
            ratio(b.0, Some(f.0)),
            ratio(b.1, Some(f.1)),
            fmt_ns(b.0),
            fmt_ns(f.0)
        ),
        _ => "Yardstick check: bare ring ÷ floor at 8 B not measured (needs both systems and \
              8 in --sizes)."
            .to_owned(),
    }
}

fn load_now() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Timing;
    use crate::runner::Outcome;

    #[test]
    fn latency_table_has_p99_bare_ratio_and_yardstick_check() {
        let plan = Plan {
            exe: "compare".into(),
            shm_root: "/dev/shm".into(),
            rows: vec![Bench::Latency],
            systems: vec![FLOOR.to_owned(), BARE.to_owned()],
            latency_sizes: vec![8],
            throughput_sizes: vec![],
            blocking_sizes: vec![],
            fanout_size: 64,
            fanout_receivers: vec![],
            rounds: 1,
            timing: Timing {
                warmup_ms: 1,
                measure_ms: 1,
                max_iters: 1,
                warmup_msgs: 1,
            },
            cpus: [0, 1],
        };
        let mut results = Results::default();
        for (system, one_way) in [(FLOOR, 100u64), (BARE, 130)] {
            // 98 samples at the median and two at twice it: p99 (nearest
            // rank 99 of 100) is a slow one.
            let mut rtts = vec![2 * one_way; 98];
            rtts.extend([4 * one_way, 4 * one_way]);
            results.outcomes.insert(
                Cell {
                    bench: Bench::Latency,
                    size: 8,
                    receivers: 1,
                    system: system.to_owned(),
                },
                vec![Outcome::Latency { rtts, preempted: 0 }],
            );
        }
        let text = render(&plan, &results, &Machine::default(), 1.0);
        assert!(
            text.contains("| 8 B | bare ring | 130 ns | 260 ns | 1.30 / 1.30 | 1.00 / 1.00 |"),
            "{text}"
        );
        assert!(
            text.contains("bare ring ÷ floor at 8 B one-way = **1.30 median, 1.30 p99**"),
            "{text}"
        );
        assert!(text.contains("## Goals (issue 9)"), "{text}");
    }
}
