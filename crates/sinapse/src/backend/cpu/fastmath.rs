//! e^x, the logistic sigmoid and tanh for whole slices, written so the compiler vectorises
//! them (no branches, no calls into libm), and compiled three times: for the x86-64 baseline
//! (SSE2), for AVX2 and for AVX-512, picked at run time by what the CPU reports.
//!
//! The polynomials are Cephes' single-precision ones (S. Moshier): e^x by range reduction
//! x = n·ln 2 + r with |r| ≤ ln 2 / 2 and a degree-6 polynomial for e^r; tanh by an odd
//! polynomial for |x| < 0.625 and 1 - 2 / (e^{2|x|} + 1) beyond. Both are within a few units
//! in the last place of libm's results (checked in the tests below).

/// e^x for x ≤ 88.3 (larger x give e^88.3), flushed to 0 below -87.3 (where the result
/// would be subnormal).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let input = x;
    let x = x.clamp(-87.3, 88.3);
    // n = round(x / ln 2), by adding and subtracting 1.5·2^23: the sum `t` holds n in the
    // low bits of its mantissa (exact for |n| < 2^22).
    const SHIFT: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    // r = x - n·ln 2, with ln 2 split in two so the product is exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    // 2^n from its bits: n + 127 in the exponent field (n ∈ [-126, 127] after the clamp),
    // with n read from t's bits: integer lanes, where a float-to-int cast (`n as i32`, which
    // saturates) compiled to one scalar conversion per element.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127) << 23);
    if input < -87.3 {
        0.0
    } else {
        er * two_n
    }
}

/// 1 / (1 + e^-x), from e^-|x| so that nothing overflows: exactly 0 and 1 far out.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 {
        r
    } else {
        e * r
    }
}

/// tanh(x).
#[inline(always)]
pub(super) fn tanh(x: f32) -> f32 {
    let a = x.abs();
    // Near 0: x + x³·P(x²), accurate where 1 - 2/(e^2x + 1) would cancel.
    let z = x * x;
    let p = -5.704_988_7e-3;
    let p = p * z + 2.063_909e-2;
    let p = p * z - 5.373_971_6e-2;
    let p = p * z + 1.333_144_2e-1;
    let p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// Defines `$name(args)` as the body compiled for AVX-512, for AVX2 + FMA, or for the
/// baseline, the widest this CPU runs or the cap's ([`isa`]; one cached CPUID read).
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::backend::cpu::fastmath::isa().kind() {
                    // SAFETY: `isa` names a set this CPU runs (`Isa::detect`, or in tests
                    // `Isa::available`), with the features each of these enables.
                    $crate::backend::cpu::simd::Kind::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::backend::cpu::simd::Kind::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::backend::cpu::simd::Kind::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(super) use dispatch;

#[cfg(test)]
thread_local! {
    /// The set [`isa`] answers on this thread in tests (each path is tested on its own).
    static FORCED: std::cell::Cell<Option<super::simd::Isa>> = const { std::cell::Cell::new(None) };
}

/// The instruction set [`dispatch!`]'s functions run with: the widest this CPU has, or the
/// narrower one [`super::simd::CAPABILITY_VAR`] names.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn isa() -> super::simd::Isa {
    #[cfg(test)]
    if let Some(isa) = FORCED.get() {
        return isa;
    }
    super::simd::Isa::detect()
}

/// Runs `f` with [`dispatch!`]'s functions on this thread compiled for `isa`.
#[cfg(test)]
pub(super) fn with_isa<T>(isa: super::simd::Isa, f: impl FnOnce() -> T) -> T {
    let before = FORCED.replace(Some(isa));
    let out = f();
    FORCED.set(before);
    out
}

dispatch! {
    /// `dst[i] = sigmoid(src[i])`.
    pub(super) fn sigmoid_slice(src: &[f32], dst: &mut [f32]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = sigmoid(x);
        }
    }
}

dispatch! {
    /// `dst[i] = tanh(src[i])`.
    pub(super) fn tanh_slice(src: &[f32], dst: &mut [f32]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = tanh(x);
        }
    }
}

/// The instruction set the vectorised CPU kernels (these and the matrix product's) run with
/// on this CPU, picked at run time: `"avx512f"`, `"avx2+fma"` or `"baseline"`, the widest the
/// CPU has unless [`super::simd::CAPABILITY_VAR`] names a narrower one.
pub fn simd_level() -> &'static str {
    super::simd::Isa::detect().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs from -100 to 100, dense near 0.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 1e-3).collect();
        v.extend((-1000..=1000).map(|i| i as f32 * 0.1));
        v.extend([1e-8, -1e-8, 1e-30, 0.0, -0.0, 88.0, -88.0, 87.0, -87.0]);
        v
    }

    /// |a - b| within `ulps` units in the last place of `b` (or of the smallest normal).
    fn close(a: f32, b: f32, ulps: f32) -> bool {
        let unit = (b.abs().max(f32::MIN_POSITIVE) * f32::EPSILON).max(f32::from_bits(1));
        (a - b).abs() <= ulps * unit
    }

    #[test]
    fn exp_matches_libm() {
        for x in inputs() {
            let x = x.clamp(-87.0, 88.0);
            assert!(close(exp(x), x.exp(), 3.0), "exp({x}) = {} vs {}", exp(x), x.exp());
        }
        assert!(exp(1000.0).is_finite() && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn sigmoid_and_tanh_match_libm_on_every_path() {
        let xs = inputs();
        for isa in super::super::simd::Isa::available() {
            let (mut s, mut t) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
            with_isa(isa, || {
                sigmoid_slice(&xs, &mut s);
                tanh_slice(&xs, &mut t);
            });
            check(&xs, &s, &t);
        }
        assert!(tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
    }

    /// `s` and `t`, sigmoid and tanh of `xs`, against f64 and the scalar forms.
    fn check(xs: &[f32], s: &[f32], t: &[f32]) {
        for (i, &x) in xs.iter().enumerate() {
            let want_s = 1.0 / (1.0 + (-(x as f64)).exp());
            let want_t = (x as f64).tanh();
            // The scalar forms are the baseline path; the slices took the path asked for.
            for (got, want, what) in [(s[i], want_s, "sigmoid"), (sigmoid(x), want_s, "sigmoid (scalar)")] {
                assert!(
                    close(got, want as f32, 4.0) || (got - want as f32).abs() < 1e-37,
                    "{what}({x}) = {got} vs {want}"
                );
            }
            for (got, what) in [(t[i], "tanh"), (tanh(x), "tanh (scalar)")] {
                assert!(close(got, want_t as f32, 4.0), "{what}({x}) = {got} vs {want_t}");
            }
        }
    }
}
