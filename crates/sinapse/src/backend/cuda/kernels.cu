// The CUDA backend's kernels: one kernel per family of the closed kernel set
// (src/backend/kernels.rs), the member picked by an op code the host passes. Compiled once
// per process by NVRTC (src/backend/cuda/gpu.rs); CI compiles this file too, on machines
// without a GPU, so a syntax or type error fails there.
//
// Inputs are read through a `Strided` view (offset, sizes, strides: any layout a tensor view
// can have, broadcast axes with stride 0) and outputs are new row-major buffers, unless a
// kernel says otherwise. Loops are grid-stride, so any grid covers any size. The formulas are
// the ones the CPU backend computes (src/backend/cpu/), and the op suite (tests/devices.rs)
// holds the two to the same results.

#define MAX_DIMS 8
#define NAN_F __int_as_float(0x7fc00000)
#define NEG_INF_F __int_as_float(0xff800000)
typedef unsigned long long u64;
typedef long long i64;

// A tensor view: element i (row-major over `dims`) is at `offset + sum(coord_d * strides[d])`.
struct Strided {
    unsigned int rank;
    unsigned int contiguous;  // 1: element i is at offset + i
    u64 offset;
    u64 dims[MAX_DIMS];
    i64 strides[MAX_DIMS];
};

// The sizes of a 2-D sliding window over an [N, C, H, W] batch.
struct Conv {
    u64 n, c, h, w;      // input
    u64 oh, ow;          // output positions
    u64 kh, kw;          // kernel
    u64 sh, sw;          // stride
    u64 ph, pw;          // padding
    u64 dh, dw;          // dilation
};

__device__ __forceinline__ u64 at(const Strided& l, u64 i) {
    if (l.contiguous) return l.offset + i;
    i64 off = (i64)l.offset;
    for (int d = (int)l.rank - 1; d >= 0; --d) {
        u64 size = l.dims[d];
        off += (i64)(i % size) * l.strides[d];
        i /= size;
    }
    return (u64)off;
}

#define GRID_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// ---------------------------------------------------------------------------------------
// Index errors. Index values are only seen here, on the device; a bad one is recorded in
// `err` (the first one wins: the caller's code, the value's bits, the axis size) and the
// host reports it at its next read of device memory, as PyTorch's device-side asserts do.

__device__ bool index_ok(float v, u64 size) {
    u64 limit = size < (1ull << 24) ? size : (1ull << 24);
    return v >= 0.0f && v == floorf(v) && (u64)v < limit;
}

__device__ void report(unsigned int* err, unsigned int op, float v, u64 size) {
    if (atomicCAS(err, 0u, op) == 0u) {
        err[1] = __float_as_uint(v);
        err[2] = (unsigned int)(size & 0xffffffffull);
        err[3] = (unsigned int)(size >> 32);
    }
}

// Hands the error word to the host: copies its four words to `taken` and clears them, in
// one launch, so that no kernel (another thread's included) can record a bad index between
// the host's read and its clear: one queued before this is in what the host reads, one
// queued after records into a clear word, for the next read.
extern "C" __global__ void take_errors(unsigned int* word, unsigned int* taken) {
    if (blockIdx.x == 0 && threadIdx.x < 4) {
        taken[threadIdx.x] = word[threadIdx.x];
        word[threadIdx.x] = 0u;
    }
}

// ---------------------------------------------------------------------------------------
// The kernel profile only (`sinapse::backend::set_kernel_profiling`): keeps the stream busy
// for `cycles` clock cycles, so that the host has queued the launch it times, and the events
// around it, before the GPU reaches them (the launch then starts at once after its first event).

extern "C" __global__ void spin(u64 cycles) {
    long long start = clock64();
    while ((u64)(clock64() - start) < cycles) {
    }
}

// ---------------------------------------------------------------------------------------
// Creation and copies.

extern "C" __global__ void fill(float* out, u64 n, float value) {
    GRID_LOOP(i, n) out[i] = value;
}

// One value from each of up to VALUES_MAX addresses, in order (scalars stacked: a loss per
// batch, read together). The host's copy is `Values` in src/backend/cuda/gpu.rs.
#define VALUES_MAX 64
struct Values {
    u64 src[VALUES_MAX];
    u64 count;
};
static_assert(sizeof(Values) == 520, "Values' size changed: change gpu.rs too");

extern "C" __global__ void gather_values(Values v, float* out) {
    GRID_LOOP(i, v.count) out[i] = *(const float*)v.src[i];
}

extern "C" __global__ void arange(float* out, u64 n, float start, float step) {
    GRID_LOOP(i, n) out[i] = start + (float)i * step;
}

extern "C" __global__ void copy_strided(const float* x, Strided lx, float* out, u64 n) {
    GRID_LOOP(i, n) out[i] = x[at(lx, i)];
}

extern "C" __global__ void copy_into(const float* x, Strided lx, float* dst, Strided ld, u64 n) {
    GRID_LOOP(i, n) dst[at(ld, i)] = x[at(lx, i)];
}

// An inference graph's copy of its input in and of its output out: plain copies of n values,
// two kernels by name so that the host finds each one's node in the captured graph and
// renames its addresses before a replay (`CapturedGraph::set_copies` in gpu.rs), and the
// replay reads and writes tensors made after the capture, in one launch.
extern "C" __global__ void graph_input(const float* src, float* dst, u64 n) {
    GRID_LOOP(i, n) dst[i] = src[i];
}

