//! The CUDA kernels run on the CPU, for machines without a GPU (CI's among them).
//!
//! `kernels.cu` is compiled by the system's C++ compiler (`$CXX`, else `g++`) as C++20 behind
//! `emulator.hpp`, which gives CUDA's qualifiers and built-ins a CPU meaning: a block's
//! threads run in turn on the launching thread (as fibers that each run to the next
//! `__syncthreads` when the kernel waits at barriers), atomics `std::atomic_ref`. These
//! tests launch kernels with the parameters the host code passes (device addresses are host
//! addresses here) and compare their results with plain loops or with the CPU backend,
//! including cases the device suite's inputs do not reach (bad indices, NaN in pooling, block
//! edges). Each test runs three times ([`each_order`]): first with the race check (a build
//! in which each load and store off the kernel's stack is compared with the last write and
//! the last two reads of its word by other threads, so that a missing atomic or barrier fails
//! even where running threads in turn gives the right result; see emulator.hpp), then with the
//! blocks and threads of every launch in ascending order, then in descending order, so that a
//! thread that reads another's write with no barrier between them reads it in one run and
//! misses it in the other. The host code's own launches run over the same builds in the
//! device suite's runs on an emulated GPU ([`super::emulated::install`]): the first
//! race-checked (a sample of the larger launches), the second in descending order. What
//! neither can show: CUDA's math library's rounding and fused multiply-adds; a real GPU
//! shows those.
//!
//! Without a C++ compiler the tests say so and pass, unless `SINAPSE_REQUIRE_EMULATOR=1`
//! (CI sets it).

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

use cudarc::driver::LaunchConfig;

use super::gpu::{self, Conv, Strided};
use crate::backend::{ImageDims, Window};
use crate::layout::Layout;

/// `emu_launch_in_order`: kernel name, blocks, threads a block, parameters, descending.
type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, *mut *mut c_void, c_int) -> c_int;

/// `emu_race`: the report of the calling thread's last launch that raced.
type RaceFn = unsafe extern "C" fn() -> *const c_char;

/// `emu_param_sizes`: kernel name, where to write the number of parameters; their sizes
/// (null for an unknown name).
type ParamSizesFn = unsafe extern "C" fn(*const c_char, *mut usize) -> *const usize;

/// The compiled kernels: `emu_launch_in_order` and `emu_param_sizes` of the loaded
/// library, and `emu_race` where it was built with the race check.
struct Emulator {
    launch: LaunchFn,
    param_sizes: ParamSizesFn,
    race: Option<RaceFn>,
}

/// The emulator (with the race check if `racecheck`), built once per test process; `None`
/// (after a line on stderr) without a C++ compiler, a failure when
/// `SINAPSE_REQUIRE_EMULATOR=1`.
fn emulator(racecheck: bool) -> Option<&'static Emulator> {
    static PLAIN: OnceLock<Option<Emulator>> = OnceLock::new();
    static RACECHECK: OnceLock<Option<Emulator>> = OnceLock::new();
    let cell = if racecheck { &RACECHECK } else { &PLAIN };
    cell.get_or_init(|| match build(racecheck) {
        Ok(e) => Some(e),
        Err(why) => {
            let required = std::env::var("SINAPSE_REQUIRE_EMULATOR").is_ok_and(|v| v == "1");
            assert!(!required, "SINAPSE_REQUIRE_EMULATOR=1 but the kernel emulator was not built: {why}");
            // Past libtest's capture (which hides a passing test's eprintln!): a skip is
            // seen in every log.
            let line = format!("skipped: the CUDA kernel emulator was not built ({why})\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            None
        }
    })
    .as_ref()
}

/// Builds and loads the kernel emulator ([`super::emulated::kernel_emulator`]).
fn build(racecheck: bool) -> Result<Emulator, String> {
    let found = super::emulated::kernel_emulator(racecheck)?;
    // SAFETY: `emu_launch_in_order`, `emu_param_sizes` and `emu_race` in emulator.hpp have
    // these signatures.
    let launch = unsafe { std::mem::transmute::<*mut c_void, LaunchFn>(found.launch) };
    let param_sizes = unsafe { std::mem::transmute::<*mut c_void, ParamSizesFn>(found.param_sizes) };
    let race = found.race.map(|f| unsafe { std::mem::transmute::<*mut c_void, RaceFn>(f) });
    Ok(Emulator { launch, param_sizes, race })
}

/// The emulator (plain or race-checked), its blocks and threads run in ascending order or,
/// with `descending`, in descending order.
struct Ordered {
    emulator: &'static Emulator,
    descending: bool,
}

impl Ordered {
    /// Runs kernel `name` over `cfg`'s grid; `params` point to values of the kernel's
    /// parameter types, in order (as cudarc pushes them), each with its size. A parameter
    /// too many or too few, or one of another size, fails here, before the launch.
    ///
    /// # Safety
    /// As a real launch: the parameters match the kernel's in order and type, and every
    /// address reaches memory of the size the kernel reads or writes.
    unsafe fn launch(&self, name: &str, cfg: LaunchConfig, params: &[(*const c_void, usize)]) {
        assert_eq!((cfg.grid_dim.1, cfg.grid_dim.2, cfg.block_dim.1, cfg.block_dim.2), (1, 1, 1, 1));
        let name = CString::new(name).expect("a kernel name");
        let mut count = 0usize;
        // SAFETY: `name` is NUL-terminated; the sizes returned are `count` values alive for
        // the process (a static table of the emulator's).
        let sizes = unsafe { (self.emulator.param_sizes)(name.as_ptr(), &mut count) };
        assert!(!sizes.is_null(), "no kernel named {name:?}");
        let sizes = unsafe { std::slice::from_raw_parts(sizes, count) };
        let given: Vec<usize> = params.iter().map(|&(_, size)| size).collect();
        assert_eq!(given, sizes, "the sizes of the arguments to {name:?}, and of its parameters");
        let mut params: Vec<*mut c_void> = params.iter().map(|&(p, _)| p as *mut c_void).collect();
        let (grid, block, descending) = (cfg.grid_dim.0, cfg.block_dim.0, c_int::from(self.descending));
        let status = unsafe { (self.emulator.launch)(name.as_ptr(), grid, block, params.as_mut_ptr(), descending) };
        assert_ne!(status, 1, "no kernel named {name:?}");
        if let (2, Some(race)) = (status, self.emulator.race) {
            // SAFETY: `emu_race` returns its NUL-terminated report, alive for the process.
            let said = unsafe { std::ffi::CStr::from_ptr(race()) };
            panic!("a race in {}", said.to_string_lossy());
        }
        assert_eq!(status, 0, "{name:?} failed");
    }
}

/// Runs `test` with the race check (each launch fails at the first two threads that touch
/// one word, one writing, with no atomic pair or barrier between), then with the emulator's
/// blocks and threads in ascending order, then in descending order, so that a kernel whose
/// threads or blocks depend on one another's order (one reading what another writes, with no
/// barrier between) reads the value before the write in one run and after it in the other,
/// and fails one of them unless the two values agree; a failure says which run it was.
/// Nothing without the emulator ([`emulator`]).
fn each_order(test: impl Fn(&Ordered)) {
    for (racecheck, descending, how) in [
        (true, false, "with the race check"),
        (false, false, "with the emulator's blocks and threads run in ascending order"),
        (false, true, "with the emulator's blocks and threads run in descending order"),
    ] {
        // Without one build (a compiler lacking -fsanitize=thread, say) the others still run.
        let Some(emulator) = emulator(racecheck) else { continue };
        let ordered = Ordered { emulator, descending };
        if let Err(failure) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&ordered))) {
            eprintln!("(failed {how})");
            std::panic::resume_unwind(failure);
        }
    }
}

