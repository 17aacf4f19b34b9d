//! A spec's data: reading the files it names, the test split, and the class strata used by
//! stratified splits.

use std::path::Path;

use super::{DataSpec, ModelSpec, TaskKind, TEST_SALT};
use crate::data::csv::{read_csv, Target};
use crate::data::{idx::read_labelled_images, split, Dataset, LabelMap};
use crate::train::Task;
use crate::{Error, Result, Rng};

/// A spec's data, read but not yet scaled.
#[derive(Clone, Debug)]
pub struct RawData {
    /// Training inputs `[N, F]` and targets `[N]`.
    pub train: Dataset,
    /// Test inputs and targets, when the spec has a test set.
    pub test: Option<Dataset>,
    /// What the targets are.
    pub task: Task,
    /// Names of the input features.
    pub feature_names: Vec<String>,
    /// Class names (classification; reconstruction, where they name the labels).
    pub classes: Option<LabelMap>,
    /// Reconstruction: the labels the targets replaced, `(training, test)`, for plots.
    pub labels: Option<(crate::Tensor, Option<crate::Tensor>)>,
}

impl RawData {
    /// The same data as a reconstruction task: every target is its own input (the labels
    /// are kept aside in `labels`).
    fn into_reconstruction(self) -> Result<RawData> {
        let features = self.train.x().shape()[1..].iter().product();
        let own = |d: &Dataset| Dataset::new(d.x().clone(), d.x().clone());
        Ok(RawData {
            labels: Some((self.train.y().clone(), self.test.as_ref().map(|t| t.y().clone()))),
            train: own(&self.train)?,
            test: self.test.as_ref().map(own).transpose()?,
            task: Task::Reconstruction { features },
            feature_names: self.feature_names,
            classes: self.classes,
        })
    }
}

impl ModelSpec {
    /// Reads the spec's data; relative paths are resolved against `base` (the spec's folder).
    pub fn load_data(&self, base: &Path) -> Result<RawData> {
        let at = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        match &self.data {
            DataSpec::Idx { train_images, train_labels, test_images, test_labels, task, .. } => {
                let train = read_labelled_images(&at(train_images), &at(train_labels))?;
                let test = match (test_images, test_labels) {
                    (Some(i), Some(l)) => Some(read_labelled_images(&at(i), &at(l))?),
                    (None, None) => None,
                    _ => return Err(Error::invalid("spec", "give both test_images and test_labels, or neither")),
                };
                let max_label = train.y().to_vec().iter().fold(0.0f32, |m, &v| m.max(v)) as usize;
                let classes = LabelMap { classes: (0..=max_label).map(|c| c.to_string()).collect() };
                let features = train.x().shape()[1];
                let raw = RawData {
                    train,
                    test,
                    task: Task::Classification { classes: classes.len() },
                    feature_names: (0..features).map(|i| format!("pixel{i}")).collect(),
                    classes: Some(classes),
                    labels: None,
                };
                Ok(if *task == TaskKind::Reconstruction { raw.into_reconstruction()? } else { raw })
            }
            DataSpec::Csv { path, label, task, test_path, test_fraction, .. } => {
                let target = match task {
                    TaskKind::Classification | TaskKind::Reconstruction => Target::Class,
                    TaskKind::Regression => Target::Value,
                };
                let table = read_csv(at(path), Some(label), target, None)?;
                let targets =
                    table.targets.clone().ok_or_else(|| Error::invalid("spec", "the CSV has no label column"))?;
                let all = Dataset::new(table.features.clone(), targets)?;
                let task = match &table.classes {
                    Some(c) => Task::Classification { classes: c.len() },
                    None => Task::Regression,
                };
                let (train, test) = match (test_path, test_fraction) {
                    (Some(tp), _) => {
                        let t = read_csv(at(tp), Some(label), target, table.classes.as_ref())?;
                        if t.feature_names != table.feature_names {
                            return Err(Error::invalid(
                                "spec",
                                format!(
                                    "test columns {:?} differ from training columns {:?}",
                                    t.feature_names, table.feature_names
                                ),
                            ));
                        }
                        let ty = t.targets.ok_or_else(|| Error::invalid("spec", "the test CSV has no label column"))?;
                        (all, Some(Dataset::new(t.features, ty)?))
                    }
                    (None, Some(f)) => {
                        let strata = class_indices(&all, &task);
                        let fold = split::holdout(
                            all.len(),
                            1.0 - f,
                            strata.as_deref(),
                            &mut Rng::seed(self.seed ^ TEST_SALT),
                        )?;
                        (all.subset(&fold.train)?, Some(all.subset(&fold.test)?))
                    }
                    (None, None) => (all, None),
                };
                let raw = RawData {
                    train,
                    test,
                    task,
                    feature_names: table.feature_names,
                    classes: table.classes,
                    labels: None,
                };
                Ok(if self.task_kind() == TaskKind::Reconstruction { raw.into_reconstruction()? } else { raw })
            }
        }
    }
}

/// Class index per row, for stratified splits (None for regression).
pub fn class_indices(data: &Dataset, task: &Task) -> Option<Vec<usize>> {
    match task {
        Task::Classification { .. } => Some(data.y().to_vec().iter().map(|&c| c as usize).collect()),
        Task::Regression | Task::Reconstruction { .. } => None,
    }
}
