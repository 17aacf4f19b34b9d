//! The MNIST handwritten digits, from IDX files.

use std::path::{Path, PathBuf};

use super::idx::read_labelled_images;
use super::Dataset;
use crate::Result;

/// The training and test splits: images as rows of 784 pixels in [0, 1], labels as digits.
pub struct Mnist {
    /// Training images `[N, 784]` and labels `[N]`.
    pub train: Dataset,
    /// Test images and labels.
    pub test: Dataset,
}

/// `name` or `name.gz` in `dir`, whichever exists (the plain name when neither does, for the
/// error message).
pub fn find(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if !dir.join(name).exists() && gz.exists() {
        gz
    } else {
        dir.join(name)
    }
}

/// Loads one split, `prefix` `train` or `t10k`, from `dir`.
pub fn load_split(dir: &Path, prefix: &str) -> Result<Dataset> {
    read_labelled_images(
        &find(dir, &format!("{prefix}-images-idx3-ubyte")),
        &find(dir, &format!("{prefix}-labels-idx1-ubyte")),
    )
}

/// Loads `train-{images-idx3,labels-idx1}-ubyte[.gz]` and `t10k-...` from `dir`.
pub fn load(dir: impl AsRef<Path>) -> Result<Mnist> {
    let dir = dir.as_ref();
    Ok(Mnist { train: load_split(dir, "train")?, test: load_split(dir, "t10k")? })
}
