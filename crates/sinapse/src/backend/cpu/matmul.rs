//! The matrix product, through the `gemm-f32` crate (multi-threaded, vectorised, strided
//! operands read in place), and a matrix-vector kernel of its own for a single row.

use rayon::prelude::*;

use crate::layout::Layout;

/// Matrix products below this many multiply-adds run on one thread each; a batch of them is
/// spread over the threads instead (gemm's own threading starts near this size too).
const SMALL_GEMM: usize = 48 * 48 * 256;

/// Batched matrix product `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]`.
///
/// `la` and `lb` are already broadcast to the output's batch shape; any strides work (a
/// transposed operand is read in place), which is what makes `x·Wᵀ` free of copies. Large
/// products use gemm's threads; a batch of small ones (convolution of many images, one per
/// sample) runs one product per thread.
pub(super) fn matmul(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, [m, k, n]: [usize; 3]) -> Vec<f32> {
    let batch_shape = &la.shape()[..la.rank() - 2];
    let batch: usize = batch_shape.iter().product();
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0f32; batch * m * n];
    }
    // Storage offset of batch entry `bi` in a layout.
    let batch_offset = |l: &Layout, bi: usize| {
        let mut rem = bi;
        let mut off = l.offset();
        for (d, size) in batch_shape.iter().enumerate().rev() {
            off += (rem % size) * l.strides()[d];
            rem /= size;
        }
        off
    };
    let (sa, sb) = (la.strides(), lb.strides());
    let (ra, rb) = (la.rank(), lb.rank());
    // dst = a[bi][:, ks] · b[bi][ks, :] for the inner range `ks` (all of k, or one slice of it).
    let product = |dst: SendPtr, bi: usize, ks: std::ops::Range<usize>, parallelism: gemm_common::Parallelism| {
        let oa = batch_offset(la, bi) + ks.start * sa[ra - 1];
        let ob = batch_offset(lb, bi) + ks.start * sb[rb - 2];
        // SAFETY: the layouts were checked against the storages when the tensors were made (and
        // every shape's element count was checked to fit a usize), so every (row, col) offset
        // the strides produce for entry `bi` and inner range `ks` ⊆ 0..k lies inside `a` and
        // `b`; `dst` is an m x n block (allocated, perhaps uninitialised: gemm only writes
        // it without `accumulate`) that no other call writes at the same time.
        unsafe {
            gemm_raw(
                dst.get(),
                n,
                (a.as_ptr().add(oa), [sa[ra - 2], sa[ra - 1]]),
                (b.as_ptr().add(ob), [sb[rb - 2], sb[rb - 1]]),
                [m, ks.len(), n],
                false,
                parallelism,
            );
        }
    };
    // One row times a matrix (inference on one sample): a matrix-vector product, without
    // gemm's packing of the whole matrix, which costs more than the arithmetic here.
    if batch == 1 && m == 1 && sa[ra - 1] == 1 && (sb[rb - 2] == 1 || sb[rb - 1] == 1) {
        let x = &a[la.offset()..la.offset() + k];
        let mut out = vec![0.0f32; n];
        if sb[rb - 2] == 1 {
            // Column j of b is contiguous (b is a transposed row-major matrix, `x·Wᵀ`). A
            // large matrix is split by columns over two threads: each reads half of it.
            let (b, stride) = (&b[lb.offset()..], sb[rb - 1]);
            let threads = rayon::current_num_threads();
            if threads > 1 && n >= 16 && n * k >= GEMV_SPLIT {
                gemv_columns_split(x, b, stride, &mut out);
            } else {
                gemv_columns(x, b, stride, &mut out);
            }
        } else {
            gemv_rows(x, &b[lb.offset()..], sb[rb - 2], &mut out);
        }
        return out;
    }
    // gemm copies ("packs") the operand it reads as `b` unless b's rows are contiguous, and
    // that copy is n x k. When it is the larger side (a weight gradient `g · colsᵀ` whose
    // columns are the long im2col axis), compute Cᵀ = Bᵀ·Aᵀ instead, whose packed operand is
    // m x k, and transpose the small result: about twice as fast on the `cnn` benchmark's
    // second convolution's weight gradient (32 x 4096 by 4096 x 400, 2.1 -> 1.0-1.1 ms).
    let threads = rayon::current_num_threads();
    if batch == 1 {
        let packs_less = packs_less_transposed(la, lb, [m, k, n]);
        // The same for a narrow output over a long inner axis ([`narrow_output`]).
        if packs_less || narrow_output([m, k, n], threads) {
            let (ra, rb) = (la.rank(), lb.rank());
            if let (Ok(lat), Ok(lbt)) = (la.transpose(ra - 2, ra - 1), lb.transpose(rb - 2, rb - 1)) {
                // A narrow output turns only where the transposed product would not turn back
                // by its own `packs_less_transposed` (an `a` with contiguous rows, which the
                // transposed product packs): the two calls would recurse without end. (It
                // cannot turn back by `narrow_output`: both sides would have to be narrow and
                // wide.)
                if packs_less || !packs_less_transposed(&lbt, &lat, [n, k, m]) {
                    let ct = matmul(b, &lbt, a, &lat, [n, k, m]); // Cᵀ, n x m
                    return transposed(&ct, [n, m]);
                }
            }
        }
    }
    if batch == 1 && threads > 1 && split_inner(m, n, k, threads) {
        // A small result over a long inner axis (the weight gradient of a convolution: a few
        // filters, every position of every image) leaves gemm nothing to split across threads.
        // Split the inner axis instead and add the partial products, in a fixed order.
        let mut out = vec![0.0f32; m * n];
        let chunk = k.div_ceil(threads);
        let partials: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let ks = (t * chunk).min(k)..((t + 1) * chunk).min(k);
                let mut part = vec![0.0f32; m * n];
                if !ks.is_empty() {
                    product(SendPtr(part.as_mut_ptr()), 0, ks, gemm_common::Parallelism::None);
                }
                part
            })
            .collect();
        for part in &partials {
            out.iter_mut().zip(part).for_each(|(o, &p)| *o += p);
        }
        return out;
    }
    if batch == 1 && threads > 1 && split_columns([m, k, n], threads) {
        // gemm packs an operand on one thread while the others wait; split by columns, each
        // thread packs and multiplies its own (see `split_columns`).
        let parts = threads.min(n / SPLIT_COLUMNS);
        let width = n.div_ceil(parts).next_multiple_of(16);
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let dst = SendPtr(out.as_mut_ptr());
        (0..parts).into_par_iter().for_each(|t| {
            let js = (t * width).min(n)..((t + 1) * width).min(n);
            if js.is_empty() {
                return;
            }
            let ob = lb.offset() + js.start * sb[rb - 1];
            // SAFETY: as in `product`: columns `js` of `b` and of the m x n output are inside
            // their storages, and each thread writes its own columns of every row.
            unsafe {
                gemm_raw(
                    dst.get().add(js.start),
                    n,
                    (a.as_ptr().add(la.offset()), [sa[ra - 2], sa[ra - 1]]),
                    (b.as_ptr().add(ob), [sb[rb - 2], sb[rb - 1]]),
                    [m, k, js.len()],
                    false,
                    gemm_common::Parallelism::None,
                );
            }
        });
        // SAFETY: the column ranges cover 0..n (parts x width >= n), and gemm without
        // `read_dst` wrote every row of each.
        unsafe { out.set_len(m * n) };
        return out;
    }
    // Not zeroed: gemm writes every element of each m x n block (`read_dst` is false).
    let len = batch * m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SendPtr(out.as_mut_ptr());
    let block = |bi: usize| SendPtr(dst.get().wrapping_add(bi * m * n));
    if batch > 1 && m * n * k < SMALL_GEMM {
        (0..batch).into_par_iter().for_each(|bi| product(block(bi), bi, 0..k, gemm_common::Parallelism::None));
    } else {
        (0..batch).for_each(|bi| product(block(bi), bi, 0..k, gemm_common::Parallelism::Rayon(0)));
    }
    // SAFETY: the capacity is `len`, and the `batch` products above wrote all of it (m, n and
    // k are positive here, and gemm without `read_dst` stores every element of its block).
    unsafe { out.set_len(len) };
    out
}

