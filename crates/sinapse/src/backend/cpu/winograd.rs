//! Winograd's minimal filtering F(m×m, r×r) for stride-1, undilated 2-D convolutions with a
//! square r×r kernel (r = 3 or 5) and enough channels on both sides.
//!
//! Each m×m tile of an output plane is `Aᵀ[Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)]A`, for the α×α input
//! patch `d_c` of each channel (α = m + r - 1) and the filter `g_c`: the multiply-adds across
//! channels happen once per transformed point (α² per tile) rather than once per tap and
//! output (r²·m²), 6.25x fewer for F(4×4, 5×5) and 4x for F(4×4, 3×3). After the
//! transforms, each of the α² points is one matrix product `[tiles, C] x [C, O]`. The input's
//! and the filters' gradients are the exact adjoints of the same steps, so they cost about
//! what the forward pass costs (the input's gradient as a direct convolution of the padded
//! output gradient would spend most of its work on the padding).
//!
//! The matrices come from the interpolation points 0, ±1, ±2, ±1/2 (Toom-Cook), built in f64
//! when first used; the sums are in f32, each rounded a few more times than a direct sum
//! (the tests bound the difference against the definition summed in f64).
//!
//! Every step is vectorised along the channels (or filters) of one pixel: images are turned
//! to `[H, W, C]` on their way in and back on their way out, with the channels padded to
//! whole vectors. Tasks take up to 4 images; each transform stage runs over all their tiles
//! at once, in buffers each thread keeps between calls.
//!
//! On the `cnn` benchmark's second layer (16 -> 32 channels, 5x5, 12x12 images, batch 64,
//! 2 threads, AMD EPYC Zen 5 with AVX-512) the three passes took 200, 232 and 233 us here,
//! against 254 us (direct forward kernel), about 400 us (products and col2im) and 257 us
//! (direct filters' gradient).

use std::sync::OnceLock;

use rayon::prelude::*;

use super::elementwise::zeroed;
use super::simd::{instance, Isa, Portable, Simd};
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512, Kind};
use crate::backend::ImageDims;

/// The side of an output tile.
const TILE: usize = 4;

/// The finite interpolation points, in the order they are taken (α - 1 of them).
const POINTS: [f64; 7] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5];

/// One term of a transform's row or column: (index, coefficient), zeros left out.
type Terms = Vec<(usize, f32)>;

/// A transform's rows (or columns, read as rows): their terms, and the operations that
/// compute them ([`RowOp`]).
#[derive(Debug)]
struct Rows {
    terms: Vec<Terms>,
    ops: Vec<RowOp>,
}

impl Rows {
    /// `terms`, with the rows that pair up ([`RowOp::Pair`]) computed together.
    fn new(terms: Vec<Terms>) -> Rows {
        let mut taken = vec![false; terms.len()];
        let mut ops = Vec::with_capacity(terms.len());
        for i in 0..terms.len() {
            if std::mem::replace(&mut taken[i], true) {
                continue;
            }
            let (even, odd): (Terms, Terms) = terms[i].iter().partition(|(index, _)| index % 2 == 0);
            let pairs = (1..=PAIR_TERMS).contains(&even.len()) && (1..=PAIR_TERMS).contains(&odd.len());
            // Row j = E − O of row i's E + O: the same indices, the odd terms' signs flipped,
            // up to the rounding of the coefficients (computed from an inverted matrix).
            let partner = |j: usize| {
                terms[j].len() == terms[i].len()
                    && terms[j].iter().zip(&terms[i]).all(|(&(a, ca), &(b, cb))| {
                        let want = if b % 2 == 0 { cb } else { -cb };
                        a == b && (ca - want).abs() <= 1e-6 * want.abs()
                    })
            };
            match (i + 1..terms.len()).find(|&j| pairs && !taken[j] && partner(j)) {
                Some(j) => {
                    taken[j] = true;
                    ops.push(RowOp::Pair { rows: [i, j], even, odd });
                }
                None => ops.push(RowOp::One { row: i }),
            }
        }
        Rows { terms, ops }
    }
}

impl std::ops::Deref for Rows {
    type Target = [Terms];
    fn deref(&self) -> &[Terms] {
        &self.terms
    }
}

/// How one or two rows of a transform are computed.
#[derive(Debug)]
enum RowOp {
    /// Row `row` from its terms (`Rows::terms[row]`).
    One { row: usize },
    /// Two rows for the points ±p, whose coefficients agree on the even indices and are
    /// opposite on the odd ones: with E the sum of the even terms and O of the odd ones,
    /// `rows[0] = E + O` and `rows[1] = E − O`. Half the multiply-adds of the two rows on
    /// their own, and each input read once.
    Pair { rows: [usize; 2], even: Terms, odd: Terms },
}

/// The most even (and odd) terms of a [`RowOp::Pair`].
const PAIR_TERMS: usize = 4;

/// F(m, r)'s matrices `Aᵀ` (m×α), `G` (α×r) and `Bᵀ` (α×α), as their rows' and columns'
/// nonzero terms (the transforms and their adjoints each read one of the two).
#[derive(Debug)]
struct Transforms {
    m: usize,
    r: usize,
    alpha: usize,
    at_rows: Rows,
    at_cols: Rows,
    g_rows: Rows,
    g_cols: Rows,
    bt_rows: Rows,
    bt_cols: Rows,
}

impl Transforms {
    /// F(`m`, `r`) from the first `m + r - 2` points and infinity. The correlation
    /// `y_i = Σ_k g_k d_(i+k)` is the transpose of Toom-Cook's product of polynomials
    /// (evaluate both factors, multiply, interpolate): `y = Aᵀ[(G g) ⊙ (Bᵀ d)]` with `Aᵀ` the
    /// evaluation of the m-term factor transposed, `G` the evaluation of the filter divided by
    /// each point's Lagrange denominator, and `Bᵀ` the interpolation transposed, times those
    /// denominators (so that its entries stay small).
    fn new(m: usize, r: usize) -> Transforms {
        let alpha = m + r - 1;
        let finite = alpha - 1;
        assert!(m >= 1 && r >= 2 && finite <= POINTS.len(), "F({m}, {r}) needs {finite} points");
        let p = &POINTS[..finite];
        let mut at = vec![0.0f64; m * alpha];
        for i in 0..m {
            for (j, &pj) in p.iter().enumerate() {
                at[i * alpha + j] = pj.powi(i as i32);
            }
        }
        at[(m - 1) * alpha + finite] = 1.0;
        let denominators: Vec<f64> =
            (0..finite).map(|j| (0..finite).filter(|&l| l != j).map(|l| p[j] - p[l]).product()).collect();
        let mut g = vec![0.0f64; alpha * r];
        for (j, (&pj, &dj)) in p.iter().zip(&denominators).enumerate() {
            for k in 0..r {
                g[j * r + k] = pj.powi(k as i32) / dj;
            }
        }
        g[finite * r + r - 1] = 1.0;
        // The evaluation of a polynomial of degree α - 1 at every point (its leading
        // coefficient at infinity), and its inverse: the interpolation.
        let mut v = vec![0.0f64; alpha * alpha];
        for (j, &pj) in p.iter().enumerate() {
            for k in 0..alpha {
                v[j * alpha + k] = pj.powi(k as i32);
            }
        }
        v[finite * alpha + alpha - 1] = 1.0;
        let c = invert(v, alpha);
        let mut bt = vec![0.0f64; alpha * alpha];
        for row in 0..alpha {
            for col in 0..alpha {
                let scale = if col < finite { denominators[col] } else { 1.0 };
                bt[col * alpha + row] = c[row * alpha + col] * scale;
            }
        }
        let rows = |a: &[f64], cols: usize| -> Vec<Terms> {
            a.chunks_exact(cols)
                .map(|row| row.iter().enumerate().filter(|(_, &x)| x != 0.0).map(|(i, &x)| (i, x as f32)).collect())
                .collect()
        };
        let cols = |a: &[f64], cols: usize| -> Vec<Terms> {
            (0..cols)
                .map(|j| {
                    a.chunks_exact(cols)
                        .enumerate()
                        .filter(|(_, row)| row[j] != 0.0)
                        .map(|(i, row)| (i, row[j] as f32))
                        .collect()
                })
                .collect()
        };
        Transforms {
            m,
            r,
            alpha,
            at_rows: Rows::new(rows(&at, alpha)),
            at_cols: Rows::new(cols(&at, alpha)),
            g_rows: Rows::new(rows(&g, r)),
            g_cols: Rows::new(cols(&g, r)),
            bt_rows: Rows::new(rows(&bt, alpha)),
            bt_cols: Rows::new(cols(&bt, alpha)),
        }
    }