extern "C" __global__ void graph_output(const float* src, float* dst, u64 n) {
    GRID_LOOP(i, n) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------
// Elementwise. Op codes follow the variants of UnaryOp and BinaryOp/CmpOp (gpu.rs).

__device__ __forceinline__ float clamped_ln(float v) { return fmaxf(logf(v), -100.0f); }

__device__ __forceinline__ float sigmoidf(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

// The ReLU: x where positive, 0 otherwise, a NaN kept (the CPU's `elementwise::relu`).
__device__ __forceinline__ float relu_f(float x) { return (x > 0.0f || isnan(x)) ? x : 0.0f; }

__device__ float unary_op(int op, float x, float p0, float p1) {
    switch (op) {
        case 0: return x * p0 + p1;                                   // affine
        case 1: return expf(x);                                       // exp
        case 2: return logf(x);                                       // log
        case 3: return sqrtf(x);                                      // sqrt
        case 4: return powf(x, p0);                                   // powf
        case 5: return fabsf(x);                                      // abs
        case 6: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);  // sign
        case 7: return fminf(fmaxf(x, p0), p1);                       // clamp (NaN stays NaN below)
        case 8: return x > 0.0f ? 1.0f : 0.0f;                        // step
        case 9: return sigmoidf(x);                                   // sigmoid
        case 10: return tanhf(x);                                     // tanh
        case 11: return relu_f(x);                                    // relu, NaN kept
        case 12: return x > 0.0f ? x : p0 * x;                        // leaky relu
        case 13: return clamped_ln(1.0f - x) - clamped_ln(x);         // bce target grad
        case 14: return sinf(x);
        case 15: return cosf(x);
        case 16: return log1pf(x);
        case 17: return expm1f(x);
        case 18: return erff(x);
        case 19: return floorf(x);
        case 20: return ceilf(x);
        case 21: return rintf(x);                                     // round, halves to even
    }
    return 0.0f;
}

// `y[r, j] += bias[j]` over the row-major [rows, cols] `y`, in place (a dense layer's bias
// on its product's new output), then the ReLU when `relu`: one pass where the add and the
// ReLU kernels make two (the CPU's `matmul::add_to_rows`).
extern "C" __global__ void bias_rows(float* y, const float* bias, Strided lb, u64 rows, u64 cols, int relu) {
    GRID_LOOP(i, rows * cols) {
        float v = y[i] + bias[at(lb, i % cols)];
        y[i] = relu ? relu_f(v) : v;
    }
}

// A dense layer over a few rows (an inference's batch of one, say) in one launch, bias and
// ReLU included: y[r, j] = x[r, ·]·w[·, j] + b[j] (then the ReLU) for rows up to
// LINEAR_ROWS_MAX, where cuBLAS's product and `bias_rows` are two graph nodes or launches.
// A warp per output column j: lane l sums k = l, l + 32, ... for every row, so a weight
// stored [out, in] (w its transposed view, [in, out]) is read once, 128 bytes a step; the 32
// partial sums then meet in shared memory (a tree, in a fixed order). Blocks of 256 threads.
// The three operands are 2-D views given by their first element and their strides (x: a
// row's, an input's; w: an input's, an output's; b: an output's), so the loop's addresses
// are products and sums, not the divisions of `at`.
#define LINEAR_ROWS_MAX 8
static_assert(LINEAR_ROWS_MAX == 8, "linear_rows has a case for each row count, 1 to 8");

// One lane's partial sums for `R` rows: lane l's terms k = l, l + 32, ..., in that order.
// With the row count fixed when compiled (the kernel picks the instance), and four steps
// taken at a time where all four are in range, the loads of four steps are issued together
// rather than each step waiting out the memory's latency on its own.
template <int R>
__device__ __forceinline__ void linear_rows_sums(const float* x, u64 x_row, u64 x_in, const float* column, u64 w_in,
                                                 u64 k, unsigned int lane, float* acc) {
    u64 i = lane;
    for (; i + 96 < k; i += 128) {
        float wv[4], xv[4][R];
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            wv[s] = column[(i + 32 * s) * w_in];
#pragma unroll
            for (int r = 0; r < R; ++r) xv[s][r] = x[(i + 32 * s) * x_in + (u64)r * x_row];
        }
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] += xv[s][r] * wv[s];
    }
    for (; i < k; i += 32) {
        float wv = column[i * w_in];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] += x[i * x_in + (u64)r * x_row] * wv;
    }
}

extern "C" __global__ __launch_bounds__(256) void linear_rows(const float* x, u64 x_row, u64 x_in, const float* w,
                                                             u64 w_in, u64 w_out, const float* b, u64 b_out,
                                                             float* y, u64 rows, u64 k, u64 n, int relu) {
    __shared__ float part[LINEAR_ROWS_MAX][256];
    unsigned int t = threadIdx.x, lane = t % 32;
    u64 j = ((u64)blockIdx.x * blockDim.x + t) / 32;
    bool active = j < n;  // the whole warp alike; every thread reaches each barrier
    float acc[LINEAR_ROWS_MAX];
    for (int r = 0; r < LINEAR_ROWS_MAX; ++r) acc[r] = 0.0f;
    if (active) {
        const float* column = w + j * w_out;
        switch (rows) {
            case 1: linear_rows_sums<1>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 2: linear_rows_sums<2>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 3: linear_rows_sums<3>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 4: linear_rows_sums<4>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 5: linear_rows_sums<5>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 6: linear_rows_sums<6>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 7: linear_rows_sums<7>(x, x_row, x_in, column, w_in, k, lane, acc); break;
            case 8: linear_rows_sums<8>(x, x_row, x_in, column, w_in, k, lane, acc); break;
        }
    }
    for (int r = 0; r < LINEAR_ROWS_MAX; ++r) part[r][t] = acc[r];
    __syncthreads();
    for (unsigned int half = 16; half > 0; half /= 2) {
        if (lane < half)
            for (int r = 0; r < LINEAR_ROWS_MAX; ++r) part[r][t] += part[r][t + half];
        __syncthreads();
    }
    if (active && lane == 0) {
        float bias = b[j * b_out];
        for (u64 r = 0; r < rows && r < LINEAR_ROWS_MAX; ++r) {
            float v = part[r][t] + bias;
            y[r * n + j] = relu ? relu_f(v) : v;
        }
    }
}