/// `row += bias` for every row of the row-major `y` (rows of `bias.len()` values), in place
/// (a dense layer's bias: the broadcast add into a new buffer it replaces took 100 us of the
/// `infer` benchmark's 1024-row forward pass in a session-11 scratch timing), then the ReLU
/// in the same pass when `relu` (as the ReLU kernel: a NaN stays NaN), split over the
/// threads when large.
pub(super) fn add_to_rows(y: &mut [f32], bias: &[f32], relu: bool) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    let add = |rows: &mut [f32]| {
        super::simd::vectorized(|| {
            for row in rows.chunks_exact_mut(n) {
                if relu {
                    row.iter_mut().zip(bias).for_each(|(v, &b)| *v = super::elementwise::relu(*v + b));
                } else {
                    row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
                }
            }
        })
    };
    if y.len() >= super::elementwise::PAR_MIN_ELEMS {
        y.par_chunks_mut(super::elementwise::PAR_CHUNK.next_multiple_of(n)).for_each(add);
    } else {
        add(y);
    }
}

/// `dst = a · b`, or `dst += a · b` with `accumulate`, on the calling thread: one m x k by
/// k x n product, `a` and `b` read at their `[row, column]` strides from their first value,
/// `dst` row-major at row stride `dst_stride`. The LSTM's recurrence adds each step's product
/// with it straight onto the biases in the step's records, and the gradient from the step
/// after onto each step's dL/dh.
///
/// # Panics
/// When a stride reaches outside its slice or past `isize::MAX`, or `dst_stride < n` (a bug
/// in the caller).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_on_thread(
    dst: &mut [f32],
    dst_stride: usize,
    a: &[f32],
    [ars, acs]: [usize; 2],
    b: &[f32],
    [brs, bcs]: [usize; 2],
    [m, k, n]: [usize; 3],
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last value each operand is read or written at, in checked arithmetic: these
    // asserts are what make the raw pointers below safe.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows - 1).checked_mul(rs).zip((cols - 1).checked_mul(cs)).and_then(|(r, c)| r.checked_add(c))
    };
    let fits = |rows, cols, rs, cs, len: usize| last(rows, cols, rs, cs).is_some_and(|end| end < len);
    assert!(
        dst_stride >= n && fits(m, n, dst_stride, 1, dst.len()),
        "gemm: {m} x {n} at row stride {dst_stride} in {} values",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_stride).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    assert!(fits(m, k, ars, acs, a.len()) && fits(k, n, brs, bcs, b.len()), "gemm: operand outside its slice");
    let strides = [dst_stride, ars, acs, brs, bcs];
    assert!(strides.iter().all(|&s| isize::try_from(s).is_ok()), "gemm: a stride past isize::MAX");
    // SAFETY: every (row, column) offset the strides produce lies inside its slice and fits an
    // isize (asserted above); `dst`'s rows do not overlap (stride >= n) and it is borrowed
    // mutably, so no operand aliases it.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            dst_stride,
            (a.as_ptr(), [ars, acs]),
            (b.as_ptr(), [brs, bcs]),
            [m, k, n],
            accumulate,
            gemm_common::Parallelism::None,
        );
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`) through gemm_f32's kernel: `a`
/// m x k and `b` k x n at their `[row, column]` strides, `dst` row-major at row stride
/// `dst_stride`. gemm_f32's kernels write a column-major destination, so the row-major
/// C = A·B is computed as the column-major Cᵀ = Bᵀ·Aᵀ: the same memory read with the roles
/// of rows and columns swapped (what the `gemm` facade does before calling them).
///
/// # Safety
/// Every (row, column) offset the strides produce must lie inside the memory behind its
/// pointer and fit an isize; `dst`'s m rows of n values must be writable (and, with
/// `accumulate`, initialised), and no other access may overlap them while this runs.
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_stride: usize,
    (a, [ars, acs]): (*const f32, [usize; 2]),
    (b, [brs, bcs]): (*const f32, [usize; 2]),
    [m, k, n]: [usize; 3],
    accumulate: bool,
    parallelism: gemm_common::Parallelism,
) {
    // SAFETY: the caller's contract is gemm's: the operands' offsets are in bounds and the
    // destination is exclusively ours.
    unsafe {
        gemm_fn()(
            n,
            m,
            k,
            dst,
            dst_stride as isize,
            1,
            accumulate,
            b,
            brs as isize,
            bcs as isize,
            a,
            ars as isize,
            acs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// gemm_f32's product function (its arguments as `gemm_f32::gemm::f32::get_gemm_fn`'s).
type GemmFn = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    isize,
    isize,
    bool,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    f32,
    f32,
    bool,
    bool,
    bool,
    gemm_common::Parallelism,
);

/// gemm_f32's product for the instruction set the other kernels run with
/// ([`super::simd::Isa::detect`]), picked once per process:
/// - AVX-512 (uncapped): gemm's own pick, its AVX-512 build;
/// - AVX2 (this CPU's widest, or [`super::simd::CAPABILITY_VAR`]'s cap): gemm_f32's AVX2
///   build, made here from its public parts as its own dispatch makes it, with its full tile's
///   microkernel replaced ([`super::gemm_fma`]);
/// - the portable set (an x86-64 CPU without AVX2 and FMA, or the `baseline` cap): SSE
///   kernels run by gemm's blocking ([`super::gemm_sse`]). gemm's own pick would run its
///   scalar kernels there, 2.5-2.7x slower on `mlp`, `lstm` and `infer` batch 1024, and on a
///   CPU with FMA but not AVX2 (AMD's Piledriver) its AVX2 build, which would panic.
///
/// A build is taken only where pulp (gemm's SIMD layer) makes its instruction-set token (for
/// AVX2: every SSE level, AVX, AVX2 and FMA; for AVX-512 that and AVX512F), so that a CPU or
/// virtual machine that lacks one of them falls back a level instead of panicking.
fn gemm_fn() -> GemmFn {
    #[cfg(target_arch = "x86_64")]
    {
        static PICK: std::sync::OnceLock<GemmFn> = std::sync::OnceLock::new();
        *PICK.get_or_init(|| {
            use super::simd::{Isa, Kind};
            use gemm_common::simd::MixedSimd;
            let v4 = <gemm_common::simd::V4 as MixedSimd<f32, f32, f32, f32>>::try_new().is_some();
            let v3 = <gemm_common::simd::V3 as MixedSimd<f32, f32, f32, f32>>::try_new().is_some();
            match Isa::detect().kind() {
                Kind::Avx512 if v4 => gemm_f32::gemm::f32::get_gemm_fn(),
                Kind::Avx512 | Kind::Avx2 if v3 => gemm_avx2,
                _ => gemm_sse,
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    gemm_f32::gemm::f32::get_gemm_fn()
}

/// Instantiates gemm_common's generic product with one of gemm_f32's microkernel sets, as
/// gemm_f32's own dispatch does for each instruction set: `$simd` the vector type, `$lanes`
/// its f32 lanes, `$ukr` the microkernel module.
#[cfg(target_arch = "x86_64")]
macro_rules! gemm_build {
    ($name:ident, $simd:ty, $lanes:expr, $ukr:path) => {
        /// gemm_f32's product built for one instruction set (see [`gemm_fn`]).
        ///
        /// # Safety
        /// That of [`GemmFn`]'s functions: the operands' offsets in bounds, the destination
        /// ours. The CPU must run the build's instructions (checked: it panics otherwise).
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            m: usize,
            n: usize,
            k: usize,
            dst: *mut f32,
            dst_cs: isize,
            dst_rs: isize,
            read_dst: bool,
            lhs: *const f32,
            lhs_cs: isize,
            lhs_rs: isize,
            rhs: *const f32,
            rhs_cs: isize,
            rhs_rs: isize,
            alpha: f32,
            beta: f32,
            conj_dst: bool,
            conj_lhs: bool,
            conj_rhs: bool,
            parallelism: gemm_common::Parallelism,
        ) {
            use gemm_common::simd::MixedSimd;
            use $ukr as ukr;
            let simd = <$simd as MixedSimd<f32, f32, f32, f32>>::try_new()
                .expect("gemm: the instruction set was picked for this CPU");
            // SAFETY: the caller's contract, which is gemm's.
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    { $lanes },
                    { ukr::MR_DIV_N * $lanes },
                    { ukr::NR },
                    { ukr::MR_DIV_N },
                    { ukr::H_M },
                    { ukr::H_N },
                >(
                    simd,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    alpha,
                    beta,
                    conj_dst,
                    conj_lhs,
                    conj_rhs,
                    |a, b, c| a * b + c,
                    &ukr::UKR,
                    &ukr::H_UKR,
                    false,
                    parallelism,
                )
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
gemm_build!(gemm_avx2, gemm_common::simd::V3, super::gemm_fma::N, super::gemm_fma);
// SSE2 is part of x86-64: no target feature to enable (gemm_common's `Scalar` runs the
// closure as it is).
#[cfg(target_arch = "x86_64")]
gemm_build!(gemm_sse, gemm_common::simd::Scalar, super::gemm_sse::N, super::gemm_sse);

/// The transpose (`cols x rows`, row-major) of `src` (`rows x cols`, row-major), written in
/// 32 x 32 tiles so that the tile being read and the one being written both stay in L1, into
/// memory that is not zeroed first (every value is written once). The plain loop stored each
/// value to a new cache line: 4% of the `lstm` benchmark's time (`perf annotate`), when its
/// per-step product went through here.
///
/// # Panics
/// When `src` holds fewer than `rows · cols` values.
pub(super) fn transposed(src: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    const TILE: usize = 32;
    let len = rows.checked_mul(cols).expect("transposed: rows x cols overflows");
    assert!(src.len() >= len, "transposed: {rows} x {cols} from {} values", src.len());
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = &mut out.spare_capacity_mut()[..len];
    for c0 in (0..cols).step_by(TILE) {
        let c1 = (c0 + TILE).min(cols);
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            for c in c0..c1 {
                let line = &mut dst[c * rows + r0..c * rows + r1];
                // Column c of the tile, down its rows (an iterator: no bounds check per value).
                for (d, &v) in line.iter_mut().zip(src[r0 * cols + c..].iter().step_by(cols)) {
                    d.write(v);
                }
            }
        }
    }
    // SAFETY: the tiles partition the rows x cols positions, and each line of a tile wrote
    // all r1 - r0 of its values (`src` from `r0·cols + c` holds at least that many at step
    // `cols`: its last is `(r1 - 1)·cols + c < rows·cols`).
    unsafe { out.set_len(len) };
    out
}

/// Panics unless `len` values hold `n` columns of `k` values `stride` apart (the last
/// column's end computed in checked arithmetic: a wrapped sum could pass).
fn check_columns(k: usize, n: usize, stride: usize, len: usize) {
    let end = n.checked_sub(1).map(|last| last.checked_mul(stride).and_then(|start| start.checked_add(k)));
    assert!(
        end.is_none_or(|end| end.is_some_and(|end| end <= len)),
        "gemv: {n} columns of {k} at stride {stride} in {len} values"
    );
}

/// [`gemv_columns`] over two threads: the second half of the columns is offered to the pool
/// while this thread computes the first, and done here too if no thread took it by then.
/// Unlike `rayon::join`, the wait for the other half is a spin: rayon's wait calls
/// `sched_yield` between rounds, and those system calls (under KVM) were 14% of this thread's
/// time in a batch-1 forward pass of the `infer` benchmark's MLP (`perf`, 2-core Intel Xeon).
fn gemv_columns_split(x: &[f32], b: &[f32], stride: usize, out: &mut [f32]) {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// The second half's states: offered to the pool, taken by a pool thread, done there,
    /// or kept by the caller (the pool's task then does nothing when it runs).
    const OFFERED: u8 = 0;
    const TAKEN: u8 = 1;
    const DONE: u8 = 2;
    const KEPT: u8 = 3;
    let (k, n) = (x.len(), out.len());
    // The check `gemv_columns` makes, here before the pool's task exists: a panic in that
    // task would leave this thread waiting for it.
    check_columns(k, n, stride, b.len());
    let half = n / 2;
    let (left, right) = out.split_at_mut(half);
    let rb = &b[(half * stride).min(b.len())..];
    let state = std::sync::Arc::new(AtomicU8::new(OFFERED));
    let task = {
        let state = state.clone();
        let (xp, bp, op) = (SendConst(x.as_ptr()), SendConst(rb.as_ptr()), SendPtr(right.as_mut_ptr()));
        let (blen, olen) = (rb.len(), right.len());
        move || {
            if state.compare_exchange(OFFERED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                // SAFETY: the caller took no `KEPT` state, so it waits (below) for `DONE`
                // before its borrows of `x`, `b` and `out` end; until then these are live,
                // and only this task touches `right`'s values.
                let (x, b, out) = unsafe {
                    (
                        std::slice::from_raw_parts(xp.get(), k),
                        std::slice::from_raw_parts(bp.get(), blen),
                        std::slice::from_raw_parts_mut(op.get(), olen),
                    )
                };
                gemv_columns(x, b, stride, out);
                state.store(DONE, Ordering::Release);
            }
        }
    };
    rayon::spawn(task);
    gemv_columns(x, b, stride, left);
    if state.compare_exchange(OFFERED, KEPT, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        gemv_columns(x, rb, stride, right);
        return;
    }
    let mut spins = 0u32;
    while state.load(Ordering::Acquire) != DONE {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        // A pool thread descheduled mid-task: let the OS run it.
        if spins.is_multiple_of(1 << 14) {
            std::thread::yield_now();
        }
    }
}

/// `out[j] = x · b[j·stride .. j·stride + k]` for every j: one dot product per column of a
/// matrix stored column by column. AVX-512, or AVX2 with FMA, where the CPU has them (picked
/// at run time), else a portable loop.
fn gemv_columns(x: &[f32], b: &[f32], stride: usize, out: &mut [f32]) {
    // This check is what makes the raw pointers of the vector kernels safe.
    check_columns(x.len(), out.len(), stride, b.len());
    #[cfg(target_arch = "x86_64")]
    match super::simd::Isa::detect().kind() {
        // SAFETY: the CPU was seen to support AVX-512F; every column is in `b` (asserted
        // above).
        super::simd::Kind::Avx512 => return unsafe { gemv_columns_avx512(x, b, stride, out) },
        // SAFETY: as above, with AVX2 and FMA.
        super::simd::Kind::Avx2 => return unsafe { gemv_columns_avx2(x, b, stride, out) },
        super::simd::Kind::Portable => {}
    }
    gemv_columns_portable(x, b, stride, out);
}

/// [`gemv_columns`] without intrinsics: eight columns at a time so each load of `x` is
/// reused, eight 8-lane sums that the compiler may vectorise.
fn gemv_columns_portable(x: &[f32], b: &[f32], stride: usize, out: &mut [f32]) {
    const COLS: usize = 8;
    let k = x.len();
    let full = k - k % 8;
    let col = |j: usize| &b[j * stride..j * stride + k];
    let dot_tail = |c: &[f32]| (full..k).map(|i| c[i] * x[i]).sum::<f32>();
    let mut j = 0;
    while j < out.len() {
        let width = COLS.min(out.len() - j);
        let cols: [&[f32]; COLS] = std::array::from_fn(|r| col(j + r.min(width - 1)));
        let mut acc = [[0.0f32; 8]; COLS];
        for i in (0..full).step_by(8) {
            let xv: &[f32; 8] = x[i..i + 8].try_into().unwrap_or(&[0.0; 8]);
            for r in 0..COLS {
                let cv: &[f32; 8] = cols[r][i..i + 8].try_into().unwrap_or(&[0.0; 8]);
                for l in 0..8 {
                    acc[r][l] = super::simd::portable_madd(cv[l], xv[l], acc[r][l]);
                }
            }
        }
        for r in 0..width {
            out[j + r] = acc[r].iter().sum::<f32>() + dot_tail(cols[r]);
        }
        j += width;
    }
}

/// [`gemv_columns`] with AVX2 intrinsics: eight columns at a time, one 8-lane sum each in a
/// register (eight independent chains keep both FMA units busy), the sums folded into one
/// vector of eight results at the end. Raw pointers: bounds checks on each column's slice
/// spilled registers and cost more than the arithmetic (4.9-9.7 GMAC/s before).
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `b` must hold `out.len()` columns of `x.len()`
/// values `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_columns_avx2(x: &[f32], b: &[f32], stride: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (k, n) = (x.len(), out.len());
    let full = k - k % 8;
    let (xp, bp) = (x.as_ptr(), b.as_ptr());
    // The scalar rest of column `c` past the last full 8 values.
    let tail = |c: *const f32| (full..k).map(|i| *c.add(i) * x[i]).sum::<f32>();
    let mut j = 0;
    while j + 8 <= n {
        let c: [*const f32; 8] = [
            bp.add(j * stride),
            bp.add((j + 1) * stride),
            bp.add((j + 2) * stride),
            bp.add((j + 3) * stride),
            bp.add((j + 4) * stride),
            bp.add((j + 5) * stride),
            bp.add((j + 6) * stride),
            bp.add((j + 7) * stride),
        ];
        let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7] = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < full {
            let xv = _mm256_loadu_ps(xp.add(i));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(c[0].add(i)), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(c[1].add(i)), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(c[2].add(i)), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(c[3].add(i)), xv, a3);
            a4 = _mm256_fmadd_ps(_mm256_loadu_ps(c[4].add(i)), xv, a4);
            a5 = _mm256_fmadd_ps(_mm256_loadu_ps(c[5].add(i)), xv, a5);
            a6 = _mm256_fmadd_ps(_mm256_loadu_ps(c[6].add(i)), xv, a6);
            a7 = _mm256_fmadd_ps(_mm256_loadu_ps(c[7].add(i)), xv, a7);
            i += 8;
        }
        let sums = sum_columns8([a0, a1, a2, a3, a4, a5, a6, a7]);
        let mut res = [0.0f32; 8];
        _mm256_storeu_ps(res.as_mut_ptr(), sums);
        if full < k {
            for (r, v) in res.iter_mut().enumerate() {
                *v += tail(c[r]);
            }
        }
        out[j..j + 8].copy_from_slice(&res);
        j += 8;
    }
    // The last columns, one at a time.
    while j < n {
        let c = bp.add(j * stride);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(c.add(i)), _mm256_loadu_ps(xp.add(i)), acc);
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        out[j] = lanes.iter().sum::<f32>() + tail(c);
        j += 1;
    }
}

