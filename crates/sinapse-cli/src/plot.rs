//! PNG plots of a training run: loss and metric curves (training vs validation, where
//! overfitting shows as the curves parting) and the confusion matrix.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use sinapse::train::{ConfusionMatrix, History};
use sinapse::{Error, Result};

/// Text needs a font; the DejaVu Sans bytes are compiled in, so no system font is required.
fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font; if registration ever failed, text would be
        // skipped by plotters' error path below, not crash.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.to_path_buf(), source: std::io::Error::other(format!("plotting failed: {e}")) }
}

/// `loss.png` and `<metric>.png` (accuracy or mae) in `dir`.
pub fn curves(dir: &Path, h: &History) -> Result<()> {
    let train_loss: Vec<f32> = h.records.iter().map(|r| r.train_loss).collect();
    let val_loss: Vec<f32> = h.records.iter().filter_map(|r| r.val_loss).collect();
    line_chart(&dir.join("loss.png"), "Loss", "loss", &train_loss, &val_loss)?;
    let train_m: Vec<f32> = h.records.iter().map(|r| r.train_metric).collect();
    let val_m: Vec<f32> = h.records.iter().filter_map(|r| r.val_metric).collect();
    let title = if h.metric == "accuracy" { "Accuracy" } else { "Mean absolute error" };
    line_chart(&dir.join(format!("{}.png", h.metric)), title, h.metric, &train_m, &val_m)
}

/// One chart of a training series and (when not empty) a validation series, by epoch.
fn line_chart(path: &Path, title: &str, y_desc: &str, train: &[f32], val: &[f32]) -> Result<()> {
    fonts();
    let err = |e: &dyn std::fmt::Display| plot_error(path, e);
    let finite = train.iter().chain(val).copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let epochs = train.len().max(2) as f32;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(1f32..epochs, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("epoch").y_desc(y_desc).draw().map_err(|e| err(&e))?;
    let series = |v: &[f32]| v.iter().enumerate().map(|(i, &y)| (i as f32 + 1.0, y)).collect::<Vec<_>>();
    chart
        .draw_series(LineSeries::new(series(train), BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("training")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(series(val), RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// `returns.png`: each episode's return and the mean over the last `window` episodes, with
/// the line the mean must reach to count as solved.
pub fn returns(path: &Path, returns: &[f32], window: usize, threshold: f32) -> Result<()> {
    fonts();
    let err = |e: &dyn std::fmt::Display| plot_error(path, e);
    let hi = returns.iter().copied().fold(threshold, f32::max) * 1.05;
    let episodes = returns.len().max(2) as f32;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Return per episode", ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(1f32..episodes, 0f32..hi)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("episode").y_desc("return").draw().map_err(|e| err(&e))?;
    let points = returns.iter().enumerate().map(|(i, &r)| (i as f32 + 1.0, r));
    chart
        .draw_series(LineSeries::new(points, BLUE.mix(0.4).stroke_width(1)))
        .map_err(|e| err(&e))?
        .label("return")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.mix(0.4).stroke_width(1)));
    let mean: Vec<(f32, f32)> = (0..returns.len())
        .map(|i| {
            let tail = &returns[(i + 1).saturating_sub(window)..=i];
            (i as f32 + 1.0, tail.iter().sum::<f32>() / tail.len() as f32)
        })
        .collect();
    chart
        .draw_series(LineSeries::new(mean, RED.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label(format!("mean of the last {window}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(vec![(1.0, threshold), (episodes, threshold)], BLACK.mix(0.5)))
        .map_err(|e| err(&e))?
        .label(format!("solved: {threshold}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// The confusion matrix as a heat map with the counts written in the cells (rows: true
/// class, columns: predicted class), drawn cell by cell in pixel coordinates.
pub fn confusion(path: &Path, m: &ConfusionMatrix, names: Option<&[String]>) -> Result<()> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    fonts();
    let err = |e: &dyn std::fmt::Display| plot_error(path, e);
    let k = m.classes().max(1) as i32;
    let name = |c: usize| names.and_then(|n| n.get(c).cloned()).unwrap_or_else(|| c.to_string());
    let max = m.counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let cell = (600 / k).clamp(24, 90);
    let (left, top) = (130, 70);
    let (width, height) = ((left + cell * k + 30) as u32, (top + cell * k + 90) as u32);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let centered = Pos::new(HPos::Center, VPos::Center);
    let text = |s: &str, x: i32, y: i32, size: i32, color: &RGBColor| {
        root.draw(&Text::new(s.to_string(), (x, y), ("sans-serif", size).into_font().color(color).pos(centered)))
            .map_err(|e| err(&e))
    };
    text("Confusion matrix", (width / 2) as i32, 30, 24, &BLACK)?;
    let count_size = (cell / 3).clamp(9, 22);
    for (t, row) in m.counts.iter().enumerate() {
        for (p, &count) in row.iter().enumerate() {
            let (x0, y0) = (left + p as i32 * cell, top + t as i32 * cell);
            let shade = count as f64 / max;
            let fill = RGBColor(255 - (200.0 * shade) as u8, 255 - (150.0 * shade) as u8, 255);
            root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], fill.filled())).map_err(|e| err(&e))?;
            root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], RGBColor(200, 200, 200)))
                .map_err(|e| err(&e))?;
            let color = if shade > 0.6 { WHITE } else { BLACK };
            text(&count.to_string(), x0 + cell / 2, y0 + cell / 2, count_size, &color)?;
        }
    }
    let label_size = count_size.min(16);
    for c in 0..k {
        let mid = c * cell + cell / 2;
        text(&name(c as usize), left - 40, top + mid, label_size, &BLACK)?;
        text(&name(c as usize), left + mid, top + k * cell + 18, label_size, &BLACK)?;
    }
    text("predicted", left + k * cell / 2, top + k * cell + 50, 16, &BLACK)?;
    text("true", 30, top + k * cell / 2, 16, &BLACK)?;
    root.present().map_err(|e| err(&e))
}
