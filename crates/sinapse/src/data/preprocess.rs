//! Preprocessing fitted on training data only: feature scaling, label mapping, one-hot.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Tensor};

/// Which feature scaling to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Features as they are.
    #[default]
    None,
    /// Zero mean, unit variance per feature (scikit-learn's `StandardScaler`).
    Standard,
    /// Each feature mapped to [0, 1] by its training minimum and maximum.
    MinMax,
}

/// A fitted feature scaling: the statistics of the training features, applied unchanged to
/// validation, test and new data (fitting on them would leak information).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scaler {
    /// No scaling.
    None,
    /// `(x - mean) / std` per feature (population std; a constant feature gets std 1).
    Standard {
        /// Training mean per feature.
        mean: Vec<f32>,
        /// Training standard deviation per feature.
        std: Vec<f32>,
    },
    /// `(x - min) / (max - min)` per feature (a constant feature gets range 1).
    MinMax {
        /// Training minimum per feature.
        min: Vec<f32>,
        /// Training maximum per feature.
        max: Vec<f32>,
    },
}

impl Scaler {
    /// Reads a scaler from a TOML file: a table with `kind` (`none`, `standard` with `mean` and
    /// `std`, or `min_max` with `min` and `max`, one value per feature), at the top or as the
    /// `[scaler]` table of a model directory's `model.toml`. Errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Scaler> {
        let fail = |msg: String| Error::Format { path: path.to_path_buf(), msg };
        let bytes = crate::data::files::read_regular(path)?;
        let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
        let table: toml::Table = text.parse().map_err(|e| fail(format!("not TOML: {e}")))?;
        let scaler = match table.get("scaler") {
            Some(inner) => inner.clone(),
            None => toml::Value::Table(table),
        };
        let scaler: Scaler = scaler.try_into().map_err(|e| {
            fail(format!("not a scaler (kind = \"standard\" with mean and std, or \"min_max\" with min and max): {e}"))
        })?;
        scaler.validate().map_err(|e| fail(e.to_string()))?;
        Ok(scaler)
    }
}

fn check_2d(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape() {
        &[n, f] => Ok((n, f)),
        s => Err(Error::invalid(op, format!("expects features [N, F], got shape {s:?}"))),
    }
}

impl Scaler {
    /// Fits `kind` on training features `x` `[N, F]`.
    pub fn fit(kind: Scaling, x: &Tensor) -> Result<Scaler> {
        let (n, f) = check_2d("Scaler::fit", x)?;
        if kind != Scaling::None && n == 0 {
            return Err(Error::invalid("Scaler::fit", "cannot fit scaling on zero samples"));
        }
        let v = x.try_to_vec()?;
        let column = |j: usize| v.iter().skip(j).step_by(f.max(1)).map(|&a| a as f64);
        Ok(match kind {
            Scaling::None => Scaler::None,
            Scaling::Standard => {
                let mean: Vec<f64> = (0..f).map(|j| column(j).sum::<f64>() / n as f64).collect();
                let std = (0..f)
                    .map(|j| {
                        let var = column(j).map(|a| (a - mean[j]).powi(2)).sum::<f64>() / n as f64;
                        if var > 0.0 {
                            var.sqrt() as f32
                        } else {
                            1.0
                        }
                    })
                    .collect();
                Scaler::Standard { mean: mean.into_iter().map(|m| m as f32).collect(), std }
            }
            Scaling::MinMax => {
                let min: Vec<f32> = (0..f).map(|j| column(j).fold(f64::INFINITY, f64::min) as f32).collect();
                let max = (0..f)
                    .map(|j| {
                        let m = column(j).fold(f64::NEG_INFINITY, f64::max) as f32;
                        if m > min[j] {
                            m
                        } else {
                            // A constant feature gets a range of 1, or of the smallest step
                            // f32 has where 1 is lost in rounding (a timestamp of 1.7e9).
                            let up = min[j] + 1.0;
                            if up > min[j] {
                                up
                            } else {
                                min[j] + min[j].abs() * 4.0 * f32::EPSILON
                            }
                        }
                    })
                    .collect();
                Scaler::MinMax { min, max }
            }
        })
    }