/// Launches kernel `$name` on the emulator with `$cfg` and the arguments (values of the
/// kernel's parameter types; temporaries live until the launch has returned).
macro_rules! emulate {
    ($emu:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {
        // SAFETY: each test passes the kernel's parameters in order and type, with buffers of
        // the sizes the kernel reaches.
        unsafe { $emu.launch($name, $cfg, &[$(param(&$arg)),*]) }
    };
}

/// A launch argument: its address and size.
fn param<T>(v: &T) -> (*const c_void, usize) {
    (v as *const T as *const c_void, std::mem::size_of::<T>())
}

/// The device address (here a host address) of `v`, read by a kernel.
fn addr(v: &[f32]) -> u64 {
    v.as_ptr() as u64
}

/// The device address of `v`, written by a kernel.
fn addr_mut<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// Values spread over [-2, 2), from a seed.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::random::Rng::seed(seed);
    (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect()
}

/// The first position where `got` and `want` differ by more than rounding (the device
/// suite's tolerance: the math libraries differ by a few ulps), if any.
fn differs(got: &[f32], want: &[f32]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values where {} were expected", got.len(), want.len()));
    }
    got.iter().zip(want).enumerate().find_map(|(i, (&g, &w))| {
        let same = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-5 + 1e-4 * w.abs();
        (!same).then(|| format!("element {i}: {g} where {w} was expected"))
    })
}

#[test]
fn optimizer_lists_update_as_the_cpu_does() {
    use super::{plan_launches, update_constants};
    use crate::backend::cpu::CpuStorage;
    use crate::backend::{BackendStorage, OptimizerUpdate};
    each_order(|emu| {
        // Sizes across a launch's blocks (8192 values each), an empty one, and more parameters
        // than one launch takes (16), so that the plan makes two launches.
        let sizes: Vec<usize> = [3, 0, 9000, 8192, 5].into_iter().chain((0..14).map(|k| k + 1)).collect();
        let updates = [
            OptimizerUpdate::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01, first_step: false },
            OptimizerUpdate::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0, first_step: true },
            OptimizerUpdate::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                decoupled: true,
                bias1: 0.19,
                bias2: 0.002,
            },
            OptimizerUpdate::Adam {
                lr: 0.01,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.1,
                decoupled: false,
                bias1: 0.2,
                bias2: 0.01,
            },
            OptimizerUpdate::RmsProp { lr: 0.01, alpha: 0.9, eps: 1e-8, momentum: 0.5, weight_decay: 0.01 },
            OptimizerUpdate::RmsProp { lr: 0.01, alpha: 0.9, eps: 1e-8, momentum: 0.0, weight_decay: 0.0 },
        ];
        for (u, update) in updates.iter().enumerate() {
            for staged in [false, true] {
                let buffers = update.state_buffers();
                // Per parameter: its values, gradient, state (positive, as a second moment is),
                // and its changing numbers (the first-step flag and lr vary between parameters).
                let params: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(k, &n)| values(n, 10 * k as u64)).collect();
                let grads: Vec<Vec<f32>> =
                    sizes.iter().enumerate().map(|(k, &n)| values(n, 10 * k as u64 + 1)).collect();
                let states: Vec<Vec<Vec<f32>>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(k, &n)| {
                        (0..buffers)
                            .map(|b| values(n, 10 * k as u64 + 2 + b as u64).iter().map(|v| v.abs()).collect())
                            .collect()
                    })
                    .collect();
                let numbers = |k: usize| {
                    let [lr, a, b] = update.staged();
                    let first = if matches!(update, OptimizerUpdate::Sgd { .. }) { (k % 2) as f32 } else { a };
                    [lr * (1.0 + k as f32 / 10.0), first, b]
                };
                // The staged numbers, in one buffer as the optimizers keep them.
                let staged_buffer: Vec<f32> = (0..sizes.len()).flat_map(numbers).collect();
                let mut gpu_params = params.clone();
                let mut gpu_states = states.clone();
                let w: Vec<u64> = gpu_params.iter_mut().map(|p| addr_mut(p)).collect();
                let s: Vec<Vec<u64>> =
                    gpu_states.iter_mut().map(|b| b.iter_mut().map(|s| addr_mut(s)).collect()).collect();
                let planned: Vec<_> = (0..sizes.len())
                    .map(|k| {
                        let state = |b: usize| s[k].get(b).copied().unwrap_or(0);
                        let entry = gpu::ListEntry {
                            n: sizes[k] as u64,
                            w: w[k],
                            g: addr(&grads[k]),
                            state: [state(0), state(1)],
                            staged: if staged { addr(&staged_buffer[k * 3..]) } else { 0 },
                            nums: if staged { [f32::NAN; 3] } else { numbers(k) },
                        };
                        (0, *update, entry)
                    })
                    .collect();
                let launches = plan_launches(&planned).unwrap();
                assert_eq!(launches.len(), 2, "18 parameters with values: 16, then 2");
                for launch in &launches {
                    let (name, [c0, c1, c2, c3], flag) = update_constants(&launch.update);
                    emulate!(emu, name, launch.list.config(); launch.list, c0, c1, c2, c3, flag);
                }
                for k in 0..sizes.len() {
                    let l = Layout::contiguous(&[sizes[k]]);
                    let mut w = CpuStorage::F32(params[k].clone());
                    let mut state: Vec<CpuStorage> = states[k].iter().map(|s| CpuStorage::F32(s.clone())).collect();
                    let mut refs: Vec<&mut CpuStorage> = state.iter_mut().collect();
                    let g = CpuStorage::F32(grads[k].clone());
                    w.optimizer_step(&l, &g, &l, &mut refs, &update.with_staged(numbers(k)), None).unwrap();
                    let CpuStorage::F32(want) = &w;
                    let what = format!("update {u} (staged {staged}), parameter {k}");
                    assert_eq!(differs(&gpu_params[k], want), None, "{what}");
                    for (b, s) in state.iter().enumerate() {
                        let CpuStorage::F32(want) = s;
                        assert_eq!(differs(&gpu_states[k][b], want), None, "{what}, state buffer {b}");
                    }
                }
            }
        }
    });
}

/// `[outer, len, inner]` values as a transposed view: the kernels read them through a
/// `Strided` that is not contiguous. Returns the buffer, the view and the values in the
/// view's row-major order.
fn transposed_view(outer: usize, len: usize, inner: usize, seed: u64) -> (Vec<f32>, Strided, Vec<f32>) {
    // Stored as [len, outer, inner]; the view swaps the first two axes back.
    let stored = values(outer * len * inner, seed);
    let l = Layout::contiguous(&[len, outer, inner]).transpose(0, 1).unwrap();
    let logical = (0..outer * len * inner)
        .map(|p| {
            let (o, j, i) = (p / (len * inner), (p / inner) % len, p % inner);
            stored[(j * outer + o) * inner + i]
        })
        .collect();
    (stored, Strided::of(&l, "test").unwrap(), logical)
}

/// `spin` (the kernel profile's) keeps its one thread busy for the cycles it is given: here
/// the emulator's clock counts nanoseconds.
#[test]
fn spin_waits_its_cycles() {
    each_order(|emu| {
        let cycles = 2_000_000u64;
        let start = std::time::Instant::now();
        emulate!(emu, "spin", gpu::blocks(1, 1); cycles);
        assert!(start.elapsed() >= std::time::Duration::from_nanos(cycles), "spin returned early");
    });
}

