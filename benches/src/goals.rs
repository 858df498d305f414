//! The ratios issue 9 ("hot path at the hardware") sets as goals, computed
//! from one run of the comparison and printed as met, missed or not measured.
//!
//! | goal | ratio | target |
//! |---|---|---|
//! | 64 B throughput, one receive call per message | raw ÷ bare ring | >= 0.7 |
//! | same | typed (checked) ÷ bare ring | >= 0.5 |
//! | one-way latency, 64 B and 1 KiB (spinning) | raw ÷ bare ring (median) | <= 1.1 |
//! | same | typed (checked) ÷ bare ring (median) | <= 1.2 |
//! | one-way latency 1 MiB | typed (checked) ÷ iceoryx2 (median) | <= 1.0 |
//! | every row | shmbus ahead of iceoryx2 (median latency lower, rate higher) | all rows |

use std::fmt::Write as _;

use crate::cell::{Bench, Cell};
use crate::report::fmt_size;
use crate::runner::{Results, Summary};
use crate::systems::shmbus::{raw, typed};
use crate::systems::{BARE, ICEORYX2};

/// Which way a ratio must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The ratio must be at least the target (rates).
    AtLeast,
    /// The ratio must be at most the target (latencies).
    AtMost,
}

/// The verdict on one goal.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Measured and within the target; the measured ratio.
    Met(f64),
    /// Measured and outside the target; the measured ratio.
    Missed(f64),
    /// A system or row the goal needs was not run (or failed).
    NotMeasured,
}

impl Verdict {
    /// Judges `ratio` against `target`.
    ///
    /// ```
    /// use shmbus_benches::goals::{Bound, Verdict};
    /// assert_eq!(Verdict::judge(Some(0.8), Bound::AtLeast, 0.7), Verdict::Met(0.8));
    /// assert_eq!(Verdict::judge(Some(1.15), Bound::AtMost, 1.1), Verdict::Missed(1.15));
    /// assert_eq!(Verdict::judge(None, Bound::AtMost, 1.1), Verdict::NotMeasured);
    /// ```
    pub fn judge(ratio: Option<f64>, bound: Bound, target: f64) -> Verdict {
        match ratio {
            Some(r) if r.is_finite() => {
                let ok = match bound {
                    Bound::AtLeast => r >= target,
                    Bound::AtMost => r <= target,
                };
                if ok {
                    Verdict::Met(r)
                } else {
                    Verdict::Missed(r)
                }
            }
            _ => Verdict::NotMeasured,
        }
    }

    fn cells(&self) -> (String, &'static str) {
        match self {
            Verdict::Met(r) => (format!("{r:.2}"), "met"),
            Verdict::Missed(r) => (format!("{r:.2}"), "**missed**"),
            Verdict::NotMeasured => (String::new(), "not measured"),
        }
    }
}

fn cell(bench: Bench, size: usize, receivers: usize, system: &str) -> Cell {
    Cell {
        bench,
        size,
        receivers,
        system: system.to_owned(),
    }
}

/// Median one-way latency of a cell, if measured.
fn median(results: &Results, c: &Cell) -> Option<f64> {
    match results.summary(c)? {
        Summary::Latency { one_way, .. } => Some(one_way.median_ns),
        _ => None,
    }
}

/// Rate of a cell, if measured.
fn rate(results: &Results, c: &Cell) -> Option<f64> {
    match results.summary(c)? {
        Summary::Rate { msgs_per_s, .. } => Some(msgs_per_s),
        _ => None,
    }
}

/// `system ÷ reference` for the cell shape of `c`: latency medians in
/// ping-pong rows, rates in stream rows.
fn ratio_of(results: &Results, c: &Cell, system: &str, reference: &str) -> Option<f64> {
    let of = |s: &str| Cell {
        system: s.to_owned(),
        ..c.clone()
    };
    let (a, b) = if c.bench.is_pingpong() {
        (
            median(results, &of(system))?,
            median(results, &of(reference))?,
        )
    } else {
        (rate(results, &of(system))?, rate(results, &of(reference))?)
    };
    (b > 0.0).then_some(a / b)
}

