//! The closed set of kernels, as values: which elementwise function, which reduction, which
//! optimizer update. A backend implements each of them once; ops and gradient rules name
//! them instead of passing closures, so the same rule runs on every device.
//!
//! The formulas in the docs below are the contract every backend meets.

/// The element type of a storage. Only `F32` is built; integer index tensors and f16/bf16
/// are planned as further variants (each backend then adds arms, nothing is rewritten).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
}

/// Elementwise functions of one tensor, `y = f(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `x·mul + add` (negation, scalar add and scalar multiply are special cases).
    Affine {
        /// Factor.
        mul: f32,
        /// Offset.
        add: f32,
    },
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// `x^p`.
    Powf(f32),
    /// `|x|`.
    Abs,
    /// -1, 0 or 1 by the sign (0 for NaN).
    Sign,
    /// `x` limited to `[min, max]`.
    Clamp {
        /// Lower limit.
        min: f32,
        /// Upper limit.
        max: f32,
    },
    /// Heaviside step: 1 where x > 0, else 0.
    Step,
    /// `1 / (1 + e^-x)`, without overflow for large |x|.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `max(0, x)`, NaN kept.
    Relu,
    /// `x` where x > 0, else `slope·x`.
    LeakyRelu(f32),
    /// The derivative of binary cross-entropy with respect to its target:
    /// `ln(1 - p) - ln(p)`, each logarithm clamped at -100.
    BceTargetGrad,
    /// `sin x`.
    Sin,
    /// `cos x`.
    Cos,
    /// `ln(1 + x)`, accurate for small x.
    Log1p,
    /// `e^x - 1`, accurate for small x.
    Expm1,
    /// The error function `2/√π ∫₀ˣ e^(-t²) dt`.
    Erf,
    /// The largest whole number not above x.
    Floor,
    /// The smallest whole number not below x.
    Ceil,
    /// The nearest whole number, halves to even (as PyTorch's `round`).
    Round,
}

impl UnaryOp {
    /// The op's name, as the autograd graph shows it.
    pub fn name(&self) -> &'static str {
        match self {
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Clamp { .. } => "clamp",
            UnaryOp::Step => "step",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::BceTargetGrad => "bce_target_grad",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Expm1 => "expm1",
            UnaryOp::Erf => "erf",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
        }
    }
}

/// Elementwise functions of two tensors of one (broadcast) shape, `out = f(a, b)`. Besides
/// arithmetic, the set holds the fused derivatives that gradient rules need, so that no rule
/// needs a closure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
    /// The larger, NaN if either is NaN.
    Maximum,
    /// The smaller, NaN if either is NaN.
    Minimum,
    /// `(g, y) -> g·y·(1 - y)`: sigmoid's gradient from its output.
    SigmoidGrad,
    /// `(g, y) -> g·(1 - y²)`: tanh's gradient from its output.
    TanhGrad,
    /// `(g, y) -> g where y > 0, else 0`: ReLU's gradient from its output.
    ReluGrad,
    /// `(g, x) -> g where x > 0, else slope·g`.
    LeakyReluGrad(f32),
    /// `(g, x) -> g where min <= x <= max, else 0`.
    ClampGrad {
        /// Lower limit.
        min: f32,
        /// Upper limit.
        max: f32,
    },
    /// `(p, y) -> -(y·ln p + (1 - y)·ln(1 - p))`, each logarithm clamped at -100.
    Bce,
    /// `(p, y) -> (p - y) / max(p·(1 - p), 1e-12)`: binary cross-entropy's derivative in p.
    BceInputGrad,
    /// `(x, y) -> max(x, 0) - x·y + ln(1 + e^-|x|)`: binary cross-entropy of σ(x), stable.
    BceWithLogits,
    /// `a^b` (C's `powf`: a negative base needs a whole exponent).
    Pow,
    /// `(a, b) -> a^b·ln a`, 0 where `a = 0` and `b >= 0` (the exponent's derivative, as
    /// PyTorch masks it).
    PowExponentGrad,
}

impl BinaryOp {
    /// The op's name, as the autograd graph shows it.
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::SigmoidGrad => "sigmoid_grad",
            BinaryOp::TanhGrad => "tanh_grad",
            BinaryOp::ReluGrad => "relu_grad",
            BinaryOp::LeakyReluGrad(_) => "leaky_relu_grad",
            BinaryOp::ClampGrad { .. } => "clamp_grad",
            BinaryOp::Bce => "binary_cross_entropy",
            BinaryOp::BceInputGrad => "binary_cross_entropy_grad",
            BinaryOp::BceWithLogits => "binary_cross_entropy_with_logits",
            BinaryOp::Pow => "pow",
            BinaryOp::PowExponentGrad => "pow_exponent_grad",
        }
    }
}

