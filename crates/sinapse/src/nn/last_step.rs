//! Reading a recurrent layer's answer: the last step of its output sequence.

use super::{Mode, Module, Parameters};
use crate::{Error, Result, Tensor};

/// The last step of a batch-first sequence: `[N, T, F] -> [N, F]` (PyTorch's `out[:, -1, :]`),
/// to classify a sequence by the recurrent layer's final output.
#[derive(Clone, Copy, Debug, Default, Parameters)]
pub struct LastStep;

impl Module for LastStep {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        if x.rank() != 3 || x.shape()[1] == 0 {
            return Err(Error::invalid(
                "LastStep",
                format!("expects a sequence [N, T, F] with T > 0, got {:?}", x.shape()),
            ));
        }
        x.narrow(1, x.shape()[1] - 1, 1)?.squeeze(1)
    }

    fn describe(&self) -> String {
        "LastStep".to_string()
    }
}