/// One ratio goal: a description, the ratio, its bound and target.
#[derive(Debug, Clone)]
pub struct Goal {
    /// What is compared.
    pub what: String,
    /// Which way the ratio must go.
    pub bound: Bound,
    /// The target ratio.
    pub target: f64,
    /// The verdict of this run.
    pub verdict: Verdict,
}

/// Every ratio goal of issue 9, judged on `results`.
pub fn ratio_goals(results: &Results) -> Vec<Goal> {
    let mut goals = Vec::new();
    let mut add = |what: String, c: Cell, system: &str, reference: &str, bound, target| {
        let verdict = Verdict::judge(ratio_of(results, &c, system, reference), bound, target);
        goals.push(Goal {
            what,
            bound,
            target,
            verdict,
        });
    };
    let tp = cell(Bench::Throughput, 64, 1, BARE);
    add(
        format!("64 B throughput: {} ÷ {BARE}", raw::NAME),
        tp.clone(),
        raw::NAME,
        BARE,
        Bound::AtLeast,
        0.7,
    );
    add(
        format!("64 B throughput: {} ÷ {BARE}", typed::CHECKED),
        tp,
        typed::CHECKED,
        BARE,
        Bound::AtLeast,
        0.5,
    );
    for size in [64, 1024] {
        let lat = cell(Bench::Latency, size, 1, BARE);
        add(
            format!("one-way {}: {} ÷ {BARE}", fmt_size(size), raw::NAME),
            lat.clone(),
            raw::NAME,
            BARE,
            Bound::AtMost,
            1.1,
        );
        add(
            format!("one-way {}: {} ÷ {BARE}", fmt_size(size), typed::CHECKED),
            lat,
            typed::CHECKED,
            BARE,
            Bound::AtMost,
            1.2,
        );
    }
    add(
        format!("one-way 1 MiB: {} ÷ {ICEORYX2}", typed::CHECKED),
        cell(Bench::Latency, 1 << 20, 1, BARE),
        typed::CHECKED,
        ICEORYX2,
        Bound::AtMost,
        1.0,
    );
    goals
}

/// Whether `system` is ahead of iceoryx2 in every row both ran: the number
/// of rows compared and the rows behind, with their ratio (latency: median ÷
/// iceoryx2's, behind when above 1; rate: ÷ iceoryx2's, behind when below 1).
pub fn behind_iceoryx2(results: &Results, system: &str) -> (usize, Vec<(String, f64)>) {
    let mut shapes: Vec<Cell> = results
        .outcomes
        .keys()
        .filter(|c| c.system == ICEORYX2)
        .cloned()
        .collect();
    shapes.sort();
    let mut compared = 0;
    let mut behind = Vec::new();
    for c in shapes {
        let Some(r) = ratio_of(results, &c, system, ICEORYX2) else {
            continue;
        };
        compared += 1;
        let is_behind = if c.bench.is_pingpong() {
            r > 1.0
        } else {
            r < 1.0
        };
        if is_behind {
            let shape = if c.bench == Bench::Fanout {
                format!("{} × {}", c.receivers, fmt_size(c.size))
            } else {
                fmt_size(c.size)
            };
            behind.push((format!("{} {shape}", c.bench.as_str()), r));
        }
    }
    (compared, behind)
}