/// `linear_rows` against a plain sum: 1 to 8 rows of an input read at an offset with a row
/// stride past the row, the weight through its transpose (as a layer keeps it), sums over no
/// terms, fewer terms than a warp's 32 lanes and several laps of them (in groups of four
/// laps, with laps left over or none), columns that leave the
/// last block of 8 part full, the bias read at an offset (one of them NaN, which the ReLU
/// keeps; negative sums cut to 0), and nothing written past the rows.
#[test]
fn linear_rows_match_a_plain_sum() {
    each_order(|emu| {
        for (rows, k, n) in
            [(1usize, 0usize, 3usize), (1, 1, 1), (3, 33, 9), (5, 70, 8), (8, 100, 20), (2, 300, 9), (7, 128, 3)]
        {
            let x = values(rows * (k + 3), 21);
            let lx = Layout::contiguous(&[rows, k + 3]).narrow(1, 2, k).unwrap();
            let w = values(n * k, 22); // [n, k], read as [k, n]
            let lw = Layout::contiguous(&[n, k]).transpose(0, 1).unwrap();
            let mut b = values(n + 2, 23);
            b[2 + n / 2] = f32::NAN;
            let lb = Layout::contiguous(&[n + 2]).narrow(0, 2, n).unwrap();
            for relu in [0i32, 1] {
                let want: Vec<f32> = (0..rows * n)
                    .map(|p| {
                        let (r, j) = (p / n, p % n);
                        let sum: f64 =
                            (0..k).map(|i| f64::from(x[r * (k + 3) + 2 + i]) * f64::from(w[j * k + i])).sum();
                        let v = sum as f32 + b[2 + j];
                        if relu == 1 && v <= 0.0 {
                            0.0
                        } else {
                            v
                        }
                    })
                    .collect();
                let mut y = vec![7777.0f32; rows * n + 8];
                let (r, kk, nn) = (rows as u64, k as u64, n as u64);
                // As the host passes them.
                let view = |v: &[f32], l: &Layout| super::matrix_view(addr(v), l);
                let ((xp, x_row, x_in), (wp, w_in, w_out), (bp, _, b_out)) =
                    (view(&x, &lx), view(&w, &lw), view(&b, &lb));
                emulate!(emu, "linear_rows", gpu::blocks(n.div_ceil(8), 256);
                    xp, x_row, x_in, wp, w_in, w_out, bp, b_out, addr_mut(&mut y), r, kk, nn, relu);
                let what = format!("{rows} rows, {k} terms, {n} columns, relu {relu}");
                assert_eq!(differs(&y[..rows * n], &want), None, "{what}");
                assert!(y[rows * n..].iter().all(|&v| v == 7777.0), "{what}: written past the rows");
            }
        }
    });
}

/// `relu_grad_sums`: the gradient masked where the output is not positive (NaN, zeros and
/// negatives among the outputs), row-major, and its column sums in double; the gradient read
/// through a transposed view, with fewer rows than a block's thread rows, many rows, and
/// columns that leave the last group of 32 part full.
#[test]
fn relu_grad_sums_masks_and_sums_columns() {
    each_order(|emu| {
        for (rows, cols, threads) in [(3, 5, 32u32), (70, 45, 1024), (130, 33, 256), (0, 4, 32)] {
            let (g, lg, logical) = transposed_view(1, rows, cols, 5);
            let mut y = values(rows * cols, 6);
            for (k, v) in y.iter_mut().enumerate() {
                match k % 7 {
                    0 => *v = 0.0,
                    1 => *v = f32::NAN,
                    _ => {}
                }
            }
            let ly = Strided::of(&Layout::contiguous(&[rows, cols]), "test").unwrap();
            let want: Vec<f32> = (0..rows * cols).map(|i| if y[i] > 0.0 { logical[i] } else { 0.0 }).collect();
            let sums: Vec<f32> =
                (0..cols).map(|c| (0..rows).map(|r| f64::from(want[r * cols + c])).sum::<f64>() as f32).collect();
            let (mut masked, mut out) = (vec![f32::NAN; rows * cols + 1], vec![f32::NAN; cols + 1]);
            let (r, c) = (rows as u64, cols as u64);
            emulate!(emu, "relu_grad_sums", gpu::blocks(cols.div_ceil(32), threads);
                addr(&g), lg, addr(&y), ly, addr_mut(&mut masked), addr_mut(&mut out), r, c);
            assert_eq!(differs(&masked[..rows * cols], &want), None, "relu_grad_sums masked, {rows}x{cols}");
            assert_eq!(differs(&out[..cols], &sums), None, "relu_grad_sums sums, {rows}x{cols}");
            assert!(masked[rows * cols].is_nan() && out[cols].is_nan(), "relu_grad_sums wrote past its outputs");
        }
    });
}

#[test]
fn reductions_and_softmax_match_plain_loops() {
    each_order(|emu| {
        for (outer, len, inner) in [(3, 5, 4), (2, 700, 3), (1, 1, 1), (4, 0, 2), (2, 70, 45)] {
            let (x, lx, logical) = transposed_view(outer, len, inner, 7);
            let logical = &logical;
            let lane = move |o: usize, i: usize| (0..len).map(move |j| logical[(o * len + j) * inner + i]);
            let lanes: Vec<(usize, usize)> = (0..outer).flat_map(|o| (0..inner).map(move |i| (o, i))).collect();
            // sum, max, min, argmax, argmin
            let want: [Vec<f32>; 5] = [
                lanes.iter().map(|&(o, i)| lane(o, i).map(f64::from).sum::<f64>() as f32).collect(),
                lanes.iter().map(|&(o, i)| if len == 0 { 0.0 } else { lane(o, i).fold(f32::MIN, f32::max) }).collect(),
                lanes.iter().map(|&(o, i)| if len == 0 { 0.0 } else { lane(o, i).fold(f32::MAX, f32::min) }).collect(),
                lanes
                    .iter()
                    .map(|&(o, i)| {
                        let v: Vec<f32> = lane(o, i).collect();
                        (0..len).fold(0, |b, j| if v[j] > v[b] { j } else { b }) as f32
                    })
                    .collect(),
                lanes
                    .iter()
                    .map(|&(o, i)| {
                        let v: Vec<f32> = lane(o, i).collect();
                        (0..len).fold(0, |b, j| if v[j] < v[b] { j } else { b }) as f32
                    })
                    .collect(),
            ];
            let (o64, l64, i64_) = (outer as u64, len as u64, inner as u64);
            for (op, want) in want.iter().enumerate() {
                let op = op as i32;
                let mut out = vec![f32::NAN; outer * inner];
                emulate!(emu, "reduce_thread", gpu::grid(outer * inner); addr(&x), lx, addr_mut(&mut out), o64, l64, i64_, op);
                assert_eq!(differs(&out, want), None, "reduce_thread op {op} over {outer}x{len}x{inner}");
                // A block per output, and a block per 32 neighbouring outputs (the last group
                // part full when inner is not a multiple of 32).
                for (cols, threads) in [(1u32, 128u32), (32, 256)] {
                    let mut out = vec![f32::NAN; outer * inner];
                    let cfg = gpu::blocks(outer * inner.div_ceil(cols as usize), threads);
                    let whole = 1u64;
                    emulate!(emu, "reduce_block", cfg; addr(&x), lx, addr_mut(&mut out), o64, l64, i64_, op, cols, whole);
                    assert_eq!(
                        differs(&out, want),
                        None,
                        "reduce_block ({cols} lanes) op {op} over {outer}x{len}x{inner}"
                    );
                    if op != 0 {
                        continue;
                    }
                    // Sums cut into pieces of ceil(len / parts) (the last one short, or
                    // empty: 4 pieces of 2 over 5 values), [outer, parts, inner].
                    for parts in [3usize, 4] {
                        let piece = len.div_ceil(parts);
                        let mut out = vec![f32::NAN; outer * parts * inner];
                        let cfg = gpu::blocks(outer * inner.div_ceil(cols as usize) * parts, threads);
                        let p = parts as u64;
                        emulate!(emu, "reduce_block", cfg; addr(&x), lx, addr_mut(&mut out), o64, l64, i64_, op, cols, p);
                        let want: Vec<f32> = (0..outer)
                            .flat_map(|o| (0..parts).flat_map(move |q| (0..inner).map(move |i| (o, q, i))))
                            .map(|(o, q, i)| {
                                let piece = lane(o, i).skip(q * piece).take(piece);
                                piece.map(f64::from).sum::<f64>() as f32
                            })
                            .collect();
                        assert_eq!(
                            differs(&out, &want),
                            None,
                            "reduce_block ({cols} lanes) in {parts} pieces over {outer}x{len}x{inner}"
                        );
                    }
                }
            }
            if len == 0 {
                continue;
            }
            for log in [0i32, 1] {
                let mut out = vec![f32::NAN; outer * len * inner];
                emulate!(emu, "softmax", gpu::blocks(outer * inner, 64); addr(&x), lx, addr_mut(&mut out), o64, l64, i64_, log);
                let mut want = vec![0.0; outer * len * inner];
                for &(o, i) in &lanes {
                    let m = lane(o, i).fold(f32::NEG_INFINITY, f32::max);
                    let s: f32 = lane(o, i).map(|v| (v - m).exp()).sum();
                    for (j, v) in lane(o, i).enumerate() {
                        want[(o * len + j) * inner + i] = if log == 1 { v - m - s.ln() } else { (v - m).exp() / s };
                    }
                }
                assert_eq!(differs(&out, &want), None, "softmax (log {log}) over {outer}x{len}x{inner}");
            }
        }
    });
}

