//! The comparison as an SVG chart, written beside the markdown report: one
//! panel per ping-pong shape with each system's one-way latency
//! percentiles (p50 to max, log scale), and one panel per stream shape
//! with each system's rate (log scale). Each system keeps its colour in
//! every panel.
//!
//! Drawn with plotters' SVG backend and its built-in text metrics, so it
//! needs no system fonts.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::cell::{Bench, Cell};
use crate::report::{fmt_ns, fmt_rate, fmt_size};
use crate::runner::{Outcome, Plan, Results};
use crate::stats::percentile;

/// Percentiles drawn on a latency panel (100 = the maximum).
const PERCENTILES: [(f64, &str); 6] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
    (100.0, "max"),
];

const PANEL: (u32, u32) = (640, 400);

/// Colour of the system at `index` in the plan (stable across panels).
fn colour(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    COLOURS[index % COLOURS.len()]
}

/// What one panel shows.
enum Panel {
    /// (system index, system, one-way ns at each of [`PERCENTILES`]).
    Latency {
        title: String,
        lines: Vec<(usize, String, Vec<f64>)>,
    },
    /// (system index, system, messages per second per receiver).
    Rate {
        title: String,
        bars: Vec<(usize, String, f64)>,
    },
}

fn shape(cell: &Cell) -> String {
    match cell.bench {
        Bench::Latency => format!("latency (spinning), {}", fmt_size(cell.size)),
        Bench::Blocking => format!("latency (blocking wake-up), {}", fmt_size(cell.size)),
        Bench::Throughput => format!("throughput, {}", fmt_size(cell.size)),
        Bench::Fanout => format!(
            "fan-out to {} receivers, {}",
            cell.receivers,
            fmt_size(cell.size)
        ),
    }
}