extern "C" __global__ void unary(const float* x, Strided lx, float* out, u64 n, int op, float p0, float p1) {
    GRID_LOOP(i, n) {
        float v = x[at(lx, i)];
        // fminf/fmaxf drop a NaN; clamp keeps it, as Rust's f32::clamp does.
        out[i] = (op == 7 && isnan(v)) ? v : unary_op(op, v, p0, p1);
    }
}

__device__ float binary_op(int op, float a, float b, float p0, float p1) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return (isnan(a) || isnan(b)) ? NAN_F : fmaxf(a, b);  // maximum
        case 5: return (isnan(a) || isnan(b)) ? NAN_F : fminf(a, b);  // minimum
        case 6: return a * b * (1.0f - b);                               // sigmoid grad (g, y)
        case 7: return a * (1.0f - b * b);                               // tanh grad (g, y)
        case 8: return b > 0.0f ? a : 0.0f;                              // relu grad (g, y)
        case 9: return b > 0.0f ? a : p0 * a;                            // leaky relu grad (g, x)
        case 10: return (b >= p0 && b <= p1) ? a : 0.0f;                 // clamp grad (g, x)
        case 11: return -(b * clamped_ln(a) + (1.0f - b) * clamped_ln(1.0f - a));  // bce (p, y)
        case 12: return (a - b) / fmaxf(a * (1.0f - a), 1e-12f);                  // bce grad in p
        case 13: return fmaxf(a, 0.0f) - a * b + log1pf(expf(-fabsf(a)));         // bce with logits
        case 14: return powf(a, b);                                                // pow
        case 15: return (a == 0.0f && b >= 0.0f) ? 0.0f : powf(a, b) * logf(a);   // pow grad in b
        // comparisons: 1 where the relation holds
        case 100: return a == b ? 1.0f : 0.0f;
        case 101: return a != b ? 1.0f : 0.0f;
        case 102: return a < b ? 1.0f : 0.0f;
        case 103: return a <= b ? 1.0f : 0.0f;
        case 104: return a > b ? 1.0f : 0.0f;
        case 105: return a >= b ? 1.0f : 0.0f;
    }
    return 0.0f;
}

extern "C" __global__ void binary(const float* a, Strided la, const float* b, Strided lb, float* out, u64 n,
                                  int op, float p0, float p1) {
    GRID_LOOP(i, n) out[i] = binary_op(op, a[at(la, i)], b[at(lb, i)], p0, p1);
}

extern "C" __global__ void where_cond(const float* c, Strided lc, const float* t, Strided lt, const float* f,
                                      Strided lf, float* out, u64 n) {
    GRID_LOOP(i, n) out[i] = c[at(lc, i)] != 0.0f ? t[at(lt, i)] : f[at(lf, i)];
}

// ---------------------------------------------------------------------------------------
// Reductions over the middle axis of [outer, len, inner] (row-major over the view's shape).
// Op codes: 0 sum, 1 max, 2 min, 3 argmax, 4 argmin. NaN wins max and min; argmax/argmin
// give the first NaN, else the first extreme. Sums accumulate in double.

struct Best {
    float v;
    u64 at;
};

// Whether candidate (v, at) beats the current best (b) for op 1-4, ties going to the first.
__device__ __forceinline__ bool beats(int op, float v, u64 i, Best b) {
    if (isnan(b.v)) return isnan(v) && i < b.at;
    if (isnan(v)) return true;
    bool more = (op == 1 || op == 3) ? v > b.v : v < b.v;
    return more || (v == b.v && i < b.at);
}

// One thread per output: for many short reductions.
extern "C" __global__ void reduce_thread(const float* x, Strided lx, float* out, u64 outer, u64 len, u64 inner,
                                         int op) {
    GRID_LOOP(o, outer * inner) {
        u64 base = (o / inner) * len * inner + (o % inner);
        if (len == 0) {
            out[o] = 0.0f;
            continue;
        }
        if (op == 0) {
            double s = 0.0;
            for (u64 j = 0; j < len; ++j) s += (double)x[at(lx, base + j * inner)];
            out[o] = (float)s;
        } else {
            Best b = {x[at(lx, base)], 0};
            for (u64 j = 1; j < len; ++j) {
                float v = x[at(lx, base + j * inner)];
                if (beats(op, v, j, b)) {
                    b.v = v;
                    b.at = j;
                }
            }
            out[o] = op >= 3 ? (float)b.at : b.v;
        }
    }
}