/// The "Goals (issue 9)" section of the report.
pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Goals (issue 9)\n");
    let _ = writeln!(
        out,
        "Ratios from this run: latency rows compare medians (lower is better), throughput \
         rows compare rates (higher is better). A goal whose systems or rows were not run is \
         not measured.\n"
    );
    let _ = writeln!(
        out,
        "| goal | target | measured | result |\n|---|---:|---:|---|"
    );
    for g in ratio_goals(results) {
        let op = match g.bound {
            Bound::AtLeast => "≥",
            Bound::AtMost => "≤",
        };
        let (measured, result) = g.verdict.cells();
        let _ = writeln!(
            out,
            "| {} | {op} {:.1} | {measured} | {result} |",
            g.what, g.target
        );
    }
    for system in [typed::CHECKED, raw::NAME] {
        let (compared, behind) = behind_iceoryx2(results, system);
        let what = format!("every row: {system} ahead of {ICEORYX2}");
        let line = if compared == 0 {
            format!("| {what} | all rows | | not measured |")
        } else if behind.is_empty() {
            format!("| {what} | all rows | {compared} of {compared} rows | met |")
        } else {
            let list: Vec<String> = behind
                .iter()
                .map(|(shape, r)| format!("{shape} ({r:.2})"))
                .collect();
            format!(
                "| {what} | all rows | {} of {compared} rows; behind: {} | **missed** |",
                compared - behind.len(),
                list.join(", ")
            )
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "\nThe 8 MiB `Image` built in place (the issue's other ≤ 1.0x iceoryx2 goal) is not a \
         row of this runner.\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Outcome;

    fn latency(results: &mut Results, size: usize, system: &str, one_way_ns: u64) {
        results.outcomes.insert(
            cell(Bench::Latency, size, 1, system),
            vec![Outcome::Latency {
                rtts: vec![2 * one_way_ns; 100],
                preempted: 0,
            }],
        );
    }

    fn throughput(results: &mut Results, system: &str, msgs_per_s: f64) {
        results.outcomes.insert(
            cell(Bench::Throughput, 64, 1, system),
            vec![Outcome::Rate {
                msgs_per_s,
                preempted: 0,
            }],
        );
    }

    #[test]
    fn goals_are_judged_from_the_right_cells() {
        let mut r = Results::default();
        throughput(&mut r, BARE, 100e6);
        throughput(&mut r, raw::NAME, 80e6);
        throughput(&mut r, typed::CHECKED, 40e6);
        latency(&mut r, 64, BARE, 200);
        latency(&mut r, 64, raw::NAME, 210);
        latency(&mut r, 64, typed::CHECKED, 260);
        let goals = ratio_goals(&r);
        let verdict = |what: &str| {
            goals
                .iter()
                .find(|g| g.what == what)
                .map(|g| g.verdict.clone())
                .unwrap()
        };
        assert_eq!(
            verdict("64 B throughput: shmbus (raw bytes) ÷ bare ring"),
            Verdict::Met(0.8)
        );
        assert_eq!(
            verdict("64 B throughput: shmbus (checked) ÷ bare ring"),
            Verdict::Missed(0.4)
        );
        assert_eq!(
            verdict("one-way 64 B: shmbus (raw bytes) ÷ bare ring"),
            Verdict::Met(1.05)
        );
        assert_eq!(
            verdict("one-way 64 B: shmbus (checked) ÷ bare ring"),
            Verdict::Missed(1.3)
        );
        assert_eq!(
            verdict("one-way 1 KiB: shmbus (raw bytes) ÷ bare ring"),
            Verdict::NotMeasured
        );
        assert_eq!(
            verdict("one-way 1 MiB: shmbus (checked) ÷ iceoryx2"),
            Verdict::NotMeasured
        );
        let text = render(&r);
        assert!(text
            .contains("| 64 B throughput: shmbus (raw bytes) ÷ bare ring | ≥ 0.7 | 0.80 | met |"));
        assert!(text.contains(
            "| every row: shmbus (checked) ahead of iceoryx2 | all rows | | not measured |"
        ));
    }

    #[test]
    fn rows_behind_iceoryx2_are_listed() {
        let mut r = Results::default();
        latency(&mut r, 64, ICEORYX2, 500);
        latency(&mut r, 64, typed::CHECKED, 300);
        latency(&mut r, 1 << 20, ICEORYX2, 100_000);
        latency(&mut r, 1 << 20, typed::CHECKED, 135_000);
        throughput(&mut r, ICEORYX2, 2e6);
        throughput(&mut r, typed::CHECKED, 16e6);
        let (compared, behind) = behind_iceoryx2(&r, typed::CHECKED);
        assert_eq!(compared, 3);
        assert_eq!(behind, vec![("latency 1 MiB".to_owned(), 1.35)]);
        let text = render(&r);
        assert!(text.contains("2 of 3 rows; behind: latency 1 MiB (1.35) | **missed** |"));
        assert!(text
            .contains("one-way 1 MiB: shmbus (checked) ÷ iceoryx2 | ≤ 1.0 | 1.35 | **missed** |"));
    }
}
