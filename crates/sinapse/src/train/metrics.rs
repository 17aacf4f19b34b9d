//! Metrics: accuracy, the confusion matrix and macro precision/recall/F1 for classifiers;
//! MSE, MAE and R² for regression.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Counts of (true class, predicted class) pairs: `counts[t][p]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<usize>>,
}

impl ConfusionMatrix {
    /// An all-zero matrix for `classes` classes.
    pub fn new(classes: usize) -> ConfusionMatrix {
        ConfusionMatrix { counts: vec![vec![0; classes]; classes] }
    }

    /// Tallies predictions against the truth.
    pub fn from_predictions(predicted: &[usize], truth: &[usize], classes: usize) -> Result<ConfusionMatrix> {
        if predicted.len() != truth.len() {
            return Err(Error::invalid(
                "ConfusionMatrix",
                format!("{} predictions for {} labels", predicted.len(), truth.len()),
            ));
        }
        let mut m = ConfusionMatrix::new(classes);
        for (&p, &t) in predicted.iter().zip(truth) {
            if p >= classes || t >= classes {
                return Err(Error::IndexOutOfRange { op: "ConfusionMatrix", index: p.max(t) as f64, size: classes });
            }
            m.counts[t][p] += 1;
        }
        Ok(m)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Number of samples counted.
    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    /// Fraction predicted correctly (the diagonal over the total).
    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.classes()).map(|c| self.counts[c][c]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    fn predicted(&self, c: usize) -> usize {
        self.counts.iter().map(|row| row[c]).sum()
    }

    fn actual(&self, c: usize) -> usize {
        self.counts[c].iter().sum()
    }

    /// Of the samples predicted as `c`, the fraction that are `c` (0 when none was predicted).
    pub fn precision(&self, c: usize) -> f64 {
        ratio(self.counts[c][c], self.predicted(c))
    }

    /// Of the samples of class `c`, the fraction predicted as `c` (0 when there are none).
    pub fn recall(&self, c: usize) -> f64 {
        ratio(self.counts[c][c], self.actual(c))
    }

    /// Harmonic mean of precision and recall of class `c`.
    pub fn f1(&self, c: usize) -> f64 {
        let (p, r) = (self.precision(c), self.recall(c));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// Classes that occur in the truth or the predictions (what macro averages run over, as
    /// scikit-learn does).
    fn present(&self) -> Vec<usize> {
        (0..self.classes()).filter(|&c| self.actual(c) + self.predicted(c) > 0).collect()
    }

    fn macro_average(&self, f: impl Fn(usize) -> f64) -> f64 {
        let present = self.present();
        present.iter().map(|&c| f(c)).sum::<f64>() / present.len().max(1) as f64
    }

    /// Unweighted mean of the per-class precisions.
    pub fn macro_precision(&self) -> f64 {
        self.macro_average(|c| self.precision(c))
    }

    /// Unweighted mean of the per-class recalls.
    pub fn macro_recall(&self) -> f64 {
        self.macro_average(|c| self.recall(c))
    }

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        self.macro_average(|c| self.f1(c))
    }

    /// The matrix as a text table, rows = true class, columns = predicted class.
    pub fn render(&self, names: Option<&[String]>) -> String {
        let name = |c: usize| names.and_then(|n| n.get(c).cloned()).unwrap_or_else(|| c.to_string());
        let width = (0..self.classes())
            .map(|c| name(c).len())
            .chain(self.counts.iter().flatten().map(|v| v.to_string().len()))
            .max()
            .unwrap_or(1)
            .max(4);
        let mut out = format!("{:>width$}  predicted →\n", "true ↓");
        out.push_str(&format!("{:>width$}", ""));
        for c in 0..self.classes() {
            out.push_str(&format!(" {:>width$}", name(c)));
        }
        out.push('\n');
        for (t, row) in self.counts.iter().enumerate() {
            out.push_str(&format!("{:>width$}", name(t)));
            for v in row {
                out.push_str(&format!(" {v:>width$}"));
            }
            out.push('\n');
        }
        out
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Regression metrics of predictions against targets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Coefficient of determination 1 - SS_res / SS_tot (1 is perfect, 0 is "predict the
    /// mean"; NaN when the targets are constant).
    pub r2: f64,
}

/// MSE, MAE and R² of `predicted` against `truth`.
pub fn regression_metrics(predicted: &[f32], truth: &[f32]) -> Result<RegressionMetrics> {
    if predicted.len() != truth.len() || truth.is_empty() {
        return Err(Error::invalid(
            "regression_metrics",
            format!("{} predictions for {} targets", predicted.len(), truth.len()),
        ));
    }
    let n = truth.len() as f64;
    let mean = truth.iter().map(|&t| t as f64).sum::<f64>() / n;
    let (mut se, mut ae, mut tot) = (0.0, 0.0, 0.0);
    for (&p, &t) in predicted.iter().zip(truth) {
        let d = p as f64 - t as f64;
        se += d * d;
        ae += d.abs();
        tot += (t as f64 - mean).powi(2);
    }
    Ok(RegressionMetrics { mse: se / n, mae: ae / n, r2: if tot > 0.0 { 1.0 - se / tot } else { f64::NAN } })
}

/// [`regression_metrics`] for targets of `columns` values per sample (row-major): MSE and
/// MAE over every value, R² computed per column and averaged (scikit-learn's
/// `uniform_average`), so columns of different means and scales are not pooled.
pub fn regression_metrics_columns(predicted: &[f32], truth: &[f32], columns: usize) -> Result<RegressionMetrics> {
    let all = regression_metrics(predicted, truth)?;
    if columns <= 1 {
        return Ok(all);
    }
    if !truth.len().is_multiple_of(columns) {
        return Err(Error::invalid(
            "regression_metrics",
            format!("{} targets do not make rows of {columns}", truth.len()),
        ));
    }
    let column = |v: &[f32], c: usize| v.iter().skip(c).step_by(columns).copied().collect::<Vec<f32>>();
    let r2s: Vec<f64> = (0..columns)
        .map(|c| regression_metrics(&column(predicted, c), &column(truth, c)).map(|m| m.r2))
        .collect::<Result<_>>()?;
    Ok(RegressionMetrics { r2: r2s.iter().sum::<f64>() / columns as f64, ..all })
}

/// Number of rows whose largest output is at the label's class.
pub fn correct_count(logits: &crate::Tensor, labels: &crate::Tensor) -> Result<usize> {
    Ok(correct(logits, labels)?.to_scalar()? as usize)
}

/// [`correct_count`] as a scalar tensor where the logits are (nothing read to the host): in
/// one launch where the device has a kernel for it (a GPU, for `[rows, classes]` logits of a
/// small batch), else as argmax, comparison and sum.
pub(crate) fn correct(logits: &crate::Tensor, labels: &crate::Tensor) -> Result<crate::Tensor> {
    use crate::backend::ClassTotal;
    if logits.rank() == 2 && labels.shape() == [logits.shape()[0]] {
        let fused = crate::Tensor::with_storages([logits, labels], |[x, c]| {
            x.class_total("correct_count", logits.layout(), c, labels.layout(), ClassTotal::Correct)
        })?;
        if let Some(count) = fused {
            return Ok(crate::Tensor::from_storage(count, crate::layout::Layout::contiguous(&[])));
        }
    }
    let predicted = logits.argmax(logits.rank().saturating_sub(1), false)?;
    predicted.eq(labels)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_matrix_and_macro_scores_match_hand_counts() {
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 2 2
        let m = ConfusionMatrix::from_predictions(&[0, 0, 1, 1, 2, 2], &[0, 0, 0, 1, 1, 2], 3).unwrap();
        assert_eq!(m.counts, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((m.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        // precision: 2/2, 1/2, 1/2; recall: 2/3, 1/2, 1/1
        assert!((m.macro_precision() - (1.0 + 0.5 + 0.5) / 3.0).abs() < 1e-12);
        assert!((m.macro_recall() - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
        let f1 = [2.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0), 0.5, 2.0 * 0.5 / 1.5];
        assert!((m.macro_f1() - f1.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert!(m.render(Some(&["a".into(), "b".into(), "c".into()])).contains("true ↓"));
        assert!(ConfusionMatrix::from_predictions(&[3], &[0], 3).is_err());
    }

    #[test]
    fn regression_metrics_by_hand() {
        let m = regression_metrics(&[1.0, 2.0, 4.0], &[1.0, 3.0, 5.0]).unwrap();
        assert!((m.mse - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.mae - 2.0 / 3.0).abs() < 1e-12);
        // SS_tot = (1-3)² + 0 + (5-3)² = 8
        assert!((m.r2 - (1.0 - 2.0 / 8.0)).abs() < 1e-12);
    }
}
