//! The few vector operations the convolution kernels are written with, for three widths: one
//! kernel body, generic over [`Simd`], is compiled for AVX-512, for AVX2 with FMA and for
//! any CPU, and [`Isa::detect`] picks the widest the CPU has at run time (or a narrower one
//! named by [`CAPABILITY_VAR`]).
//!
//! Each kernel body is `#[inline(always)]` and reached only through a wrapper with the
//! matching `#[target_feature]`, so that the intrinsics below inline into code compiled for
//! their instruction set.

/// Vectors of `LANES` f32 and the operations on them the kernels use.
pub(super) trait Simd {
    /// f32 values per vector.
    const LANES: usize;
    /// Whether this is the AVX-512 set (kernels with code of their own for it check this:
    /// only [`Avx512`]'s instances, compiled with `avx512f`, say yes).
    const AVX512: bool = false;
    /// One vector.
    type V: Copy;
    /// All lanes 0.
    ///
    /// # Safety
    /// The CPU must have the instruction set (the same for every method below).
    unsafe fn zero() -> Self::V;
    /// `LANES` values from `p` (any alignment).
    ///
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `LANES` values to `p` (any alignment).
    ///
    /// # Safety
    /// `p..p + LANES` must be writable.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `*p` in every lane.
    ///
    /// # Safety
    /// `p` must be readable.
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a·b + c`, lane by lane (rounded once on the FMA paths, twice on the portable one).
    ///
    /// # Safety
    /// As [`Simd::zero`].
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// AVX-512F: 16 lanes, 32 registers.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const LANES: usize = 16;
    const AVX512: bool = true;
    type V = std::arch::x86_64::__m512;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        std::arch::x86_64::_mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self::V {
        std::arch::x86_64::_mm512_set1_ps(*p)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_fmadd_ps(a, b, c)
    }
}

/// AVX2 with FMA: 8 lanes, 16 registers.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = std::arch::x86_64::__m256;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        std::arch::x86_64::_mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self::V {
        std::arch::x86_64::_mm256_set1_ps(*p)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, c)
    }
}

/// Plain arrays of 8 f32, for CPUs without AVX2 (the compiler vectorises what it can).
pub(super) struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        p.cast::<[f32; 8]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        p.cast::<[f32; 8]>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self::V {
        [*p; 8]
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // Two roundings: `mul_add` without an FMA instruction is a call to libm's `fmaf`,
        // which made this path 60 times slower.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
}

/// The instruction sets a kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Kind {
    /// AVX-512F (the `Avx512` vectors).
    Avx512,
    /// AVX2 with FMA (the `Avx2` vectors).
    Avx2,
    /// Anything else ([`Portable`]).
    Portable,
}

/// An instruction set this CPU runs: only [`Isa::detect`] (and, in tests, [`Isa::available`])
/// make one, so a kernel picked by its [`Kind`] never runs on a CPU without its instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Isa(Kind);

impl Isa {
    /// The widest of the three this CPU runs, or the cap set by [`CAPABILITY_VAR`] where that
    /// is narrower (cached CPUID reads and a cached parse). An AVX2 cap on a CPU that reports
    /// AVX-512 but not AVX2 and FMA (a virtual machine can hide some) is the portable set.
    pub(super) fn detect() -> Isa {
        let found = Isa::cpu();
        match cap() {
            Some(Kind::Avx2) if found.0 == Kind::Avx512 && !Isa::has_avx2_fma() => Isa(Kind::Portable),
            Some(kind) if rank(kind) < rank(found.0) => Isa(kind),
            _ => found,
        }
    }

    /// Whether this CPU runs AVX2 and FMA.
    fn has_avx2_fma() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The widest of the three this CPU runs, whatever the cap.
    fn cpu() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa(Kind::Avx512);
            }
            if Isa::has_avx2_fma() {
                return Isa(Kind::Avx2);
            }
        }
        Isa(Kind::Portable)
    }

    /// Which instruction set this is.
    pub(super) fn kind(self) -> Kind {
        self.0
    }

    /// The name [`CAPABILITY_VAR`] takes for this set (and `sinapse bench` prints).
    pub(super) fn name(self) -> &'static str {
        match self.0 {
            Kind::Avx512 => "avx512f",
            Kind::Avx2 => "avx2+fma",
            Kind::Portable => "baseline",
        }
    }

    /// f32 values per vector.
    pub(super) fn lanes(self) -> usize {
        match self.0 {
            Kind::Avx512 => 16,
            Kind::Avx2 | Kind::Portable => 8,
        }
    }

    /// The sets this CPU can run, widest first (tests run every kernel on each).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        let mut all = vec![Isa::detect()];
        #[cfg(target_arch = "x86_64")]
        if all[0].0 == Kind::Avx512 && Isa::has_avx2_fma() {
            all.push(Isa(Kind::Avx2));
        }
        if all[0].0 != Kind::Portable {
            all.push(Isa(Kind::Portable));
        }
        all
    }
}

/// Whether every CPU of the build target has an FMA instruction (aarch64, or a build with
/// `+fma`), so that `f32::mul_add` in the portable kernels compiles to one. Elsewhere (x86-64)
/// it is a call to libm's `fmaf` per value (60 times slower, as [`Portable`]'s `fma` found),
/// and the portable kernels multiply and add in two steps.
pub(super) const PORTABLE_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// `a · b + c` for the portable kernels: one rounding where [`PORTABLE_FMA`], two elsewhere.
#[inline(always)]
pub(super) fn portable_madd(a: f32, b: f32, c: f32) -> f32 {
    if PORTABLE_FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The environment variable that caps the instruction set of the CPU kernels, read once per
/// process, as `ATEN_CPU_CAPABILITY` does PyTorch's: `avx512` (or `avx512f`), `avx2` (or
/// `avx2+fma`) or `baseline` (or `default`, `portable`), in any case. A CPU without the
/// named set keeps its own, narrower one. It runs the AVX2 or portable code paths on a
/// machine that has AVX-512, to test them or to compare with an older CPU's.
pub const CAPABILITY_VAR: &str = "SINAPSE_CPU_CAPABILITY";

/// The set a [`CAPABILITY_VAR`] value names; `Err` with the value for one it does not know.
/// Empty (or only spaces): no cap.
pub(super) fn parse_capability(value: &str) -> Result<Option<Kind>, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "avx512" | "avx512f" => Ok(Some(Kind::Avx512)),
        "avx2" | "avx2+fma" => Ok(Some(Kind::Avx2)),
        "baseline" | "default" | "portable" => Ok(Some(Kind::Portable)),
        _ => Err(value.to_string()),
    }
}

/// An error naming [`CAPABILITY_VAR`], its value and the values it takes, when it holds one
/// [`parse_capability`] does not know (or one that is not UTF-8).
pub(crate) fn check_capability_var() -> crate::Result<()> {
    let expected = "avx512, avx2 or baseline";
    let bad = |value: String| crate::Error::invalid(CAPABILITY_VAR, format!("{value} is not {expected}"));
    match std::env::var(CAPABILITY_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(value)) => Err(bad(format!("{value:?}"))),
        Ok(value) => parse_capability(&value).map(|_| ()).map_err(|v| bad(format!("{v:?}"))),
    }
}

/// The cap [`CAPABILITY_VAR`] sets, parsed at the first call. A value it does not know is
/// ignored with one line on stderr, and one that is not UTF-8 silently;
/// [`crate::backend::check_cpu_capability`] makes either an error instead, as `sinapse`'s
/// binary does at its start.
fn cap() -> Option<Kind> {
    static CAP: std::sync::OnceLock<Option<Kind>> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let value = std::env::var(CAPABILITY_VAR).unwrap_or_default();
        parse_capability(&value).unwrap_or_else(|bad| {
            eprintln!("{CAPABILITY_VAR}={bad:?} is not avx512, avx2 or baseline: ignored");
            None
        })
    })
}

/// Widest last: the order a cap compares in.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Portable => 0,
        Kind::Avx2 => 1,
        Kind::Avx512 => 2,
    }
}

/// `$kernel` (a generic kernel body, its type parameters given) as a function pointer of
/// type `$sig` with the parameters `fn(..)`, compiled with the target features `[$feature]`
/// (`[]`: the portable build), so that the body's intrinsics inline into code built for them.
macro_rules! instance {
    ($sig:ty, fn($($arg:ident: $ty:ty),* $(,)?), [$($feature:literal)?], $kernel:ident::<$($param:tt),+>) => {{
        $(#[target_feature(enable = $feature)])?
        unsafe fn k($($arg: $ty),*) {
            $kernel::<$($param),+>($($arg),*)
        }
        k as $sig
    }};
}

pub(super) use instance;

/// `f()`, with the widest instruction set this CPU has (or the cap's) enabled in the code
/// the compiler inlines into it: the plain loops of the elementwise kernels, reductions and
/// optimizer updates are built for the baseline x86-64 (SSE2, 4 lanes) otherwise, since the
/// crate is not built for a particular CPU. Pass a closure that holds the loop itself (one call site:
/// the compiler inlines it into the wrapper); the results are the same on every path, as
/// the compiler contracts no multiply-add into an FMA and keeps each loop's order of adds.
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect().kind() {
        // SAFETY: `detect` saw these features on this CPU.
        Kind::Avx512 => return unsafe { with_avx512(f) },
        // SAFETY: as above.
        Kind::Avx2 => return unsafe { with_avx2(f) },
        Kind::Portable => {}
    }
    f()
}

/// `f()` compiled with AVX-512F enabled.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()` compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the cap takes, in any case and with spaces around; empty is no cap; an
    /// unknown name comes back as it was given, for the error to quote.
    #[test]
    fn capability_values() {
        for (value, want) in [
            ("avx512", Some(Kind::Avx512)),
            ("AVX512F", Some(Kind::Avx512)),
            (" avx2 ", Some(Kind::Avx2)),
            ("avx2+fma", Some(Kind::Avx2)),
            ("baseline", Some(Kind::Portable)),
            ("Default", Some(Kind::Portable)),
            ("portable", Some(Kind::Portable)),
            ("", None),
            ("  ", None),
        ] {
            assert_eq!(parse_capability(value), Ok(want), "{value:?}");
        }
        for bad in ["sse4", "avx", "avx512 avx2"] {
            assert_eq!(parse_capability(bad), Err(bad.to_string()));
        }
        // The names `simd_level` prints are values the cap takes, and name the same set.
        for kind in [Kind::Avx512, Kind::Avx2, Kind::Portable] {
            assert_eq!(parse_capability(Isa(kind).name()), Ok(Some(kind)));
        }
        assert!(rank(Kind::Portable) < rank(Kind::Avx2) && rank(Kind::Avx2) < rank(Kind::Avx512));
    }
}