/// The eight lane sums of `acc` (one 8-lane vector of partial sums per column), in order:
/// pairwise sums, after two rounds of which each 128-bit half holds four columns' partial
/// sums, and the halves added. The last step of both vector kernels of [`gemv_columns`].
///
/// # Safety
/// The CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn sum_columns8(acc: [std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let t0 = _mm256_hadd_ps(acc[0], acc[1]);
    let t1 = _mm256_hadd_ps(acc[2], acc[3]);
    let t2 = _mm256_hadd_ps(acc[4], acc[5]);
    let t3 = _mm256_hadd_ps(acc[6], acc[7]);
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
}

/// [`gemv_columns`] with AVX-512F: eight columns at a time, each summed in one 16-lane
/// register, the last `k % 16` values of every column read by a masked load; each sum is
/// folded to 8 lanes and the eight finished by [`sum_columns8`], as in the AVX2 kernel. Half the
/// instructions of the AVX2 kernel per multiply-add.
///
/// # Safety
/// The CPU must support AVX-512F, and `b` must hold `out.len()` columns of `x.len()` values
/// `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemv_columns_avx512(x: &[f32], b: &[f32], stride: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (k, n) = (x.len(), out.len());
    let full = k - k % 16;
    // The lanes of the last, partial vector of each column (none when k is a multiple of 16).
    let rest: __mmask16 = ((1u32 << (k % 16)) - 1) as __mmask16;
    let (xp, bp) = (x.as_ptr(), b.as_ptr());
    let xrest = _mm512_maskz_loadu_ps(rest, xp.add(full));
    // The upper 8 lanes added onto the lower 8.
    let fold = |v: __m512| {
        _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    };
    let mut j = 0;
    while j + 8 <= n {
        let c: [*const f32; 8] = std::array::from_fn(|r| bp.add((j + r) * stride));
        let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7] = [_mm512_setzero_ps(); 8];
        let mut i = 0;
        while i < full {
            let xv = _mm512_loadu_ps(xp.add(i));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(c[0].add(i)), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(c[1].add(i)), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(c[2].add(i)), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(c[3].add(i)), xv, a3);
            a4 = _mm512_fmadd_ps(_mm512_loadu_ps(c[4].add(i)), xv, a4);
            a5 = _mm512_fmadd_ps(_mm512_loadu_ps(c[5].add(i)), xv, a5);
            a6 = _mm512_fmadd_ps(_mm512_loadu_ps(c[6].add(i)), xv, a6);
            a7 = _mm512_fmadd_ps(_mm512_loadu_ps(c[7].add(i)), xv, a7);
            i += 16;
        }
        if rest != 0 {
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[0].add(full)), xrest, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[1].add(full)), xrest, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[2].add(full)), xrest, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[3].add(full)), xrest, a3);
            a4 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[4].add(full)), xrest, a4);
            a5 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[5].add(full)), xrest, a5);
            a6 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[6].add(full)), xrest, a6);
            a7 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c[7].add(full)), xrest, a7);
        }
        let sums = sum_columns8([a0, a1, a2, a3, a4, a5, a6, a7].map(fold));
        _mm256_storeu_ps(out.as_mut_ptr().add(j), sums);
        j += 8;
    }
    // The last columns, one at a time.
    while j < n {
        let c = bp.add(j * stride);
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < full {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(c.add(i)), _mm512_loadu_ps(xp.add(i)), acc);
            i += 16;
        }
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, c.add(full)), xrest, acc);
        out[j] = _mm512_reduce_add_ps(acc);
        j += 1;
    }
}

