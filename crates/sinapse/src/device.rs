//! Where a tensor's numbers live, as a value a user handles: `Device::parse("cuda:1")`,
//! `tensor.to(device)`, `model.to(device)`, a spec's `device` key and the CLI's `--device`.

use std::fmt;

use crate::{Error, Result};

/// The device holding a tensor's storage and running its kernels.
///
/// A run-time value (not a type parameter on every model), so one binary can use a GPU when
/// it finds one. Every build has both backends; CUDA's libraries (driver, NVRTC, cuBLAS) are
/// loaded when a `Cuda` device is first used, and where they or the GPU are missing, using it
/// is an error that says which.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    /// Host memory, computed by the CPU kernels (`gemm` for matrix products, rayon threads).
    #[default]
    Cpu,
    /// The NVIDIA GPU with this ordinal.
    Cuda(usize),
}

impl Device {
    /// Reads a device name: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (the first usable GPU,
    /// else the CPU). Naming a device does not check that it is present; using it
    /// does ([`Device::check_available`]).
    pub fn parse(name: &str) -> Result<Device> {
        let bad = || {
            Error::invalid(
                "device",
                format!("unknown device '{name}' (valid: cpu, cuda, cuda:N with N a GPU number, auto)"),
            )
        };
        match name.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::best()),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Device::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }

    /// Ok when `name` is a device name [`Device::parse`] reads, without opening anything
    /// (`auto` is not resolved).
    pub fn check_name(name: &str) -> Result<()> {
        match name.trim() {
            "auto" => Ok(()),
            other => Device::parse(other).map(|_| ()),
        }
    }

    /// The fastest device present (what `auto` means): the first usable GPU, else the CPU.
    pub fn best() -> Device {
        Device::available().into_iter().find(|d| *d != Device::Cpu).unwrap_or(Device::Cpu)
    }

    /// Every device this process can use, CPU first. Each GPU the driver reports is opened
    /// to check it (once per process: a context, and the kernels compiled or loaded).
    pub fn available() -> Vec<Device> {
        let gpus = (0..crate::backend::cuda::gpu::device_count()).map(Device::Cuda);
        std::iter::once(Device::Cpu).chain(gpus.filter(|d| d.check_available().is_ok())).collect()
    }

    /// Ok when tensors can be placed on this device; else an error saying what is missing
    /// (the driver library, the GPU, NVRTC or cuBLAS).
    pub fn check_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => crate::backend::cuda::gpu::gpu(i).map(|_| ()),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        Device::parse(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Held by the tests that look for devices more than once, and by the one that installs
    /// the emulated GPU in this process (`backend::cuda::tests`), so that no test sees the
    /// devices change between its two looks.
    pub(crate) static DISCOVERY: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn names_parse_and_print_back() {
        let _looking = DISCOVERY.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:1").unwrap(), Device::Cuda(1));
        assert_eq!(Device::parse("auto").unwrap(), Device::best());
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert_eq!(Device::parse(&Device::Cuda(2).to_string()).unwrap(), Device::Cuda(2));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = Device::parse(bad).unwrap_err().to_string();
            assert!(e.contains("unknown device") && e.contains("cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_absent_device_says_why() {
        let _looking = DISCOVERY.lock().unwrap_or_else(|e| e.into_inner());
        assert!(Device::Cpu.check_available().is_ok());
        // No machine has a thousand GPUs: the error names the device and what is missing
        // (the driver library where there is none, else the GPU itself).
        let e = Device::Cuda(1000).check_available().unwrap_err().to_string();
        assert!(e.contains("cuda:1000"), "{e}");
        assert!(e.contains("libcuda.so") || e.contains("no NVIDIA GPU") || e.contains("there is no GPU 1000"), "{e}");
        if Device::available() == vec![Device::Cpu] {
            assert_eq!(Device::best(), Device::Cpu, "auto falls back to the CPU");
        }
    }
}
