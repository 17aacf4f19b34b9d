// A CUDA driver and cuBLAS on the CPU: the entry points the CUDA backend reaches through
// cudarc, over the kernel emulator (emulator.hpp, kernels.cu and its table come first in the
// same translation unit). Built and loaded by src/backend/cuda/emulated.rs so that the device
// suite can run the whole CUDA backend, host code included, on a machine without a GPU.
//
// One device, one context; "device memory" is host memory (so a kernel's addresses are
// host addresses). Work runs when it is queued, except on a stream being captured, where it
// is recorded (kernel parameters copied) and run by each launch of the instantiated graph.
//
// Stricter than CUDA where Sinapse's design promises more: an allocation or free during a
// capture is refused (the graph's pool never asks the driver), and a copy, memset, cuBLAS
// operand, kernel pointer argument or buffer an optimizer's list names outside every
// allocation is refused, at each replay too (CUDA would fault or read garbage). New
// allocations are filled with a NaN, so that reading memory nothing wrote shows, and each
// ends where an inaccessible page begins, so that a kernel or product reaching past an
// allocation's end stops the process there, with a line naming the kernel (as
// compute-sanitizer's memcheck would on a GPU; the caching allocator's blocks are rounded
// up: the host code says what size of tensor each holds, and a
// kernel (through a pointer argument or an optimizer's list of buffers), copy or product
// that writes past that inside the block fails, naming itself; in a graph's replay too, where
// each block the capture handed out is given its tensor's size again at that point, and its
// size from before the capture when the replay begins).
// Context-wide calls need a current context, and the capturing thread's synchronous calls
// break its capture, as in CUDA. Built with the race check (SINAPSE_EMULATOR_RACECHECK=1), a
// launch with a race fails as CUDA_ERROR_LAUNCH_FAILED, after a line saying where.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <new>
#include <thread>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef int cublasStatus_t;

enum {
    EMU_SUCCESS = 0,
    EMU_INVALID_VALUE = 1,
    EMU_OUT_OF_MEMORY = 2,
    EMU_INVALID_DEVICE = 101,
    EMU_INVALID_CONTEXT = 201,
    EMU_INVALID_IMAGE = 200,
    EMU_INVALID_HANDLE = 400,
    EMU_ILLEGAL_STATE = 401,
    EMU_NOT_FOUND = 500,
    EMU_LAUNCH_FAILED = 719,
    EMU_CAPTURE_UNSUPPORTED = 900,
    EMU_CAPTURE_INVALIDATED = 901,
    EMU_CAPTURE_WRONG_THREAD = 908,
};

namespace {

struct Node;

struct Stream {
    bool capturing = false;
    bool invalidated = false;
    std::vector<Node>* nodes = nullptr;
    std::thread::id capturer;
};

struct Module {
    int unused = 0;
};

struct Function {
    const EmuKernel* kernel;
};

struct Gemm {
    int transa, transb, m, n, k;
    float alpha, beta;
    const float* a;
    int lda;
    long long stride_a;
    const float* b;
    int ldb;
    long long stride_b;
    float* c;
    int ldc;
    long long stride_c;
    int batch;
    bool tf32;
};

struct Node {
    // InUse: a block handed out for a tensor of `bytes` during a capture (sinapse_emulated_in_use);
    // for the first of a block in its capture, `before` holds the block's tensor size until then.
    enum Kind { Kernel, Memset, CopyDtoD, Product, InUse } kind;
    const EmuKernel* kernel = nullptr;
    const Function* function = nullptr;  // a kernel's handle, as launched
    unsigned int grid = 0, block = 0;
    std::vector<std::vector<unsigned char>> params;
    CUdeviceptr dst = 0, src = 0;
    size_t bytes = 0;
    unsigned char value = 0;
    Gemm gemm{};
    bool first = false;
    size_t before = 0;
};

// A captured graph, or an instantiated one (`source`: the graph it was made from, whose
// nodes' addresses are the handles cuGraphGetNodes gives; node i of both is the same launch).
struct Graph {
    std::vector<Node> nodes;
    const Graph* source = nullptr;
};

// CUDA_KERNEL_NODE_PARAMS_v2 (cuda.h): a kernel node's launch.
struct KernelNodeParams {
    void* func;
    unsigned int grid_x, grid_y, grid_z, block_x, block_y, block_z, shared;
    void** params;
    void** extra;
    void* kern;
    void* ctx;
};

// What cuGraphKernelNodeGetParams says launches a product's node (cuBLAS's kernels in the
// real driver): no function of a module.
const Function product_function{nullptr};

struct Blas {
    Stream* stream = nullptr;
    bool tf32 = false;
};

std::mutex lock;                            // every entry point, one at a time
// An allocation: the bytes asked for, the bytes of the tensor it now holds (as the host code
// says: sinapse_emulated_in_use), and the pages mapped for it (the last inaccessible).
struct Allocation {
    size_t bytes;
    size_t used;
    char* base;
    size_t length;
};
std::map<CUdeviceptr, Allocation> allocations;  // by address
size_t allocated = 0;
const size_t total_memory = size_t(80) << 30;
Stream default_stream;
std::vector<Stream*> streams{&default_stream};
int context_token;
thread_local void* current_context = nullptr;

Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &default_stream; }

