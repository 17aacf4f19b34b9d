//! The MNIST handwritten digits, from IDX files.

use std::path::Path;

use super::idx::read_idx;
use crate::{Error, Result, Tensor};

/// One split of MNIST: images as rows of 784 pixels scaled to [0, 1], labels as class indices.
pub struct MnistSplit {
    /// `[N, 784]`, pixel / 255.
    pub images: Tensor,
    /// `[N]`, digits 0..=9 as f32.
    pub labels: Tensor,
}

/// The training and test splits.
pub struct Mnist {
    /// Training images and labels.
    pub train: MnistSplit,
    /// Test images and labels.
    pub test: MnistSplit,
}

/// Finds `name` or `name.gz` in `dir`.
fn find(dir: &Path, name: &str) -> std::path::PathBuf {
    let plain = dir.join(name);
    if plain.exists() {
        plain
    } else {
        dir.join(format!("{name}.gz"))
    }
}

/// Reads one images/labels pair and checks that they belong together.
pub fn load_split(images_path: &Path, labels_path: &Path) -> Result<MnistSplit> {
    let images = read_idx(images_path, Some(3))?;
    let labels = read_idx(labels_path, Some(1))?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(Error::Format {
            path: labels_path.to_path_buf(),
            msg: format!("{} labels for {n} images in {}", labels.dims[0], images_path.display()),
        });
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l > 9) {
        return Err(Error::Format { path: labels_path.to_path_buf(), msg: format!("label {bad} is not a digit 0-9") });
    }
    let pixels = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(MnistSplit {
        images: Tensor::from_vec(pixels, &[n, h * w])?,
        labels: Tensor::from_vec(labels.data.iter().map(|&l| l as f32).collect(), &[n])?,
    })
}

/// Loads `train-{images-idx3,labels-idx1}-ubyte[.gz]` and `t10k-...` from `dir`.
pub fn load(dir: impl AsRef<Path>) -> Result<Mnist> {
    let dir = dir.as_ref();
    Ok(Mnist {
        train: load_split(&find(dir, "train-images-idx3-ubyte"), &find(dir, "train-labels-idx1-ubyte"))?,
        test: load_split(&find(dir, "t10k-images-idx3-ubyte"), &find(dir, "t10k-labels-idx1-ubyte"))?,
    })
}
