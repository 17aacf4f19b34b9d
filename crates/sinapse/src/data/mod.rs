//! Reading datasets.

pub mod idx;
pub mod mnist;