    /// The transforms for an r×r kernel with 4×4 tiles (built once per process).
    fn for_kernel(r: usize) -> Option<&'static Transforms> {
        static THREE: OnceLock<Transforms> = OnceLock::new();
        static FIVE: OnceLock<Transforms> = OnceLock::new();
        match r {
            3 => Some(THREE.get_or_init(|| Transforms::new(TILE, 3))),
            5 => Some(FIVE.get_or_init(|| Transforms::new(TILE, 5))),
            _ => None,
        }
    }
}

/// The inverse of the `n`×`n` row-major matrix `a` (Gauss-Jordan with partial pivoting; `a`
/// is a Vandermonde matrix of distinct points, so never singular).
fn invert(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    let mut inv = vec![0.0f64; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs())).expect("rows");
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
            inv.swap(col * n + k, pivot * n + k);
        }
        let d = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= d;
            inv[col * n + k] /= d;
        }
        for row in (0..n).filter(|&row| row != col) {
            let f = a[row * n + col];
            for k in 0..n {
                a[row * n + k] -= f * a[col * n + k];
                inv[row * n + k] -= f * inv[col * n + k];
            }
        }
    }
    inv
}

/// The sizes one Winograd convolution runs over.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Images.
    n: usize,
    /// Input channels.
    c: usize,
    /// Filters (output channels).
    k: usize,
    /// Channels padded to whole vectors.
    cp: usize,
    /// Filters padded to whole vectors.
    kp: usize,
    /// Input plane height.
    h: usize,
    /// Input plane width.
    w: usize,
    /// Output plane height.
    oh: usize,
    /// Output plane width.
    ow: usize,
    /// Zero rows above and below the input.
    ph: usize,
    /// Zero columns left and right of the input.
    pw: usize,
    /// Tiles per row of an output plane.
    tw: usize,
    /// Tiles per image.
    tiles: usize,
    /// Rows of the padded `[H, W, C]` image, enough for every tile's patch.
    hx: usize,
    /// Columns of the padded `[H, W, C]` image.
    wx: usize,
    /// Images per task.
    chunk: usize,
}

/// Bytes of transformed tiles one image may take in a task's buffers: larger images (224x224
/// with 64 channels would take about 29 MB) are left to the direct kernels, so that no
/// thread keeps more than a few MB.
const IMAGE_BYTES: usize = 2 << 20;

/// The plan for a stride-1 undilated convolution of `dims` with `o` filters of `kernel`,
/// `padding`, vectors of `lanes`; `None` where this path does not apply: another kernel
/// size, too few channels or filters for the products between them to pay for the
/// transforms, outputs narrower than a tile, or images past [`IMAGE_BYTES`].
fn plan(dims: ImageDims, o: usize, kernel: [usize; 2], padding: [usize; 2], lanes: usize) -> Option<Plan> {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let [kh, kw] = kernel;
    let t = Transforms::for_kernel(kh)?;
    if kh != kw || c < 8 || o < 8 || oh < TILE || ow < TILE || n * h * w == 0 {
        return None;
    }
    assert!(
        oh + kh == h + 2 * padding[0] + 1 && ow + kw == w + 2 * padding[1] + 1,
        "winograd: not a stride-1 convolution"
    );
    let (th, tw) = (oh.div_ceil(TILE), ow.div_ceil(TILE));
    let (cp, kp) = (c.div_ceil(lanes) * lanes, o.div_ceil(lanes) * lanes);
    let image_bytes = th * tw * t.alpha * t.alpha * cp.max(kp) * std::mem::size_of::<f32>();
    if image_bytes > IMAGE_BYTES {
        return None;
    }
    // Up to 4 images a task (and IMAGE_BYTES in all): their transformed tiles (about 0.1 MB
    // a buffer for the `cnn` benchmark's second layer) stay in the core's cache, and each
    // transform's rows are long enough to keep its coefficients in registers (1, 2, 4 and 8
    // images timed within 5% of each other).
    let chunk = n.div_ceil(rayon::current_num_threads()).clamp(1, 4).min(IMAGE_BYTES / image_bytes);
    Some(Plan {
        n,
        c,
        k: o,
        cp,
        kp,
        h,
        w,
        oh,
        ow,
        ph: padding[0],
        pw: padding[1],
        tw,
        tiles: th * tw,
        hx: th * TILE + kh - 1,
        wx: tw * TILE + kw - 1,
        chunk,
    })
}

/// `dst[..len] (+)= Σ coef · src[index · stride ..][..len]` over `terms` (at most 8; with
/// none, `dst` is zeroed, or left as it is with `add`), `len` a whole number of vectors: the coefficients and row pointers
/// stay in registers along the row.
#[inline(always)]
unsafe fn combine<S: Simd>(
    dst: *mut f32,
    src: *const f32,
    stride: usize,
    terms: &[(usize, f32)],
    len: usize,
    add: bool,
) {
    #[inline(always)]
    unsafe fn with<S: Simd, const N: usize>(
        dst: *mut f32,
        src: *const f32,
        stride: usize,
        terms: &[(usize, f32)],
        len: usize,
        add: bool,
    ) {
        let coef: [S::V; N] = std::array::from_fn(|t| S::splat(&terms[t].1));
        let rows: [*const f32; N] = std::array::from_fn(|t| src.add(terms[t].0 * stride));
        for e in (0..len).step_by(S::LANES) {
            let mut acc = if add { S::load(dst.add(e)) } else { S::zero() };
            for (c, row) in coef.iter().zip(&rows) {
                acc = S::fma(*c, S::load(row.add(e)), acc);
            }
            S::store(dst.add(e), acc);
        }
    }
    match terms.len() {
        0 => with::<S, 0>(dst, src, stride, terms, len, add),
        1 => with::<S, 1>(dst, src, stride, terms, len, add),
        2 => with::<S, 2>(dst, src, stride, terms, len, add),
        3 => with::<S, 3>(dst, src, stride, terms, len, add),
        4 => with::<S, 4>(dst, src, stride, terms, len, add),
        5 => with::<S, 5>(dst, src, stride, terms, len, add),
        6 => with::<S, 6>(dst, src, stride, terms, len, add),
        7 => with::<S, 7>(dst, src, stride, terms, len, add),
        8 => with::<S, 8>(dst, src, stride, terms, len, add),
        n => unreachable!("a transform row of {n} terms (at most α = 8)"),
    }
}

/// `dst[o][p] = Σ_a Σ_b L[o][a] R[p][b] src[a][b]` for blocks of `len` values (a whole
/// number of vectors), `src` `[a][b]` with `cols` blocks a row and `dst` `[o][p]`, through
/// `tmp` (`left.len() · cols` blocks): each of the transforms, `L X Rᵀ`, and their adjoints
/// are one of these, with `L` and `R` as rows or as columns of a matrix.
#[inline(always)]
unsafe fn two_sided<S: Simd>(
    left: &Rows,
    right: &Rows,
    src: *const f32,
    cols: usize,
    tmp: &mut [f32],
    dst: *mut f32,
    len: usize,
) {
    let (nl, nr) = (left.len(), right.len());
    assert!(tmp.len() >= nl * cols * len);
    let tp = tmp.as_mut_ptr();
    for op in &left.ops {
        for b in 0..cols {
            row_op::<S>(left, op, |o| tp.add((o * cols + b) * len), src.add(b * len), cols * len, len);
        }
    }
    for o in 0..nl {
        for op in &right.ops {
            row_op::<S>(right, op, |q| dst.add((o * nr + q) * len), tp.add(o * cols * len), len, len);
        }
    }
}

/// The row or rows of `op`, one of `rows`' operations ([`combine`], [`combine_pair`]), row
/// `i` written at `at(i)`.
#[inline(always)]
unsafe fn row_op<S: Simd>(
    rows: &Rows,
    op: &RowOp,
    at: impl Fn(usize) -> *mut f32,
    src: *const f32,
    stride: usize,
    len: usize,
) {
    match op {
        RowOp::One { row } => combine::<S>(at(*row), src, stride, &rows.terms[*row], len, false),
        RowOp::Pair { rows, even, odd } => combine_pair::<S>([at(rows[0]), at(rows[1])], src, stride, [even, odd], len),
    }
}

