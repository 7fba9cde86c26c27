//! `seqgan plot`: training curves of a run's `metrics.jsonl` as one PNG (a panel per metric),
//! drawn with plotters; training also writes `curves.png` at every checkpoint.

use anyhow::{Context, Result, anyhow, ensure};
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::sync::Once;

use super::checkpoint::write_atomic;

/// Metrics shown first, in this order; any other numeric key follows alphabetically.
const FIRST: &[&str] = &[
    "loss",
    "val_loss",
    "l1",
    "perceptual",
    "accuracy",
    "val_accuracy",
    "codebook_usage",
    "perplexity",
    "g_adv",
    "d_loss",
    "lr",
    "img_per_s",
    "tokens_per_s",
];
/// Keys that are bookkeeping, not curves.
const SKIP: &[&str] = &["step", "images_seen", "entries_seen"];

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // DejaVu Sans, embedded by the `dejavu` crate: no system fonts needed.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// `(metric, [(step, value)])` of a metrics log, in display order.
pub fn series(records: &[Value]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut keys: Vec<String> = records
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|o| o.iter())
        .filter(|(k, v)| v.is_number() && !SKIP.contains(&k.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys.dedup();
    keys.sort_by_key(|k| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
    keys.into_iter()
        .map(|k| {
            let pts = records
                .iter()
                .filter_map(|r| {
                    let step = r.get("step")?.as_f64()?;
                    let v = r.get(&k)?.as_f64()?;
                    v.is_finite().then_some((step, v))
                })
                .collect();
            (k, pts)
        })
        .collect()
}

/// Draws the curves of `run/metrics.jsonl` into `out` (PNG, written atomically).
pub fn plot_run(run: &Path, out: &Path) -> Result<usize> {
    let log = run.join("metrics.jsonl");
    let records = super::metrics::read(&log)?;
    let series: Vec<_> = series(&records)
        .into_iter()
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    ensure!(!series.is_empty(), "{} has no metrics yet", log.display());
    register_font();
    let cols = 3usize;
    let rows = series.len().div_ceil(cols);
    let (w, h) = (cols as u32 * 420, rows as u32 * 260);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let panels = root.split_evenly((rows, cols));
        for (area, (key, pts)) in panels.iter().zip(&series) {
            draw_panel(area, key, pts).map_err(|e| anyhow!("drawing {key}: {e}"))?;
        }
        root.present().map_err(|e| anyhow!("drawing: {e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size matches");
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the plot")?;
    write_atomic(out, &png)?;
    Ok(series.len())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    area: &Area,
    key: &str,
    pts: &[(f64, f64)],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    // A flat series gets a band of +-5% around its value (or +-1e-12 around 0).
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        (y1.abs() * 0.05).max(1e-12)
    };
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(key, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_labels(5)
        .y_labels(5)
        .x_desc("step")
        .label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(LineSeries::new(pts.iter().copied(), &BLUE))?;
    if pts.len() == 1 {
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_metrics_and_draws_a_png() {
        let records = vec![
            json!({"step": 1, "zeta": 1.0, "loss": 2.0, "lr": 0.1, "images_seen": 8}),
            json!({"step": 2, "zeta": 0.5, "loss": 1.5, "val_loss": 1.7, "lr": 0.1}),
        ];
        let s = series(&records);
        let keys: Vec<&str> = s.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["loss", "val_loss", "lr", "zeta"]);
        assert_eq!(s[0].1, vec![(1.0, 2.0), (2.0, 1.5)]);
        let dir = tempfile::tempdir().unwrap();
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
        let out = dir.path().join("curves.png");
        assert_eq!(plot_run(dir.path(), &out).unwrap(), 4);
        let img = image::open(&out).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (3 * 420, 2 * 260));
        // Something was drawn: not all white, and some blue curve pixels.
        assert!(img.pixels().any(|p| p.0 == [0, 0, 255]));
        let err = plot_run(&dir.path().join("none"), &out).unwrap_err();
        assert!(format!("{err:#}").contains("metrics.jsonl"), "{err:#}");
    }
}
