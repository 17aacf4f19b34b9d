//! Data: datasets and minibatches, file readers (IDX, CSV), preprocessing, and the splits
//! used for validation.

pub mod csv;
mod dataset;
pub mod files;
pub mod idx;
pub mod mnist;
mod preprocess;
pub mod split;
pub mod synthetic;

pub use dataset::{batch_indices, DataLoader, Dataset};
pub use preprocess::{one_hot, LabelMap, Scaler, Scaling};