/// A [`RowOp::Pair`]'s two rows, `len` values (a whole number of vectors) each: `E = Σ even`
/// and `O = Σ odd` of `coef · src[index · stride ..]`, then `dst[0] = E + O` and
/// `dst[1] = E − O`, with E and O in registers.
#[inline(always)]
unsafe fn combine_pair<S: Simd>(
    dst: [*mut f32; 2],
    src: *const f32,
    stride: usize,
    [even, odd]: [&[(usize, f32)]; 2],
    len: usize,
) {
    #[inline(always)]
    unsafe fn with<S: Simd, const E: usize, const O: usize>(
        dst: [*mut f32; 2],
        src: *const f32,
        stride: usize,
        [even, odd]: [&[(usize, f32)]; 2],
        len: usize,
    ) {
        let ce: [S::V; E] = std::array::from_fn(|t| S::splat(&even[t].1));
        let re: [*const f32; E] = std::array::from_fn(|t| src.add(even[t].0 * stride));
        let co: [S::V; O] = std::array::from_fn(|t| S::splat(&odd[t].1));
        let ro: [*const f32; O] = std::array::from_fn(|t| src.add(odd[t].0 * stride));
        let (one, minus) = (S::splat(&1.0), S::splat(&-1.0));
        for e in (0..len).step_by(S::LANES) {
            let mut a = S::zero();
            for (c, row) in ce.iter().zip(&re) {
                a = S::fma(*c, S::load(row.add(e)), a);
            }
            let mut b = S::zero();
            for (c, row) in co.iter().zip(&ro) {
                b = S::fma(*c, S::load(row.add(e)), b);
            }
            // Exact: 1·O and −1·O round to themselves, so each is one rounded sum.
            S::store(dst[0].add(e), S::fma(one, b, a));
            S::store(dst[1].add(e), S::fma(minus, b, a));
        }
    }
    macro_rules! sizes {
        ($($e:literal $o:literal),*) => {
            match (even.len(), odd.len()) {
                $(($e, $o) => with::<S, $e, $o>(dst, src, stride, [even, odd], len),)*
                (e, o) => unreachable!("a pair of rows of {e} + {o} terms (at most {PAIR_TERMS} each)"),
            }
        };
    }
    sizes!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4, 4 1, 4 2, 4 3, 4 4)
}

/// One product per transform point: `dst[point] = src[point] · filters[point]`, with
/// `src[point]` `rows`×`inner`, `filters[point]` `inner`×`outer` and `dst[point]`
/// `rows`×`outer`, each row-major and the points one after another. The forward pass's
/// (channels to filters) and the input gradient's (filters to channels) middle stage.
///
/// # Safety
/// `S`'s instructions must be available; `src`, `filters` and `dst` must hold `points` such
/// blocks, `outer` a whole number of vectors.
#[inline(always)]
unsafe fn per_point<S: Simd>(
    points: usize,
    src: *const f32,
    rows: usize,
    inner: usize,
    filters: *const f32,
    outer: usize,
    dst: *mut f32,
) {
    for point in 0..points {
        let (a, b) = (src.add(point * rows * inner), filters.add(point * inner * outer));
        product::<S>(a, [inner, 1], rows, inner, b, outer, dst.add(point * rows * outer), false);
    }
}

/// `out (+)= a · b` for `a` `rows`×`inner` read at strides (`a_rs`, `a_cs`), `b` `inner`×`n`
/// and `out` `rows`×`n` row-major, `n` a whole number of vectors: blocks of up to 8 rows by
/// 2 vectors of sums in registers, one broadcast of `a` per 2 multiply-adds.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn product<S: Simd>(
    a: *const f32,
    [a_rs, a_cs]: [usize; 2],
    rows: usize,
    inner: usize,
    b: *const f32,
    n: usize,
    out: *mut f32,
    add: bool,
) {
    #[inline(always)]
    unsafe fn block<S: Simd, const R: usize, const NB: usize>(
        a: *const f32,
        [a_rs, a_cs]: [usize; 2],
        inner: usize,
        b: *const f32,
        n: usize,
        out: *mut f32,
        add: bool,
    ) {
        let mut acc = [[S::zero(); NB]; R];
        if add {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = S::load(out.add(r * n + v * S::LANES));
                }
            }
        }
        for i in 0..inner {
            let bv: [S::V; NB] = std::array::from_fn(|v| S::load(b.add(i * n + v * S::LANES)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(a.add(r * a_rs + i * a_cs));
                for (x, &bv) in row.iter_mut().zip(&bv) {
                    *x = S::fma(av, bv, *x);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                S::store(out.add(r * n + v * S::LANES), x);
            }
        }
    }
    let vectors = n / S::LANES;
    // Eight rows where the sums fit the registers (8 x 2 vectors on AVX-512's 32, 8 x 1 on
    // AVX2's 16): with one vector of columns, four rows were four chains of multiply-adds,
    // each waiting on the last (the input gradient's products, 16 channels).
    let eight = S::LANES >= 16 || vectors == 1;
    let mut row = 0;
    while row < rows {
        let (a_row, out_row) = (a.add(row * a_rs), out.add(row * n));
        let left = rows - row;
        let r = if eight && left >= 8 {
            8
        } else if left >= 4 {
            4
        } else {
            1
        };
        let mut v = 0;
        while v < vectors {
            let (bb, ob) = (b.add(v * S::LANES), out_row.add(v * S::LANES));
            let two = vectors - v >= 2;
            match (r, two) {
                (8, true) => block::<S, 8, 2>(a_row, [a_rs, a_cs], inner, bb, n, ob, add),
                (8, false) => block::<S, 8, 1>(a_row, [a_rs, a_cs], inner, bb, n, ob, add),
                (4, true) => block::<S, 4, 2>(a_row, [a_rs, a_cs], inner, bb, n, ob, add),
                (4, false) => block::<S, 4, 1>(a_row, [a_rs, a_cs], inner, bb, n, ob, add),
                (_, true) => block::<S, 1, 2>(a_row, [a_rs, a_cs], inner, bb, n, ob, add),
                (_, false) => block::<S, 1, 1>(a_row, [a_rs, a_cs], inner, bb, n, ob, add),
            }
            v += if two { 2 } else { 1 };
        }
        row += r;
    }
}

/// The filters `[O, C, r, r]` transformed: `u[point][channel][filter]` (`G g Gᵀ` for each
/// filter and channel), channels and filters padded with zeros, and, with `transposed`, the
/// same as `[point][filter][channel]` (the input gradient's products read it so). The
/// transform combines the taps' blocks value by value (each of the `cp·kp` places on its
/// own), so the transposed result is the transform of the taps laid out transposed: no pass
/// over `u` afterwards.
#[inline(always)]
unsafe fn filters_transformed<S: Simd>(
    t: &Transforms,
    p: Plan,
    w: &[f32],
    transposed: bool,
    u: &mut [f32],
    buf: &mut Buffers,
) {
    let (r, alpha, ckp) = (t.r, t.alpha, p.cp * p.kp);
    assert!(w.len() == p.k * p.c * r * r && u.len() == alpha * alpha * ckp);
    // The filters as [i][j][channel][filter] (or [i][j][filter][channel]), written in order,
    // each value read from `w` at a stride (`C·r·r` along the filters, `r·r` along the
    // channels; the other order, writes `cp·kp` apart, was most of this function's time).
    // Unchecked reads and kept buffers: the checked loop and zeroing fresh buffers took about
    // three quarters of the function's samples (`perf`).
    let (rr, row) = (r * r, if transposed { p.cp } else { p.kp });
    let (outer, inner, outer_step, inner_step) = match transposed {
        true => (p.k, p.c, p.c * rr, rr),
        false => (p.c, p.k, rr, p.c * rr),
    };
    // Every value written, the padding's zeros too: the buffers hold the last call's.
    let wt = Buffers::fit(&mut buf.v, rr * ckp);
    for (ij, block) in wt.chunks_exact_mut(ckp).enumerate() {
        for (a, dst) in block.chunks_exact_mut(row).enumerate() {
            if a >= outer {
                dst.fill(0.0);
                continue;
            }
            let from = &w[a * outer_step + ij..];
            for (b, x) in dst[..inner].iter_mut().enumerate() {
                // SAFETY: the tap (a, b, ij) of `w`, `[O, C, r, r]` (its length asserted
                // above): `a · outer_step + ij + b · inner_step < O·C·r·r`.
                *x = unsafe { *from.get_unchecked(b * inner_step) };
            }
            dst[inner..].fill(0.0);
        }
    }
    let tmp = Buffers::fit(&mut buf.tmp, alpha * r * ckp);
    two_sided::<S>(&t.g_rows, &t.g_rows, wt.as_ptr(), r, tmp, u.as_mut_ptr(), ckp);
}

