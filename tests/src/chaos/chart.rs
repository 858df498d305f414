//! The soak's curves as an SVG chart: four panels over time (total RSS of
//! the mix, its open descriptors, files under the bus roots with the ring
//! files dashed, bytes used on `/dev/shm` with the bus roots' own bytes
//! dashed), from the sampler's CSV. Drawn with plotters' SVG backend
//! and its built-in text metrics, as the benches' comparison chart is, so
//! it needs no system fonts.

use plotters::prelude::*;

/// `(column of the CSV row, panel title, unit divisor, unit)`.
const PANELS: [(usize, &str, f64, &str); 4] = [
    (1, "resident memory, all processes", 1024.0, "MiB"),
    (2, "open file descriptors, all processes", 1.0, "fds"),
    (
        4,
        "files under the bus roots (ring files dashed)",
        1.0,
        "files",
    ),
    (
        6,
        "bytes used on /dev/shm (whole tmpfs)",
        1_048_576.0,
        "MiB",
    ),
];

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The chart of `rows` (as [`super::sampler::parse_csv`] returns them) as an
/// SVG document.
///
/// # Errors
///
/// No rows, or plotters fails to lay out the drawing.
pub fn render(rows: &[[f64; 7]], title: &str) -> Result<String, String> {
    let last_t = rows.last().ok_or("no samples")?[0].max(1.0);
    let minutes = last_t / 60.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        for (area, &(col, name, div, unit)) in root.split_evenly((2, 2)).iter().zip(&PANELS) {
            let values: Vec<(f64, f64)> =
                rows.iter().map(|r| (r[0] / 60.0, r[col] / div)).collect();
            let hi = values.iter().map(|v| v.1).fold(0.0, f64::max);
            // From zero, so "flat" looks flat and growth is not magnified.
            let top = if hi > 0.0 { hi * 1.25 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..minutes, 0f64..top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("minutes")
                .y_desc(unit)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.1}"))
                .draw()
                .map_err(err)?;
            let blue = RGBColor(0x1f, 0x77, 0xb4);
            chart
                .draw_series(LineSeries::new(values, blue.stroke_width(2)))
                .map_err(err)?;
            // The dashed companion: ring files beside all files, the bus
            // roots' own bytes beside the whole (shared) tmpfs.
            let companion = match col {
                4 => Some((3, 1.0)),
                6 => Some((5, div)),
                _ => None,
            };
            if let Some((other, d)) = companion {
                let rings: Vec<(f64, f64)> =
                    rows.iter().map(|r| (r[0] / 60.0, r[other] / d)).collect();
                let red = RGBColor(0xd6, 0x27, 0x28);
                chart
                    .draw_series(DashedLineSeries::new(rings, 6, 4, red.stroke_width(2)))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_every_panel_and_refuses_no_data() {
        let rows: Vec<[f64; 7]> = (0..30)
            .map(|i| {
                let t = f64::from(i) * 10.0;
                [t, 40_000.0 + t, 120.0, 7.0, 31.0, 9e5, 1.4e6]
            })
            .collect();
        let svg = render(&rows, "soak").unwrap();
        assert!(svg.starts_with("<svg"));
        for (_, name, _, _) in PANELS {
            assert!(svg.contains(name), "{name}");
        }
        assert!(
            svg.matches("<polyline").count() >= 6,
            "one curve per panel, two dashed"
        );
        assert!(render(&[], "soak").is_err());
    }
}
