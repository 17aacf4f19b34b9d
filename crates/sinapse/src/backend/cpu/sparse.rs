//! A dense layer's product for inputs that are mostly zeros: images on a blank background
//! (81% of the MNIST test set's pixels are 0) or the output of a ReLU. Row `i` of `x · Wᵀ` is
//! `Σ_p x[i, p] · Wᵀ[p, :]`, a sum of the rows of `Wᵀ` (laid out `[in, out]`) that the row's
//! entries pick, so the zero entries cost nothing and the rows they would pick are never read.
//! For one sample, where the product only reads the weight once and is bound by how fast the
//! cache delivers it, that reads a fifth of it.
//!
//! Skipping a zero term changes a sum only where it would have been `0 · ±inf` or `0 · NaN`,
//! so the caller takes this path only for a weight known to be finite (`nn::Linear` checks
//! its copy once when it makes it).

/// `relu?(x · wt + bias)` for the row-major `x` (`m x k`) and `wt` (`k x n`), with the zero
/// entries of `x` skipped: a new row-major `m x n` buffer. The bias is added after each row's
/// sum, as the dense product adds it ([`super::matmul::add_to_rows`]).
///
/// # Panics
/// When a slice is shorter than its shape (a bug in the caller).
pub(super) fn linear_skipping_zeros(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    [m, k, n]: [usize; 3],
    relu: bool,
) -> Vec<f32> {
    assert!(x.len() >= m * k && wt.len() >= k * n, "linear_skipping_zeros: {m} x {k} x {n} on short slices");
    assert!(u32::try_from(k).is_ok(), "linear_skipping_zeros: {k} inputs do not fit the u32 positions");
    let mut out = vec![0.0f32; m * n];
    if n == 0 {
        return out;
    }
    // Row by row on this thread: the layer takes this path for one or two rows, a few
    // microseconds each. Splitting one row's columns over two threads, as the dense
    // matrix-vector product does, was slower for the `infer` benchmark's MLP on one sample:
    // the median of 10 alternating rounds (each the median of 1990 calls) 8.2-9.0 us
    // against 6.3-6.4, in two runs (2-core Intel Xeon with AVX-512).
    let mut picked = Vec::with_capacity(k);
    for (row, out) in x[..m * k].chunks_exact(k.max(1)).zip(out.chunks_exact_mut(n)) {
        nonzeros(row, &mut picked);
        add_picked_rows(&picked, wt, out);
    }
    if let Some(bias) = bias {
        super::matmul::add_to_rows(&mut out, bias, relu);
    } else if relu {
        out.iter_mut().for_each(|v| *v = super::elementwise::relu(*v));
    }
    out
}

/// The nonzero entries of `row` as (position, value), in order, into `picked` (cleared
/// first). A NaN is kept (it is not zero); so is every other value but ±0.
fn nonzeros(row: &[f32], picked: &mut Vec<(u32, f32)>) {
    picked.clear();
    picked.resize(row.len(), (0, 0.0));
    // Runs of 16 zeros (an image's blank margins) are passed over whole. Within the others,
    // branch-free: every entry is written, and the count moves on past the nonzero ones (a
    // branch per entry mispredicted on the scattered strokes of an image).
    let mut count = 0;
    for (c, chunk) in row.chunks(16).enumerate() {
        if chunk.iter().fold(true, |zero, &v| zero & (v == 0.0)) {
            continue;
        }
        for (i, &v) in chunk.iter().enumerate() {
            picked[count] = ((c * 16 + i) as u32, v);
            count += usize::from(v != 0.0);
        }
    }
    picked.truncate(count);
}

super::fastmath::dispatch! {
    /// `out += Σ (p, v) in picked: v · wt[p·n .. p·n + n]` with `n = out.len()`: the sum of
    /// the picked rows of `wt`, scaled ([`super::matmul::add_scaled_rows`]).
    fn add_picked_rows(picked: &[(u32, f32)], wt: &[f32], out: &mut [f32]) {
        let n = out.len();
        super::matmul::add_scaled_rows(picked.iter().map(|&(p, v)| (p as usize * n, v)), wt, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// `relu?(x · wt + bias)` summed in f64, every term included.
    fn plain(x: &[f32], wt: &[f32], bias: Option<&[f32]>, [m, k, n]: [usize; 3], relu: bool) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k).map(|p| f64::from(x[i * k + p]) * f64::from(wt[p * n + j])).sum();
                let v = sum + bias.map_or(0.0, |b| f64::from(b[j]));
                out[i * n + j] = if relu { v.max(0.0) } else { v };
            }
        }
        out
    }

    /// With each instruction set this CPU runs (the portable one multiplying and adding in
    /// two steps on x86-64).
    #[test]
    fn matches_a_plain_sum_for_every_shape_and_density() {
        for isa in crate::backend::cpu::simd::Isa::available() {
            crate::backend::cpu::fastmath::with_isa(isa, matches_a_plain_sum_with_this_isa);
        }
    }

    fn matches_a_plain_sum_with_this_isa() {
        let mut rng = Rng::seed(11);
        // Widths below, at and past a block, with a tail; one row and several.
        for (m, k, n) in [(1, 1, 1), (1, 37, 5), (3, 20, 64), (2, 50, 130), (40, 33, 70), (1, 784, 256)] {
            for density in [0.0, 0.2, 0.7, 1.0] {
                let x: Vec<f32> = rng
                    .normals(m * k)
                    .into_iter()
                    .map(|v| if rng.uniform(0.0, 1.0) < density { v } else { 0.0 })
                    .collect();
                let wt = rng.normals(k * n);
                let bias = rng.normals(n);
                for (bias, relu) in [(None, false), (None, true), (Some(&bias[..]), false), (Some(&bias[..]), true)] {
                    let got = linear_skipping_zeros(&x, &wt, bias, [m, k, n], relu);
                    let want = plain(&x, &wt, bias, [m, k, n], relu);
                    assert_eq!(got.len(), m * n);
                    for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{m}x{k}x{n} density {density} bias {} relu {relu} at {idx}: {g} vs {w}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_nan_input_reaches_its_row_and_zeros_of_either_sign_are_skipped() {
        let wt = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 x 2
        let x = [f32::NAN, 0.0, 0.0, -0.0, 1.0, -0.0]; // 2 x 3
        let y = linear_skipping_zeros(&x, &wt, None, [2, 3, 2], false);
        assert!(y[0].is_nan() && y[1].is_nan(), "{y:?}");
        assert_eq!(&y[2..], [3.0, 4.0]);
        // Positions past a run of 16 zeros, a NaN kept, zeros of either sign left out.
        let mut row = vec![0.0f32; 40];
        (row[3], row[5], row[6], row[35], row[39]) = (2.0, -0.0, f32::NAN, -1.5, 1e-30);
        let mut picked = Vec::new();
        nonzeros(&row, &mut picked);
        assert_eq!(picked.iter().map(|&(p, _)| p).collect::<Vec<_>>(), [3, 6, 35, 39]);
        assert_eq!(
            picked.iter().map(|&(_, v)| v.to_bits()).collect::<Vec<_>>(),
            [2.0, f32::NAN, -1.5, 1e-30].map(f32::to_bits)
        );
    }
}