#[test]
fn indexing_kernels_match_plain_loops_and_report_bad_indices() {
    each_order(|emu| {
        let (outer, size, inner) = (2usize, 5usize, 3usize);
        let (x, lx, logical) = transposed_view(outer, size, inner, 3);
        // Repeated ids: index_add's sums meet in one place (a missing atomic would still give
        // the right sums here, where threads never overlap, but not past the race check).
        let ids = vec![4.0f32, 0.0, 4.0, 2.0, 4.0, 1.0, 4.0];
        let nids = ids.len();
        let lids = Strided::of(&Layout::contiguous(&[nids]), "test").unwrap();
        let mut err = [0u32; 4];
        let (o, s, i, n) = (outer as u64, size as u64, inner as u64, nids as u64);
        // The callers' codes a bad index is reported with (any nonzero numbers).
        let (code_select, code_add, code_gather, code_scatter) = (11u32, 12u32, 13u32, 14u32);
        let mut out = vec![f32::NAN; outer * nids * inner];
        let cfg = gpu::grid(out.len());
        emulate!(emu, "index_select", cfg; addr(&x), lx, addr(&ids), lids, addr_mut(&mut out), o, s, i, n, addr_mut(&mut err), code_select);
        let want: Vec<f32> = (0..out.len())
            .map(|p| {
                let (oo, j, ii) = (p / (nids * inner), (p / inner) % nids, p % inner);
                logical[(oo * size + ids[j] as usize) * inner + ii]
            })
            .collect();
        assert_eq!(differs(&out, &want), None, "index_select");
        let src = values(outer * nids * inner, 5);
        let ls = Strided::of(&Layout::contiguous(&[outer, nids, inner]), "test").unwrap();
        let mut sums = vec![0.5f32; outer * size * inner];
        let cfg = gpu::grid(src.len());
        emulate!(emu, "index_add", cfg; addr(&src), ls, addr(&ids), lids, addr_mut(&mut sums), o, s, i, n, addr_mut(&mut err), code_add);
        let mut want = vec![0.5f32; outer * size * inner];
        for (p, v) in src.iter().enumerate() {
            let (oo, j, ii) = (p / (nids * inner), (p / inner) % nids, p % inner);
            want[(oo * size + ids[j] as usize) * inner + ii] += v;
        }
        assert_eq!(differs(&sums, &want), None, "index_add");
        assert_eq!(err, [0; 4], "no bad index so far");
        // A bad index: reported (the launch's code, the value's bits, the size), the output
        // zero there.
        let bad = vec![1.0f32, 5.0];
        let lbad = Strided::of(&Layout::contiguous(&[2]), "test").unwrap();
        let mut out = vec![f32::NAN; outer * 2 * inner];
        let (cfg, two) = (gpu::grid(out.len()), 2u64);
        emulate!(emu, "index_select", cfg; addr(&x), lx, addr(&bad), lbad, addr_mut(&mut out), o, s, i, two, addr_mut(&mut err), code_select);
        assert_eq!(err, [code_select, 5.0f32.to_bits(), 5, 0]);
        assert_eq!((out[0], out[inner]), (logical[inner], 0.0));

        // gather / scatter_add along axis 1 of [2, 5, 3] with a [2, 4, 3] index whose rows
        // repeat (1, 1, 4, 4 and 2, 2, 0, 0): scatter_add's sums meet in one place.
        let idx: Vec<f32> = (0..24).map(|p| ((p / 6 * 3 + 1) % 5) as f32).collect();
        let lidx = Strided::of(&Layout::contiguous(&[2, 4, 3]), "test").unwrap();
        // The index's sizes with the source's row-major strides, as the host passes them.
        let ishape = Strided::shape_with_strides(&[2, 4, 3], &[15, 3, 1], "test").unwrap();
        let (dim, n24) = (1u32, 24u64);
        let mut err = [0u32; 4];
        let mut out = vec![f32::NAN; 24];
        let cfg = gpu::grid(24);
        emulate!(emu, "gather", cfg; addr(&x), lx, addr(&idx), lidx, ishape, dim, s, addr_mut(&mut out), n24, addr_mut(&mut err), code_gather);
        let picked = |p: usize| (p / 12) * 15 + idx[p] as usize * 3 + p % 3;
        let want: Vec<f32> = (0..24).map(|p| logical[picked(p)]).collect();
        assert_eq!(differs(&out, &want), None, "gather");
        let src = values(24, 9);
        let mut sums = vec![0.0f32; 30];
        emulate!(emu, "scatter_add", cfg; addr(&src), lidx, addr(&idx), lidx, ishape, dim, s, addr_mut(&mut sums), n24, addr_mut(&mut err), code_scatter);
        let mut want = vec![0.0f32; 30];
        for p in 0..24 {
            want[picked(p)] += src[p];
        }
        assert_eq!(differs(&sums, &want), None, "scatter_add");
        assert_eq!(err, [0; 4]);
        // A bad entry of a gather's index: reported with the gather's code, zero there.
        let mut bad_idx = idx.clone();
        bad_idx[7] = 5.0;
        emulate!(emu, "gather", cfg; addr(&x), lx, addr(&bad_idx), lidx, ishape, dim, s, addr_mut(&mut out), n24, addr_mut(&mut err), code_gather);
        assert_eq!(err, [code_gather, 5.0f32.to_bits(), 5, 0]);
        assert_eq!((out[6], out[7]), (logical[picked(6)], 0.0));
    });
}