// Long reductions, a block per `cols` neighbouring outputs: thread t serves output lane
// t % cols and takes every (blockDim.x / cols)-th element of it from element t / cols on,
// then the block combines each lane's parts. cols = 1 for lanes along the last axis (a
// loss over a batch: a block's threads read one lane's neighbouring elements); cols = 32 for
// lanes side by side in memory (a bias's gradient, the sum over a batch of each column:
// the 32 lanes of a warp read 32 neighbouring values). blockDim.x is a power of two, at
// most 1024 (declared to the compiler, which then keeps to the registers 1024 threads may
// have), and a multiple of cols, itself a power of two.
// With parts > 1 (sums only), each lane is cut into `parts` pieces of ceil(len / parts)
// elements, a block per piece, and `out` is [outer, parts, inner]: partial sums, which a
// second launch adds up (few long lanes would otherwise leave most of the GPU idle).
extern "C" __global__ __launch_bounds__(1024) void reduce_block(const float* x, Strided lx, float* out, u64 outer, u64 len, u64 inner,
                                        int op, unsigned int cols, u64 parts) {
    __shared__ double sums[1024];
    __shared__ float vals[1024];
    __shared__ u64 ats[1024];
    unsigned int t = threadIdx.x, lane = t % cols, row = t / cols, rows = blockDim.x / cols;
    u64 groups = (inner + cols - 1) / cols;  // of `cols` lanes, per outer index
    u64 piece = (len + parts - 1) / parts;
    for (u64 g = blockIdx.x; g < outer * groups * parts; g += gridDim.x) {
        u64 part = g % parts, group = g / parts;
        u64 i = (group % groups) * cols + lane;
        bool inside = i < inner;
        u64 o = ((group / groups) * parts + part) * inner + i, base = (group / groups) * len * inner + i;
        u64 end = min(len, (part + 1) * piece);
        double s = 0.0;
        Best b = {NAN_F, ~0ull};
        bool any = false;
        for (u64 j = part * piece + row; inside && j < end; j += rows) {
            float v = x[at(lx, base + j * inner)];
            if (op == 0) {
                s += (double)v;
            } else if (!any || beats(op, v, j, b)) {
                b.v = v;
                b.at = j;
                any = true;
            }
        }
        sums[t] = s;
        vals[t] = b.v;
        ats[t] = any ? b.at : ~0ull;
        __syncthreads();
        for (unsigned int half = rows / 2; half > 0; half /= 2) {
            if (row < half) {
                unsigned int other = t + half * cols;
                if (op == 0) {
                    sums[t] += sums[other];
                } else if (ats[other] != ~0ull) {
                    Best kept = {vals[t], ats[t]};
                    if (ats[t] == ~0ull || beats(op, vals[other], ats[other], kept)) {
                        vals[t] = vals[other];
                        ats[t] = ats[other];
                    }
                }
            }
            __syncthreads();
        }
        if (row == 0 && inside) {
            if (len == 0) out[o] = 0.0f;
            else if (op == 0) out[o] = (float)sums[t];
            else out[o] = op >= 3 ? (float)ats[t] : vals[t];
        }
        __syncthreads();
    }
}

// The gradient through a dense layer's fused ReLU and its bias's gradient, in one pass over
// the [rows, cols] output gradient g: masked = y > 0 ? g : 0 (the binary kernel's relu grad,
// row-major) and sums[c] = the sum of column c of masked, in double. Laid out as reduce_block
// with cols = 32: a block per 32 neighbouring columns, its threads 32 to a row taking every
// (blockDim.x / 32)-th row, so that a warp reads and writes 32 neighbouring values.
extern "C" __global__ __launch_bounds__(1024) void relu_grad_sums(const float* g, Strided lg, const float* y,
                                                                  Strided ly, float* masked, float* sums, u64 rows,
                                                                  u64 cols) {
    __shared__ double part[1024];
    unsigned int t = threadIdx.x, lane = t % 32, row = t / 32, step = blockDim.x / 32;
    for (u64 group = blockIdx.x; group < (cols + 31) / 32; group += gridDim.x) {
        u64 c = group * 32 + lane;
        bool inside = c < cols;
        double s = 0.0;
        for (u64 r = row; inside && r < rows; r += step) {
            u64 i = r * cols + c;
            float v = y[at(ly, i)] > 0.0f ? g[at(lg, i)] : 0.0f;
            masked[i] = v;
            s += (double)v;
        }
        part[t] = s;
        __syncthreads();
        for (unsigned int half = step / 2; half > 0; half /= 2) {
            if (row < half) part[t] += part[t + half * 32];
            __syncthreads();
        }
        if (row == 0 && inside) sums[c] = (float)part[t];
        __syncthreads();
    }
}

// Softmax (log = 0) or log-softmax (log = 1) along the middle axis of [outer, len, inner]:
// one block per lane, the lane's maximum subtracted first so that no exponent is positive.
extern "C" __global__ void softmax(const float* x, Strided lx, float* out, u64 outer, u64 len, u64 inner, int log) {
    __shared__ float part[1024];
    for (u64 lane = blockIdx.x; lane < outer * inner; lane += gridDim.x) {
        u64 base = (lane / inner) * len * inner + (lane % inner);
        unsigned int t = threadIdx.x;
        float m = NEG_INF_F;
        for (u64 j = t; j < len; j += blockDim.x) m = fmaxf(m, x[at(lx, base + j * inner)]);
        part[t] = m;
        __syncthreads();
        for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
            if (t < half) part[t] = fmaxf(part[t], part[t + half]);
            __syncthreads();
        }
        m = part[0];
        __syncthreads();
        float s = 0.0f;
        for (u64 j = t; j < len; j += blockDim.x) s += expf(x[at(lx, base + j * inner)] - m);
        part[t] = s;
        __syncthreads();
        for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
            if (t < half) part[t] += part[t + half];
            __syncthreads();
        }
        s = part[0];
        float log_s = logf(s);
        for (u64 j = t; j < len; j += blockDim.x) {
            u64 i = base + j * inner;
            float v = x[at(lx, i)] - m;
            out[i] = log ? v - log_s : expf(v) / s;
        }
        __syncthreads();
    }
}