/// Comparisons: 1.0 where the relation holds, else 0.0 (false whenever a NaN is involved,
/// except `Ne`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `a == b`.
    Eq,
    /// `a != b`.
    Ne,
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
}

impl CmpOp {
    /// The op's name.
    pub fn name(&self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
}

/// A reduction over one axis (or over all elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum of the entries (0 over an empty axis).
    Sum,
    /// Largest entry (NaN wins, so NaN propagates).
    Max,
    /// Smallest entry (NaN wins).
    Min,
    /// Position of the first largest entry, as a whole number.
    ArgMax,
    /// Position of the first smallest entry, as a whole number.
    ArgMin,
}

/// One number over a batch of rows `[rows, classes]` with a class index for each
/// (`Storage::class_total`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ClassTotal {
    /// `scale · Σ x[i, class_i]`: of log-probabilities with `scale = -1/rows`, the mean
    /// cross-entropy.
    Picked {
        /// The factor applied to the sum.
        scale: f32,
    },
    /// How many rows have their first largest value (the first NaN, where there is one) at
    /// their class: the correct answers, from logits.
    Correct,
}

/// Shape of a 2-D sliding window over an `[N, C, H, W]` input: kernel size, stride, zero
/// padding on each side and dilation (spacing between kernel taps), per axis (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel size.
    pub kernel: [usize; 2],
    /// Step between window positions.
    pub stride: [usize; 2],
    /// Padding added on both sides.
    pub padding: [usize; 2],
    /// Spacing between kernel taps (1: adjacent).
    pub dilation: [usize; 2],
}

impl Window {
    /// 2x2 windows at stride 2, without padding: the usual pooling after a convolution.
    pub const POOL_2X2: Window = Window { kernel: [2, 2], stride: [2, 2], padding: [0, 0], dilation: [1, 1] };

    /// Output size along one axis: ⌊(in + 2·pad - dil·(k - 1) - 1) / stride⌋ + 1, or None when
    /// the window does not fit.
    pub fn output_size(&self, axis: usize, input: usize) -> Option<usize> {
        let span = self.dilation[axis].checked_mul(self.kernel[axis].checked_sub(1)?)?.checked_add(1)?;
        let padded = self.padding[axis].checked_mul(2)?.checked_add(input)?;
        if self.stride[axis] == 0 || padded < span || padded > isize::MAX as usize {
            return None;
        }
        Some((padded - span) / self.stride[axis] + 1)
    }
}

/// The sizes of a batch of images and of the window's output grid, as kernels take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageDims {
    /// `[N, C, H, W]` of the input.
    pub input: [usize; 4],
    /// `[OH, OW]`: window positions per axis.
    pub output: [usize; 2],
}

/// One optimizer update of a parameter `w` from its gradient `g`, fused into one pass over
/// the parameter and its state buffers (PyTorch's update equations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerUpdate {
    /// SGD; state `[b]` (the momentum buffer) when `momentum > 0`, else none:
    /// `g ← g + wd·w; b ← g (first step) or μ·b + g; g ← g + μ·b (Nesterov) or b; w ← w - lr·g`.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// μ.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay.
        weight_decay: f32,
        /// True on the parameter's first step (the buffer starts as the gradient).
        first_step: bool,
    },
    /// Adam or AdamW; state `[m, v]`:
    /// `m ← β1·m + (1-β1)·g; v ← β2·v + (1-β2)·g²; w ← w - lr·(m/bias1) / (√(v/bias2) + eps)`,
    /// with `g ← g + wd·w` (Adam) or `w ← w·(1 - lr·wd)` first (AdamW, `decoupled`).
    Adam {
        /// Learning rate.
        lr: f32,
        /// β1.
        beta1: f32,
        /// β2.
        beta2: f32,
        /// eps.
        eps: f32,
        /// Weight decay.
        weight_decay: f32,
        /// AdamW's decoupled decay.
        decoupled: bool,
        /// `1 - β1^t`.
        bias1: f32,
        /// `1 - β2^t`.
        bias2: f32,
    },
    /// RMSprop; state `[v]`, or `[v, b]` with momentum:
    /// `g ← g + wd·w; v ← α·v + (1-α)·g²; s = g / (√v + eps); b ← μ·b + s; w ← w - lr·b` (or
    /// `w ← w - lr·s` without momentum).
    RmsProp {
        /// Learning rate.
        lr: f32,
        /// α.
        alpha: f32,
        /// eps.
        eps: f32,
        /// μ.
        momentum: f32,
        /// L2 weight decay.
        weight_decay: f32,
    },
}