fn panels(plan: &Plan, results: &Results) -> Vec<Panel> {
    let index = |system: &str| plan.systems.iter().position(|s| s == system).unwrap_or(0);
    let mut panels = Vec::new();
    for group in plan.groups() {
        let Some(first) = group.first() else { continue };
        let title = shape(first);
        if first.bench.is_pingpong() {
            let mut lines = Vec::new();
            for cell in &group {
                let mut one_way: Vec<u64> = results
                    .outcomes
                    .get(cell)
                    .into_iter()
                    .flatten()
                    .filter_map(|o| match o {
                        Outcome::Latency { rtts, .. } => Some(rtts.iter().map(|r| r / 2)),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                if one_way.is_empty() {
                    continue;
                }
                one_way.sort_unstable();
                let points = PERCENTILES
                    .iter()
                    .map(|&(p, _)| percentile(&one_way, p).unwrap_or(0).max(1) as f64)
                    .collect();
                lines.push((index(&cell.system), cell.system.clone(), points));
            }
            if !lines.is_empty() {
                panels.push(Panel::Latency { title, lines });
            }
        } else {
            let bars: Vec<_> = group
                .iter()
                .filter_map(|cell| match results.summary(cell) {
                    Some(crate::runner::Summary::Rate { msgs_per_s, .. }) if msgs_per_s > 0.0 => {
                        Some((index(&cell.system), cell.system.clone(), msgs_per_s))
                    }
                    _ => None,
                })
                .collect();
            if !bars.is_empty() {
                panels.push(Panel::Rate { title, bars });
            }
        }
    }
    panels
}

/// Log-scale bounds around `values`: whole decades, so the axis is labelled
/// at powers of ten.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf((lo / 1.2).log10().floor());
    let hi = 10f64.powf((hi * 2.0).log10().ceil());
    (lo, hi.max(lo * 10.0))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// The chart as an SVG document; `None` if nothing was measured.
///
/// # Errors
///
/// If plotters fails to lay out the drawing.
pub fn render(plan: &Plan, results: &Results, title: &str) -> Result<Option<String>> {
    let panels = panels(plan, results);
    if panels.is_empty() {
        return Ok(None);
    }
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let size = (PANEL.0 * cols as u32, PANEL.1 * rows as u32 + 40);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
        let areas = root.split_evenly((rows, cols));
        for (area, panel) in areas.iter().zip(&panels) {
            match panel {
                Panel::Latency { title, lines } => {
                    let (lo, hi) = bounds(lines.iter().flat_map(|(_, _, v)| v.iter().copied()));
                    let mut chart = ChartBuilder::on(area)
                        .caption(format!("{title}: one-way latency"), ("sans-serif", 16))
                        .margin(12)
                        .x_label_area_size(30)
                        .y_label_area_size(70)
                        .build_cartesian_2d(
                            -0.2f64..(PERCENTILES.len() as f64 - 0.8),
                            (lo..hi).log_scale(),
                        )
                        .map_err(err)?;
                    chart
                        .configure_mesh()
                        .x_labels(PERCENTILES.len())
                        .x_label_formatter(&|x| {
                            let i = x.round();
                            if (x - i).abs() < 1e-6 && i >= 0.0 {
                                PERCENTILES
                                    .get(i as usize)
                                    .map_or(String::new(), |p| p.1.to_owned())
                            } else {
                                String::new()
                            }
                        })
                        .y_label_formatter(&|y| fmt_ns(*y))
                        .y_desc("one-way (log scale)")
                        .draw()
                        .map_err(err)?;
                    for (i, system, values) in lines {
                        let c = colour(*i);
                        let points: Vec<(f64, f64)> = values
                            .iter()
                            .enumerate()
                            .map(|(x, &y)| (x as f64, y))
                            .collect();
                        chart
                            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                            .map_err(err)?
                            .label(system.as_str())
                            .legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                            });
                        chart
                            .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                            .map_err(err)?;
                    }
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperLeft)
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK.mix(0.3))
                        .label_font(("sans-serif", 12))
                        .draw()
                        .map_err(err)?;
                }
                Panel::Rate { title, bars } => {
                    let (lo, hi) = bounds(bars.iter().map(|b| b.2));
                    let mut chart = ChartBuilder::on(area)
                        .caption(
                            format!("{title}: messages/s per receiver"),
                            ("sans-serif", 16),
                        )
                        .margin(12)
                        .x_label_area_size(10)
                        .y_label_area_size(70)
                        .build_cartesian_2d(0f64..bars.len() as f64, (lo..hi).log_scale())
                        .map_err(err)?;
                    chart
                        .configure_mesh()
                        .disable_x_mesh()
                        .x_labels(0)
                        .y_labels(6)
                        .y_label_formatter(&|y| fmt_rate(*y))
                        .y_desc("msg/s (log scale)")
                        .draw()
                        .map_err(err)?;
                    for (x, (i, system, rate)) in bars.iter().enumerate() {
                        let c = colour(*i);
                        let x = x as f64;
                        chart
                            .draw_series(std::iter::once(Rectangle::new(
                                [(x + 0.15, lo), (x + 0.85, *rate)],
                                c.filled(),
                            )))
                            .map_err(err)?
                            .label(system.as_str())
                            .legend(move |(x, y)| {
                                Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                            });
                        chart
                            .draw_series(std::iter::once(Text::new(
                                fmt_rate(*rate),
                                (x + 0.2, *rate * 1.6),
                                ("sans-serif", 12),
                            )))
                            .map_err(err)?;
                    }
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK.mix(0.3))
                        .label_font(("sans-serif", 12))
                        .draw()
                        .map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

/// Where the chart of a report written to `report` goes: the same name
/// with `.svg`.
pub fn path_beside(report: &std::path::Path) -> std::path::PathBuf {
    report.with_extension("svg")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Timing;

    fn plan(systems: &[&str]) -> Plan {
        Plan {
            exe: "compare".into(),
            shm_root: "/dev/shm".into(),
            rows: vec![Bench::Latency, Bench::Throughput],
            systems: systems.iter().map(|s| (*s).to_owned()).collect(),
            latency_sizes: vec![64],
            throughput_sizes: vec![4096],
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
        }
    }

    #[test]
    fn draws_latency_percentiles_and_rates_per_system() {
        let systems = ["floor", "shmbus (raw bytes)", "unix socket"];
        let plan = plan(&systems);
        let mut results = Results::default();
        for (k, system) in systems.iter().enumerate() {
            let base = 100 * (k as u64 + 1);
            results.outcomes.insert(
                Cell {
                    bench: Bench::Latency,
                    size: 64,
                    receivers: 1,
                    system: (*system).to_owned(),
                },
                vec![Outcome::Latency {
                    rtts: (0..10_000).map(|i| 2 * (base + i % 997)).collect(),
                    preempted: 0,
                }],
            );
            results.outcomes.insert(
                Cell {
                    bench: Bench::Throughput,
                    size: 4096,
                    receivers: 1,
                    system: (*system).to_owned(),
                },
                vec![Outcome::Rate {
                    msgs_per_s: 1e6 / (k as f64 + 1.0),
                    preempted: 0,
                }],
            );
        }
        let svg = render(&plan, &results, "test run").unwrap().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for needle in [
            "test run",
            "latency (spinning), 64 B: one-way latency",
            "throughput, 4 KiB: messages/s per receiver",
            "shmbus (raw bytes)",
            "unix socket",
            "p99.9",
            "max",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        // Every system keeps its colour in both panels.
        assert!(svg.matches("#D62728").count() >= 2 || svg.matches("#d62728").count() >= 2);
    }

    #[test]
    fn bounds_are_whole_decades() {
        assert_eq!(bounds([150.0, 2_000.0].into_iter()), (100.0, 10_000.0));
        assert_eq!(bounds([100.0].into_iter()), (10.0, 1_000.0));
        assert_eq!(bounds(std::iter::empty()), (1.0, 10.0));
    }

    #[test]
    fn nothing_measured_draws_nothing() {
        let plan = plan(&["floor"]);
        assert!(render(&plan, &Results::default(), "t").unwrap().is_none());
    }
}