// The gradient of a mean cross-entropy through its log-softmax, over the log-probabilities
// `lp` [rows, n]: out[i, c] = [c = class_i]·s - e^lp[i, c]·s with s = g·scale, `g` the loss's
// gradient (one value, read here: the host never waits for it). The steps are those of
// the CPU's kernel (src/backend/cpu/reduce.rs), and __fmul_rn keeps the compiler from
// contracting the product and the difference into one fma, so this equals the separate
// kernels it replaces on the GPU bit for bit; against the CPU it differs by expf's few ulps.
extern "C" __global__ void cross_entropy_grad(const float* lp, Strided llp, const float* classes, Strided lc,
                                              const float* g, Strided lg, float scale, float* out, u64 rows, u64 n,
                                              unsigned int* err, unsigned int code) {
    float s = __fmul_rn(g[at(lg, 0)], scale);
    GRID_LOOP(p, rows * n) {
        u64 c = p % n;
        float v = classes[at(lc, p / n)];
        if (!index_ok(v, n)) {
            report(err, code, v, n);
            out[p] = 0.0f;
            continue;
        }
        float picked = (u64)v == c ? s : 0.0f;
        out[p] = picked - __fmul_rn(expf(lp[at(llp, p)]), s);
    }
}

// One number over a batch: rows of x [rows, n] and a class for each, summed in double in a
// fixed order by one block (the host uses it for up to 65,536 values: a step's loss and its
// correct answers, one launch each instead of three):
//   op 0: scale·Σ x[i, class_i] (x the log-probabilities and scale -1/rows: the mean
//         cross-entropy; a class that is not an index is reported with `code`);
//   op 1: how many rows have their first largest value (the first NaN, where there is one,
//         as argmax gives) at class_i (x the logits; a class that is not an index matches
//         no row, as argmax's index compared with it does not).
extern "C" __global__ __launch_bounds__(1024) void class_total(const float* x, Strided lx, const float* classes,
                                                             Strided lc, float* out, u64 rows, u64 n, int op,
                                                             float scale, unsigned int* err, unsigned int code) {
    __shared__ double sums[1024];
    unsigned int t = threadIdx.x;
    double s = 0.0;
    for (u64 i = t; i < rows; i += blockDim.x) {
        float v = classes[at(lc, i)];
        if (op == 0) {
            if (!index_ok(v, n)) {
                report(err, code, v, n);
                continue;
            }
            s += (double)x[at(lx, i * n + (u64)v)];
        } else {
            Best b = {x[at(lx, i * n)], 0};
            for (u64 c = 1; c < n; ++c) {
                float w = x[at(lx, i * n + c)];
                if (beats(3, w, c, b)) {
                    b.v = w;
                    b.at = c;
                }
            }
            if ((float)b.at == v) s += 1.0;
        }
    }
    sums[t] = s;
    __syncthreads();
    for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) sums[t] += sums[t + half];
        __syncthreads();
    }
    // + 0: a zero loss is +0, as the composed ops' x·scale + 0 gives it (scale is negative).
    if (t == 0) out[0] = op == 0 ? __fmul_rn((float)sums[0], scale) + 0.0f : (float)sums[0];
}

// ---------------------------------------------------------------------------------------
// Indexing. `ids` are f32 whole numbers; a bad one is reported with the launch's `code`,
// which names the caller (gpu.rs, `error_code`).

// out[o, j, i] = x[o, ids[j], i] for out [outer, nids, inner].
extern "C" __global__ void index_select(const float* x, Strided lx, const float* ids, Strided lids, float* out,
                                        u64 outer, u64 size, u64 inner, u64 nids, unsigned int* err,
                                        unsigned int code) {
    GRID_LOOP(p, outer * nids * inner) {
        u64 i = p % inner, j = (p / inner) % nids, o = p / (inner * nids);
        float v = ids[at(lids, j)];
        if (!index_ok(v, size)) {
            report(err, code, v, size);
            out[p] = 0.0f;
            continue;
        }
        out[p] = x[at(lx, (o * size + (u64)v) * inner + i)];
    }
}

// out (a row-major copy of the base, [outer, size, inner]) += src[o, j, i] at [o, ids[j], i].
extern "C" __global__ void index_add(const float* src, Strided ls, const float* ids, Strided lids, float* out,
                                     u64 outer, u64 size, u64 inner, u64 nids, unsigned int* err, unsigned int code) {
    GRID_LOOP(p, outer * nids * inner) {
        u64 i = p % inner, j = (p / inner) % nids, o = p / (inner * nids);
        float v = ids[at(lids, j)];
        if (!index_ok(v, size)) {
            report(err, code, v, size);
            continue;
        }
        atomicAdd(&out[(o * size + (u64)v) * inner + i], src[at(ls, p)]);
    }
}

// The row-major position in the source (sizes `shape.dims`, row-major strides
// `shape.strides`... of the source) of index position p: p's coordinates over the index's
// shape (`ishape`), with axis `dim` replaced by `v`.
__device__ u64 picked(const Strided& ishape, u64 p, unsigned int dim, u64 v) {
    u64 pos = 0;
    for (int d = (int)ishape.rank - 1; d >= 0; --d) {
        u64 c = p % ishape.dims[d];
        p /= ishape.dims[d];
        pos += (d == (int)dim ? v : c) * (u64)ishape.strides[d];
    }
    return pos;
}