// The allocation that holds address `p` (its start and record), or null.
std::pair<const CUdeviceptr, Allocation>* holder(CUdeviceptr p) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return nullptr;
    --it;
    return p < it->first + it->second.bytes ? &*it : nullptr;
}

// Whether [p, p + bytes) lies inside one allocation.
bool inside(CUdeviceptr p, size_t bytes) {
    auto* h = holder(p);
    return h && p + bytes <= h->first + h->second.bytes;
}

// SINAPSE_EMULATED_TRACE set: each kernel launch and cuBLAS product is printed to stderr.
bool tracing() {
    static const bool on = getenv("SINAPSE_EMULATED_TRACE") != nullptr;
    return on;
}
void complain(const char* what) { fprintf(stderr, "emulated CUDA: %s\n", what); }

// CUDA_ERROR_INVALID_CONTEXT unless the calling thread has a current context.
CUresult need_context(const char* what) {
    if (current_context) return EMU_SUCCESS;
    fprintf(stderr, "emulated CUDA: %s without a current context\n", what);
    return EMU_INVALID_CONTEXT;
}

// A synchronous call: it breaks a capture the calling thread has under way (thread-local
// capture mode).
CUresult unsafe_in_capture(const char* what) {
    for (Stream* s : streams)
        if (s->capturing && s->capturer == std::this_thread::get_id()) {
            s->invalidated = true;
            fprintf(stderr, "emulated CUDA: %s during a capture\n", what);
            return EMU_CAPTURE_UNSUPPORTED;
        }
    return EMU_SUCCESS;
}

// What memory nothing has written holds (a new allocation, a block past its tensor's end):
// 0x7fa5a5a5 in each 4-byte word, a signalling NaN. Arithmetic on it gives a quiet NaN, so that
// a kernel updating a value past its tensor's end from that value (w[i] -= lr * g[i]) changes
// the bits; an all-ones NaN, already quiet, would come back unchanged.
const uint64_t unwritten_word = 0x7fa5a5a57fa5a5a5ull;
unsigned char unwritten_byte(uintptr_t at) { return (unwritten_word >> (8 * (at % 8))) & 0xff; }

// Fills [p, p + n) with unwritten_word's bytes (by address, so that each float is the NaN).
EMU_UNCHECKED void fill_unwritten(uintptr_t p, size_t n) {
    unsigned char* b = reinterpret_cast<unsigned char*>(p);
    size_t i = 0;
    for (; i < n && (p + i) % 8; ++i) b[i] = unwritten_byte(p + i);
    for (; i + 8 <= n; i += 8) memcpy(b + i, &unwritten_word, 8);
    for (; i < n; ++i) b[i] = unwritten_byte(p + i);
}

// The offset of the first byte of [p, p + n) that fill_unwritten's differs from, or n.
EMU_UNCHECKED size_t first_written(uintptr_t p, size_t n) {
    const unsigned char* b = reinterpret_cast<const unsigned char*>(p);
    size_t i = 0;
    for (; i < n && (p + i) % 8; ++i)
        if (b[i] != unwritten_byte(p + i)) return i;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, b + i, 8);
        if (word != unwritten_word) break;
    }
    for (; i < n; ++i)
        if (b[i] != unwritten_byte(p + i)) return i;
    return n;
}

// Sets the bytes past the end of the tensor in the allocation that holds `p` to the unwritten
// NaN again (after a report of a write there).
EMU_UNCHECKED void refill_tail(CUdeviceptr p) {
    auto* h = holder(p);
    if (h && h->second.used < h->second.bytes) fill_unwritten(h->first + h->second.used, h->second.bytes - h->second.used);
}

// Whether the bytes past the end of the tensor in the allocation that holds `p` still hold
// the NaN sinapse_emulated_in_use wrote there; if not, says that `what` wrote past it.
// The tail is set again after a report, so that the next operation is not blamed for it.
EMU_UNCHECKED bool tail_intact(const char* what, CUdeviceptr p) {
    auto* h = holder(p);
    if (!h || h->second.used >= h->second.bytes) return true;
    const auto& [start, a] = *h;
    size_t n = a.bytes - a.used, i = first_written(start + a.used, n);
    if (i == n) return true;
    i -= std::min(i, static_cast<size_t>((start + a.used + i) % 4));  // the changed float's first byte
    fprintf(stderr, "emulated CUDA: %s wrote past the end of the %zu-byte tensor at 0x%llx: byte %zu of its %zu-byte block\n",
            what, a.used, start, a.used + i, a.bytes);
    refill_tail(p);
    return false;
}

// Records that the allocation at `p` now holds a tensor of `bytes` and sets the bytes past it
// to the unwritten NaN; false (and a line naming `what`) if `p` is not the start of an allocation of
// at least `bytes`.
EMU_UNCHECKED bool mark_in_use(CUdeviceptr p, size_t bytes, const char* what) {
    auto it = allocations.find(p);
    if (it == allocations.end() || bytes > it->second.bytes) {
        fprintf(stderr, "emulated CUDA: %s: 0x%llx is not the start of an allocation of %zu bytes or more\n", what, p,
                bytes);
        return false;
    }
    it->second.used = bytes;
    fill_unwritten(p + bytes, it->second.bytes - bytes);
    return true;
}