/// `take_errors`, as the host runs it after indexing kernels: the error word handed to the
/// four words after it and cleared in the same launch, so that a bad index found after the
/// take is recorded (not masked by the one taken, nor cleared unread), and a take of a clear
/// word hands over zeros.
#[test]
fn take_errors_hands_the_word_over_and_clears_it() {
    each_order(|emu| {
        let x = values(5, 31);
        let lx = Strided::of(&Layout::contiguous(&[1, 5, 1]), "test").unwrap();
        let lbad = Strided::of(&Layout::contiguous(&[1]), "test").unwrap();
        let (one, four) = (gpu::blocks(1, 1), gpu::blocks(1, 4));
        let (o, s, i, n) = (1u64, 5u64, 1u64, 1u64);
        let mut out = [f32::NAN];
        // The error word, then the four words the host copies.
        let mut words = [0u32; 8];
        let (word, taken) = (addr_mut(&mut words), addr_mut(&mut words) + 16);
        for (bad, code) in [(7.0f32, 21u32), (5.0, 22)] {
            emulate!(emu, "index_select", one; addr(&x), lx, addr(&[bad]), lbad, addr_mut(&mut out), o, s, i, n, word, code);
            emulate!(emu, "take_errors", four; word, taken);
            assert_eq!(words, [0, 0, 0, 0, code, bad.to_bits(), 5, 0], "after index {bad}");
        }
        emulate!(emu, "take_errors", four; word, taken);
        assert_eq!(words, [0; 8], "a clear word taken");
    });
}

/// A batch `[n, c, h, w]` under `win`: its sizes as kernels take them (`Conv::new`, as the
/// host code builds them), and the output grid.
fn geometry(input: [usize; 4], win: &Window) -> (Conv, [usize; 2]) {
    let output = [0, 1].map(|a| win.output_size(a, input[2 + a]).expect("the window fits"));
    (Conv::new(ImageDims { input, output }, win), output)
}

#[test]
fn im2col_matches_its_definition_and_col2im_is_its_adjoint() {
    each_order(|emu| {
        // 3x2 taps, stride (2, 1), padding (1, 1), dilation (1, 2); and stride 1 (col2im's
        // path without divisions), padding (1, 0), dilation (2, 1).
        let windows = [
            Window { kernel: [3, 2], stride: [2, 1], padding: [1, 1], dilation: [1, 2] },
            Window { kernel: [3, 2], stride: [1, 1], padding: [1, 0], dilation: [2, 1] },
        ];
        for win in windows {
            let [n, c, h, w] = [2, 3, 7, 6];
            let (g, [oh, ow]) = geometry([n, c, h, w], &win);
            let ([kh, kw], [sh, sw], [ph, pw], [dh, dw]) = (win.kernel, win.stride, win.padding, win.dilation);
            let x = values(n * c * h * w, 21);
            let lx = Strided::of(&Layout::contiguous(&[n, c, h, w]), "test").unwrap();
            let (rows, cols) = (c * kh * kw, n * oh * ow);
            // The input pixel that row `row` of column `col` reads, if inside.
            let source = |row: usize, col: usize| {
                let (cc, i, j) = (row / (kh * kw), (row / kw) % kh, row % kw);
                let (b, y, xx) = (col / (oh * ow), (col / ow) % oh, col % ow);
                let iy = (y * sh + i * dh) as isize - ph as isize;
                let ix = (xx * sw + j * dw) as isize - pw as isize;
                let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                inside.then(|| ((b * c + cc) * h + iy as usize) * w + ix as usize)
            };
            let mut out = vec![f32::NAN; rows * cols];
            let (cfg, pad) = (gpu::grid(c * cols), -9.0f32);
            emulate!(emu, "im2col", cfg; addr(&x), lx, addr_mut(&mut out), g, pad);
            for (p, &got) in out.iter().enumerate() {
                let (row, col) = (p / cols, p % cols);
                let want = source(row, col).map_or(pad, |at| x[at]);
                assert_eq!(got, want, "im2col at row {row}, column {col}, {win:?}");
            }
            // col2im: each column entry added back onto the pixel it was read from (in row
            // order, as the kernel sums them).
            let y = values(rows * cols, 22);
            let ly = Strided::of(&Layout::contiguous(&[rows, cols]), "test").unwrap();
            let mut back = vec![f32::NAN; x.len()];
            let cfg = gpu::grid(back.len());
            emulate!(emu, "col2im", cfg; addr(&y), ly, addr_mut(&mut back), g);
            let mut want = vec![0.0f32; x.len()];
            for (p, &v) in y.iter().enumerate() {
                if let Some(at) = source(p / cols, p % cols) {
                    want[at] += v;
                }
            }
            assert_eq!(differs(&back, &want), None, "col2im, {win:?}");
        }
    });
}