super::fastmath::dispatch! {
    /// `out = Σ_i x[i] · b[i·stride .. i·stride + n]`: a vector times a matrix stored row by
    /// row, as a sum of scaled rows ([`add_scaled_rows`]). A `[1, k] x [k, n]` product that
    /// way (scratch timings, medians, against adding each row into `out` in memory): 784 x 256
    /// 15-19 us against 20-29, 256 x 128 under an AVX2 cap 2.0-2.1 against 3.5-4.0.
    fn gemv_rows(x: &[f32], b: &[f32], stride: usize, out: &mut [f32]) {
        add_scaled_rows(x.iter().enumerate().map(|(i, &v)| (i * stride, v)), b, out);
    }
}

/// `out[j] += Σ v · b[start + j]` over the `(start, v)` of `rows`, for every column `j`: a
/// sum of scaled rows of `b`, each starting at `start`. 64 outputs at a time stay in
/// registers (4 AVX-512 or 8 AVX2 vectors) over all the rows, instead of being loaded and
/// stored once per row; each output's sum keeps the rows' order. `#[inline(always)]`, so that
/// each `dispatch!` instance that calls it compiles it for its instruction set (`mul_add` is
/// one FMA there). The portable instance on a target without FMA
/// ([`super::simd::PORTABLE_FMA`]) multiplies and adds in two steps instead, as `mul_add`
/// would be a call to libm's `fmaf` per value. The dense one-row product and the
/// zero-skipping one ([`super::sparse`]) are both this, over every row or over the picked
/// ones.
#[inline(always)]
pub(super) fn add_scaled_rows(rows: impl Iterator<Item = (usize, f32)> + Clone, b: &[f32], out: &mut [f32]) {
    if !super::simd::PORTABLE_FMA && super::fastmath::isa().kind() == super::simd::Kind::Portable {
        scaled_rows_blocked::<false>(rows, b, out);
    } else {
        scaled_rows_blocked::<true>(rows, b, out);
    }
}