// Calls f(address, bytes, written) for each buffer a launch's parameters name inside a struct
// (an optimizer's list; EmuKernel::addresses).
template <typename F>
void each_listed(const EmuKernel* kernel, void* const* params, F f) {
    if (!kernel->addresses) return;
    kernel->addresses(
        params,
        [](void* ctx, unsigned long long p, unsigned long long bytes, bool written) {
            (*static_cast<F*>(ctx))(p, bytes, written);
        },
        &f);
}

// Whether every pointer argument of a launch points into an allocation, and every buffer
// its list names (an optimizer's) lies inside one.
bool pointers_inside(const EmuKernel* kernel, void* const* params) {
    for (size_t i = 0; i < kernel->param_count; ++i)
        if (kernel->param_pointers[i]) {
            CUdeviceptr p;
            memcpy(&p, params[i], sizeof p);
            if (!inside(p, 1)) {
                fprintf(stderr, "emulated CUDA: %s: pointer argument %zu is in no allocation\n", kernel->name, i);
                return false;
            }
        }
    bool all = true;
    each_listed(kernel, params, [&](CUdeviceptr p, size_t bytes, bool) {
        if (all && !p) {
            fprintf(stderr, "emulated CUDA: %s: its list names a null buffer, or more buffers than it holds\n",
                    kernel->name);
            all = false;
        } else if (all && !inside(p, std::max<size_t>(bytes, 1))) {
            fprintf(stderr, "emulated CUDA: %s: the %zu bytes at 0x%llx its list names are in no allocation\n",
                    kernel->name, bytes, p);
            all = false;
        }
    });
    return all;
}

float tf32_round(float v) {
    // Rounds to 10 mantissa bits (nearest, ties away), as TF32 tensor cores read their inputs.
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&v, &u, 4);
    return v;
}

// Not instrumented in the race check's build (no kernel's thread runs it).
EMU_UNCHECKED void run_gemm(const Gemm& g) {
    // Column-major: C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C.
    for (int p = 0; p < g.batch; ++p) {
        const float* a = g.a + p * g.stride_a;
        const float* b = g.b + p * g.stride_b;
        float* c = g.c + p * g.stride_c;
        for (int j = 0; j < g.n; ++j)
            for (int i = 0; i < g.m; ++i) {
                // f32 sums, as cuBLAS's (its order differs).
                float sum = 0.0f;
                for (int l = 0; l < g.k; ++l) {
                    float x = g.transa ? a[l + (long long)i * g.lda] : a[i + (long long)l * g.lda];
                    float y = g.transb ? b[j + (long long)l * g.ldb] : b[l + (long long)j * g.ldb];
                    if (g.tf32) x = tf32_round(x), y = tf32_round(y);
                    sum += x * y;
                }
                float& out = c[i + (long long)j * g.ldc];
                out = g.beta == 0.0f ? g.alpha * sum : g.alpha * sum + g.beta * out;
            }
    }
}

// Calls `f` with the address of each block `node` may write: a kernel's pointer arguments and
// the buffers its list writes (an optimizer's), a memset's or copy's destination, a
// product's C.
template <typename F>
void each_written(const Node& node, F f) {
    switch (node.kind) {
        case Node::Kernel: {
            std::vector<void*> params;
            for (size_t i = 0; i < node.kernel->param_count; ++i) {
                params.push_back(const_cast<unsigned char*>(node.params[i].data()));
                if (node.kernel->param_pointers[i]) {
                    CUdeviceptr p;
                    memcpy(&p, node.params[i].data(), sizeof p);
                    f(p);
                }
            }
            each_listed(node.kernel, params.data(), [&](CUdeviceptr p, size_t, bool written) {
                if (written) f(p);
            });
            break;
        }
        case Node::Memset:
        case Node::CopyDtoD: f(node.dst); break;
        case Node::Product: f(reinterpret_cast<CUdeviceptr>(node.gemm.c)); break;
        case Node::InUse: break;
    }
}

// What `node` is called in a line about it.
const char* named(const Node& node) {
    switch (node.kind) {
        case Node::Kernel: return node.kernel->name;
        case Node::Memset: return "a memset";
        case Node::CopyDtoD: return "a copy";
        case Node::Product: return "a cuBLAS product";
        case Node::InUse: return "a tensor's allocation";
    }
    return "an operation";
}