// out[p] = x[p with axis dim replaced by idx[p]]; `ishape` holds the index's sizes and the
// source's row-major strides.
extern "C" __global__ void gather(const float* x, Strided lx, const float* idx, Strided lidx, Strided ishape,
                                  unsigned int dim, u64 size, float* out, u64 n, unsigned int* err, unsigned int code) {
    GRID_LOOP(p, n) {
        float v = idx[at(lidx, p)];
        if (!index_ok(v, size)) {
            report(err, code, v, size);
            out[p] = 0.0f;
            continue;
        }
        out[p] = x[at(lx, picked(ishape, p, dim, (u64)v))];
    }
}

// out (a row-major copy of the base) += src[p] at p with axis dim replaced by idx[p].
extern "C" __global__ void scatter_add(const float* src, Strided ls, const float* idx, Strided lidx,
                                       Strided ishape, unsigned int dim, u64 size, float* out, u64 n,
                                       unsigned int* err, unsigned int code) {
    GRID_LOOP(p, n) {
        float v = idx[at(lidx, p)];
        if (!index_ok(v, size)) {
            report(err, code, v, size);
            continue;
        }
        atomicAdd(&out[picked(ishape, p, dim, (u64)v)], src[at(ls, p)]);
    }
}

// ---------------------------------------------------------------------------------------
// Convolution and pooling over [N, C, H, W] batches.

// The input row (or column) a tap reads: pos·stride + k·dilation - pad; -1 in the padding.
__device__ __forceinline__ i64 source(u64 pos, u64 stride, u64 k, u64 dil, u64 pad, u64 size) {
    i64 s = (i64)(pos * stride + k * dil) - (i64)pad;
    return (s >= 0 && s < (i64)size) ? s : -1;
}

// Columns [C·KH·KW, N·OH·OW]: row (c, i, j), column (b, y, x) reads tap (i, j) of channel c.
// One thread per channel and column writes that column's KH·KW rows of the channel: the
// divisions that find the column's image and position are paid once per window, not once
// per value (the kernel's index arithmetic, not its memory, was its cost), and neighbouring
// threads still write neighbouring values.
extern "C" __global__ void im2col(const float* x, Strided lx, float* out, Conv g, float pad_value) {
    u64 cols = g.n * g.oh * g.ow, taps = g.kh * g.kw;
    GRID_LOOP(q, g.c * cols) {
        u64 col = q % cols, c = q / cols;
        u64 xx = col % g.ow, rest = col / g.ow;
        u64 y = rest % g.oh, b = rest / g.oh;
        i64 top = (i64)(y * g.sh) - (i64)g.ph, left = (i64)(xx * g.sw) - (i64)g.pw;
        u64 plane = (b * g.c + c) * g.h;
        float* o = out + c * taps * cols + col;
        for (u64 i = 0; i < g.kh; ++i) {
            i64 iy = top + (i64)(i * g.dh);
            bool row_in = iy >= 0 && iy < (i64)g.h;
            for (u64 j = 0; j < g.kw; ++j, o += cols) {
                i64 ix = left + (i64)(j * g.dw);
                bool in = row_in && ix >= 0 && ix < (i64)g.w;
                *o = in ? x[at(lx, (plane + (u64)iy) * g.w + (u64)ix)] : pad_value;
            }
        }
    }
}

// The adjoint: one thread per pixel sums every column entry that read it (no atomics, so the
// sum's order is fixed). With stride 1 (the usual convolution), tap (i, j) read the pixel
// from output position (iy + ph - i·dh, ix + pw - j·dw), found without the divisions the
// general case needs; the same entries, summed in the same order.
extern "C" __global__ void col2im(const float* cols, Strided lc, float* out, Conv g) {
    u64 ncols = g.n * g.oh * g.ow;
    bool unit = g.sh == 1 && g.sw == 1;
    GRID_LOOP(p, g.n * g.c * g.h * g.w) {
        u64 ix = p % g.w, iy = (p / g.w) % g.h, c = (p / (g.w * g.h)) % g.c, b = p / (g.w * g.h * g.c);
        float s = 0.0f;
        for (u64 i = 0; i < g.kh; ++i) {
            i64 ty = (i64)(iy + g.ph) - (i64)(i * g.dh);
            if (ty < 0 || (!unit && ty % (i64)g.sh != 0)) continue;
            u64 y = unit ? (u64)ty : (u64)ty / g.sh;
            if (y >= g.oh) continue;
            for (u64 j = 0; j < g.kw; ++j) {
                i64 tx = (i64)(ix + g.pw) - (i64)(j * g.dw);
                if (tx < 0 || (!unit && tx % (i64)g.sw != 0)) continue;
                u64 xx = unit ? (u64)tx : (u64)tx / g.sw;
                if (xx >= g.ow) continue;
                u64 row = (c * g.kh + i) * g.kw + j;
                s += cols[at(lc, row * ncols + (b * g.oh + y) * g.ow + xx)];
            }
        }
        out[p] = s;
    }
}