/// [`add_scaled_rows`]'s loops: each term one `mul_add` when `FUSED`, else a multiply and an
/// add (two roundings).
#[inline(always)]
fn scaled_rows_blocked<const FUSED: bool>(
    rows: impl Iterator<Item = (usize, f32)> + Clone,
    b: &[f32],
    out: &mut [f32],
) {
    let madd = |w: f32, v: f32, acc: f32| if FUSED { w.mul_add(v, acc) } else { w * v + acc };
    const BLOCK: usize = 64;
    let n = out.len();
    let full = n - n % BLOCK;
    for j in (0..full).step_by(BLOCK) {
        let mut acc: [f32; BLOCK] = out[j..j + BLOCK].try_into().unwrap_or([0.0; BLOCK]);
        for (start, v) in rows.clone() {
            let row: &[f32; BLOCK] = b[start + j..start + j + BLOCK].try_into().unwrap_or(&[0.0; BLOCK]);
            for l in 0..BLOCK {
                acc[l] = madd(row[l], v, acc[l]);
            }
        }
        out[j..j + BLOCK].copy_from_slice(&acc);
    }
    if full < n {
        let tail = &mut out[full..];
        for (start, v) in rows {
            for (o, &w) in tail.iter_mut().zip(&b[start + full..start + n]) {
                *o = madd(w, v, *o);
            }
        }
    }
}

/// A vector-matrix product with at least this many multiply-adds is split over two threads.
const GEMV_SPLIT: usize = 1 << 16;

/// Whether an `m x k` by `k x n` product splits its inner axis over the threads (each thread
/// a partial product of the whole output, added after): when the inner axis is long and the
/// output small beside it, as in a weight gradient (the batch, or every position of every
/// image, is the inner axis). gemm threads over the output's blocks, and an output of a few
/// dozen rows leaves it too little to share: the `cnn` benchmark's second convolution's weight
/// gradient (32 x 4096 by 4096 x 400) ran no faster on two threads than on one before this.
///
/// Each thread holds an m x n partial: at most 4 Mi floats (16 MiB) over all the threads.
fn split_inner(m: usize, n: usize, k: usize, threads: usize) -> bool {
    k >= LONG_INNER && k >= 4 * m.min(n).max(64) && m.saturating_mul(n).saturating_mul(threads) <= (1 << 22)
}

/// Whether an `m x k` by `k x n` product is split by columns over the threads, each thread
/// a product of its own: when `a`, which every thread then reads whole, fits in a core's L2
/// cache. gemm's own threads scaled badly there (one thread packs while the other waits): on a
/// 2-core Intel Xeon (AVX-512), 128 x 784 x 256 with `b` transposed (`x·Wᵀ`) ran in 199 us
/// split against 340, 128 x 256 x 128 in 42 against 62, and 784 x 128 x 256 with `a`
/// transposed (`xᵀ·g`) in 187 against 310; with both operands contiguous, 128 x 128 x 256
/// (the `mlp` benchmark's `g·W`) in 39-40 us against 42-43. With a large `a` (1024 x 784) the
/// split was slower. Small products stay whole.
fn split_columns([m, k, n]: [usize; 3], threads: usize) -> bool {
    m.saturating_mul(k) <= A_IN_CACHE
        && n >= SPLIT_COLUMNS.saturating_mul(threads)
        && m.saturating_mul(n).saturating_mul(k) >= SMALL_GEMM
}

/// Values of `a` (512 KiB of f32) up to which [`split_columns`] lets every thread read it.
const A_IN_CACHE: usize = 1 << 17;

/// The fewest columns a thread gets when a product is split by columns ([`split_columns`]):
/// one block of gemm's AVX-512 kernel.
const SPLIT_COLUMNS: usize = 64;

/// An inner axis at least this long counts as long (see [`split_inner`]).
const LONG_INNER: usize = 2048;