CUresult run_node(const Node& node) {
    switch (node.kind) {
        case Node::Kernel: {
            std::vector<void*> params;
            for (auto& p : node.params) params.push_back(const_cast<unsigned char*>(p.data()));
            if (!pointers_inside(node.kernel, params.data())) return EMU_INVALID_VALUE;
            int status = emu_launch(node.kernel->name, node.grid, node.block, params.data());
#ifdef EMU_RACECHECK
            if (status == 2) {  // a race (emulator.hpp's race check)
                fprintf(stderr, "emulated CUDA: a race in %s\n", emu_race());
                return EMU_LAUNCH_FAILED;
            }
#endif
            if (status != 0) return EMU_NOT_FOUND;  // 1: no such kernel
            break;
        }
        case Node::Memset: memset(reinterpret_cast<void*>(node.dst), node.value, node.bytes); break;
        case Node::CopyDtoD:
            memmove(reinterpret_cast<void*>(node.dst), reinterpret_cast<const void*>(node.src), node.bytes);
            break;
        case Node::Product: run_gemm(node.gemm); break;
        case Node::InUse:
            return mark_in_use(node.dst, node.bytes, "a graph's tensor allocation") ? EMU_SUCCESS : EMU_INVALID_VALUE;
        default: return EMU_INVALID_VALUE;
    }
    bool intact = true;
    each_written(node, [&](CUdeviceptr p) { intact = intact && tail_intact(named(node), p); });
    return intact ? EMU_SUCCESS : EMU_LAUNCH_FAILED;
}

// Runs `node` now, or records it on a capturing stream.
CUresult queue(Stream* s, Node node) {
    if (s->capturing) {
        if (s->invalidated) return EMU_CAPTURE_INVALIDATED;
        s->nodes->push_back(std::move(node));
        return EMU_SUCCESS;
    }
    return run_node(node);
}

// An operation a capture cannot hold: it invalidates the capture and fails.
CUresult refused_in_capture(Stream* s, const char* what) {
    if (!s->capturing) return EMU_SUCCESS;
    s->invalidated = true;
    complain(what);
    return EMU_CAPTURE_UNSUPPORTED;
}

}  // namespace

#define ENTRY extern "C" __attribute__((visibility("default")))
#define LOCKED std::lock_guard<std::mutex> hold(lock)

ENTRY CUresult cuInit(unsigned int) { return EMU_SUCCESS; }
ENTRY CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return EMU_SUCCESS;
}
ENTRY CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return EMU_SUCCESS;
}
ENTRY CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return EMU_INVALID_DEVICE;
    *d = 0;
    return EMU_SUCCESS;
}
ENTRY CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "Sinapse emulated GPU (CPU)");
    return EMU_SUCCESS;
}
ENTRY CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = total_memory;
    return EMU_SUCCESS;
}
ENTRY CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 75: *v = 9; break;   // compute capability major (an H100/H200)
        case 76: *v = 0; break;   // minor
        case 115: *v = 1; break;  // memory pools: cuMemAllocAsync
        default: *v = 0;
    }
    return EMU_SUCCESS;
}
ENTRY CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &context_token;
    return EMU_SUCCESS;
}
ENTRY CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return EMU_SUCCESS; }
ENTRY CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = current_context;
    return EMU_SUCCESS;
}
ENTRY CUresult cuCtxSetCurrent(void* ctx) {
    current_context = ctx;
    return EMU_SUCCESS;
}
ENTRY CUresult cuCtxSynchronize() {
    LOCKED;
    if (CUresult r = need_context("cuCtxSynchronize")) return r;
    return unsafe_in_capture("cuCtxSynchronize");
}

ENTRY CUresult cuGetErrorString(CUresult e, const char** s) {
    switch (e) {
        case EMU_SUCCESS: *s = "no error"; break;
        case EMU_INVALID_VALUE: *s = "invalid argument (emulated: out of every allocation?)"; break;
        case EMU_OUT_OF_MEMORY: *s = "out of memory"; break;
        case EMU_CAPTURE_UNSUPPORTED: *s = "operation not permitted when stream is capturing"; break;
        case EMU_CAPTURE_INVALIDATED: *s = "operation failed due to a previous error during capture"; break;
        case EMU_NOT_FOUND: *s = "named symbol not found"; break;
        case EMU_LAUNCH_FAILED: *s = "unspecified launch failure (emulated: see the line above)"; break;
        default: *s = "emulated CUDA error";
    }
    return EMU_SUCCESS;
}
ENTRY CUresult cuGetErrorName(CUresult e, const char** s) { return cuGetErrorString(e, s); }

ENTRY CUresult cuStreamCreate(void** s, unsigned int) {
    LOCKED;
    if (CUresult r = need_context("cuStreamCreate")) return r;
    Stream* stream = new Stream();
    streams.push_back(stream);
    *s = stream;
    return EMU_SUCCESS;
}
ENTRY CUresult cuStreamCreateWithPriority(void** s, unsigned int flags, int) { return cuStreamCreate(s, flags); }
ENTRY CUresult cuStreamDestroy_v2(void* s) {
    LOCKED;
    if (s) {
        streams.erase(std::find(streams.begin(), streams.end(), static_cast<Stream*>(s)));
        delete static_cast<Stream*>(s);
    }
    return EMU_SUCCESS;
}
ENTRY CUresult cuStreamSynchronize(void* s) {
    LOCKED;
    return refused_in_capture(stream_of(s), "cuStreamSynchronize during a capture");
}

