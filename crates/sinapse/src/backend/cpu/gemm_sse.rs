//! SSE microkernels for gemm's matrix product on x86-64 CPUs without AVX2 and FMA (CPUs
//! from before 2013, some low-end ones, and virtual machines that show a generic CPU model),
//! or with the kernels capped to `baseline` ([`super::simd::CAPABILITY_VAR`]).
//!
//! gemm_f32 has microkernels for AVX2 + FMA and AVX-512 only; on any other x86-64 CPU its own
//! dispatch runs its scalar ones, one multiply and one add per value (or, on a CPU with FMA
//! but not AVX2, its AVX2 ones, which panic). SSE2 is part of every x86-64 CPU, so four lanes
//! at a time need no run-time check. The kernels are expanded here from gemm_common's public
//! `microkernel!` macro (the one gemm_f32's own kernels come from), with 4-lane vectors in
//! place of its 8- and 16-lane ones, and run by gemm_common's blocking, packing and threading
//! like the other builds ([`super::matmul`]'s `gemm_fn`).
//!
//! The tile is 8 x 4 (two vectors of rows by four columns): 8 accumulators, the left
//! operand's 8 rows at one depth (two vectors), a broadcast value and a product in flight
//! fit the 16 `xmm` registers. The AVX2 kernels' shape, two vectors by six columns (8 x 6
//! here), ran slower (its 12 accumulators spilled to the stack); 12 x 3 ran as fast as 8 x 4.
//!
//! Each term is rounded twice, as in gemm's scalar kernels (there is no fused multiply-add
//! without FMA).

// The kernels' signature is gemm_common's `MicroKernelFn` (18 arguments).
#![allow(clippy::too_many_arguments)]

use core::arch::x86_64::{__m128, _mm_add_ps, _mm_mul_ps, _mm_set1_ps};
use core::mem::transmute;
use gemm_common::{microkernel, microkernel_fn_array};

/// The element type, as `microkernel!` names it.
type T = f32;
/// Lanes in one vector.
pub(super) const N: usize = 4;
/// One vector as `microkernel!` reads and writes it: four `f32`s (an `__m128`'s layout).
type Pack = [T; N];

/// The vector with every lane `value`.
#[inline(always)]
unsafe fn splat(value: T) -> Pack {
    // SAFETY: SSE is part of x86-64; `Pack` and `__m128` are both 16 bytes of four f32s.
    unsafe { transmute::<__m128, Pack>(_mm_set1_ps(value)) }
}

/// Lane by lane `lhs · rhs`.
#[inline(always)]
unsafe fn mul(lhs: Pack, rhs: Pack) -> Pack {
    // SAFETY: as in `splat`.
    unsafe { transmute::<__m128, Pack>(_mm_mul_ps(transmute::<Pack, __m128>(lhs), transmute::<Pack, __m128>(rhs))) }
}

/// Lane by lane `lhs + rhs`.
#[inline(always)]
unsafe fn add(lhs: Pack, rhs: Pack) -> Pack {
    // SAFETY: as in `splat`.
    unsafe { transmute::<__m128, Pack>(_mm_add_ps(transmute::<Pack, __m128>(lhs), transmute::<Pack, __m128>(rhs))) }
}

/// Lane by lane `a · b + c`, rounded after the product and after the sum.
#[inline(always)]
unsafe fn mul_add(a: Pack, b: Pack, c: Pack) -> Pack {
    // SAFETY: as in `splat`.
    unsafe { add(mul(a, b), c) }
}

/// `lhs · rhs` for the tiles' edges, written value by value.
#[inline(always)]
unsafe fn scalar_mul(lhs: T, rhs: T) -> T {
    lhs * rhs
}

/// `lhs + rhs` for the tiles' edges.
#[inline(always)]
unsafe fn scalar_add(lhs: T, rhs: T) -> T {
    lhs + rhs
}

/// `a · b + c` for the tiles' edges, rounded twice as the vectors are.
#[inline(always)]
unsafe fn scalar_mul_add(a: T, b: T, c: T) -> T {
    a * b + c
}

// `xRxC`: R vectors of rows (4 or 8 rows) by C columns, k unrolled by 2.
microkernel!(, 2, x1x1, 1, 1);
microkernel!(, 2, x1x2, 1, 2);
microkernel!(, 2, x1x3, 1, 3);
microkernel!(, 2, x1x4, 1, 4);
microkernel!(, 2, x2x1, 2, 1);
microkernel!(, 2, x2x2, 2, 2);
microkernel!(, 2, x2x3, 2, 3);
microkernel!(, 2, x2x4, 2, 4);

// `UKR`, `MR_DIV_N` (2) and `NR` (4): the kernels by tile size, as gemm_common takes them.
microkernel_fn_array! {
    [x1x1, x1x2, x1x3, x1x4,],
    [x2x1, x2x2, x2x3, x2x4,],
}

/// No horizontal kernels (dot products for `x · Wᵀ` with few rows): gemm_common then takes
/// the vertical ones for every shape, as in gemm's scalar build.
pub(super) const H_M: usize = 0;
/// See [`H_M`].
pub(super) const H_N: usize = 0;
/// See [`H_M`].
pub(super) const H_UKR: [[gemm_common::microkernel::HMicroKernelFn<T>; H_N]; H_M] = [];