/// The adjoint of [`filters_transformed`]: the filters' gradient `[O, C, r, r]` from the
/// gradient of the transformed filters `du[point][channel][filter]`.
#[inline(always)]
unsafe fn filters_gradient<S: Simd>(t: &Transforms, p: Plan, du: &[f32], dw: &mut [f32], buf: &mut Buffers) {
    let (r, alpha, ckp) = (t.r, t.alpha, p.cp * p.kp);
    assert!(du.len() == alpha * alpha * ckp && dw.len() == p.k * p.c * r * r);
    // Both written whole by the transform (the buffers hold the last call's values).
    let tmp = Buffers::fit(&mut buf.tmp, r * alpha * ckp);
    let taps = Buffers::fit(&mut buf.v, r * r * ckp);
    two_sided::<S>(&t.g_cols, &t.g_cols, du.as_ptr(), alpha, tmp, taps.as_mut_ptr(), ckp);
    // Written in order, each value read at a stride of `cp·kp` (all `r·r` taps of one
    // channel and filter).
    for (f, filter) in dw.chunks_exact_mut(p.c * r * r).enumerate() {
        for (ch, out) in filter.chunks_exact_mut(r * r).enumerate() {
            let from = &taps[ch * p.kp + f..];
            for (ij, x) in out.iter_mut().enumerate() {
                // SAFETY: tap `ij` of channel `ch` and filter `f` in `taps`, `[r·r][cp][kp]`:
                // `ch·kp + f + ij·ckp < r·r·ckp` (`ch < c <= cp`, `f < k <= kp`).
                *x = unsafe { *from.get_unchecked(ij * ckp) };
            }
        }
    }
}

/// Where pixel `px` (row-major in an input plane) sits in the padded `[hx, wx, cp]` image.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn pixel_offset(p: Plan, px: usize) -> usize {
    ((px / p.w + p.ph) * p.wx + px % p.w + p.pw) * p.cp
}

/// Where output `px` (row-major in an output plane) of the chunk's image whose tiles start at
/// `first` sits in a `[tile row][tile column][tile][kp]` buffer of `total` tiles.
#[inline(always)]
fn tile_offset(p: Plan, px: usize, total: usize, first: usize) -> usize {
    let (y, x) = (px / p.ow, px % p.ow);
    let (tile, pq) = ((y / TILE) * p.tw + x / TILE, (y % TILE) * TILE + x % TILE);
    (pq * total + first + tile) * p.kp
}

/// Image `b` of the `[N, C, H, W]` batch `x` into `xh`, `[hx, wx, cp]` with the padding
/// (only the image's pixels are written, with zeros in their padding channels on AVX-512:
/// the rest of `xh` stays as it was, zeros).
#[inline(always)]
unsafe fn image_in<S: Simd>(p: Plan, x: &[f32], b: usize, xh: &mut [f32]) {
    let image = &x[b * p.c * p.h * p.w..][..p.c * p.h * p.w];
    assert!(xh.len() >= p.hx * p.wx * p.cp && p.h + p.ph <= p.hx && p.w + p.pw <= p.wx && p.c <= p.cp);
    if is_wide::<S>() {
        assert!(p.cp.is_multiple_of(16), "whole vectors of channels");
        // SAFETY: AVX-512 (`is_wide`); each pixel's `cp` channels lie inside `xh` (asserted).
        #[cfg(target_arch = "x86_64")]
        wide::planes_to_vectors(image, p.c, p.h * p.w, xh.as_mut_ptr(), |px| pixel_offset(p, px));
        return;
    }
    for (ch, plane) in image.chunks_exact(p.h * p.w).enumerate() {
        for (y, row) in plane.chunks_exact(p.w).enumerate() {
            let dst = xh[((y + p.ph) * p.wx + p.pw) * p.cp + ch..].as_mut_ptr();
            for (xx, &v) in row.iter().enumerate() {
                // SAFETY: pixel (y + ph, xx + pw) of the `[hx, wx, cp]` buffer (asserted).
                *dst.add(xx * p.cp) = v;
            }
        }
    }
}

/// Every tile's α×α input patch of the `[hx, wx, cp]` image `xh`, into `d[i][j][first +
/// tile][cp]` for a chunk of `total` tiles (vector copies: `copy_from_slice` called `memcpy`
/// for each 64 bytes).
#[inline(always)]
unsafe fn patches_in<S: Simd>(p: Plan, alpha: usize, xh: &[f32], first: usize, total: usize, d: &mut [f32]) {
    assert!(xh.len() >= p.hx * p.wx * p.cp && d.len() >= alpha * alpha * total * p.cp && first + p.tiles <= total);
    for tile in 0..p.tiles {
        let (ty, tx) = (tile / p.tw, tile % p.tw);
        for i in 0..alpha {
            let src = xh.as_ptr().add(((ty * TILE + i) * p.wx + tx * TILE) * p.cp);
            for j in 0..alpha {
                let dst = d.as_mut_ptr().add(((i * alpha + j) * total + first + tile) * p.cp);
                for e in (0..p.cp).step_by(S::LANES) {
                    S::store(dst.add(e), S::load(src.add(j * p.cp + e)));
                }
            }
        }
    }
}

/// Image `b`'s output gradient (`[N, O, OH, OW]`) as tiles, `dy[p][q][first + tile][kp]`
/// for a chunk of `total` tiles (the outputs only, with zeros in their padding filters on
/// AVX-512: the rest of `dy` is left as it is).
#[inline(always)]
unsafe fn gradient_in<S: Simd>(p: Plan, g: &[f32], b: usize, first: usize, total: usize, dy: &mut [f32]) {
    let (image, plane) = (&g[b * p.k * p.oh * p.ow..][..p.k * p.oh * p.ow], p.oh * p.ow);
    assert!(dy.len() >= TILE * TILE * total * p.kp && first + p.tiles <= total);
    if is_wide::<S>() {
        assert!(p.kp.is_multiple_of(16) && p.k <= p.kp, "whole vectors of filters");
        // SAFETY: AVX-512 (`is_wide`); each output's `kp` filters lie inside `dy` (asserted).
        #[cfg(target_arch = "x86_64")]
        wide::planes_to_vectors(image, p.k, plane, dy.as_mut_ptr(), |px| tile_offset(p, px, total, first));
        return;
    }
    // Output by output, its filters written side by side.
    for px in 0..plane {
        let dst = &mut dy[tile_offset(p, px, total, first)..][..p.k];
        for (f, v) in dst.iter_mut().enumerate() {
            *v = image[f * plane + px];
        }
    }
}

/// Whether `S` is the AVX-512 instance, whose layout moves are register transposes
/// ([`wide`]) rather than one value at a time.
#[inline(always)]
fn is_wide<S: Simd>() -> bool {
    cfg!(target_arch = "x86_64") && S::AVX512
}