// Events, for the kernel profile: work has run by the time it is queued here, so an event
// records the host's clock when it is recorded. Recording one on a capturing stream is
// refused (CUDA would make it part of the graph; Sinapse times only work outside graphs).
struct Event {
    bool recorded = false;
    std::chrono::steady_clock::time_point at;
};
ENTRY CUresult cuEventCreate(void** e, unsigned int) {
    *e = new Event;
    return EMU_SUCCESS;
}
ENTRY CUresult cuEventRecord(void* e, void* s) {
    LOCKED;
    if (!e) return EMU_INVALID_HANDLE;
    if (CUresult r = refused_in_capture(stream_of(s), "cuEventRecord during a capture")) return r;
    *static_cast<Event*>(e) = Event{true, std::chrono::steady_clock::now()};
    return EMU_SUCCESS;
}
ENTRY CUresult cuEventSynchronize(void* e) { return e ? EMU_SUCCESS : EMU_INVALID_HANDLE; }
ENTRY CUresult cuEventQuery(void* e) { return e ? EMU_SUCCESS : EMU_INVALID_HANDLE; }
ENTRY CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    const Event* a = static_cast<const Event*>(start);
    const Event* b = static_cast<const Event*>(end);
    if (!a || !b || !a->recorded || !b->recorded) return EMU_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return EMU_SUCCESS;
}
ENTRY CUresult cuEventElapsedTime(float* ms, void* start, void* end) { return cuEventElapsedTime_v2(ms, start, end); }
ENTRY CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return EMU_SUCCESS;
}

ENTRY CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCKED;
    if (CUresult r = need_context("cuMemGetInfo")) return r;
    *free_bytes = total_memory - allocated;
    *total = total_memory;
    return EMU_SUCCESS;
}
// `bytes` (rounded up to CUDA's 256-byte alignment) that end at an inaccessible page.
static CUresult allocate(CUdeviceptr* p, size_t bytes) {
    if (allocated + bytes > total_memory) return EMU_OUT_OF_MEMORY;
    static const size_t page = sysconf(_SC_PAGESIZE);
    size_t span = ((bytes ? bytes : 1) + 255) / 256 * 256;
    size_t length = (span + page - 1) / page * page + page;
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return EMU_OUT_OF_MEMORY;
    char* guard = static_cast<char*>(base) + length - page;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        munmap(base, length);
        return EMU_OUT_OF_MEMORY;
    }
    char* mem = guard - span;
    fill_unwritten(reinterpret_cast<uintptr_t>(mem), bytes);  // NaN until written
    *p = reinterpret_cast<CUdeviceptr>(mem);
    allocations[*p] = {bytes, bytes, static_cast<char*>(base), length};
    allocated += bytes;
    return EMU_SUCCESS;
}

// The action for SIGSEGV before this library's: faults outside the guard pages go there.
struct sigaction earlier_segv;

// A fault in an allocation's guard page while this thread runs a kernel: says which kernel
// and allocation, then lets the fault end the process. Other faults go to the handler before
// this one. (A kernel runs under the driver's lock, which every change to `allocations`
// takes, so the map holds still while a fault of this thread's reads it; copies and products
// are checked against the allocations before they run.)
void on_segv(int sig, siginfo_t* info, void* context) {
    uintptr_t at = reinterpret_cast<uintptr_t>(info->si_addr);
    for (auto it = allocations.begin(); emu_running && it != allocations.end(); ++it) {
        const auto& [p, a] = *it;
        uintptr_t end = reinterpret_cast<uintptr_t>(a.base) + a.length;
        if (at < end - sysconf(_SC_PAGESIZE) || at >= end) continue;
        char line[256];
        int n = snprintf(line, sizeof line,
                         "emulated CUDA: %s reached %zu bytes past the end of the %zu-byte allocation at 0x%llx\n",
                         emu_running, static_cast<size_t>(at - (p + a.bytes)), a.bytes, p);
        if (n > 0) (void)!write(2, line, std::min(static_cast<size_t>(n), sizeof line - 1));
        signal(sig, SIG_DFL);  // the fault happens again on return, and ends the process
        return;
    }
    sigaction(sig, &earlier_segv, nullptr);  // someone else's fault: theirs to handle
}