impl OptimizerUpdate {
    /// The number of state buffers (each the parameter's size) the update reads and writes.
    pub fn state_buffers(&self) -> usize {
        match self {
            OptimizerUpdate::Sgd { momentum, .. } => usize::from(*momentum > 0.0),
            OptimizerUpdate::Adam { .. } => 2,
            OptimizerUpdate::RmsProp { momentum, .. } => 1 + usize::from(*momentum > 0.0),
        }
    }

    /// The numbers of the update that change from step to step: `[lr, bias1, bias2]` (Adam),
    /// `[lr, first_step as 0 or 1, 1]` (SGD), `[lr, 1, 1]` (RMSprop). A step captured into a
    /// CUDA graph reads them from device memory that the host writes before each replay, so
    /// that a schedule and Adam's bias correction keep moving.
    pub fn staged(&self) -> [f32; STAGED] {
        match *self {
            OptimizerUpdate::Sgd { lr, first_step, .. } => [lr, f32::from(u8::from(first_step)), 1.0],
            OptimizerUpdate::Adam { lr, bias1, bias2, .. } => [lr, bias1, bias2],
            OptimizerUpdate::RmsProp { lr, .. } => [lr, 1.0, 1.0],
        }
    }

    /// This update with the numbers [`OptimizerUpdate::staged`] names taken from `v` (what the
    /// kernels do when they are handed staged numbers).
    pub fn with_staged(&self, v: [f32; STAGED]) -> OptimizerUpdate {
        let mut u = *self;
        match &mut u {
            OptimizerUpdate::Sgd { lr, first_step, .. } => {
                *lr = v[0];
                *first_step = v[1] != 0.0;
            }
            OptimizerUpdate::Adam { lr, bias1, bias2, .. } => {
                (*lr, *bias1, *bias2) = (v[0], v[1], v[2]);
            }
            OptimizerUpdate::RmsProp { lr, .. } => *lr = v[0],
        }
        u
    }
}

/// How many numbers of an [`OptimizerUpdate`] are staged per parameter.
pub const STAGED: usize = 3;

/// Indices travel as f32 values, which hold every whole number exactly up to 2²⁴.
pub const MAX_EXACT_INDEX: usize = 1 << 24;

/// `v` as a position in `0..size`: a whole number in range (and below 2²⁴, where f32 stops
/// counting exactly), or an error naming `op`. Every kernel that reads indices checks them so.
pub fn checked_index(op: &'static str, v: f32, size: usize) -> crate::Result<usize> {
    Indices::Positions(op).check(v, size)
}

/// What the entries of an index tensor are, so that a bad one is reported in its caller's
/// terms. A GPU finds a bad entry in its kernel and reports it at the next read, after the
/// caller has returned, so the kernel carries this (as a number) instead of the caller
/// rewording the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Indices {
    /// Positions along an axis, given to the op named: `gather: index 7 out of range for
    /// size 5`.
    Positions(&'static str),
    /// Class labels, given to the loss named: `nll: class label 7 is not a class index in
    /// 0..5 (labels must be whole numbers)`.
    Labels(&'static str),
}

impl Indices {
    /// The error for entry `index` where `0..size` is valid.
    pub(crate) fn error(self, index: f64, size: usize) -> crate::Error {
        match self {
            Indices::Positions(op) => crate::Error::IndexOutOfRange { op, index, size },
            Indices::Labels(op) => crate::Error::invalid(
                op,
                format!("class label {index} is not a class index in 0..{size} (labels must be whole numbers)"),
            ),
        }
    }

    /// `v` as a position in `0..size` (see [`checked_index`]), or this caller's error.
    pub(crate) fn check(self, v: f32, size: usize) -> crate::Result<usize> {
        if v >= 0.0 && v.fract() == 0.0 && (v as usize) < size.min(MAX_EXACT_INDEX) {
            Ok(v as usize)
        } else {
            Err(self.error(f64::from(v), size))
        }
    }
}
