//! gemm_f32's AVX2 + FMA microkernels with its full 16 x 6 tile replaced by one that reads
//! the right operand's six columns at fixed offsets from one pointer.
//!
//! gemm_common's `microkernel!` (where gemm_f32's kernels come from) addresses column `j` of
//! the right operand as `j · rhs_cs`, which LLVM compiles to one pointer stepped by the column
//! stride once per column, so each step of the depth loop runs six dependent additions before
//! its last broadcast. In the AVX2 tile (2 vectors x 6 columns: 12 multiply-adds a step, 6
//! cycles on two FMA units) that chain is as long as the arithmetic, and the kernel ran at
//! about three quarters of the AVX-512 one's speed on a Zen 4, whose two builds have the same
//! peak. Here the six offsets are computed once, outside the loop, and every broadcast
//! addresses `base + offset` directly.
//!
//! The rest (the smaller edge tiles, the horizontal kernels) is gemm_f32's own.

// The kernels' signature is gemm_common's `MicroKernelFn` (18 arguments).
#![allow(clippy::too_many_arguments)]

use core::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_storeu_ps,
};
use gemm_f32::microkernel::fma::f32 as base;

/// Lanes in one vector.
pub(super) const N: usize = 8;
/// Vectors of rows in the largest tile (gemm_f32's AVX2 shape).
pub(super) const MR_DIV_N: usize = base::MR_DIV_N;
/// Columns in the largest tile.
pub(super) const NR: usize = base::NR;
/// gemm_f32's horizontal kernels, as they are.
pub(super) const H_M: usize = base::H_M;
/// See [`H_M`].
pub(super) const H_N: usize = base::H_N;
/// See [`H_M`].
pub(super) const H_UKR: [[gemm_common::microkernel::HMicroKernelFn<f32>; H_N]; H_M] = base::H_UKR;

/// gemm_f32's AVX2 kernels by tile shape, the full 16 x 6 one replaced by [`x2x6`].
pub(super) const UKR: [[gemm_common::microkernel::MicroKernelFn<f32>; NR]; MR_DIV_N] = {
    let mut ukr = base::UKR;
    ukr[1][5] = x2x6;
    ukr
};

/// One step of the depth loop: the tile's 16 rows at this depth (two vectors) times the six
/// right-operand values at `rhs + offsets[j]`, added into `acc`.
///
/// # Safety
/// AVX2 and FMA; `lhs` readable for 16 values, `rhs + offsets[j]` for one each. It has no
/// target features of its own: it is always inlined into [`x2x6`], which enables them.
#[inline(always)]
unsafe fn step(acc: &mut [[__m256; 2]; 6], lhs: *const f32, rhs: *const f32, offsets: &[isize; 6]) {
    // SAFETY: the caller's contract.
    unsafe {
        let a0 = _mm256_loadu_ps(lhs);
        let a1 = _mm256_loadu_ps(lhs.add(N));
        seq_macro::seq!(J in 0..6 {
            let b = _mm256_broadcast_ss(&*rhs.offset(offsets[J]));
            acc[J][0] = _mm256_fmadd_ps(a0, b, acc[J][0]);
            acc[J][1] = _mm256_fmadd_ps(a1, b, acc[J][1]);
        });
    }
}

/// The 16 x 6 tile, with gemm_common's `MicroKernelFn` contract: the packed left operand
/// (`lhs_cs` apart at each depth), the right one (`rhs_rs` apart at each depth, `rhs_cs`
/// between columns), and `dst`'s `m x n` corner written as `alpha · dst + beta · product`
/// (`alpha_status` 0: `alpha` is 0, `dst` not read; 1: `alpha` is 1; 2: any other).
///
/// # Safety
/// That of gemm's microkernels: the operands readable over `k` steps, `dst` writable over
/// `m x n` with its strides, `m <= 16`, `n <= 6`; the CPU runs AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn x2x6(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    packed_lhs: *const f32,
    packed_rhs: *const f32,
    dst_cs: isize,
    dst_rs: isize,
    lhs_cs: isize,
    rhs_rs: isize,
    rhs_cs: isize,
    alpha: f32,
    beta: f32,
    alpha_status: u8,
    _conj_dst: bool,
    _conj_lhs: bool,
    _conj_rhs: bool,
    _next_lhs: *const f32,
) {
    // Opaque to the optimiser, which would otherwise rebuild the chain of additions from
    // their being multiples of one stride (a hint only: were it ignored, the kernel would be
    // slower, not wrong).
    let offsets = core::hint::black_box([0, rhs_cs, 2 * rhs_cs, 3 * rhs_cs, 4 * rhs_cs, 5 * rhs_cs]);
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    let (mut lhs, mut rhs) = (packed_lhs, packed_rhs);
    // SAFETY: the caller's contract: k steps of both operands are readable.
    unsafe {
        for _ in 0..k {
            step(&mut acc, lhs, rhs, &offsets);
            lhs = lhs.wrapping_offset(lhs_cs);
            rhs = rhs.wrapping_offset(rhs_rs);
        }
    }
    // SAFETY: `dst`'s m x n corner is writable (and readable unless alpha_status is 0).
    unsafe {
        if m == MR_DIV_N * N && n == NR && dst_rs == 1 {
            let (alpha_v, beta_v) = (_mm256_set1_ps(alpha), _mm256_set1_ps(beta));
            for (j, col) in acc.iter().enumerate() {
                for (half, &value) in col.iter().enumerate() {
                    let d = dst.offset(j as isize * dst_cs + (half * N) as isize);
                    let out = match alpha_status {
                        2 => _mm256_add_ps(_mm256_mul_ps(alpha_v, _mm256_loadu_ps(d)), _mm256_mul_ps(beta_v, value)),
                        1 => _mm256_fmadd_ps(beta_v, value, _mm256_loadu_ps(d)),
                        _ => _mm256_mul_ps(beta_v, value),
                    };
                    _mm256_storeu_ps(d, out);
                }
            }
        } else {
            let mut tile = [[0f32; MR_DIV_N * N]; NR];
            for (col, lanes) in tile.iter_mut().zip(acc) {
                _mm256_storeu_ps(col.as_mut_ptr(), lanes[0]);
                _mm256_storeu_ps(col.as_mut_ptr().add(N), lanes[1]);
            }
            for (j, col) in tile.iter().enumerate().take(n) {
                for (i, &value) in col.iter().enumerate().take(m) {
                    let d = dst.offset(j as isize * dst_cs + i as isize * dst_rs);
                    *d = match alpha_status {
                        2 => alpha * *d + beta * value,
                        1 => beta.mul_add(value, *d),
                        _ => beta * value,
                    };
                }
            }
        }
    }
}