// Installs on_segv when the library is loaded.
__attribute__((constructor)) void install_segv_handler() {
    struct sigaction action {};
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &earlier_segv);
}
static CUresult release(CUdeviceptr p) {
    auto it = allocations.find(p);
    if (it == allocations.end()) {
        complain("free of an address that is not an allocation");
        return EMU_INVALID_VALUE;
    }
    allocated -= it->second.bytes;
    munmap(it->second.base, it->second.length);
    allocations.erase(it);
    return EMU_SUCCESS;
}
ENTRY CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* s) {
    LOCKED;
    if (CUresult r = refused_in_capture(stream_of(s), "an allocation during a capture")) return r;
    return allocate(p, bytes);
}
ENTRY CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCKED;
    if (CUresult r = need_context("cuMemAlloc")) return r;
    if (CUresult r = unsafe_in_capture("cuMemAlloc")) return r;
    return allocate(p, bytes);
}
ENTRY CUresult cuMemFreeAsync(CUdeviceptr p, void* s) {
    LOCKED;
    if (CUresult r = refused_in_capture(stream_of(s), "a free during a capture")) return r;
    return release(p);
}
ENTRY CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCKED;
    if (CUresult r = need_context("cuMemFree")) return r;
    if (CUresult r = unsafe_in_capture("cuMemFree")) return r;
    return release(p);
}
ENTRY CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, void* s) {
    LOCKED;
    if (CUresult r = refused_in_capture(stream_of(s), "a host-to-device copy during a capture")) return r;
    if (!inside(dst, bytes)) return complain("a host-to-device copy out of every allocation"), EMU_INVALID_VALUE;
    memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return tail_intact("a host-to-device copy", dst) ? EMU_SUCCESS : EMU_LAUNCH_FAILED;
}
ENTRY CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    {
        LOCKED;
        if (CUresult r = need_context("cuMemcpyHtoD")) return r;
        if (CUresult r = unsafe_in_capture("cuMemcpyHtoD")) return r;
    }
    return cuMemcpyHtoDAsync_v2(dst, src, bytes, nullptr);
}
ENTRY CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, void* s) {
    LOCKED;
    if (CUresult r = refused_in_capture(stream_of(s), "a device-to-host copy during a capture")) return r;
    if (!inside(src, bytes)) return complain("a device-to-host copy out of every allocation"), EMU_INVALID_VALUE;
    memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return EMU_SUCCESS;
}
ENTRY CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    {
        LOCKED;
        if (CUresult r = need_context("cuMemcpyDtoH")) return r;
        if (CUresult r = unsafe_in_capture("cuMemcpyDtoH")) return r;
    }
    return cuMemcpyDtoHAsync_v2(dst, src, bytes, nullptr);
}
ENTRY CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void* s) {
    LOCKED;
    if (!inside(dst, bytes) || !inside(src, bytes))
        return complain("a device-to-device copy out of every allocation"), EMU_INVALID_VALUE;
    Node node{Node::CopyDtoD};
    node.dst = dst, node.src = src, node.bytes = bytes;
    return queue(stream_of(s), std::move(node));
}
ENTRY CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, void* s) {
    LOCKED;
    if (!inside(dst, bytes)) return complain("a memset out of every allocation"), EMU_INVALID_VALUE;
    Node node{Node::Memset};
    node.dst = dst, node.value = value, node.bytes = bytes;
    return queue(stream_of(s), std::move(node));
}

ENTRY CUresult cuModuleLoadData(void** module, const void* image) {
    if (CUresult r = need_context("cuModuleLoadData")) return r;
    // The PTX NVRTC made (its kernels are the emulator's, compiled from the same source).
    if (!image || !strstr(static_cast<const char*>(image), ".entry")) return EMU_INVALID_IMAGE;
    *module = new Module();
    return EMU_SUCCESS;
}
ENTRY CUresult cuModuleUnload(void* module) {
    delete static_cast<Module*>(module);
    return EMU_SUCCESS;
}
ENTRY CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    if (CUresult r = need_context("cuModuleGetFunction")) return r;
    const EmuKernel* kernel = emu_kernel(name);
    if (!kernel) return EMU_NOT_FOUND;
    *f = new Function{kernel};
    return EMU_SUCCESS;
}
ENTRY CUresult cuLaunchKernel(void* f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                              unsigned int by, unsigned int bz, unsigned int shared, void* s, void** params,
                              void** extra) {
    LOCKED;
    const EmuKernel* kernel = static_cast<Function*>(f)->kernel;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || bx == 0 || bx > 1024 || gx == 0 || shared != 0 || extra ||
        (kernel->param_count && !params))
        return complain("a launch the emulator does not take (2-D, empty, or with shared memory)"),
               EMU_INVALID_VALUE;
    if (!pointers_inside(kernel, params)) return EMU_INVALID_VALUE;
    if (tracing()) fprintf(stderr, "TRACE kernel %s grid %u block %u\n", kernel->name, gx, bx);
    Node node{Node::Kernel};
    node.kernel = kernel, node.function = static_cast<Function*>(f), node.grid = gx, node.block = bx;
    for (size_t i = 0; i < kernel->param_count; ++i) {
        const unsigned char* p = static_cast<const unsigned char*>(params[i]);
        node.params.emplace_back(p, p + kernel->param_sizes[i]);
    }
    return queue(stream_of(s), std::move(node));
}