/// Whether `a · b` packs at most half as much when computed as `(bᵀ · aᵀ)ᵀ` (see [`matmul`]):
/// gemm packs `b` (n x k) unless its rows are contiguous; the transposed product packs `a`
/// (m x k) unless a's columns are, and then pays an m x n transpose.
///
/// Besides weight gradients, this takes small batches through a layer's `x·Wᵀ` (up to about
/// 96 rows for 784 x 256, not measured on its own) while gradients are recorded; inference
/// reads the `Wᵀ` copy a `Linear` keeps instead, whose rows are contiguous, which is faster
/// still (`nn::Linear`). It took the LSTM's per-step `h·W_hhᵀ`
/// too, before the CPU's recurrence read a row-major W_hhᵀ itself (`recurrent.rs`).
fn packs_less_transposed(la: &Layout, lb: &Layout, [m, k, n]: [usize; 3]) -> bool {
    let (sa, sb) = (la.strides(), lb.strides());
    let packed = if sb[lb.rank() - 1] != 1 { n * k } else { 0 };
    let transposed = if sa[la.rank() - 2] != 1 { m * k } else { 0 } + m * n;
    2 * transposed <= packed
}

/// Whether an `m x k` by `k x n` product with few output columns and a long inner axis runs
/// as `(bᵀ · aᵀ)ᵀ`: a weight gradient `gᵀ·x` over a batch, for a layer with few inputs. gemm
/// runs a narrow output at about half speed, while the transposed product is wide and split
/// by columns over the threads ([`split_columns`]): on a 2-core Intel Xeon (AVX-512), the
/// `lstm` benchmark's input weights' gradient (512 x 1792 x 28) took 509-603 us as it was
/// and 339-388 us transposed. A short inner axis stays as it is (1024 x 128 x 10 was slower
/// transposed, 34 -> 53 us).
fn narrow_output([m, k, n]: [usize; 3], threads: usize) -> bool {
    n < NARROW_OUTPUT && k >= LONG_INNER / 2 && threads > 1 && split_columns([n, k, m], threads)
}

/// Output columns below which a product counts as narrow ([`narrow_output`]).
const NARROW_OUTPUT: usize = 32;

/// A raw pointer that may cross threads: each thread writes its own disjoint block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used by `matmul`, whose threads write disjoint blocks of one live buffer.
unsafe impl Send for SendPtr {}

// SAFETY: as above; the pointer itself is only copied, never dereferenced concurrently at the
// same location.
unsafe impl Sync for SendPtr {}

/// A read-only raw pointer that may cross threads ([`gemv_columns_split`]'s offered half).
#[derive(Clone, Copy)]
struct SendConst(*const f32);

impl SendConst {
    fn get(self) -> *const f32 {
        self.0
    }
}

