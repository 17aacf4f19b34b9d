// Runs the CUDA kernels of kernels.cu on the CPU, for the tests (src/backend/cuda/emulator.rs)
// on machines without a GPU. Compiled by g++ as C++20 in front of kernels.cu (`-include`):
// CUDA's qualifiers become plain C++; a block's threads run on the launching thread, one
// after another for a kernel that never waits at __syncthreads, else as fibers (ucontext)
// that each run to the next barrier in turn, so that none passes a barrier before all reach
// it; blocks run one after another (so that a kernel's __shared__ arrays, here static, belong
// to one block at a time), and launches one at a time. Blocks and threads run in ascending
// order, or all in descending order (emu_launch_in_order): a kernel run both ways has had
// every pair of its threads, and of its blocks, run in each order, so one thread reading
// what another writes with no barrier between them (a missing __syncthreads, a warp assumed
// to run in step, a block reading another's output) reads the value before the write in one
// of the two runs and after it in the other: unless the two are the same, the runs differ.
//
// A GPU's shared memory holds garbage until a block writes it: here each block of a kernel
// that waits at barriers starts with every __shared__ array's bits set (NaN as a float or
// double), so a thread that reads what no thread wrote shows it.
//
// What this cannot show: the GPU's memory model (threads here never overlap, so a missing
// atomic would go unseen), and the CUDA math library's rounding (expf and friends are the C
// library's).

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// The calling thread's place in the launch, and the launch's shape.
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static bool emu_in_fibers = false;  // a block's threads run as fibers (emu_launch)
static thread_local const char* emu_running = nullptr;  // the kernel this thread runs, if any

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)
// Static arrays in a section of their own, which emu_launch_in_order fills with set bits
// before each block (the linker names its bounds; weak, for a program without any).
#define __shared__ static __attribute__((section("emu_shared")))
extern "C" __attribute__((weak, visibility("hidden"))) char __start_emu_shared[], __stop_emu_shared[];
static void emu_shared_garbage() {
    if (__start_emu_shared != nullptr) memset(__start_emu_shared, 0xff, __stop_emu_shared - __start_emu_shared);
}

static inline void emu_yield_to_scheduler();
static inline void __syncthreads() {
    if (emu_in_fibers) return emu_yield_to_scheduler();
    // A kernel marked as never waiting waited: the table's `barriers` is wrong.
    fputs("emulator: __syncthreads in a kernel run without barriers\n", stderr);
    abort();
}
static inline float __fmul_rn(float a, float b) { return a * b; }  // built with -ffp-contract=off
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
static inline unsigned int atomicCAS(unsigned int* p, unsigned int compare, unsigned int value) {
    std::atomic_ref<unsigned int>(*p).compare_exchange_strong(compare, value);
    return compare;  // the old value, as CUDA's
}
template <typename T>
static inline T min(T a, T b) {
    return b < a ? b : a;
}
template <typename T>
static inline T max(T a, T b) {
    return a < b ? b : a;
}

// Calls kernel `k` with its parameters read from `params` (one pointer per parameter, to a
// value of the parameter's type: the convention of cuLaunchKernel's kernelParams).
template <typename... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** params, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}
template <typename... A>
static void emu_invoke(void (*k)(A...), void** params) {
    emu_call(k, params, std::index_sequence_for<A...>{});
}

// The sizes of a kernel's parameters, in order (what a captured launch copies).
template <typename... A>
struct EmuSizes {
    static constexpr std::size_t sizes[sizeof...(A) + 1] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)...,
                                                            0};
    // Which parameters are pointers (device addresses, checked by the emulated driver).
    static constexpr bool pointers[sizeof...(A) + 1] = {std::is_pointer_v<std::remove_reference_t<A>>..., false};
};
template <typename... A>
constexpr const bool* emu_pointers(void (*)(A...)) {
    return EmuSizes<A...>::pointers;
}
template <typename... A>
constexpr const std::size_t* emu_sizes(void (*)(A...)) {
    return EmuSizes<A...>::sizes;
}
template <typename... A>
constexpr std::size_t emu_count(void (*)(A...)) {
    return sizeof...(A);
}

struct EmuKernel {
    const char* name;
    void (*invoke)(void** params);
    // Whether the kernel waits at __syncthreads (its threads then run as fibers; the others'
    // threads run one after another).
    bool barriers;
    std::size_t param_count;
    const std::size_t* param_sizes;
    const bool* param_pointers;
};
extern const EmuKernel emu_kernels[];  // after kernels.cu, in the emulator's last part
extern const std::size_t emu_kernel_count;

// The threads of a block that waits at __syncthreads, as fibers (ucontext) on the launching
// thread: no OS thread per GPU thread (thousands per launch), one switch per thread and barrier.
struct EmuFibers {
    static constexpr std::size_t stack_bytes = 128 * 1024;
    ucontext_t scheduler;
    std::vector<ucontext_t> contexts;
    std::vector<char*> stacks;  // kept for the next blocks and launches (never unmapped)
    std::vector<unsigned char> finished;
    unsigned int current = 0;
    const EmuKernel* kernel = nullptr;
    void** params = nullptr;
};
static EmuFibers emu_fibers;  // one launch at a time (emu_launch_in_order's lock)