    /// Checks fitted statistics (from a model card, say): finite, with positive spreads.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("scaler", msg));
        match self {
            Scaler::None => {}
            Scaler::Standard { mean, std } => {
                if let Some((j, m)) = mean.iter().enumerate().find(|(_, m)| !m.is_finite()) {
                    return bad(format!("mean of feature {} is {m}, not a finite number", j + 1));
                }
                if let Some((j, s)) = std.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
                    return bad(format!("std of feature {} is {s}; it must be a finite number > 0", j + 1));
                }
            }
            Scaler::MinMax { min, max } => {
                for (j, (lo, hi)) in min.iter().zip(max).enumerate() {
                    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
                        return bad(format!(
                            "feature {} has min {lo} and max {hi}; they must be finite, max > min",
                            j + 1
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The inverse of [`Scaler::transform`]: scaled values `[N, F]` back in the features' own
    /// units (an autoencoder's reconstructions, say).
    pub fn inverse_transform(&self, x: &Tensor) -> Result<Tensor> {
        let (offset, scale) = match self {
            Scaler::None => return Ok(x.clone()),
            Scaler::Standard { mean, std } => (mean.clone(), std.clone()),
            Scaler::MinMax { min, max } => (min.clone(), max.iter().zip(min).map(|(a, b)| a - b).collect()),
        };
        let (_, f) = check_2d("Scaler::inverse_transform", x)?;
        if f != offset.len() {
            return Err(Error::invalid(
                "Scaler::inverse_transform",
                format!("fitted on {} features, got {f}", offset.len()),
            ));
        }
        let offset = Tensor::from_vec(offset, &[f])?.to(x.device())?;
        let scale = Tensor::from_vec(scale, &[f])?.to(x.device())?;
        x.mul(&scale)?.add(&offset)
    }

    /// Applies the fitted scaling to features `[N, F]` with the training data's F.
    pub fn transform(&self, x: &Tensor) -> Result<Tensor> {
        let (offset, scale) = match self {
            Scaler::None => return Ok(x.clone()),
            Scaler::Standard { mean, std } => (mean, std.clone()),
            Scaler::MinMax { min, max } => (min, max.iter().zip(min).map(|(a, b)| a - b).collect()),
        };
        let (_, f) = check_2d("Scaler::transform", x)?;
        if f != offset.len() {
            return Err(Error::invalid("Scaler::transform", format!("fitted on {} features, got {f}", offset.len())));
        }
        self.validate()?;
        let offset = Tensor::from_slice(offset, &[f])?.to(x.device())?;
        let scale = Tensor::from_vec(scale, &[f])?.to(x.device())?;
        let scaled = x.sub(&offset)?.div(&scale)?;
        // A value far outside the training range can overflow: say where, rather than feed
        // the model an infinity.
        let values = scaled.try_to_vec()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let raw = x.try_to_vec()?[i];
            return Err(Error::invalid(
                "scaling",
                format!("row {}, column {}: {} is {} after scaling", i / f + 1, i % f + 1, show(raw), values[i]),
            ));
        }
        Ok(scaled)
    }
}

/// A value as an error shows it: short, in scientific notation when large.
fn show(v: f32) -> String {
    if v.abs() >= 1e7 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// The class names of a classification target, in index order: class `i` is `classes[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMap {
    /// Class names, index order.
    pub classes: Vec<String>,
}

impl LabelMap {
    /// A map from the distinct `labels`, sorted (numerically when every label is a number, so
    /// "2" comes before "10"; else alphabetically).
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> LabelMap {
        let mut classes: Vec<String> = labels.into_iter().map(str::to_string).collect();
        classes.sort();
        classes.dedup();
        if classes.iter().all(|c| c.parse::<f64>().is_ok()) {
            classes.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
        }
        LabelMap { classes }
    }

    /// The index of a class name.
    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == label)
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when there are no classes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// Class indices `[N]` as one-hot rows `[N, num_classes]`.
pub fn one_hot(classes: &Tensor, num_classes: usize) -> Result<Tensor> {
    if classes.rank() != 1 {
        return Err(Error::invalid("one_hot", format!("expects class indices [N], got shape {:?}", classes.shape())));
    }
    let n = classes.shape()[0];
    let mut out = vec![0.0; n * num_classes];
    for (i, c) in classes.try_to_vec()?.into_iter().enumerate() {
        out[i * num_classes + crate::ops::index::checked_index("one_hot", c, num_classes)?] = 1.0;
    }
    Tensor::from_vec(out, &[n, num_classes])?.to(classes.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_scaling_uses_training_statistics() {
        let train = Tensor::from_vec(vec![1., 10., 3., 10., 5., 10.], &[3, 2]).unwrap();
        let s = Scaler::fit(Scaling::Standard, &train).unwrap();
        let std = (8.0f32 / 3.0).sqrt();
        assert_eq!(s, Scaler::Standard { mean: vec![3.0, 10.0], std: vec![std, 1.0] });
        let out = s.transform(&Tensor::from_vec(vec![3.0 + std, 12.0], &[1, 2]).unwrap()).unwrap();
        assert_eq!(out.to_vec(), vec![1.0, 2.0]);
        assert!(s.transform(&Tensor::zeros(&[1, 3])).is_err());
    }

    #[test]
    fn min_max_scaling() {
        let train = Tensor::from_vec(vec![2., -1., 4., 1.], &[2, 2]).unwrap();
        let s = Scaler::fit(Scaling::MinMax, &train).unwrap();
        assert_eq!(s.transform(&train).unwrap().to_vec(), vec![0., 0., 1., 1.]);
        assert_eq!(s.transform(&Tensor::from_vec(vec![3., 3.], &[1, 2]).unwrap()).unwrap().to_vec(), vec![0.5, 2.0]);
    }

    #[test]
    fn labels_sort_numerically_when_numbers() {
        assert_eq!(LabelMap::from_labels(["10", "2", "2", "1"]).classes, vec!["1", "2", "10"]);
        assert_eq!(LabelMap::from_labels(["b", "a", "c", "a"]).classes, vec!["a", "b", "c"]);
    }

    #[test]
    fn one_hot_rows() {
        let c = Tensor::from_vec(vec![2., 0.], &[2]).unwrap();
        assert_eq!(one_hot(&c, 3).unwrap().to_vec(), vec![0., 0., 1., 1., 0., 0.]);
        assert!(one_hot(&c, 2).is_err());
    }

    #[test]
    fn scalers_from_files_are_checked_and_overflow_is_named() {
        let zero = Scaler::Standard { mean: vec![0.0, 1.0], std: vec![1.0, 0.0] };
        assert!(zero.validate().unwrap_err().to_string().contains("std of feature 2 is 0"));
        let nan = Scaler::Standard { mean: vec![f32::NAN], std: vec![1.0] };
        assert!(nan.validate().is_err());
        assert!(Scaler::MinMax { min: vec![1.0], max: vec![1.0] }.validate().is_err());
        assert!(zero.transform(&Tensor::zeros(&[1, 2])).is_err(), "a bad scaler transforms nothing");
        // A finite value that overflows once scaled is named by row and column.
        let s = Scaler::Standard { mean: vec![0.0, 0.0], std: vec![1.0, 0.5] };
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 3.0e38], &[2, 2]).unwrap();
        let e = s.transform(&x).unwrap_err().to_string();
        assert!(e.contains("row 2, column 2: 3e38 is inf after scaling"), "{e}");
    }

    #[test]
    fn a_large_constant_feature_still_gets_a_range() {
        // 1.7e9 + 1 rounds back to 1.7e9 in f32: the range must still be positive.
        let x = Tensor::from_vec(vec![1.7e9, 1.0, 1.7e9, 2.0], &[2, 2]).unwrap();
        let s = Scaler::fit(Scaling::MinMax, &x).unwrap();
        s.validate().unwrap();
        assert_eq!(s.transform(&x).unwrap().to_vec(), vec![0.0, 0.0, 0.0, 1.0]);
    }
}