// SAFETY: only read, by a task whose caller keeps the memory alive until the task is done.
unsafe impl Send for SendConst {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The builds of gemm's product made here ([`gemm_fn`]: the AVX2 one, and the SSE one
    /// that a CPU without AVX2 runs) against f64 sums, called as [`gemm_raw`] calls them:
    /// plain, accumulated and scaled (`alpha · dst + beta · a·b`), over shapes that fill and
    /// do not fill their microkernels (every SSE tile size, and the AVX2 build's own 16 x 6
    /// tile whole and with 9 of its rows, among them), with `a` transposed and `b` at a
    /// padded row stride, and with `a` row-major and `b` transposed (`x · Wᵀ`, which small
    /// products send to the AVX2 build's horizontal kernels); nothing past the product may be
    /// written.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gemm_builds_made_here_match_f64_sums() {
        let mut builds: Vec<(&str, GemmFn)> = vec![("sse", gemm_sse)];
        // Where pulp makes its AVX2 token, as `gemm_fn` asks.
        if <gemm_common::simd::V3 as gemm_common::simd::MixedSimd<f32, f32, f32, f32>>::try_new().is_some() {
            builds.push(("avx2", gemm_avx2));
        }
        let mut rng = Rng::seed(11);
        // gemm's rows are `n` here and its columns `m`: [7, 5, 12] and [6, 5, 4] take the
        // SSE tiles of 3 and 2 columns, and of 4 rows whole; [64, 96, 50] fills the AVX2
        // build's 16 x 6 tile, and [17, 33, 9] (with `b` not transposed) runs it with 9 of its
        // 16 rows.
        for [m, k, n] in
            [[1usize, 1, 1], [4, 33, 9], [5, 7, 3], [7, 5, 12], [6, 5, 4], [17, 33, 9], [64, 96, 50], [130, 257, 70]]
        {
            for transposed_b in [false, true] {
                // [row, column] strides of a (m x k) and b (k x n) in their buffers.
                let bs = n + 3;
                let (sa, sb) = if transposed_b { ([k, 1], [1, k]) } else { ([1, m], [bs, 1]) };
                let a: Vec<f32> = (0..m * k).map(|_| rng.standard_normal()).collect();
                let b: Vec<f32> = (0..k * bs).map(|_| rng.standard_normal()).collect();
                let start: Vec<f32> = (0..m * n).map(|_| rng.standard_normal()).collect();
                for (name, build) in &builds {
                    for (alpha, beta) in [(0.0f32, 1.0f32), (1.0, 1.0), (0.5, -2.0)] {
                        let accumulate = alpha != 0.0;
                        // Past the m x n values, a guard that no write may reach.
                        const GUARD: usize = 64;
                        let mut dst = start.clone();
                        dst.extend([f32::MAX; GUARD]);
                        // SAFETY: as `gemm_raw`'s call: dst m x n row-major; every offset the
                        // strides give is inside a (m·k values) and b (k·bs); the CPU runs
                        // `build`.
                        unsafe {
                            build(
                                n,
                                m,
                                k,
                                dst.as_mut_ptr(),
                                n as isize,
                                1,
                                accumulate,
                                b.as_ptr(),
                                sb[0] as isize,
                                sb[1] as isize,
                                a.as_ptr(),
                                sa[0] as isize,
                                sa[1] as isize,
                                alpha,
                                beta,
                                false,
                                false,
                                false,
                                gemm_common::Parallelism::None,
                            )
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let terms = (0..k)
                                    .map(|p| f64::from(a[i * sa[0] + p * sa[1]]) * f64::from(b[p * sb[0] + j * sb[1]]));
                                let (sum, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
                                let want = f64::from(beta) * sum + f64::from(alpha) * f64::from(start[i * n + j]);
                                let got = f64::from(dst[i * n + j]);
                                assert!(
                                    (got - want).abs() <= 1e-5 * (2.0 * scale + 1.0),
                                    "{name} {m}x{k}x{n} b transposed {transposed_b} alpha {alpha} beta {beta} \
                                     [{i}, {j}]: {got} vs {want}"
                                );
                            }
                        }
                        assert!(
                            dst[m * n..].iter().all(|&v| v == f32::MAX),
                            "{name} {m}x{k}x{n} b transposed {transposed_b}: a write past the product"
                        );
                    }
                }
            }
        }
    }

    /// The single-threaded product into strided rows: written, then accumulated, an empty
    /// inner axis zeroing (not accumulating), and a destination or operand too short refused.
    #[test]
    fn product_on_this_thread_writes_strided_rows_and_checks_its_slices() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // [3, 2]
        let mut dst = [9.0f32; 8]; // two rows 4 apart
        gemm_on_thread(&mut dst, 4, &a, [3, 1], &b, [2, 1], [2, 3, 2], false);
        assert_eq!(dst, [4.0, 5.0, 9.0, 9.0, 10.0, 11.0, 9.0, 9.0]);
        gemm_on_thread(&mut dst, 4, &a, [3, 1], &b, [2, 1], [2, 3, 2], true);
        assert_eq!(dst, [8.0, 10.0, 9.0, 9.0, 20.0, 22.0, 9.0, 9.0]);
        // bᵀ read through its strides: [2, 3] · ([2, 3] as [3, 2]).
        let mut t = [0.0f32; 4];
        gemm_on_thread(&mut t, 2, &a, [3, 1], &a, [1, 3], [2, 3, 2], false);
        assert_eq!(t, [14.0, 32.0, 32.0, 77.0]);
        gemm_on_thread(&mut dst, 4, &a, [3, 1], &b, [2, 1], [2, 0, 2], true);
        assert_eq!(dst[..2], [8.0, 10.0]);
        gemm_on_thread(&mut dst, 4, &a, [3, 1], &b, [2, 1], [2, 0, 2], false);
        assert_eq!(dst, [0.0, 0.0, 9.0, 9.0, 0.0, 0.0, 9.0, 9.0]);
        let refused = |dst_len: usize, a_len: usize| {
            std::panic::catch_unwind(|| {
                let mut dst = vec![0.0f32; dst_len];
                gemm_on_thread(&mut dst, 4, &a[..a_len], [3, 1], &b, [2, 1], [2, 3, 2], false);
            })
            .is_err()
        };
        assert!(!refused(6, 6));
        assert!(refused(5, 6) && refused(6, 5));
    }

    /// A row times a matrix stored by rows or by columns (the matrix-vector kernels, split
    /// over threads for the larger ones), against a sum in f64, for lengths that are and are
    /// not multiples of the 8 lanes and the 8 columns; by rows with each instruction set this
    /// CPU runs (the portable one without `mul_add`).
    #[test]
    fn vector_matrix_products_match_a_plain_sum() {
        for isa in crate::backend::cpu::simd::Isa::available() {
            crate::backend::cpu::fastmath::with_isa(isa, vector_matrix_products_with_this_isa);
        }
    }

    fn vector_matrix_products_with_this_isa() {
        let mut rng = Rng::seed(5);
        for (k, n) in [(1, 1), (7, 5), (8, 8), (13, 17), (784, 256), (300, 301), (9, 3)] {
            let x: Vec<f32> = (0..k).map(|_| rng.standard_normal()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| rng.standard_normal()).collect();
            let la = Layout::contiguous(&[1, k]);
            // By columns: w holds [n, k] row-major, read as its transpose [k, n].
            let by_columns = Layout::contiguous(&[n, k]).transpose(0, 1).unwrap();
            let by_rows = Layout::contiguous(&[k, n]);
            type At = fn(usize, usize, usize, usize) -> usize;
            let cases: [(Layout, At); 2] = [(by_columns, |j, i, k, _n| j * k + i), (by_rows, |j, i, _k, n| i * n + j)];
            for (lb, at) in cases {
                let got = matmul(&x, &la, &w, &lb, [1, k, n]);
                for (j, g) in got.iter().enumerate() {
                    let want: f64 = (0..k).map(|i| f64::from(x[i]) * f64::from(w[at(j, i, k, n)])).sum();
                    let scale: f64 = (0..k).map(|i| (f64::from(x[i]) * f64::from(w[at(j, i, k, n)])).abs()).sum();
                    assert!(
                        (f64::from(*g) - want).abs() <= 1e-6 * (1.0 + scale),
                        "k {k} n {n} column {j}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Every matrix-vector kernel this CPU runs (AVX-512 and AVX2 where it has them, and the
    /// portable loop that other CPUs run) against a sum in f64: columns of lengths that are
    /// and are not multiples of 8 and of 16 (AVX-512's masked last vector), counts that are
    /// and are not multiples of 8, and a stride longer than a column.
    #[test]
    fn every_gemv_kernel_matches_a_plain_sum() {
        let mut rng = Rng::seed(7);
        // (k, n, stride): stride 0 and strides below k are broadcast matrices (columns that
        // repeat or overlap); 8-column blocks with and without a scalar tail; no columns; empty
        // columns.
        let cases: [(usize, usize, usize); 14] = [
            (1, 1, 1),
            (31, 9, 31),
            (300, 17, 307),
            (40, 8, 40),
            (7, 9, 7),
            (8, 8, 8),
            (16, 17, 21),
            (784, 24, 784),
            (13, 3, 20),
            (9, 10, 0),
            (16, 9, 4),
            (13, 9, 20),
            (5, 0, 5),
            (0, 9, 3),
        ];
        for (k, n, stride) in cases {
            let x: Vec<f32> = (0..k).map(|_| rng.standard_normal()).collect();
            let b: Vec<f32> = (0..n.saturating_sub(1) * stride + k).map(|_| rng.standard_normal()).collect();
            let mut kernels: Vec<(&str, Vec<f32>)> = Vec::new();
            let mut out = vec![f32::NAN; n];
            gemv_columns_portable(&x, &b, stride, &mut out);
            kernels.push(("portable", out));
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                let mut out = vec![f32::NAN; n];
                // SAFETY: the CPU has AVX2 and FMA; `b` holds n columns of k at `stride`.
                unsafe { gemv_columns_avx2(&x, &b, stride, &mut out) };
                kernels.push(("avx2", out));
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut out = vec![f32::NAN; n];
                // SAFETY: the CPU has AVX-512F (and so AVX2 and FMA); `b` holds n columns of
                // k at `stride`.
                unsafe { gemv_columns_avx512(&x, &b, stride, &mut out) };
                kernels.push(("avx512", out));
            }
            for (name, got) in kernels {
                for (j, g) in got.iter().enumerate() {
                    let terms = (0..k).map(|i| f64::from(x[i]) * f64::from(b[j * stride + i]));
                    let (want, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
                    let err = (f64::from(*g) - want).abs();
                    assert!(
                        err <= 1e-6 * (1.0 + scale),
                        "{name}: k {k} n {n} stride {stride} column {j}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// A matrix shorter than its columns need is refused before any kernel reads it.
    #[test]
    #[should_panic(expected = "gemv: 3 columns of 8 at stride 8 in 23 values")]
    fn gemv_refuses_a_matrix_too_short_for_its_columns() {
        let mut out = [0.0f32; 3];
        gemv_columns(&[1.0; 8], &[1.0; 23], 8, &mut out);
    }

    /// Columns so far apart that the last one's end overflows are refused too (the check is
    /// in checked arithmetic; a wrapped sum could have passed).
    #[test]
    #[should_panic(expected = "gemv: 3 columns of 8 at stride 18446744073709551615 in 23 values")]
    fn gemv_refuses_columns_whose_end_overflows() {
        let mut out = [0.0f32; 3];
        gemv_columns(&[1.0; 8], &[1.0; 23], usize::MAX, &mut out);
    }

    /// The two-thread matrix-vector product gives what one thread does, where the caller must
    /// keep the offered half (a pool of one: no other thread to take it) and where a pool
    /// thread may take it (a pool of three: which of the two happens in each call is up to
    /// the threads' timing), and for an odd column count; a matrix too short is refused
    /// before anything is offered.
    #[test]
    fn split_gemv_matches_one_thread() {
        let mut rng = Rng::seed(8);
        for (k, n) in [(784, 256), (100, 33)] {
            let x: Vec<f32> = (0..k).map(|_| rng.standard_normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.standard_normal()).collect();
            let mut want = vec![0.0f32; n];
            gemv_columns(&x, &b, k, &mut want);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for _ in 0..20 {
                    let mut got = vec![f32::NAN; n];
                    pool.install(|| gemv_columns_split(&x, &b, k, &mut got));
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{threads} threads, {k}x{n} column {j}: {g} vs {w}"
                        );
                    }
                    if n % 16 == 0 {
                        assert_eq!(got, want, "{threads} threads: the same kernel on the same columns");
                    }
                }
            }
        }
        let refused = std::panic::catch_unwind(|| gemv_columns_split(&[1.0; 8], &[1.0; 23], 8, &mut [0.0; 3]));
        let message = refused.expect_err("a short matrix is refused");
        assert_eq!(
            message.downcast_ref::<String>().map(String::as_str),
            Some("gemv: 3 columns of 8 at stride 8 in 23 values")
        );
    }

    /// A few rows times a transposed matrix with a long inner axis (a weight gradient's
    /// shape) takes the transposed product, and a long inner axis with a small output splits
    /// it over the threads; both against a sum in f64.
    #[test]
    fn transposed_and_split_products_match_a_plain_sum() {
        let mut rng = Rng::seed(6);
        // (m, k, n, whether the product is computed transposed)
        for (m, k, n, transposed) in
            [(4, 3000, 50, true), (32, 4096, 40, false), (3, 2500, 7, true), (33, 3000, 100, true)]
        {
            let a: Vec<f32> = (0..m * k).map(|_| rng.standard_normal()).collect();
            let bt: Vec<f32> = (0..n * k).map(|_| rng.standard_normal()).collect();
            let la = Layout::contiguous(&[m, k]);
            let lb = Layout::contiguous(&[n, k]).transpose(0, 1).unwrap(); // b = btᵀ, [k, n]
            assert_eq!(packs_less_transposed(&la, &lb, [m, k, n]), transposed, "{m}x{k}x{n}");
            assert!(split_inner(m, n, k, 2));
            let got = matmul(&a, &la, &bt, &lb, [m, k, n]);
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(bt[j * k + p]));
                    let (want, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
                    let g = f64::from(got[i * n + j]);
                    assert!((g - want).abs() <= 1e-6 * (1.0 + scale), "{m}x{k}x{n} at ({i}, {j}): {g} vs {want}");
                }
            }
        }
    }

    /// A weight gradient with a narrow output over a long inner axis (`gᵀ·x` for a layer of
    /// 20 inputs) is computed transposed over two threads; the same shape with `a` stored
    /// row-major (whose transposed product would turn back: this recursed without end before
    /// the guard) is not; both against a sum in f64. A short inner axis, or one thread, is not
    /// narrow.
    #[test]
    fn narrow_outputs_over_long_inner_axes_match_a_plain_sum() {
        let mut rng = Rng::seed(8);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of two threads");
        let (m, k, n) = (256, 1100, 20);
        assert!(narrow_output([m, k, n], 2));
        for a_transposed in [true, false] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.standard_normal()).collect();
            let x: Vec<f32> = (0..k * n).map(|_| rng.standard_normal()).collect(); // [k, n]
            let (la, at): (Layout, Box<dyn Fn(usize, usize) -> f32>) = if a_transposed {
                (Layout::contiguous(&[k, m]).transpose(0, 1).unwrap(), Box::new(|i, p| a[p * m + i]))
            } else {
                (Layout::contiguous(&[m, k]), Box::new(|i, p| a[i * k + p]))
            };
            let lb = Layout::contiguous(&[k, n]);
            let (lat, lbt) = (la.transpose(0, 1).unwrap(), lb.transpose(0, 1).unwrap());
            assert!(!packs_less_transposed(&la, &lb, [m, k, n]));
            assert_eq!(packs_less_transposed(&lbt, &lat, [n, k, m]), !a_transposed, "turns back");
            let got = pool.install(|| matmul(&a, &la, &x, &lb, [m, k, n]));
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| f64::from(at(i, p)) * f64::from(x[p * n + j]));
                    let (want, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
                    let v = f64::from(got[i * n + j]);
                    assert!((v - want).abs() <= 1e-6 * (1.0 + scale), "{a_transposed} ({i}, {j}): {v} vs {want}");
                }
            }
        }
        assert!(!narrow_output([1024, 128, 10], 2), "a short inner axis stays as it is");
        assert!(!narrow_output([m, k, n], 1), "one thread: nothing to split");
    }

    #[test]
    fn bias_is_added_to_every_row_in_place() {
        // Small (one pass) and large (split into tasks of whole rows; 10 does not divide the
        // task size) outputs, with and without the ReLU (which keeps a NaN).
        for rows in [3, 10_000] {
            let bias: Vec<f32> = (0..10).map(|j| j as f32 * 0.5 - 2.0).collect();
            let start: Vec<f32> =
                (0..rows * 10).map(|i| if i == 7 { f32::NAN } else { (i % 17) as f32 - 8.0 }).collect();
            for relu in [false, true] {
                let mut y = start.clone();
                add_to_rows(&mut y, &bias, relu);
                for (i, &v) in y.iter().enumerate() {
                    let sum = start[i] + bias[i % 10];
                    let want = if relu && sum <= 0.0 { 0.0 } else { sum };
                    assert!(v == want || (v.is_nan() && want.is_nan()), "rows {rows}, relu {relu}, value {i}: {v}");
                }
            }
        }
    }

    /// Products split by columns over two threads (a small `a`): `x·Wᵀ` at the `mlp`
    /// benchmark's batch, a weight gradient `xᵀ·g`, `g·W` with both operands contiguous, and
    /// a width that is not a multiple of the column blocks, against a sum in f64; large or
    /// narrow products are not split.
    #[test]
    fn products_split_by_columns_match_a_plain_sum() {
        let mut rng = Rng::seed(7);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of two threads");
        // (m, k, n, whether a is stored transposed, whether b is)
        for (m, k, n, ta, tb) in [
            (128, 784, 256, false, true),
            (784, 128, 256, true, false),
            (128, 128, 256, false, false),
            (96, 200, 150, false, true),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.standard_normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.standard_normal()).collect();
            let la =
                if ta { Layout::contiguous(&[k, m]).transpose(0, 1).unwrap() } else { Layout::contiguous(&[m, k]) };
            let lb =
                if tb { Layout::contiguous(&[n, k]).transpose(0, 1).unwrap() } else { Layout::contiguous(&[k, n]) };
            assert!(split_columns([m, k, n], 2) && !packs_less_transposed(&la, &lb, [m, k, n]), "{m}x{k}x{n}");
            let at = |i: usize, p: usize| f64::from(if ta { a[p * m + i] } else { a[i * k + p] });
            let bt = |p: usize, j: usize| f64::from(if tb { b[j * k + p] } else { b[p * n + j] });
            let got = pool.install(|| matmul(&a, &la, &b, &lb, [m, k, n]));
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| at(i, p) * bt(p, j));
                    let (want, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
                    let g = f64::from(got[i * n + j]);
                    assert!((g - want).abs() <= 1e-6 * (1.0 + scale), "{m}x{k}x{n} at ({i}, {j}): {g} vs {want}");
                }
            }
        }
        assert!(!split_columns([1024, 784, 256], 2), "a large a stays with gemm's threads");
        assert!(!split_columns([128, 128, 10], 2), "too narrow to split");
    }
}