#[test]
fn max_pool_and_its_backward_match_plain_loops() {
    each_order(|emu| {
        // 3x2 windows at stride (2, 1) with padding 1 (pooling has no dilation).
        let ([kh, kw], [sh, sw], pad) = ([3, 2], [2, 1], 1);
        let win = Window { kernel: [kh, kw], stride: [sh, sw], padding: [pad, pad], dilation: [1, 1] };
        let [n, c, h, w] = [2, 2, 7, 6];
        let (g, [oh, ow]) = geometry([n, c, h, w], &win);
        let mut x = values(n * c * h * w, 31);
        x[9] = f32::NAN; // a NaN wins its windows
        x[20] = x[21]; // a tie goes to the first tap
        let lx = Strided::of(&Layout::contiguous(&[n, c, h, w]), "test").unwrap();
        let outputs = n * c * oh * ow;
        let (mut vals, mut taps) = (vec![0.0f32; outputs], vec![-1.0f32; outputs]);
        let cfg = gpu::grid(outputs);
        // The images' strides along H and W.
        let (hs, ws) = (w as i64, 1i64);
        // No bias: the images' address stands in for it, never read.
        let (lb, none, plain) = (Strided::of(&Layout::contiguous(&[c]), "test").unwrap(), 0i32, 0i32);
        emulate!(emu, "max_pool", cfg; addr(&x), lx, hs, ws, addr(&x), lb, none, addr_mut(&mut vals), addr_mut(&mut taps), g, plain);
        // Window position t (row-major over kh x kw) of output p, as an input pixel if inside.
        let pixel = |p: usize, t: usize| {
            let (plane, y, xx) = (p / (oh * ow), (p / ow) % oh, p % ow);
            let iy = (y * sh + t / kw) as isize - pad as isize;
            let ix = (xx * sw + t % kw) as isize - pad as isize;
            let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
            inside.then(|| (plane * h + iy as usize) * w + ix as usize)
        };
        // Each window's maximum and its tap, channel c's `shift` added to every value first.
        let pooled = |shift: &[f32]| -> (Vec<f32>, Vec<f32>) {
            (0..outputs)
                .map(|p| {
                    let mut best: Option<(f32, usize)> = None;
                    for t in 0..kh * kw {
                        let Some(at) = pixel(p, t) else { continue };
                        let v = x[at] + shift[(p / (oh * ow)) % c];
                        best = match best {
                            Some((b, _)) if v > b || (v.is_nan() && !b.is_nan()) => Some((v, t)),
                            None => Some((v, t)),
                            kept => kept,
                        };
                    }
                    let (best, tap) = best.expect("every window holds a pixel");
                    (best, tap as f32)
                })
                .unzip()
        };
        let (want_vals, want_taps) = pooled(&[0.0; 2]);
        assert_eq!(differs(&vals, &want_vals), None, "max_pool values");
        assert_eq!(taps, want_taps, "max_pool taps");
        let grad = values(outputs, 32);
        let lg = Strided::of(&Layout::contiguous(&[outputs]), "test").unwrap();
        // Written whole: what was there before does not show.
        let mut dx = vec![f32::NAN; x.len()];
        let cfg = gpu::grid(x.len());
        // Row-major: image b's channel c at (b·C + c)·H·W.
        let (sn, sc) = ((c * h * w) as u64, (h * w) as u64);
        emulate!(emu, "max_pool_backward", cfg; addr(&grad), lg, addr(&taps), lg, addr_mut(&mut dx), sn, sc, g);
        // The adjoint of pooling with these taps, the gradient of the windows `sends` dropped.
        let adjoint = |taps: &[f32], sends: &dyn Fn(usize) -> bool| {
            let mut want = vec![0.0f32; x.len()];
            for p in (0..outputs).filter(|&p| sends(p)) {
                want[pixel(p, taps[p] as usize).expect("a tap inside the input")] += grad[p];
            }
            want
        };
        assert_eq!(differs(&dx, &adjoint(&taps, &|_| true)), None, "max_pool_backward");
        // With the ReLU: the maxima's ReLU (NaN kept), and the adjoint of the two ops, the
        // gradient of a window whose maximum is not positive dropped, as the ReLU's would be.
        let (mut rvals, mut rtaps, relu) = (vec![0.0f32; outputs], vec![-1.0f32; outputs], 1i32);
        let cfg = gpu::grid(outputs);
        emulate!(emu, "max_pool", cfg; addr(&x), lx, hs, ws, addr(&x), lb, none, addr_mut(&mut rvals), addr_mut(&mut rtaps), g, relu);
        let relu_of =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| if v > 0.0 || v.is_nan() { v } else { 0.0 }).collect() };
        assert_eq!(differs(&rvals, &relu_of(&vals)), None, "max_pool with relu");
        assert!(vals.iter().any(|&v| v <= 0.0) && vals.iter().any(|&v| v > 0.0), "both signs among the maxima");
        let mut rdx = vec![f32::NAN; x.len()];
        let cfg = gpu::grid(x.len());
        emulate!(emu, "max_pool_backward", cfg; addr(&grad), lg, addr(&rtaps), lg, addr_mut(&mut rdx), sn, sc, g);
        let want = adjoint(&taps, &|p| vals[p] > 0.0);
        assert_eq!(differs(&rdx, &want), None, "max_pool_backward after max_pool with relu");
        // A convolution's output as its product leaves it, channel-major ([C, N, H, W] read as
        // [N, C, H, W]), with a bias per channel and the ReLU: the values and taps of pooling
        // the biased images, and the adjoint written back channel-major.
        let pix = h * w;
        let mut cm = vec![0.0f32; x.len()];
        for (q, &v) in x.iter().enumerate() {
            let (b, cc) = (q / (c * pix), (q / pix) % c);
            cm[(cc * n + b) * pix + q % pix] = v;
        }
        let lcm = Layout::contiguous(&[c, n, h, w]).permute(&[1, 0, 2, 3]).unwrap();
        let lcm = Strided::of(&lcm, "test").unwrap();
        let bias = [0.75f32, -0.5];
        let (mut bvals, mut btaps, with_bias) = (vec![0.0f32; outputs], vec![-1.0f32; outputs], 1i32);
        let cfg = gpu::grid(outputs);
        // Channel-major: H and W are still the last two axes, of strides W and 1.
        emulate!(emu, "max_pool", cfg; addr(&cm), lcm, hs, ws, addr(&bias), lb, with_bias,
            addr_mut(&mut bvals), addr_mut(&mut btaps), g, relu);
        let (biased, biased_taps) = pooled(&bias);
        assert_eq!(differs(&bvals, &relu_of(&biased)), None, "max_pool of channel-major images with a bias");
        let kept: Vec<f32> =
            biased.iter().zip(&biased_taps).map(|(&v, &t)| if v > 0.0 { t } else { (kh * kw) as f32 }).collect();
        assert_eq!(btaps, kept, "max_pool taps with a bias");
        assert!((0..outputs).any(|p| (vals[p] > 0.0) != (biased[p] > 0.0)), "the bias changes what the ReLU drops");
        let mut cdx = vec![f32::NAN; x.len()];
        let cfg = gpu::grid(x.len());
        let (sn, sc) = (pix as u64, (n * pix) as u64);
        emulate!(emu, "max_pool_backward", cfg; addr(&grad), lg, addr(&btaps), lg, addr_mut(&mut cdx), sn, sc, g);
        let want = adjoint(&biased_taps, &|p| biased[p] > 0.0);
        for (q, &v) in want.iter().enumerate() {
            let (b, cc) = (q / (c * pix), (q / pix) % c);
            assert_eq!(differs(&[cdx[(cc * n + b) * pix + q % pix]], &[v]), None, "channel-major adjoint at {q}");
        }
    });
}

/// `[rows, cols]` values (specials first: NaN, signed zeros, ±1, halves, tiny and large) as a
/// transposed view: the buffer and its layout.
fn special_view(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Layout) {
    let specials = [f32::NAN, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1.5, 1e-8, 30.0, -30.0, 0.1, 3.0];
    let mut v = values(rows * cols, seed);
    v[..specials.len()].copy_from_slice(&specials);
    (v, Layout::contiguous(&[cols, rows]).transpose(0, 1).unwrap())
}

