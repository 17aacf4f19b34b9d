//! Compute backends. Only the CPU exists today; a CUDA backend will sit beside it, chosen at
//! run time by the tensor's [`crate::Device`].

pub mod cpu;