ENTRY CUresult cuStreamBeginCapture_v2(void* s, int) {
    LOCKED;
    Stream* stream = stream_of(s);
    if (stream->capturing) return EMU_ILLEGAL_STATE;
    stream->capturing = true;
    stream->capturer = std::this_thread::get_id();
    stream->invalidated = false;
    stream->nodes = new std::vector<Node>();
    return EMU_SUCCESS;
}
ENTRY CUresult cuStreamIsCapturing(void* s, int* status) {
    LOCKED;
    Stream* stream = stream_of(s);
    *status = !stream->capturing ? 0 : stream->invalidated ? 2 : 1;
    return EMU_SUCCESS;
}
ENTRY CUresult cuStreamEndCapture(void* s, void** graph) {
    LOCKED;
    Stream* stream = stream_of(s);
    if (!stream->capturing) return EMU_ILLEGAL_STATE;
    if (stream->capturer != std::this_thread::get_id()) return EMU_CAPTURE_WRONG_THREAD;
    std::unique_ptr<std::vector<Node>> nodes(stream->nodes);
    stream->capturing = false;
    stream->nodes = nullptr;
    if (stream->invalidated) {
        *graph = nullptr;
        return EMU_CAPTURE_INVALIDATED;
    }
    *graph = new Graph{std::move(*nodes)};
    return EMU_SUCCESS;
}
ENTRY CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    if (!graph) return EMU_INVALID_VALUE;
    Graph* made = new Graph(*static_cast<Graph*>(graph));
    made->source = static_cast<Graph*>(graph);
    *exec = made;
    return EMU_SUCCESS;
}
// The launches, copies and memsets of a captured graph, in capture order (each node depends
// on the one before: the emulated stream's graph is a chain).
ENTRY CUresult cuGraphGetNodes(void* g, void** nodes, size_t* count) {
    LOCKED;
    if (!g || !count) return EMU_INVALID_VALUE;
    std::vector<Node*> listed;
    for (Node& node : static_cast<Graph*>(g)->nodes)
        if (node.kind != Node::InUse) listed.push_back(&node);
    if (!nodes) {
        *count = listed.size();
        return EMU_SUCCESS;
    }
    for (size_t i = 0; i < *count; ++i) nodes[i] = i < listed.size() ? listed[i] : nullptr;
    *count = std::min(*count, listed.size());
    return EMU_SUCCESS;
}
// CUgraphNodeType: a kernel 0 (cuBLAS's products too), a copy 1, a memset 2.
ENTRY CUresult cuGraphNodeGetType(void* n, int* type) {
    LOCKED;
    if (!n || !type) return EMU_INVALID_VALUE;
    const Node* node = static_cast<const Node*>(n);
    *type = node->kind == Node::CopyDtoD ? 1 : node->kind == Node::Memset ? 2 : 0;
    return EMU_SUCCESS;
}
// A kernel node's launch: its function, grid and block (not its arguments: `params` null).
ENTRY CUresult cuGraphKernelNodeGetParams_v2(void* n, KernelNodeParams* p) {
    LOCKED;
    if (!n || !p) return EMU_INVALID_VALUE;
    const Node* node = static_cast<const Node*>(n);
    if (node->kind != Node::Kernel && node->kind != Node::Product) return EMU_INVALID_VALUE;
    *p = KernelNodeParams{};
    p->func = const_cast<Function*>(node->kind == Node::Kernel ? node->function : &product_function);
    p->grid_x = node->grid, p->grid_y = p->grid_z = 1;
    p->block_x = node->block, p->block_y = p->block_z = 1;
    return EMU_SUCCESS;
}
// New arguments (and grid and block) for a kernel node of an instantiated graph: its later
// launches use them. The node must be one of the graph it was made from, launching the same
// kernel (the real driver also takes another function of the same context; nothing here
// needs that).
ENTRY CUresult cuGraphExecKernelNodeSetParams_v2(void* e, void* n, const KernelNodeParams* p) {
    LOCKED;
    Graph* exec = static_cast<Graph*>(e);
    if (!exec || !exec->source || !p) return EMU_INVALID_VALUE;
    const std::vector<Node>& source = exec->source->nodes;
    const Node* node = static_cast<const Node*>(n);
    if (source.empty() || node < source.data() || node >= source.data() + source.size())
        return complain("a kernel node's new launch for a node of another graph"), EMU_INVALID_VALUE;
    Node& target = exec->nodes[static_cast<size_t>(node - source.data())];
    const Function* f = static_cast<const Function*>(p->func);
    if (target.kind != Node::Kernel || !f || f->kernel != target.kernel)
        return complain("a kernel node's new launch with another kernel, or for a node that is no kernel's"),
               EMU_INVALID_VALUE;
    if (p->grid_y != 1 || p->grid_z != 1 || p->block_y != 1 || p->block_z != 1 || p->block_x == 0 ||
        p->block_x > 1024 || p->grid_x == 0 || p->shared != 0 || p->extra ||
        (target.kernel->param_count && !p->params))
        return complain("a kernel node's new launch the emulator does not take"), EMU_INVALID_VALUE;
    if (!pointers_inside(target.kernel, p->params)) return EMU_INVALID_VALUE;
    target.grid = p->grid_x, target.block = p->block_x;
    target.params.clear();
    for (size_t i = 0; i < target.kernel->param_count; ++i) {
        const unsigned char* arg = static_cast<const unsigned char*>(p->params[i]);
        target.params.emplace_back(arg, arg + target.kernel->param_sizes[i]);
    }
    return EMU_SUCCESS;
}
ENTRY CUresult cuGraphUpload(void*, void*) { return EMU_SUCCESS; }
ENTRY CUresult cuGraphLaunch(void* exec, void* s) {
    LOCKED;
    Stream* stream = stream_of(s);
    const std::vector<Node>& nodes = static_cast<Graph*>(exec)->nodes;
    // The blocks the capture handed out are given their tensors' sizes again where it did
    // (InUse nodes), so each of the replay's writes is checked against the tensor it was for;
    // first the sizes they had when the capture began (a block from before the capture, freed
    // during it and handed out again, is written before that as the earlier tensor).
    for (const Node& node : nodes)
        if (node.kind == Node::InUse && node.first && !mark_in_use(node.dst, node.before, "a graph's replay"))
            return EMU_INVALID_VALUE;
    for (const Node& node : nodes)
        if (CUresult result = queue(stream, node)) return result;
    return EMU_SUCCESS;
}
ENTRY CUresult cuGraphExecDestroy(void* exec) {
    delete static_cast<Graph*>(exec);
    return EMU_SUCCESS;
}
ENTRY CUresult cuGraphDestroy(void* graph) {
    delete static_cast<Graph*>(graph);
    return EMU_SUCCESS;
}