// A fiber's stack with an inaccessible page below it (stacks grow down): an overflow faults
// there instead of writing over the next fiber's stack. Null if the system refuses. The
// guard is 64 KB: a frame that large would step over a one-page guard into the next mapping.
static char* emu_fiber_stack() {
    constexpr std::size_t guard = 64 * 1024;
    void* region = mmap(nullptr, guard + EmuFibers::stack_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) return nullptr;
    if (mprotect(region, guard, PROT_NONE) != 0) {
        munmap(region, guard + EmuFibers::stack_bytes);
        return nullptr;
    }
    return (char*)region + guard;
}

static inline void emu_yield_to_scheduler() {
    swapcontext(&emu_fibers.contexts[emu_fibers.current], &emu_fibers.scheduler);
}

static void emu_fiber_main() {
    emu_fibers.kernel->invoke(emu_fibers.params);
    emu_fibers.finished[emu_fibers.current] = 1;
}  // back to the scheduler (uc_link)

// The kernel named `name`, or null.
static const EmuKernel* emu_kernel(const char* name) {
    for (std::size_t i = 0; i < emu_kernel_count; ++i)
        if (strcmp(emu_kernels[i].name, name) == 0) return &emu_kernels[i];
    return nullptr;
}

// Runs kernel `name` over a grid of `grid` blocks of `block` threads (one-dimensional, as
// every launch of the backend), its blocks and threads in ascending order, or descending
// with `reverse`: 0 on success, 1 for an unknown name.
extern "C" int emu_launch_in_order(const char* name, unsigned int grid, unsigned int block, void** params,
                                   int reverse) {
    const EmuKernel* kernel = emu_kernel(name);
    if (!kernel) return 1;
    static std::mutex one_launch;
    std::lock_guard<std::mutex> hold(one_launch);
    struct Running {
        explicit Running(const char* name) { emu_running = name; }
        ~Running() { emu_running = nullptr; }
    } running(kernel->name);
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    // The i-th of n to run.
    auto nth = [reverse](unsigned int i, unsigned int n) { return reverse ? n - 1 - i : i; };
    if (!kernel->barriers) {
        // No thread waits for another: each block's threads one after another, here.
        for (unsigned int bi = 0; bi < grid; ++bi)
            for (unsigned int ti = 0; ti < block; ++ti) {
                blockIdx = {nth(bi, grid), 0, 0};
                threadIdx = {nth(ti, block), 0, 0};
                kernel->invoke(params);
            }
        return 0;
    }
    // Threads that wait for each other: fibers on this thread (see EmuFibers).
    EmuFibers& f = emu_fibers;
    f.kernel = kernel;
    f.params = params;
    f.contexts.resize(block);
    while (f.stacks.size() < block) {
        char* stack = emu_fiber_stack();
        if (!stack) {
            fprintf(stderr, "emulated CUDA: no memory for %s's fiber stacks\n", name);
            abort();
        }
        f.stacks.push_back(stack);
    }
    emu_in_fibers = true;
    for (unsigned int bi = 0; bi < grid; ++bi) {
        unsigned int b = nth(bi, grid);
        emu_shared_garbage();
        f.finished.assign(block, 0);
        for (unsigned int t = 0; t < block; ++t) {
            getcontext(&f.contexts[t]);
            f.contexts[t].uc_stack.ss_sp = f.stacks[t];
            f.contexts[t].uc_stack.ss_size = EmuFibers::stack_bytes;
            f.contexts[t].uc_link = &f.scheduler;
            makecontext(&f.contexts[t], emu_fiber_main, 0);
        }
        // Each round runs every live thread to its next barrier or its end, so no thread
        // passes barrier k before every other has reached it. A round in which some threads
        // end while others wait at a barrier is a __syncthreads that only some threads of
        // the block reach (undefined in CUDA): the emulator stops there.
        for (bool live = true; live;) {
            bool ended = false;
            live = false;
            for (unsigned int ti = 0; ti < block; ++ti) {
                unsigned int t = nth(ti, block);
                if (f.finished[t]) continue;
                f.current = t;
                blockIdx = {b, 0, 0};
                threadIdx = {t, 0, 0};
                swapcontext(&f.scheduler, &f.contexts[t]);
                ended = ended || f.finished[t];
                live = live || !f.finished[t];
            }
            if (ended && live) {
                fprintf(stderr, "emulated CUDA: in %s, block %u: __syncthreads reached by only some threads\n", name, b);
                abort();
            }
        }
    }
    emu_in_fibers = false;
    return 0;
}

// emu_launch_in_order in the order SINAPSE_EMULATOR_ORDER names: `ascending` (or unset) or
// `descending`; another value stops the process.
extern "C" int emu_launch(const char* name, unsigned int grid, unsigned int block, void** params) {
    static const int reverse = [] {
        const char* order = getenv("SINAPSE_EMULATOR_ORDER");
        if (!order || strcmp(order, "ascending") == 0) return 0;
        if (strcmp(order, "descending") == 0) return 1;
        fprintf(stderr, "emulator: SINAPSE_EMULATOR_ORDER is '%s', not ascending or descending\n", order);
        abort();
    }();
    return emu_launch_in_order(name, grid, block, params, reverse);
}
