//! Where a tensor's numbers live.

/// The device holding a tensor's storage.
///
/// Only `Cpu` exists today. The device is a run-time value (not a type parameter on every
/// model), so one binary can pick a GPU when one is found once a CUDA backend lands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    /// Host memory, computed by the CPU kernels (`gemm` for matrix products, rayon threads).
    #[default]
    Cpu,
}
