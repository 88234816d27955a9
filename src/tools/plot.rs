//! PNG plots for the tools (plotters, bitmap backend). Text needs a TrueType font: DejaVu Sans from
//! Debian's fonts-dejavu-core (installed by `make setup`), or the file in `CBO_PLOT_FONT`.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::calibration::Metrics;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font as "sans-serif" once per process.
fn ensure_font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let from_env = std::env::var("CBO_PLOT_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // The font registry keeps `'static` references: leak one font per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no TrueType font for plots: install fonts-dejavu-core (make setup) or set CBO_PLOT_FONT \
             (looked in {})",
            FONT_CANDIDATES.join(", ")
        ))
    })
    .clone()
}

/// Equal-width reliability bins: (count, mean confidence, accuracy) per bin.
fn bins(samples: &[(f64, bool)], n_bins: usize) -> Vec<(usize, f64, f64)> {
    let mut acc = vec![(0usize, 0.0, 0.0); n_bins];
    for &(c, right) in samples {
        let k = ((c.clamp(0.0, 1.0) * n_bins as f64) as usize).min(n_bins - 1);
        acc[k].0 += 1;
        acc[k].1 += c;
        acc[k].2 += f64::from(u8::from(right));
    }
    acc.into_iter()
        .map(|(n, c, a)| {
            if n == 0 {
                (0, 0.0, 0.0)
            } else {
                (n, c / n as f64, a / n as f64)
            }
        })
        .collect()
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// The image file can be written: plotters reports a missing directory only when it saves, as
/// `ImageError(IoError(Os { .. }))`, after the whole figure was drawn.
fn writable(path: &Path) -> Result<(), String> {
    std::fs::File::create(path)
        .map(drop)
        .map_err(|e| format!("cannot write the plot '{}': {e}", path.display()))
}

/// Writes a two-panel reliability diagram (raw | calibrated): per 15 equal-width confidence bins,
/// the accuracy (bars) against the diagonal of perfect calibration, the bin's count above each
/// bar, and the ECE in the panel title.
pub fn reliability_diagram(
    path: &Path,
    title: &str,
    raw: &[(f64, bool)],
    calibrated: &[(f64, bool)],
) -> Result<(), String> {
    ensure_font()?;
    const N_BINS: usize = 15;
    writable(path)?;
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    for (area, (name, samples)) in panels
        .iter()
        .zip([("raw", raw), ("calibrated", calibrated)])
    {
        let m = Metrics::of(samples);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{name}: ECE {:.3}, accuracy {:.3}, mean confidence {:.3}",
                    m.ece, m.accuracy, m.mean_confidence
                ),
                ("sans-serif", 17),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0f64..1.0, 0.0f64..1.08)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("confidence")
            .y_desc("accuracy")
            .label_style(("sans-serif", 14))
            .disable_mesh()
            .draw()
            .map_err(err)?;
        let width = 1.0 / N_BINS as f64;
        let data = bins(samples, N_BINS);
        chart
            .draw_series(
                data.iter()
                    .enumerate()
                    .filter(|(_, b)| b.0 > 0)
                    .map(|(k, b)| {
                        let x0 = k as f64 * width;
                        Rectangle::new(
                            [(x0 + width * 0.06, 0.0), (x0 + width * 0.94, b.2)],
                            RGBColor(70, 110, 190).filled(),
                        )
                    }),
            )
            .map_err(err)?;
        // Gap between accuracy and mean confidence: the part the calibration should remove.
        chart
            .draw_series(
                data.iter()
                    .enumerate()
                    .filter(|(_, b)| b.0 > 0)
                    .map(|(k, b)| {
                        let x0 = k as f64 * width;
                        Rectangle::new(
                            [(x0 + width * 0.3, b.1), (x0 + width * 0.7, b.2)],
                            RGBColor(220, 80, 60).mix(0.55).filled(),
                        )
                    }),
            )
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(
                data.iter()
                    .enumerate()
                    .filter(|(_, b)| b.0 > 0)
                    .map(|(k, b)| {
                        Text::new(
                            b.0.to_string(),
                            (k as f64 * width + width * 0.15, (b.2 + 0.05).min(1.06)),
                            ("sans-serif", 12),
                        )
                    }),
            )
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One line per policy: accuracy against the deadline, one panel per trace.
/// `runs`: (trace name, deadline ms, policy, accuracy).
pub fn accuracy_vs_deadline(
    path: &Path,
    runs: &[(String, f64, String, f64)],
) -> Result<(), String> {
    ensure_font()?;
    let mut traces: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    traces.dedup();
    let mut policies: Vec<&str> = runs.iter().map(|r| r.2.as_str()).collect();
    policies.sort();
    policies.dedup();
    let (dmin, dmax) = runs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(r.1), b.max(r.1)));
    let (amin, amax) = runs
        .iter()
        .fold((1.0f64, 0.0f64), |(a, b), r| (a.min(r.3), b.max(r.3)));
    writable(path)?;
    let root =
        BitMapBackend::new(path, (420 * traces.len().max(1) as u32, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, traces.len().max(1)));
    for (area, trace) in panels.iter().zip(&traces) {
        let mut chart = ChartBuilder::on(area)
            .caption(*trace, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(
                (dmin * 0.9)..(dmax * 1.05),
                (amin - 0.01).max(0.0)..(amax + 0.01).min(1.0),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("deadline (ms)")
            .y_desc("accuracy")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        for (k, policy) in policies.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mut pts: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.0 == *trace && r.2 == *policy)
                .map(|r| (r.1, r.3))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let width = if policy.starts_with("cbo") { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
                .map_err(err)?
                .label(*policy)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(width))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Per second of the replay: the trace's capacity, and what `cbo` sent (kbit/s) and at which
/// mean resolution.
pub fn offload_over_time(
    path: &Path,
    title: &str,
    capacity_kbps: &[f64],
    sent_kbps: &[f64],
    mean_resolution: &[f64],
) -> Result<(), String> {
    ensure_font()?;
    writable(path)?;
    let root = BitMapBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = capacity_kbps.len().max(1) as f64;
    let ymax = capacity_kbps
        .iter()
        .chain(sent_kbps)
        .copied()
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .right_y_label_area_size(48)
        .build_cartesian_2d(0.0..n, 0.0..ymax * 1.05)
        .map_err(err)?
        .set_secondary_coord(0.0..n, 0.0..340.0);
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("kbit/s")
        .label_style(("sans-serif", 12))
        .disable_mesh()
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("mean offload resolution (px)")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let series = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect()
    };
    chart
        .draw_series(LineSeries::new(series(capacity_kbps), BLACK.mix(0.5)))
        .map_err(err)?
        .label("trace capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
    chart
        .draw_series(LineSeries::new(series(sent_kbps), BLUE.stroke_width(2)))
        .map_err(err)?
        .label("uplink use")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(
            series(mean_resolution)
                .into_iter()
                .filter(|p| p.1 > 0.0)
                .map(|p| Circle::new(p, 2, RED.filled())),
        )
        .map_err(err)?
        .label("mean resolution (right axis)")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, RED.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Regret per setting, sorted: one line per policy, points below the best causal baseline of
/// each setting (negative: better than every baseline) against the setting's rank.
/// `series`: (policy, regrets in points, sorted ascending).
pub fn regret_per_setting(path: &Path, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    ensure_font()?;
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(0).max(1);
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.1.iter())
        .fold((0.0f64, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    writable(path)?;
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "regret per setting vs the best simple rule (sorted; lower is better)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..n as f64, (lo - 0.5)..(hi + 0.5))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("settings (clip × trace × deadline), sorted by regret")
        .y_desc("regret (accuracy points)")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (n as f64, 0.0)],
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(err)?;
    for (k, (policy, v)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let width = if policy.starts_with("cbo") { 3 } else { 1 };
        let scale = n as f64 / v.len().max(1) as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(i, &r)| ((i as f64 + 0.5) * scale, r))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(width)))
            .map_err(err)?
            .label(policy.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_average_confidence_and_accuracy() {
        let b = bins(
            &[(0.05, true), (0.06, false), (0.95, true), (1.0, true)],
            10,
        );
        assert_eq!(b[0].0, 2);
        assert!((b[0].1 - 0.055).abs() < 1e-12);
        assert_eq!(b[0].2, 0.5);
        assert_eq!(b[9], (2, 0.975, 1.0));
        assert_eq!(b[5].0, 0);
    }

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.png");
        let raw: Vec<(f64, bool)> = (0..200).map(|i| (i as f64 / 200.0, i % 3 != 0)).collect();
        reliability_diagram(&path, "test", &raw, &raw).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5000);
    }
}