// Marks this library as the emulated driver (emulated.rs checks that cudarc loads it).
ENTRY const int sinapse_emulated_driver = 1;

// The host code's word that the allocation at `p` now holds a tensor of `bytes` (its
// allocator rounds blocks up, and reuses them): the bytes past it are set to a NaN, and
// each kernel (through a pointer argument or list), copy, memset or product that writes into the
// allocation after that must leave them so, or fails (CUDA_ERROR_LAUNCH_FAILED) after a line
// naming it. Said while this thread captures a stream, it is also recorded there, so that
// each replay of the graph gives the block this size at the same point. 0, or 1 if `p` is
// not the start of an allocation of at least `bytes` (its tensor's end is then not checked).
ENTRY int sinapse_emulated_in_use(CUdeviceptr p, size_t bytes) {
    LOCKED;
    auto it = allocations.find(p);
    size_t before = it == allocations.end() ? 0 : it->second.used;
    if (!mark_in_use(p, bytes, "sinapse_emulated_in_use (its tensor's end is not checked)")) return 1;
    for (Stream* s : streams)
        if (s->capturing && !s->invalidated && s->capturer == std::this_thread::get_id()) {
            Node node{Node::InUse};
            node.dst = p, node.bytes = bytes, node.before = before;
            node.first = std::none_of(s->nodes->begin(), s->nodes->end(),
                                      [&](const Node& n) { return n.kind == Node::InUse && n.dst == p; });
            s->nodes->push_back(std::move(node));
            break;
        }
    return 0;
}

// cuBLAS (found through libcublas.so, an empty library that needs this one).
ENTRY cublasStatus_t cublasCreate_v2(void** handle) {
    *handle = new Blas();
    return 0;
}
ENTRY cublasStatus_t cublasDestroy_v2(void* handle) {
    delete static_cast<Blas*>(handle);
    return 0;
}
ENTRY cublasStatus_t cublasSetStream_v2(void* handle, void* s) {
    LOCKED;
    static_cast<Blas*>(handle)->stream = stream_of(s);
    return 0;
}
ENTRY cublasStatus_t cublasSetWorkspace_v2(void*, void* workspace, size_t bytes) {
    LOCKED;
    return inside(reinterpret_cast<CUdeviceptr>(workspace), bytes) ? 0 : 7;
}
ENTRY cublasStatus_t cublasSetMathMode(void* handle, int mode) {
    if (mode != 0 && mode != 3) return 7;
    LOCKED;
    static_cast<Blas*>(handle)->tf32 = mode == 3;
    return 0;
}
// Whether a column-major operand of `rows` x `cols` (as stored, leading dimension `ld`),
// `batch` of them `stride` apart, lies inside one allocation.
static bool operand_inside(const float* p, int rows, int cols, int ld, long long stride, int batch) {
    if (ld < rows) return false;
    size_t last = (size_t)(rows - 1) + (size_t)(cols - 1) * ld + (size_t)(batch - 1) * stride;
    return inside(reinterpret_cast<CUdeviceptr>(p), (last + 1) * sizeof(float));
}
ENTRY cublasStatus_t cublasSgemmStridedBatched(void* handle, int transa, int transb, int m, int n, int k,
                                               const float* alpha, const float* a, int lda, long long stride_a,
                                               const float* b, int ldb, long long stride_b, const float* beta,
                                               float* c, int ldc, long long stride_c, int batch) {
    LOCKED;
    if (tracing()) fprintf(stderr, "TRACE sgemm m %d n %d k %d transa %d transb %d batch %d\n", m, n, k, transa, transb, batch);
    Blas* blas = static_cast<Blas*>(handle);
    if (m < 0 || n < 0 || k < 0 || batch < 0 || transa > 1 || transb > 1) return 7;
    if (m == 0 || n == 0 || batch == 0) return 0;
    bool ok = k == 0 || (operand_inside(a, transa ? k : m, transa ? m : k, lda, stride_a, batch) &&
                         operand_inside(b, transb ? n : k, transb ? k : n, ldb, stride_b, batch));
    if (!ok || !operand_inside(c, m, n, ldc, stride_c, batch)) {
        complain("a cuBLAS operand reaches out of every allocation");
        return 7;
    }
    Node node{Node::Product};
    node.gemm = Gemm{transa, transb, m, n, k, *alpha, *beta, a, lda, stride_a, b, ldb, stride_b, c, ldc, stride_c,
                     batch, blas->tf32};
    return queue(blas->stream ? blas->stream : &default_stream, std::move(node)) ? 13 : 0;
}