// Max pooling (no dilation): the window's maximum (padding never wins, a NaN wins, ties go to
// the first tap) and its tap number ky·KW + kx from the window's top-left corner.
// With `has_bias`, channel c's bias is added to each value before the comparisons (a
// convolution's bias, added where its output is read: the values and taps of pooling the
// biased output). With `relu`, the ReLU of each maximum (a pooled ReLU: the ReLU never reorders
// two values), and a window whose maximum is not positive gets the tap kh·kw, which no pixel
// matches: the adjoint below then sends it no gradient, as the ReLU's gradient would have
// zeroed it.
// The window's first pixel is found through the view (`at`), the others from it by the
// view's strides along H and W (`hs`, `ws`), without the view's divisions for each.
extern "C" __global__ void max_pool(const float* x, Strided lx, i64 hs, i64 ws, const float* bias, Strided lb,
                                    int has_bias, float* vals, float* taps, Conv g, int relu) {
    GRID_LOOP(p, g.n * g.c * g.oh * g.ow) {
        u64 xx = p % g.ow, y = (p / g.ow) % g.oh, plane = p / (g.ow * g.oh);
        float shift = has_bias ? bias[at(lb, plane % g.c)] : 0.0f;
        i64 top = (i64)(y * g.sh) - (i64)g.ph, left = (i64)(xx * g.sw) - (i64)g.pw;
        u64 y0 = top < 0 ? 0 : (u64)top, x0 = left < 0 ? 0 : (u64)left;
        u64 y1 = min((u64)(top + (i64)g.kh), g.h), x1 = min((u64)(left + (i64)g.kw), g.w);
        const float* corner = x + at(lx, (plane * g.h + y0) * g.w + x0);
        float best = corner[0];
        if (has_bias) best += shift;
        u64 by = y0, bx = x0;
        for (u64 iy = y0; iy < y1; ++iy) {
            for (u64 ix = x0; ix < x1; ++ix) {
                float v = corner[(i64)(iy - y0) * hs + (i64)(ix - x0) * ws];
                if (has_bias) v += shift;
                if (v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    by = iy;
                    bx = ix;
                }
            }
        }
        if (relu && !(best > 0.0f)) {
            vals[p] = relu_f(best);
            taps[p] = (float)(g.kh * g.kw);
            continue;
        }
        vals[p] = best;
        taps[p] = (float)((u64)((i64)by - top) * g.kw + (u64)((i64)bx - left));
    }
}

// The adjoint of max pooling: each pixel of dx [N, C, H, W] (written whole, no zeroing
// first) sums g over the windows that cover it and took their maximum there, in output order
// (as the CPU's scatter adds them), without atomics. Pixel (b, c, y, x) is written at
// b·sn + c·sc + y·W + x: row-major with sn = C·H·W and sc = H·W, or channel-major (as a
// convolution's matrix product leaves its output, [C, N, H, W]) with sn = H·W, sc = N·H·W.
extern "C" __global__ void max_pool_backward(const float* grad, Strided lg, const float* taps, Strided lt,
                                             float* dx, u64 sn, u64 sc, Conv g) {
    GRID_LOOP(q, g.n * g.c * g.h * g.w) {
        u64 ix = q % g.w, iy = (q / g.w) % g.h, plane = q / (g.w * g.h);
        // Windows y cover rows [y*sh - ph, y*sh - ph + kh): those with iy + ph - kh < y*sh <= iy + ph.
        u64 ry = iy + g.ph, rx = ix + g.pw;
        u64 y0 = ry + 1 > g.kh ? (ry + 1 - g.kh + g.sh - 1) / g.sh : 0;
        u64 x0 = rx + 1 > g.kw ? (rx + 1 - g.kw + g.sw - 1) / g.sw : 0;
        u64 y1 = min(ry / g.sh + 1, g.oh), x1 = min(rx / g.sw + 1, g.ow);
        float sum = 0.0f;
        for (u64 y = y0; y < y1; ++y) {
            for (u64 xx = x0; xx < x1; ++xx) {
                u64 p = (plane * g.oh + y) * g.ow + xx;
                u64 tap = (ry - y * g.sh) * g.kw + (rx - xx * g.sw);
                if ((u64)taps[at(lt, p)] == tap) sum += grad[at(lg, p)];
            }
        }
        dx[(plane / g.c) * sn + (plane % g.c) * sc + iy * g.w + ix] = sum;
    }
}

// ---------------------------------------------------------------------------------------
// The fused LSTM cell (PyTorch's gate order i, f, g, o), one thread per (row, unit).

// record [n, 6h] = [i f g o | h' | c'] from xw, hw [n, 4h] and c [n, h].
extern "C" __global__ void lstm_cell(const float* xw, Strided lxw, const float* hw, Strided lhw, const float* c,
                                     Strided lc, float* out, u64 n, u64 h) {
    GRID_LOOP(p, n * h) {
        u64 r = p / h, j = p % h;
        float z[4];
        for (int k = 0; k < 4; ++k) {
            u64 q = r * 4 * h + k * h + j;
            z[k] = xw[at(lxw, q)] + hw[at(lhw, q)];
        }
        float i = sigmoidf(z[0]), f = sigmoidf(z[1]), gg = tanhf(z[2]), o = sigmoidf(z[3]);
        float cn = f * c[at(lc, p)] + i * gg;
        float* rec = out + r * 6 * h;
        rec[j] = i;
        rec[h + j] = f;
        rec[2 * h + j] = gg;
        rec[3 * h + j] = o;
        rec[4 * h + j] = o * tanhf(cn);
        rec[5 * h + j] = cn;
    }
}

// out [n, 5h] = [dz (i f g o) | dc_prev] from the record s [n, 6h], c_prev, dh, dc [n, h].
extern "C" __global__ void lstm_cell_backward(const float* s, Strided ls, const float* cp, Strided lcp,
                                              const float* dh, Strided ldh, const float* dc, Strided ldc,
                                              float* out, u64 n, u64 h) {
    GRID_LOOP(p, n * h) {
        u64 r = p / h, j = p % h, rec = r * 6 * h + j;
        float i = s[at(ls, rec)], f = s[at(ls, rec + h)], gg = s[at(ls, rec + 2 * h)];
        float o = s[at(ls, rec + 3 * h)], c = s[at(ls, rec + 5 * h)];
        float dhv = dh[at(ldh, p)];
        float tc = tanhf(c);
        float dct = dc[at(ldc, p)] + dhv * o * (1.0f - tc * tc);
        float* d = out + r * 5 * h;
        d[j] = dct * gg * i * (1.0f - i);
        d[h + j] = dct * cp[at(lcp, p)] * f * (1.0f - f);
        d[2 * h + j] = dct * i * (1.0f - gg * gg);
        d[3 * h + j] = dhv * tc * o * (1.0f - o);
        d[4 * h + j] = dct * f;
    }
}