#[test]
fn elementwise_kernels_match_the_cpu_for_every_op() {
    use super::{binary_code, compare_code, unary_code};
    use crate::backend::cpu::CpuStorage;
    use crate::backend::{BackendStorage, BinaryOp, CmpOp, UnaryOp};
    each_order(|emu| {
        let (rows, cols) = (8, 5);
        let n = rows * cols;
        let (a, la) = special_view(rows, cols, 41);
        let (mut b, lb) = special_view(rows, cols, 42);
        b.rotate_left(3); // other specials meet each of a's
        let (sa, sb) = (CpuStorage::F32(a.clone()), CpuStorage::F32(b.clone()));
        let (stra, strb) = (Strided::of(&la, "test").unwrap(), Strided::of(&lb, "test").unwrap());
        let (cfg, count) = (gpu::grid(n), n as u64);
        let cpu = |s: crate::Result<CpuStorage>| -> Vec<f32> {
            let CpuStorage::F32(v) = s.unwrap();
            v
        };
        let unary = [
            UnaryOp::Affine { mul: -1.5, add: 0.25 },
            UnaryOp::Exp,
            UnaryOp::Log,
            UnaryOp::Sqrt,
            UnaryOp::Powf(2.5),
            UnaryOp::Powf(-1.0),
            UnaryOp::Abs,
            UnaryOp::Sign,
            UnaryOp::Clamp { min: -0.5, max: 0.75 },
            UnaryOp::Step,
            UnaryOp::Sigmoid,
            UnaryOp::Tanh,
            UnaryOp::Relu,
            UnaryOp::LeakyRelu(0.1),
            UnaryOp::BceTargetGrad,
            UnaryOp::Sin,
            UnaryOp::Cos,
            UnaryOp::Log1p,
            UnaryOp::Expm1,
            UnaryOp::Erf,
            UnaryOp::Floor,
            UnaryOp::Ceil,
            UnaryOp::Round,
        ];
        for op in unary {
            let (code, p0, p1) = unary_code(op);
            let mut out = vec![f32::NAN; n];
            emulate!(emu, "unary", cfg; addr(&a), stra, addr_mut(&mut out), count, code, p0, p1);
            assert_eq!(differs(&out, &cpu(sa.unary(&la, op))), None, "{op:?}");
        }
        let binary = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Maximum,
            BinaryOp::Minimum,
            BinaryOp::SigmoidGrad,
            BinaryOp::TanhGrad,
            BinaryOp::ReluGrad,
            BinaryOp::LeakyReluGrad(0.1),
            BinaryOp::ClampGrad { min: -0.5, max: 0.75 },
            BinaryOp::Bce,
            BinaryOp::BceInputGrad,
            BinaryOp::BceWithLogits,
            BinaryOp::Pow,
            BinaryOp::PowExponentGrad,
        ];
        let zip = |code: i32, p0: f32, p1: f32| {
            let mut out = vec![f32::NAN; n];
            emulate!(emu, "binary", cfg; addr(&a), stra, addr(&b), strb, addr_mut(&mut out), count, code, p0, p1);
            out
        };
        for op in binary {
            let (code, p0, p1) = binary_code(op);
            assert_eq!(differs(&zip(code, p0, p1), &cpu(sa.binary(&la, &sb, &lb, op))), None, "{op:?}");
        }
        for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
            assert_eq!(differs(&zip(compare_code(op), 0.0, 0.0), &cpu(sa.compare(&la, &sb, &lb, op))), None, "{op:?}");
        }
        // where_cond: a's values as the condition (NaN and -0.0 among them).
        let mut out = vec![f32::NAN; n];
        emulate!(emu, "where_cond", cfg; addr(&a), stra, addr(&b), strb, addr(&a), stra, addr_mut(&mut out), count);
        assert_eq!(differs(&out, &cpu(sa.where_cond(&la, &sb, &lb, &sa, &la))), None, "where_cond");
    });
}

#[test]
fn the_lstm_cell_and_its_backward_match_the_cpu() {
    use crate::backend::cpu::CpuStorage;
    use crate::backend::BackendStorage;
    each_order(|emu| {
        let (n, h) = (3usize, 5usize);
        // xw as a transposed view; hw, c, dh, dc contiguous.
        let xw = values(n * 4 * h, 51);
        let lxw = Layout::contiguous(&[4 * h, n]).transpose(0, 1).unwrap();
        let (hw, c) = (values(n * 4 * h, 52), values(n * h, 53));
        let (lhw, lc) = (Layout::contiguous(&[n, 4 * h]), Layout::contiguous(&[n, h]));
        let (rows, units, cfg) = (n as u64, h as u64, gpu::grid(n * h));
        let st = |l: &Layout| Strided::of(l, "test").unwrap();
        let mut record = vec![f32::NAN; n * 6 * h];
        emulate!(emu, "lstm_cell", cfg; addr(&xw), st(&lxw), addr(&hw), st(&lhw), addr(&c), st(&lc), addr_mut(&mut record), rows, units);
        let (sxw, shw, sc) = (CpuStorage::F32(xw), CpuStorage::F32(hw), CpuStorage::F32(c.clone()));
        let CpuStorage::F32(want) = sxw.lstm_cell(&lxw, &shw, &lhw, &sc, &lc).unwrap();
        assert_eq!(differs(&record, &want), None, "lstm_cell");
        let (dh, dc) = (values(n * h, 54), values(n * h, 55));
        let lrec = Layout::contiguous(&[n, 6 * h]);
        let mut grads = vec![f32::NAN; n * 5 * h];
        emulate!(emu, "lstm_cell_backward", cfg;
        addr(&record), st(&lrec), addr(&c), st(&lc), addr(&dh), st(&lc), addr(&dc), st(&lc), addr_mut(&mut grads), rows, units);
        let (srec, sdh, sdc) = (CpuStorage::F32(record), CpuStorage::F32(dh), CpuStorage::F32(dc));
        let CpuStorage::F32(want) = srec.lstm_cell_backward(&lrec, &sc, &lc, &sdh, &lc, &sdc, &lc).unwrap();
        assert_eq!(differs(&grads, &want), None, "lstm_cell_backward");
    });
}

/// `class_total` against the CPU's ops: the picked log-probabilities' scaled sum, and the
/// rows whose argmax (the CPU's: first largest, NaN first) is at their class, over a
/// transposed view with labels at an offset; bad labels count as wrong, and in the sum are
/// reported with the launch's error code.
#[test]
fn class_totals_match_the_composed_ops() {
    use crate::backend::cpu::CpuStorage;
    use crate::backend::{BackendStorage, ReduceOp};
    each_order(|emu| {
        let st = |l: &Layout| Strided::of(l, "test").unwrap();
        // 1,500 rows: more than a block's 1,024 threads, so a thread takes several rows.
        for rows in [5usize, 100, 1500] {
            let n = 7usize;
            let mut stored = values(n * rows, 81); // [n, rows], viewed as [rows, n]
            stored[3 * rows + 1] = f32::NAN; // row 1: NaN at 3 and 5, the first wins
            stored[5 * rows + 1] = f32::NAN;
            stored[2 * rows + 2] = 9.0; // row 2: a tie at 2 and 4, the first wins
            stored[4 * rows + 2] = 9.0;
            let lx = Layout::contiguous(&[n, rows]).transpose(0, 1).unwrap();
            let CpuStorage::F32(argmax) =
                CpuStorage::F32(stored.clone()).reduce(&lx, Some(1), ReduceOp::ArgMax).unwrap();
            assert_eq!((argmax[1], argmax[2]), (3.0, 2.0));
            // Every third label the argmax; bad labels at rows 3 to 5.
            let mut labels: Vec<f32> =
                (0..rows).map(|i| if i % 3 == 0 { argmax[i] } else { ((i * 5) % n) as f32 }).collect();
            let picked_sum = |labels: &[f32]| {
                labels.iter().enumerate().map(|(i, &c)| f64::from(stored[c as usize * rows + i])).sum::<f64>()
            };
            let want_sum = picked_sum(&labels) as f32 * -0.125;
            if rows > 5 {
                labels[3..6].copy_from_slice(&[2.5, 7.0, -1.0]);
            }
            let correct = labels.iter().zip(&argmax).filter(|(c, a)| c == a).count() as f32;
            let mut buffer = vec![-3.0f32; rows];
            buffer.extend(&labels);
            let lc = Layout::contiguous(&[2 * rows]).narrow(0, rows, rows).unwrap();
            let (r, c) = (rows as u64, n as u64);
            let cfg = gpu::blocks(1, (rows.clamp(32, 1024).next_power_of_two()) as u32);
            let (mut out, mut err) = ([f32::NAN; 2], [0u32; 4]);
            let (one, scale, code) = (1i32, 1.0f32, 9u32);
            emulate!(emu, "class_total", cfg; addr(&stored), st(&lx), addr(&buffer), st(&lc), addr_mut(&mut out), r, c, one, scale, addr_mut(&mut err), code);
            assert_eq!((out[0], err), (correct, [0; 4]), "correct answers of {rows} rows");
            assert!(out[1].is_nan(), "class_total wrote past its one value");
            if rows > 5 {
                // The sum over good labels (the bad ones replaced by 0, 1 and 2).
                buffer[rows + 3..rows + 6].copy_from_slice(&[0.0, 1.0, 2.0]);
                let good: Vec<f32> = buffer[rows..].to_vec();
                let want_good = picked_sum(&good) as f32 * -0.125;
                let (zero, scale) = (0i32, -0.125f32);
                emulate!(emu, "class_total", cfg; addr(&stored), st(&lx), addr(&buffer), st(&lc), addr_mut(&mut out), r, c, zero, scale, addr_mut(&mut err), code);
                assert_eq!(differs(&out[..1], &[want_good]), None, "picked sum of {rows} rows");
                assert_eq!(err, [0; 4]);
                // A label that is not a class index: reported with the launch's code.
                buffer[rows + 4] = 7.0;
                emulate!(emu, "class_total", cfg; addr(&stored), st(&lx), addr(&buffer), st(&lc), addr_mut(&mut out), r, c, zero, scale, addr_mut(&mut err), code);
                assert_eq!(err, [9, 7.0f32.to_bits(), 7, 0], "a bad label in the picked sum");
            } else {
                let (zero, scale) = (0i32, -0.125f32);
                emulate!(emu, "class_total", cfg; addr(&stored), st(&lx), addr(&buffer), st(&lc), addr_mut(&mut out), r, c, zero, scale, addr_mut(&mut err), code);
                assert_eq!(differs(&out[..1], &[want_sum]), None, "picked sum of {rows} rows");
                assert_eq!(err, [0; 4]);
            }
        }
    });
}