/// The layout moves between planes (`[channel][pixel]`) and pixel vectors
/// (`[pixel][channel]`) on AVX-512, 16 channels by 16 pixels at a time through a register
/// transpose: one value at a time, they were a tenth of the `cnn` step.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// The 16x16 transpose of `r` (row `i` of the result is column `i` of `r`).
    #[inline(always)]
    unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        let pairs: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // Within each group of 4 rows: 4x4 blocks transposed in every 128-bit lane.
        let quads: [__m512; 16] = std::array::from_fn(|i| {
            let g = i & !3;
            let (a, b) = match i % 4 {
                0 | 1 => (pairs[g], pairs[g + 2]),
                _ => (pairs[g + 1], pairs[g + 3]),
            };
            let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
            _mm512_castpd_ps(if i % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
        });
        // The 128-bit lanes: first across groups 0/1 and 2/3, then across the two halves.
        let halves: [__m512; 16] = std::array::from_fn(|i| {
            let (base, k) = (if i < 8 { 0 } else { 8 }, i % 8);
            let (a, b) = (quads[base + k % 4], quads[base + 4 + k % 4]);
            if k < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        });
        std::array::from_fn(|i| {
            let k = i % 8;
            let (a, b) = (halves[k], halves[8 + k]);
            if i < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        })
    }

    /// The first `n` lanes (at most 16).
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `count` planes of `len` values, `planes[c·len + i]`, to one vector per pixel: pixel
    /// `i`'s 16 channels from `c0` stored at `dst + at(i) + c0` (channels past `count` as 0).
    ///
    /// # Safety
    /// AVX-512F; `planes` holds `count·len` values and every `dst + at(i) + c0 .. + 16`, for
    /// `c0` a multiple of 16 below `count`, is writable.
    #[inline(always)]
    pub(super) unsafe fn planes_to_vectors(
        planes: &[f32],
        count: usize,
        len: usize,
        dst: *mut f32,
        at: impl Fn(usize) -> usize,
    ) {
        assert!(planes.len() >= count * len);
        for c0 in (0..count).step_by(16) {
            for p0 in (0..len).step_by(16) {
                let pixels = first(len - p0);
                let rows = std::array::from_fn(|k| {
                    if c0 + k < count {
                        _mm512_maskz_loadu_ps(pixels, planes.as_ptr().add((c0 + k) * len + p0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (j, v) in transpose(rows).iter().enumerate().take(len - p0) {
                    _mm512_storeu_ps(dst.add(at(p0 + j) + c0), *v);
                }
            }
        }
    }

    /// The reverse of [`planes_to_vectors`]: pixel `i`'s vector at `src + from(i)` to planes
    /// `planes[c·len + i]` for `c < count`, plus `bias[c]` when given.
    ///
    /// # Safety
    /// AVX-512F; every `src + from(i) + c0 .. + 16` (`c0` a multiple of 16 below `count`) is
    /// readable, and `planes` holds `count·len` values.
    #[inline(always)]
    pub(super) unsafe fn vectors_to_planes(
        src: *const f32,
        from: impl Fn(usize) -> usize,
        count: usize,
        len: usize,
        planes: &mut [f32],
        bias: Option<&[f32]>,
    ) {
        assert!(planes.len() >= count * len && bias.is_none_or(|b| b.len() >= count));
        for c0 in (0..count).step_by(16) {
            for p0 in (0..len).step_by(16) {
                let n = (len - p0).min(16);
                let rows = std::array::from_fn(|j| {
                    if j < n {
                        _mm512_loadu_ps(src.add(from(p0 + j) + c0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (k, v) in transpose(rows).iter().enumerate().take(count - c0) {
                    let v = match bias {
                        Some(b) => _mm512_add_ps(*v, _mm512_set1_ps(b[c0 + k])),
                        None => *v,
                    };
                    _mm512_mask_storeu_ps(planes.as_mut_ptr().add((c0 + k) * len + p0), first(n), v);
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        /// The transpose and both moves against index arithmetic, on counts and lengths that
        /// fill and do not fill 16.
        #[test]
        fn moves_match_the_layouts() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                eprintln!("no AVX-512 on this CPU: the wide layout moves are not tested here");
                return;
            }
            for (count, len) in [(16usize, 16usize), (9, 37), (32, 5), (20, 64)] {
                let cp = count.div_ceil(16) * 16;
                let planes: Vec<f32> = (0..count * len).map(|i| i as f32).collect();
                let mut vectors = vec![-1.0f32; len * cp];
                // SAFETY: the CPU has AVX-512F (checked above); `vectors` holds `len` rows of
                // `cp`, a multiple of 16.
                unsafe { super::planes_to_vectors(&planes, count, len, vectors.as_mut_ptr(), |i| i * cp) };
                for i in 0..len {
                    for c in 0..cp {
                        let want = if c < count { planes[c * len + i] } else { 0.0 };
                        assert_eq!(vectors[i * cp + c], want, "count {count} len {len}: pixel {i} channel {c}");
                    }
                }
                let bias: Vec<f32> = (0..count).map(|c| 1000.0 * c as f32).collect();
                let mut back = vec![0.0f32; count * len];
                // SAFETY: as above; `back` holds `count · len` values.
                unsafe { super::vectors_to_planes(vectors.as_ptr(), |i| i * cp, count, len, &mut back, Some(&bias)) };
                for (i, (&b, &p)) in back.iter().zip(&planes).enumerate() {
                    assert_eq!(b, p + bias[i / len], "count {count} len {len}: value {i}");
                }
            }
        }
    }
}

/// What a task of the forward pass reads.
struct Forward<'a> {
    t: &'static Transforms,
    p: Plan,
    x: &'a [f32],
    u: &'a [f32],
    bias: &'a [f32],
}

/// A thread's buffers, kept between calls (about 0.5 MB for the `cnn` benchmark's second
/// layer): zeroing fresh ones for every task cost a fifth of the time.
#[derive(Default)]
struct Buffers {
    image: Vec<f32>,
    d: Vec<f32>,
    tmp: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
    /// The transformed filters of [`forward`] and [`input_gradient`], kept between calls:
    /// a zeroed allocation each time cost a pass over the 128 KB (the `cnn` benchmark's second
    /// layer) on the calling thread while the others waited.
    static FILTERS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Buffers {
    /// Each buffer at least `len` long (new space zeroed).
    fn fit(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        &mut buf[..len]
    }
}

/// One chunk of images of the forward pass (images `first..first + out.len() / (O·OH·OW)`):
/// the patches transformed (`Bᵀ d B`), one product per point, and each tile's outputs
/// transformed back (`Aᵀ M A`, plus the bias) to the `[O, OH, OW]` planes of `out`.
type ForwardChunk = unsafe fn(&Forward<'_>, usize, &mut [f32], &mut Buffers);

/// [`ForwardChunk`]'s body.
#[inline(always)]
unsafe fn forward_chunk<S: Simd>(job: &Forward<'_>, first: usize, out: &mut [f32], buf: &mut Buffers) {
    let (t, p) = (job.t, job.p);
    let (m, alpha) = (t.m, t.alpha);
    let plane = p.oh * p.ow;
    let images = out.len() / (p.k * plane);
    let total = images * p.tiles;
    let (lc, lk) = (total * p.cp, total * p.kp);
    let xh = Buffers::fit(&mut buf.image, p.hx * p.wx * p.cp);
    // Zero once: each image then writes the same pixels, so the padding stays zero.
    xh.fill(0.0);
    // The patches, and later the outputs.
    let d = Buffers::fit(&mut buf.d, (alpha * alpha * lc).max(m * m * lk));
    for b in 0..images {
        image_in::<S>(p, job.x, first + b, xh);
        patches_in::<S>(p, alpha, xh, b * p.tiles, total, d);
    }
    let tmp = Buffers::fit(&mut buf.tmp, alpha * alpha * lc.max(lk));
    let v = Buffers::fit(&mut buf.v, alpha * alpha * lc);
    two_sided::<S>(&t.bt_rows, &t.bt_rows, d.as_ptr(), alpha, tmp, v.as_mut_ptr(), lc);
    let mm = Buffers::fit(&mut buf.m, alpha * alpha * lk);
    per_point::<S>(alpha * alpha, v.as_ptr(), total, p.cp, job.u.as_ptr(), p.kp, mm.as_mut_ptr());
    // The outputs as [q][s][tile][kp], in `d`.
    two_sided::<S>(&t.at_rows, &t.at_rows, mm.as_ptr(), alpha, tmp, d.as_mut_ptr(), lk);
    for (b, dst) in out.chunks_exact_mut(p.k * plane).enumerate() {
        if is_wide::<S>() {
            // SAFETY: AVX-512 (`is_wide`); `kp` is whole vectors, and `d` holds every tile's
            // `TILE² · total · kp` outputs.
            #[cfg(target_arch = "x86_64")]
            wide::vectors_to_planes(
                d.as_ptr(),
                |px| tile_offset(p, px, total, b * p.tiles),
                p.k,
                plane,
                dst,
                Some(job.bias),
            );
            continue;
        }
        for tile in 0..p.tiles {
            let (ty, tx) = (tile / p.tw, tile % p.tw);
            for q in 0..m.min(p.oh - ty * m) {
                for s in 0..m.min(p.ow - tx * m) {
                    let y = &d[((q * m + s) * total + b * p.tiles + tile) * p.kp..][..p.k];
                    let at = (ty * m + q) * p.ow + tx * m + s;
                    for (f, (&y, &bias)) in y.iter().zip(job.bias).enumerate() {
                        dst[f * plane + at] = y + bias;
                    }
                }
            }
        }
    }
}

/// The instance of a chunk kernel for `isa`.
macro_rules! pick {
    ($isa:expr, $sig:ty, fn($($arg:ident: $ty:ty),*), $kernel:ident) => {
        match $isa.kind() {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => (16, instance!($sig, fn($($arg: $ty),*), ["avx512f"], $kernel::<Avx512>)),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => (8, instance!($sig, fn($($arg: $ty),*), ["avx2,fma"], $kernel::<Avx2>)),
            _ => (8, instance!($sig, fn($($arg: $ty),*), [], $kernel::<Portable>)),
        }
    };
}

/// [`filters_transformed`] compiled for one instruction set (run once per call, on the
/// calling thread).
type FiltersIn = unsafe fn(&Transforms, Plan, &[f32], bool, &mut [f32], &mut Buffers);
/// [`filters_gradient`] compiled for one instruction set.
type FiltersOut = unsafe fn(&Transforms, Plan, &[f32], &mut [f32], &mut Buffers);

/// [`FiltersIn`] for `isa`.
fn filters_in(isa: Isa) -> FiltersIn {
    pick!(
        isa,
        FiltersIn,
        fn(t: &Transforms, p: Plan, w: &[f32], tr: bool, u: &mut [f32], b: &mut Buffers),
        filters_transformed
    )
    .1
}

/// [`FiltersOut`] for `isa`.
fn filters_out(isa: Isa) -> FiltersOut {
    pick!(isa, FiltersOut, fn(t: &Transforms, p: Plan, du: &[f32], dw: &mut [f32], b: &mut Buffers), filters_gradient).1
}

/// The forward pass of a stride-1 undilated convolution (`x` `[N, C, H, W]`, `w`
/// `[O, C, r, r]`, `padding`, an optional bias) by Winograd's F(4×4, r×r), compiled for
/// `isa`: `[N, O, OH, OW]`; `None` where [`plan`] does not apply.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    isa: Isa,
    x: &[f32],
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let (lanes, chunk_kernel) =
        pick!(isa, ForwardChunk, fn(j: &Forward<'_>, f: usize, o: &mut [f32], b: &mut Buffers), forward_chunk);
    let (p, t, u) = with_filters(isa, lanes, dims, w, o, kernel, padding, false)?;
    assert_eq!(x.len(), p.n * p.c * p.h * p.w, "winograd: input length");
    let zeros = vec![0.0f32; p.k];
    assert!(bias.is_none_or(|b| b.len() == p.k), "winograd: bias length");
    let job = Forward { t, p, x, u: &u, bias: bias.unwrap_or(&zeros) };
    // SAFETY: `isa` runs on this CPU (`Isa::detect`, or `Isa::available` in tests), and the
    // kernel fills whole images of the `[N, O, OH, OW]` output.
    let out = unsafe { over_chunks(p, p.k * p.oh * p.ow, &job, chunk_kernel) };
    FILTERS.set(u);
    Some(out)
}

/// Whether [`forward`] (and its gradients) takes a convolution of `o` filters of `kernel`
/// over `dims` with `padding` on `isa` (`false`: it would return `None`).
pub(super) fn applies(isa: Isa, dims: ImageDims, o: usize, kernel: [usize; 2], padding: [usize; 2]) -> bool {
    // The lanes `pick!` gives each instruction set.
    plan(dims, o, kernel, padding, isa.lanes()).is_some()
}

/// The plan and transforms of [`forward`] and [`input_gradient`], and the filters `w`
/// transformed (`[point][channel][filter]`, or with `transposed` `[point][filter][channel]`);
/// `None` where [`plan`] does not apply.
#[allow(clippy::too_many_arguments)]
fn with_filters(
    isa: Isa,
    lanes: usize,
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    transposed: bool,
) -> Option<(Plan, &'static Transforms, Vec<f32>)> {
    let p = plan(dims, o, kernel, padding, lanes)?;
    let t = Transforms::for_kernel(kernel[0])?;
    assert_eq!(w.len(), p.k * p.c * t.r * t.r, "winograd: filters length");
    // The space of the last call's (every value is overwritten).
    let mut u = FILTERS.take();
    u.resize(t.alpha * t.alpha * p.cp * p.kp, 0.0);
    // SAFETY: `isa` runs on this CPU (`Isa::detect`, or `Isa::available` in tests); the
    // lengths are the plan's (asserted inside).
    BUFFERS.with_borrow_mut(|buf| unsafe { filters_in(isa)(t, p, w, transposed, &mut u, buf) });
    Some((p, t, u))
}

/// A new `[N, per_image]` result, each task's chunk of images written by `kernel(job, first
/// image, its images' values, the thread's buffers)`.
///
/// # Safety
/// `kernel` must be safe to call on this CPU with `job`, `p` must be `job`'s plan and
/// `per_image` the size of one image of the kernel's result. (The kernel is to write every
/// value of the images it is handed; the result starts zeroed.)
unsafe fn over_chunks<J: Sync>(
    p: Plan,
    per_image: usize,
    job: &J,
    kernel: unsafe fn(&J, usize, &mut [f32], &mut Buffers),
) -> Vec<f32> {
    let len = p.n * per_image;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // Zeroed task by task, on the thread that fills the chunk (a `vec![0.0; len]` was a
    // serial memset on the calling thread while the others waited: 1% of `cnn` in perf).
    out.spare_capacity_mut()[..len].par_chunks_mut(p.chunk * per_image).enumerate().for_each(|(i, dst)| {
        let dst = zeroed(dst);
        // SAFETY: the caller's; the kernel starts no parallel work, so the thread's buffers
        // are borrowed once at a time.
        BUFFERS.with_borrow_mut(|buf| unsafe { kernel(job, i * p.chunk, dst, buf) })
    });
    // SAFETY: the chunks cover all `len` values, each zeroed (above) and then the kernel's.
    unsafe { out.set_len(len) };
    out
}

/// What a task of the input's gradient reads.
struct Backward<'a> {
    t: &'static Transforms,
    p: Plan,
    g: &'a [f32],
    ut: &'a [f32],
}

/// One chunk of images of the input's gradient: each tile's output gradient through the
/// adjoint of the output transform, one product per point with the transposed transformed
/// filters, and the adjoint of the input transform (`B dV Bᵀ`) added onto the `[hx, wx, cp]`
/// padded image, which goes back to the `[C, H, W]` planes of `dx` without its padding.
type InputChunk = unsafe fn(&Backward<'_>, usize, &mut [f32], &mut Buffers);

/// [`InputChunk`]'s body.
#[inline(always)]
unsafe fn input_chunk<S: Simd>(job: &Backward<'_>, first: usize, dx: &mut [f32], buf: &mut Buffers) {
    let (t, p) = (job.t, job.p);
    let (m, alpha) = (t.m, t.alpha);
    let images = dx.len() / (p.c * p.h * p.w);
    let total = images * p.tiles;
    let (lc, lk) = (total * p.cp, total * p.kp);
    let dy = Buffers::fit(&mut buf.d, (alpha * alpha * lc).max(m * m * lk));
    dy[..m * m * lk].fill(0.0);
    for b in 0..images {
        gradient_in::<S>(p, job.g, first + b, b * p.tiles, total, dy);
    }
    let tmp = Buffers::fit(&mut buf.tmp, alpha * alpha * lc.max(lk));
    let dm = Buffers::fit(&mut buf.m, alpha * alpha * lk);
    two_sided::<S>(&t.at_cols, &t.at_cols, dy.as_ptr(), m, tmp, dm.as_mut_ptr(), lk);
    let dv = Buffers::fit(&mut buf.v, alpha * alpha * lc);
    per_point::<S>(alpha * alpha, dm.as_ptr(), total, p.kp, job.ut.as_ptr(), p.cp, dv.as_mut_ptr());
    // The patches' gradients as [i][j][tile][cp], in `dy`.
    two_sided::<S>(&t.bt_cols, &t.bt_cols, dv.as_ptr(), alpha, tmp, dy.as_mut_ptr(), lc);
    let image = Buffers::fit(&mut buf.image, p.hx * p.wx * p.cp);
    for (b, dst) in dx.chunks_exact_mut(p.c * p.h * p.w).enumerate() {
        image.fill(0.0);
        for tile in 0..p.tiles {
            let (ty, tx) = (tile / p.tw, tile % p.tw);
            for i in 0..alpha {
                for j in 0..alpha {
                    let src = &dy[((i * alpha + j) * total + b * p.tiles + tile) * p.cp..][..p.cp];
                    let to = &mut image[((ty * m + i) * p.wx + tx * m + j) * p.cp..][..p.cp];
                    to.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
            }
        }
        if is_wide::<S>() {
            // SAFETY: AVX-512 (`is_wide`); `cp` is whole vectors, and `image` is the padded
            // `[hx, wx, cp]` image.
            #[cfg(target_arch = "x86_64")]
            wide::vectors_to_planes(image.as_ptr(), |px| pixel_offset(p, px), p.c, p.h * p.w, dst, None);
            continue;
        }
        for (ch, plane) in dst.chunks_exact_mut(p.h * p.w).enumerate() {
            for (y, row) in plane.chunks_exact_mut(p.w).enumerate() {
                let at = ((y + p.ph) * p.wx + p.pw) * p.cp + ch;
                for (xx, v) in row.iter_mut().enumerate() {
                    *v = image[at + xx * p.cp];
                }
            }
        }
    }
}

/// The input's gradient of [`forward`] (the adjoint of its steps), from the `[N, O, OH, OW]`
/// output gradient `g` and the filters `w`: `[N, C, H, W]`; `None` where [`plan`] does not
/// apply.
pub(super) fn input_gradient(
    isa: Isa,
    g: &[f32],
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> Option<Vec<f32>> {
    let (lanes, chunk_kernel) =
        pick!(isa, InputChunk, fn(j: &Backward<'_>, f: usize, o: &mut [f32], b: &mut Buffers), input_chunk);
    let (p, t, ut) = with_filters(isa, lanes, dims, w, o, kernel, padding, true)?;
    assert_eq!(g.len(), p.n * p.k * p.oh * p.ow, "winograd: output gradient length");
    let job = Backward { t, p, g, ut: &ut };
    // SAFETY: as in `forward`; the kernel fills whole images of the `[N, C, H, W]` gradient.
    let dx = unsafe { over_chunks(p, p.c * p.h * p.w, &job, chunk_kernel) };
    FILTERS.set(ut);
    Some(dx)
}

/// What a task of the filters' gradient reads.
struct Filters<'a> {
    t: &'static Transforms,
    p: Plan,
    x: &'a [f32],
    g: &'a [f32],
}

/// One chunk of images (`first..first + count`) of the filters' gradient: the patches
/// transformed as in the forward pass, the output gradient as in the input's, and per point
/// `dU += Vᵀ dM` onto `du` (`[point][channel][filter]`).
type FiltersChunk = unsafe fn(&Filters<'_>, usize, usize, &mut [f32], &mut Buffers);

/// [`FiltersChunk`]'s body.
#[inline(always)]
unsafe fn filters_chunk<S: Simd>(job: &Filters<'_>, first: usize, count: usize, du: &mut [f32], buf: &mut Buffers) {
    let (t, p) = (job.t, job.p);
    let (m, alpha) = (t.m, t.alpha);
    let total = count * p.tiles;
    let (lc, lk) = (total * p.cp, total * p.kp);
    assert!(du.len() == alpha * alpha * p.cp * p.kp);
    let xh = Buffers::fit(&mut buf.image, p.hx * p.wx * p.cp);
    // Zero once: each image then writes the same pixels, so the padding stays zero.
    xh.fill(0.0);
    let d = Buffers::fit(&mut buf.d, alpha * alpha * lc);
    for b in 0..count {
        image_in::<S>(p, job.x, first + b, xh);
        patches_in::<S>(p, alpha, xh, b * p.tiles, total, d);
    }
    let tmp = Buffers::fit(&mut buf.tmp, alpha * alpha * lc.max(lk));
    let v = Buffers::fit(&mut buf.v, alpha * alpha * lc);
    two_sided::<S>(&t.bt_rows, &t.bt_rows, d.as_ptr(), alpha, tmp, v.as_mut_ptr(), lc);
    // The output gradient's tiles, in `d` (its patches are spent).
    let dy = Buffers::fit(&mut buf.d, m * m * lk);
    dy.fill(0.0);
    for b in 0..count {
        gradient_in::<S>(p, job.g, first + b, b * p.tiles, total, dy);
    }
    let dm = Buffers::fit(&mut buf.m, alpha * alpha * lk);
    two_sided::<S>(&t.at_cols, &t.at_cols, dy.as_ptr(), m, tmp, dm.as_mut_ptr(), lk);
    for point in 0..alpha * alpha {
        let (a, bm) = (v.as_ptr().add(point * lc), dm.as_ptr().add(point * lk));
        product::<S>(a, [1, p.cp], p.cp, total, bm, p.kp, du.as_mut_ptr().add(point * p.cp * p.kp), true);
    }
}

/// The filters' gradient of [`forward`] (the adjoint of its steps), from the input `x` and
/// the `[N, O, OH, OW]` output gradient `g`: `[O, C, r, r]`; `None` where [`plan`] does not
/// apply.
pub(super) fn filters_grad(
    isa: Isa,
    x: &[f32],
    dims: ImageDims,
    g: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> Option<Vec<f32>> {
    let (lanes, chunk_kernel) = pick!(
        isa,
        FiltersChunk,
        fn(j: &Filters<'_>, f: usize, c: usize, d: &mut [f32], b: &mut Buffers),
        filters_chunk
    );
    let p = plan(dims, o, kernel, padding, lanes)?;
    let t = Transforms::for_kernel(kernel[0])?;
    assert_eq!(x.len(), p.n * p.c * p.h * p.w, "winograd: input length");
    assert_eq!(g.len(), p.n * p.k * p.oh * p.ow, "winograd: output gradient length");
    let job = Filters { t, p, x, g };
    let len = t.alpha * t.alpha * p.cp * p.kp;
    // The chunks in one fixed run per thread, summed in order, and the runs' sums added in
    // order: the same rounding on every call with the same thread count (rayon's own
    // splitting of a fold varies with the threads' timing, and with it the order of the sums).
    let chunks = p.n.div_ceil(p.chunk);
    let runs = rayon::current_num_threads().clamp(1, chunks);
    let partial: Vec<Vec<f32>> = (0..runs)
        .into_par_iter()
        .map(|r| {
            let mut du = vec![0.0f32; len];
            for i in r * chunks / runs..(r + 1) * chunks / runs {
                let first = i * p.chunk;
                // SAFETY: as in `forward`; `du` has the plan's length.
                BUFFERS.with_borrow_mut(|buf| unsafe {
                    chunk_kernel(&job, first, p.chunk.min(p.n - first), &mut du, buf)
                });
            }
            du
        })
        .collect();
    // The first run's sums, then each other run's added in order (`runs` >= 1).
    let mut runs = partial.into_iter();
    let mut du = runs.next().unwrap_or_else(|| vec![0.0f32; len]);
    for run in runs {
        du.iter_mut().zip(&run).for_each(|(a, b)| *a += b);
    }
    let mut dw = vec![0.0f32; p.k * p.c * t.r * t.r];
    // SAFETY: as in `forward`.
    BUFFERS.with_borrow_mut(|buf| unsafe { filters_out(isa)(t, p, &du, &mut dw, buf) });
    Some(dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The 1-D F(m, r) against the correlation it stands for, for each (m, r) the points
    /// allow: `Aᵀ[(G g) ⊙ (Bᵀ d)]` equals `Σ_k g_k d_(i+k)` to f32 rounding.
    #[test]
    fn one_dimensional_transforms_compute_the_correlation() {
        let mut rng = Rng::seed(3);
        for (m, r) in [(2, 3), (4, 3), (2, 5), (4, 5), (3, 3), (6, 3)] {
            let t = Transforms::new(m, r);
            let alpha = t.alpha;
            let d: Vec<f32> = (0..alpha).map(|_| rng.standard_normal()).collect();
            let g: Vec<f32> = (0..r).map(|_| rng.standard_normal()).collect();
            let apply = |terms: &[Terms], v: &[f32]| -> Vec<f32> {
                terms.iter().map(|row| row.iter().map(|&(i, c)| c * v[i]).sum()).collect()
            };
            let (gg, bd) = (apply(&t.g_rows, &g), apply(&t.bt_rows, &d));
            let prod: Vec<f32> = gg.iter().zip(&bd).map(|(a, b)| a * b).collect();
            let y = apply(&t.at_rows, &prod);
            for (i, &yi) in y.iter().enumerate() {
                let want: f64 = (0..r).map(|k| f64::from(g[k]) * f64::from(d[i + k])).sum();
                assert!((f64::from(yi) - want).abs() < 1e-4 * (1.0 + want.abs()), "F({m}, {r}) y[{i}]: {yi} vs {want}");
            }
        }
    }

    /// The definition summed in f64: output, input gradient and filters' gradient of the
    /// convolution of `x` by `w` with `padding`, for the output gradient `g`.
    fn definition(
        x: &[f32],
        [n, c, h, w]: [usize; 4],
        wt: &[f32],
        [o, r]: [usize; 2],
        [ph, pw]: [usize; 2],
        bias: &[f32],
        g: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (oh, ow) = (h + 2 * ph + 1 - r, w + 2 * pw + 1 - r);
        let mut y = vec![0.0f64; n * o * oh * ow];
        let mut dx = vec![0.0f64; n * c * h * w];
        let mut dw = vec![0.0f64; o * c * r * r];
        for b in 0..n {
            for (f, &bf) in bias.iter().enumerate().take(o) {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let out = ((b * o + f) * oh + yy) * ow + xx;
                        let mut sum = f64::from(bf);
                        for ch in 0..c {
                            for i in 0..r {
                                for j in 0..r {
                                    let (iy, ix) = ((yy + i) as isize - ph as isize, (xx + j) as isize - pw as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let at = ((b * c + ch) * h + iy as usize) * w + ix as usize;
                                    let wi = ((f * c + ch) * r + i) * r + j;
                                    sum += f64::from(wt[wi]) * f64::from(x[at]);
                                    dx[at] += f64::from(wt[wi]) * f64::from(g[out]);
                                    dw[wi] += f64::from(x[at]) * f64::from(g[out]);
                                }
                            }
                        }
                        y[out] = sum;
                    }
                }
            }
        }
        (y, dx, dw)
    }

    /// Forward pass and both gradients against the definition, on every instruction set this
    /// CPU runs: 5x5 and 3x3 kernels, channel and filter counts that fill and that do not
    /// fill a vector, partial tiles, padding, one image and several chunks of images. The
    /// bound scales with the sum of the terms' magnitudes, as f32 rounding does.
    #[test]
    fn winograd_matches_the_definition() {
        let mut rng = Rng::seed(17);
        // ([N, C, H, W], [O, r], padding)
        let cases = [
            ([3, 16, 12, 12], [32, 5], [0, 0]),
            ([2, 9, 11, 13], [10, 5], [2, 1]),
            ([1, 8, 7, 6], [17, 3], [1, 1]),
            ([19, 12, 9, 10], [8, 3], [0, 2]),
        ];
        for ([n, c, h, w], [o, r], padding) in cases {
            let x: Vec<f32> = (0..n * c * h * w).map(|_| rng.standard_normal()).collect();
            let wt: Vec<f32> = (0..o * c * r * r).map(|_| rng.standard_normal() * 0.2).collect();
            let bias: Vec<f32> = (0..o).map(|_| rng.standard_normal()).collect();
            let (oh, ow) = (h + 2 * padding[0] + 1 - r, w + 2 * padding[1] + 1 - r);
            let g: Vec<f32> = (0..n * o * oh * ow).map(|_| rng.standard_normal()).collect();
            let (y, dx, dw) = definition(&x, [n, c, h, w], &wt, [o, r], padding, &bias, &g);
            let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
            // The terms' magnitudes: each output sums C·r² products of about 0.2 (O·r² for
            // the input's gradient, N·OH·OW for the filters').
            let scale = |terms: usize, size: f64| 1e-5 * terms as f64 * size;
            for isa in Isa::available() {
                // This thread's kept buffers full of NaN: a value a transform reads without
                // writing it first (the filters' padding, say) shows in the results.
                BUFFERS.with_borrow_mut(|b| {
                    for v in [&mut b.image, &mut b.d, &mut b.tmp, &mut b.v, &mut b.m] {
                        *v = vec![f32::NAN; 1 << 16];
                    }
                });
                FILTERS.set(vec![f32::NAN; 1 << 16]);
                let check = |what: &str, got: &[f32], want: &[f64], tol: f64| {
                    assert_eq!(got.len(), want.len(), "{what}");
                    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                        assert!((f64::from(a) - b).abs() <= tol, "{isa:?} {:?} {what}[{i}]: {a} vs {b}", [n, c, h, w]);
                    }
                };
                let got = forward(isa, &x, dims, &wt, o, [r, r], padding, Some(&bias)).expect("the path applies");
                check("output", &got, &y, scale(c * r * r, 0.2));
                let got = input_gradient(isa, &g, dims, &wt, o, [r, r], padding).expect("the path applies");
                check("input gradient", &got, &dx, scale(o * r * r, 0.2));
                let got = filters_grad(isa, &x, dims, &g, o, [r, r], padding).expect("the path applies");
                check("filters' gradient", &got, &dw, scale(n * oh * ow, 1.0));
            }
        }
    }

    /// Shapes the path leaves to the direct kernels: 7 channels or 7 filters (8 of each
    /// apply), a 4x4 kernel, a non-square one, outputs narrower than a tile, and images whose
    /// transformed tiles would pass [`IMAGE_BYTES`].
    /// The rows of the ± points pair up where they should (F(4, 5): Bᵀ's rows 1-2, 3-4, 5-6,
    /// and the same of G's rows and of Aᵀ's columns), and a pair's two rows computed from
    /// E and O are the rows themselves.
    #[test]
    fn the_rows_of_opposite_points_pair_up() {
        let t = Transforms::for_kernel(5).unwrap();
        for (name, rows) in [("Bᵀ rows", &t.bt_rows), ("G rows", &t.g_rows), ("Aᵀ columns", &t.at_cols)] {
            let pairs: Vec<[usize; 2]> = rows
                .ops
                .iter()
                .filter_map(|op| match op {
                    RowOp::Pair { rows, .. } => Some(*rows),
                    RowOp::One { .. } => None,
                })
                .collect();
            assert_eq!(pairs, [[1, 2], [3, 4], [5, 6]], "{name}");
            assert_eq!(rows.ops.len(), 5, "{name}: two rows on their own");
            for op in &rows.ops {
                if let RowOp::Pair { rows: [i, j], even, odd } = op {
                    let mut plus: Terms = even.iter().chain(odd).copied().collect();
                    plus.sort_by_key(|&(index, _)| index);
                    let minus: Terms = plus.iter().map(|&(k, c)| (k, if k % 2 == 0 { c } else { -c })).collect();
                    assert_eq!((&plus, &minus), (&rows.terms[*i], &rows.terms[*j]), "{name}: rows {i} and {j}");
                }
            }
        }
        // Bᵀ's columns (read as rows: the input gradient's last transform) have no such pairs.
        assert!(t.bt_cols.ops.iter().all(|op| matches!(op, RowOp::One { .. })));
    }

    #[test]
    fn winograd_declines_what_it_does_not_cover() {
        let isa = Isa::detect();
        let run = |[n, c, h, w]: [usize; 4], [o, kh, kw]: [usize; 3]| {
            let dims = ImageDims { input: [n, c, h, w], output: [h + 1 - kh, w + 1 - kw] };
            let (x, wt) = (vec![0.0f32; n * c * h * w], vec![0.0f32; o * c * kh * kw]);
            forward(isa, &x, dims, &wt, o, [kh, kw], [0, 0], None).is_some()
        };
        assert!(run([1, 8, 10, 10], [8, 5, 5]), "8 channels and 8 filters apply");
        assert!(!run([1, 7, 10, 10], [8, 5, 5]) && !run([1, 8, 10, 10], [7, 5, 5]));
        assert!(!run([1, 1, 10, 10], [16, 5, 5]) && !run([1, 16, 10, 10], [16, 4, 4]));
        assert!(!run([1, 16, 10, 10], [16, 5, 3]) && !run([1, 16, 7, 12], [16, 5, 5]));
        assert!(!run([1, 64, 120, 120], [64, 3, 3]), "about 8 MB of tiles an image");
    }
}
