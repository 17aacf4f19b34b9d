//! One error type for the whole library.
//!
//! Every fallible function returns [`Result`]. A user's mistake (wrong shapes, a bad file, an
//! index out of range, a NaN loss) comes back as an [`Error`] that names what went wrong and
//! where; the library does not panic on it.

use std::path::PathBuf;

use crate::Device;

/// Everything that can go wrong in Sinapse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that had to agree did not.
    #[error("shape mismatch in {op}: {lhs:?} vs {rhs:?}")]
    ShapeMismatch {
        /// The operation that was called.
        op: &'static str,
        /// The first (left-hand) shape.
        lhs: Vec<usize>,
        /// The second (right-hand) shape.
        rhs: Vec<usize>,
    },
    /// A buffer holds a different number of elements than its shape needs.
    #[error("{op}: shape {shape:?} needs {expected} elements, got {got}")]
    ElementCount {
        /// The operation that was called.
        op: &'static str,
        /// The requested shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        got: usize,
    },
    /// A dimension index past the tensor's rank.
    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        /// The operation that was called.
        op: &'static str,
        /// The dimension asked for (negative: counted from the last).
        dim: isize,
        /// The tensor's rank.
        rank: usize,
    },
    /// An index (a class label, a row number) outside `0..size`.
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange {
        /// The operation that was called.
        op: &'static str,
        /// The offending index as given (indices travel as f32 values).
        index: f64,
        /// The valid range is `0..size`.
        size: usize,
    },
    /// An argument that makes no sense for the operation (a zero step, an empty list, ...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation that was called.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// An operation was given tensors on two different devices.
    #[error("{op}: tensors on different devices, {lhs} and {rhs}; move one with .to(device)")]
    DeviceMismatch {
        /// The operation that was called.
        op: &'static str,
        /// The device of the first operand.
        lhs: Device,
        /// The device of the other operand.
        rhs: Device,
    },
    /// A device was asked for that this process cannot use.
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        device: Device,
        /// What is missing (a backend, a driver library, the device itself).
        reason: String,
    },
    /// A device's driver or library refused a call (a kernel launch, a copy, a matrix
    /// product): what ran, on which device, and the driver's own words.
    #[error("{device}: {op} failed: {msg}")]
    DeviceFailure {
        /// The device that failed.
        device: Device,
        /// What was running (a kernel's name, "copy to host", ...).
        op: String,
        /// The driver's or library's message.
        msg: String,
    },
    /// `backward()` called on a tensor that is not a single value.
    #[error("backward() needs a scalar loss, got a tensor of shape {shape:?}")]
    BackwardNonScalar {
        /// The shape of the tensor `backward()` was called on.
        shape: Vec<usize>,
    },
    /// A loss or value that must be finite was NaN or infinite.
    #[error("non-finite value {value} in {what}")]
    NonFinite {
        /// Where the value was seen (e.g. "loss at epoch 3, batch 17").
        what: String,
        /// The value itself.
        value: f32,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A write that would destroy something it does not own (a user's directory, a file where
    /// a directory goes); nothing was changed.
    #[error("{path}: {why}; nothing was changed")]
    WouldOverwrite {
        /// The path the write was asked for.
        path: PathBuf,
        /// What is there.
        why: String,
    },
    /// Memory that is not there: an allocation refused before it is tried.
    #[error("{what}: needs {} on {device}, {} available", human_bytes(*bytes), human_bytes(*available))]
    OutOfMemory {
        /// What asked for it (a layer, an op, a file).
        what: String,
        /// The device.
        device: Device,
        /// Bytes asked for.
        bytes: u64,
        /// Bytes the device had available.
        available: u64,
    },
    /// An error in one layer of a model: which layer, and what went wrong.
    #[error("layer {index} ({kind}): {source}")]
    InLayer {
        /// Position of the layer, from 0.
        index: usize,
        /// The layer's type, as a spec names it.
        kind: String,
        /// What went wrong.
        source: Box<Error>,
    },
    /// A collective operation between training processes failed or timed out.
    #[error("rank {rank} of {world}: {what}: {msg}")]
    Distributed {
        /// This process's rank.
        rank: usize,
        /// Number of processes.
        world: usize,
        /// The operation (`all-reduce`, `broadcast`, starting MPI or NCCL).
        what: String,
        /// What went wrong.
        msg: String,
    },
    /// A file's contents are not what its format requires.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and where.
        msg: String,
    },
}

/// A byte count in the largest unit that keeps it at least 1 (`3.1 TB`, `512 B`).
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }

    /// Shorthand for [`Error::ShapeMismatch`].
    pub(crate) fn shapes(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::ShapeMismatch { op, lhs: lhs.to_vec(), rhs: rhs.to_vec() }
    }
}
