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
    let title = match h.metric {
        "accuracy" => "Accuracy",
        "mse" => "Mean squared error",
        _ => "Mean absolute error",
    };
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

/// `reconstructions.png` for an autoencoder: test images (top row) above their
/// reconstructions (bottom row), each `side` x `side` grey values in [0, 1].
pub fn reconstructions(path: &Path, originals: &[Vec<f32>], rebuilt: &[Vec<f32>], side: usize) -> Result<()> {
    fonts();
    let err = |e: &dyn std::fmt::Display| plot_error(path, e);
    let (scale, gap, top) = (3i32, 10i32, 40i32);
    let cell = side as i32 * scale;
    let cols = originals.len().max(1) as i32;
    let (width, height) = ((gap + cols * (cell + gap)) as u32, (top + 2 * (cell + gap) + gap) as u32);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    root.draw(&Text::new("test images (top) and their reconstructions (bottom)", (gap, 12), ("sans-serif", 18)))
        .map_err(|e| err(&e))?;
    for (row, images) in [originals, rebuilt].iter().enumerate() {
        for (col, image) in images.iter().enumerate() {
            let (x0, y0) = (gap + col as i32 * (cell + gap), top + row as i32 * (cell + gap));
            for (p, &v) in image.iter().enumerate().take(side * side) {
                // Ink dark on white, as digits are written.
                let shade = 255 - (v.clamp(0.0, 1.0) * 255.0) as u8;
                let (x, y) = (x0 + (p % side) as i32 * scale, y0 + (p / side) as i32 * scale);
                root.draw(&Rectangle::new([(x, y), (x + scale, y + scale)], RGBColor(shade, shade, shade).filled()))
                    .map_err(|e| err(&e))?;
            }
        }
    }
    root.present().map_err(|e| err(&e))
}

/// `codes.png` for an autoencoder: each test sample's code as a point (`axes` names the two
/// coordinates), coloured by its label, which training never saw.
pub fn codes(path: &Path, points: &[[f32; 2]], labels: &[usize], names: &[String], axes: [&str; 2]) -> Result<()> {
    fonts();
    let err = |e: &dyn std::fmt::Display| plot_error(path, e);
    let range = |k: usize| {
        let (lo, hi) = points.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), p| (a.min(p[k]), b.max(p[k])));
        if lo.is_finite() && hi > lo {
            let pad = (hi - lo) * 0.05;
            (lo - pad)..(hi + pad)
        } else {
            -1f32..1f32
        }
    };
    let root = BitMapBackend::new(path, (800, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Codes of the test set, coloured by label", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(range(0), range(1))
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(axes[0]).y_desc(axes[1]).draw().map_err(|e| err(&e))?;
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    for c in 0..classes {
        let color = Palette99::pick(c).to_rgba();
        let mine = points.iter().zip(labels).filter(|(_, &l)| l == c).map(|(p, _)| (p[0], p[1]));
        let name = names.get(c).cloned().unwrap_or_else(|| c.to_string());
        chart
            .draw_series(mine.map(|p| Circle::new(p, 2, color.filled())))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
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

/// The rows of `data` (`n` rows of `d` values) projected on their first two principal axes
/// (the directions of largest variance, by power iteration on the covariance matrix).
pub fn principal_plane(data: &[f32], n: usize, d: usize) -> Vec<[f32; 2]> {
    let mean: Vec<f64> =
        (0..d).map(|j| (0..n).map(|i| f64::from(data[i * d + j])).sum::<f64>() / n.max(1) as f64).collect();
    let centred = |i: usize, j: usize| f64::from(data[i * d + j]) - mean[j];
    let mut cov = vec![0.0f64; d * d];
    for i in 0..n {
        for a in 0..d {
            let va = centred(i, a);
            for b in 0..d {
                cov[a * d + b] += va * centred(i, b);
            }
        }
    }
    let mut axes: Vec<Vec<f64>> = Vec::new();
    for k in 0..2.min(d) {
        let mut v: Vec<f64> = (0..d).map(|j| 1.0 + (j * (k + 1)) as f64 * 1e-3).collect();
        for _ in 0..300 {
            let mut w: Vec<f64> = (0..d).map(|a| (0..d).map(|b| cov[a * d + b] * v[b]).sum()).collect();
            // Deflate: remove the axes found already.
            for u in &axes {
                let dot: f64 = w.iter().zip(u).map(|(x, y)| x * y).sum();
                w.iter_mut().zip(u).for_each(|(x, y)| *x -= dot * y);
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            v = w.iter().map(|x| x / norm).collect();
        }
        axes.push(v);
    }
    (0..n)
        .map(|i| {
            let p = |k: usize| axes.get(k).map_or(0.0, |u| (0..d).map(|j| centred(i, j) * u[j]).sum::<f64>()) as f32;
            [p(0), p(1)]
        })
        .collect()
}

/// `learning_curve.png`: each spec's training (dashed) and test (solid) metric against the
/// number of training examples, on a log axis.
pub fn learning_curves(path: &Path, curves: &[(String, sinapse::job::LearningCurve)]) -> Result<()> {
    fonts();
    let err = |e: &dyn std::fmt::Display| plot_error(path, e);
    let points = || curves.iter().flat_map(|(_, c)| c.points.iter());
    let (x_lo, x_hi) =
        points().fold((f64::INFINITY, 0.0f64), |(a, b), p| (a.min(p.examples as f64), b.max(p.examples as f64)));
    let (x_lo, x_hi) = if x_lo.is_finite() && x_hi > x_lo { (x_lo * 0.8, x_hi * 1.25) } else { (1.0, 10.0) };
    let values = points().flat_map(|p| [p.train.0, p.test.0]).filter(|v| v.is_finite());
    let (y_lo, y_hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (y_lo, y_hi) = if y_lo.is_finite() { (y_lo, y_hi) } else { (0.0, 1.0) };
    let pad = ((y_hi - y_lo) * 0.08).max(1e-3);
    let metric = curves.first().map_or("metric", |(_, c)| c.metric);
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Learning curve: {metric} by training examples"), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo - pad)..(y_hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("training examples (log scale)")
        .y_desc(metric)
        .x_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line = |pick: fn(&sinapse::job::CurvePoint) -> f64| {
            c.points.iter().map(move |p| (p.examples as f64, pick(p))).collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(line(|p| p.test.0), color.stroke_width(3)))
            .map_err(|e| err(&e))?
            .label(format!("{name}: test"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart
            .draw_series(DashedLineSeries::new(line(|p| p.train.0), 8, 5, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{name}: training"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1)));
        chart
            .draw_series(line(|p| p.test.0).into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
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