#[test]
fn copies_fills_bias_and_cross_entropy_match_the_cpu() {
    use crate::backend::cpu::CpuStorage;
    use crate::backend::{BackendStorage, UnaryOp};
    each_order(|emu| {
        let st = |l: &Layout| Strided::of(l, "test").unwrap();
        // fill, arange
        let mut out = vec![f32::NAN; 600];
        let (count, value, start, step) = (600u64, 2.5f32, -1.0f32, 0.25f32);
        emulate!(emu, "fill", gpu::grid(600); addr_mut(&mut out), count, value);
        assert!(out.iter().all(|&v| v == 2.5));
        emulate!(emu, "arange", gpu::grid(600); addr_mut(&mut out), count, start, step);
        let CpuStorage::F32(want) = CpuStorage::arange(start, step, 600);
        assert_eq!(differs(&out, &want), None, "arange");
        // gather_values: one value from each of several buffers, at offsets, some twice.
        let (a, b) = (values(5, 65), values(3, 66));
        let picks = [(&a, 4usize), (&b, 0), (&a, 0), (&b, 2), (&a, 4)];
        let mut v = gpu::Values { src: [0; gpu::VALUES_MAX], count: picks.len() as u64 };
        for (src, (buf, at)) in v.src.iter_mut().zip(&picks) {
            *src = addr(buf) + 4 * *at as u64;
        }
        let mut out = vec![f32::NAN; picks.len() + 1];
        emulate!(emu, "gather_values", gpu::grid(picks.len()); v, addr_mut(&mut out));
        let want: Vec<f32> = picks.iter().map(|(buf, at)| buf[*at]).chain([f32::NAN]).collect();
        assert_eq!(differs(&out[..picks.len()], &want[..picks.len()]), None, "gather_values");
        assert!(out[picks.len()].is_nan(), "gather_values wrote past its count");
        // copy_strided from a narrowed transposed view; copy_into a padded view of a wider buffer.
        let x = values(6 * 7, 61);
        let lx = Layout::contiguous(&[7, 6]).transpose(0, 1).unwrap().narrow(1, 2, 4).unwrap();
        let sx = CpuStorage::F32(x.clone());
        let CpuStorage::F32(want) = sx.copy_strided(&lx).unwrap();
        let (mut out, n) = (vec![f32::NAN; 24], 24u64);
        emulate!(emu, "copy_strided", gpu::grid(24); addr(&x), st(&lx), addr_mut(&mut out), n);
        assert_eq!(differs(&out, &want), None, "copy_strided");
        let ld = Layout::contiguous(&[6, 9]).narrow(1, 3, 4).unwrap();
        let mut dst = vec![-7.0f32; 54];
        emulate!(emu, "copy_into", gpu::grid(24); addr(&x), st(&lx), addr_mut(&mut dst), st(&ld), n);
        let mut sdst = CpuStorage::F32(vec![-7.0; 54]);
        sx.copy_into(&lx, &mut sdst, &ld).unwrap();
        let CpuStorage::F32(want) = sdst;
        assert_eq!(differs(&dst, &want), None, "copy_into");
        // bias_rows: y + bias (a view at an offset) per row, then the ReLU: the CPU's add and ReLU.
        let (rows, cols) = (5usize, 7usize);
        let y0 = values(rows * cols, 62);
        let bias_buffer = values(2 * cols, 63);
        let lb = Layout::contiguous(&[2 * cols]).narrow(0, cols, cols).unwrap(); // at an offset
        let ly = Layout::contiguous(&[rows, cols]);
        let sb = CpuStorage::F32(bias_buffer.clone());
        let lbb = lb.broadcast_to(&[rows, cols]).unwrap();
        let sum = CpuStorage::F32(y0.clone()).binary(&ly, &sb, &lbb, crate::backend::BinaryOp::Add).unwrap();
        for relu in [0i32, 1] {
            let mut y = y0.clone();
            let (r, c) = (rows as u64, cols as u64);
            emulate!(emu, "bias_rows", gpu::grid(rows * cols); addr_mut(&mut y), addr(&bias_buffer), st(&lb), r, c, relu);
            let want = if relu == 1 { sum.unary(&ly, UnaryOp::Relu).unwrap() } else { sum.clone() };
            let CpuStorage::F32(want) = want;
            assert_eq!(differs(&y, &want), None, "bias_rows (relu {relu})");
        }
        // cross_entropy_grad over log-probabilities, with the loss's gradient read on the device.
        let (rows, classes) = (4usize, 6usize);
        let logits = CpuStorage::F32(values(rows * classes, 64));
        let ll = Layout::contiguous(&[rows, classes]);
        let lp = logits.softmax(&ll, 1, true).unwrap();
        let CpuStorage::F32(lp_values) = &lp;
        let ids = vec![5.0f32, 0.0, 2.0, 5.0];
        let g = vec![0.0f32, 1.5];
        let (lids, lg) = (Layout::contiguous(&[rows]), Layout::contiguous(&[2]).narrow(0, 1, 1).unwrap());
        let scale = 0.25f32;
        let CpuStorage::F32(want) = lp
            .cross_entropy_grad(&ll, &CpuStorage::F32(ids.clone()), &lids, &CpuStorage::F32(g.clone()), &lg, scale)
            .unwrap();
        let mut out = vec![f32::NAN; rows * classes];
        let mut err = [0u32; 4];
        let (r, c, code) = (rows as u64, classes as u64, 15u32);
        emulate!(emu, "cross_entropy_grad", gpu::grid(rows * classes);
        addr(lp_values), st(&ll), addr(&ids), st(&lids), addr(&g), st(&lg), scale, addr_mut(&mut out), r, c, addr_mut(&mut err), code);
        assert_eq!(differs(&out, &want), None, "cross_entropy_grad");
        assert_eq!(err, [0; 4]);
    });
}