// ---------------------------------------------------------------------------------------
// Optimizer updates, in place over contiguous parameter, gradient and state buffers
// (the equations are on OptimizerUpdate in src/backend/kernels.rs). One launch updates a list
// of up to LIST_MAX parameters that share the optimizer's constants, as PyTorch's
// multi-tensor ("foreach") updates do: a step of a small network is then one launch, not one
// per parameter, and so one node of a captured graph.

#define LIST_MAX 16
#define LIST_CHUNK 8192

// The parameters of one launch. Parameter t takes blocks start[t] .. start[t + 1] - 1, each
// block LIST_CHUNK consecutive values (the last one fewer); the launch has start[count]
// blocks. Addresses are u64 (a null state address: a buffer the update does not use). `staged`,
// when not null, holds the numbers that change from step to step (OptimizerUpdate::staged: lr,
// then Adam's bias corrections or SGD's first-step flag), written by the host before each
// replay of a captured step; they replace the parameter's `nums`, its numbers by value.
struct UpdateList {
    unsigned int count;
    unsigned int start[LIST_MAX + 1];
    u64 n[LIST_MAX];
    u64 w[LIST_MAX], g[LIST_MAX], s0[LIST_MAX], s1[LIST_MAX], staged[LIST_MAX];
    float nums[LIST_MAX][3];
};
// The host's copy (`UpdateList` in src/backend/cuda/gpu.rs) has these fields in this order
// and asserts the same size (no padding: `n` starts at 72 bytes, a multiple of 8).
static_assert(sizeof(UpdateList) == 1032, "UpdateList's size changed: change gpu.rs too");

// This block's part of a launch: its parameter's buffers (a state buffer the update does not
// use is null), its values [lo, hi) and the parameter's changing numbers.
struct Part {
    float *w, *s0, *s1;
    const float* g;
    u64 lo, hi;
    float nums[3];
};

__device__ __forceinline__ Part list_part(const UpdateList& l) {
    unsigned int b = blockIdx.x, t = 0;
    while (t + 1 < l.count && l.start[t + 1] <= b) ++t;
    Part p;
    p.w = (float*)l.w[t];
    p.s0 = (float*)l.s0[t];
    p.s1 = (float*)l.s1[t];
    p.g = (const float*)l.g[t];
    p.lo = (u64)(b - l.start[t]) * LIST_CHUNK;
    p.hi = p.lo + LIST_CHUNK < l.n[t] ? p.lo + LIST_CHUNK : l.n[t];
    const float* staged = (const float*)l.staged[t];
    for (int j = 0; j < 3; ++j) p.nums[j] = staged ? staged[j] : l.nums[t][j];
    return p;
}

#define PART_LOOP(k, lo, hi) for (u64 k = (lo) + threadIdx.x; k < (hi); k += blockDim.x)

// Each kernel takes the list and the update's constants as four floats and a flag (in the
// order `update_constants` in src/backend/cuda/mod.rs gives them).

extern "C" __global__ void sgd(UpdateList l, float mu, float wd, float, float, int nesterov) {
    Part p = list_part(l);
    float *w = p.w, *b = p.s0;
    const float* g = p.g;
    float lr = p.nums[0];
    bool first = p.nums[1] != 0.0f;
    PART_LOOP(k, p.lo, p.hi) {
        float gk = g[k] + wd * w[k];
        if (mu == 0.0f) {
            w[k] -= lr * gk;
            continue;
        }
        float bk = first ? gk : mu * b[k] + gk;
        b[k] = bk;
        w[k] -= lr * (nesterov ? gk + mu * bk : bk);
    }
}

extern "C" __global__ void adam(UpdateList l, float beta1, float beta2, float eps, float wd, int decoupled) {
    Part p = list_part(l);
    float *w = p.w, *m = p.s0, *v = p.s1;
    const float* g = p.g;
    float lr = p.nums[0], bias1 = p.nums[1], bias2 = p.nums[2];
    PART_LOOP(k, p.lo, p.hi) {
        float wk = w[k], gk = g[k];
        if (decoupled) wk *= 1.0f - lr * wd;
        else gk += wd * wk;
        float mk = beta1 * m[k] + (1.0f - beta1) * gk;
        float vk = beta2 * v[k] + (1.0f - beta2) * gk * gk;
        m[k] = mk;
        v[k] = vk;
        w[k] = wk - lr * (mk / bias1) / (sqrtf(vk / bias2) + eps);
    }
}

extern "C" __global__ void rmsprop(UpdateList l, float alpha, float eps, float mu, float wd, int momentum) {
    Part p = list_part(l);
    float *w = p.w, *v = p.s0, *b = p.s1;
    const float* g = p.g;
    float lr = p.nums[0];
    PART_LOOP(k, p.lo, p.hi) {
        float gk = g[k] + wd * w[k];
        float vk = alpha * v[k] + (1.0f - alpha) * gk * gk;
        v[k] = vk;
        float scaled = gk / (sqrtf(vk) + eps);
        if (momentum) {
            float bk = mu * b[k] + scaled;
            b[k] = bk;
            w[k] -= lr * bk;
        } else {
            w[k] -= lr * scaled;
        }
    }
}
