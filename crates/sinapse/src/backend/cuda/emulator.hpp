// Runs the CUDA kernels of kernels.cu on the CPU, for the tests (src/backend/cuda/emulator.rs)
// on machines without a GPU. Compiled by g++ as C++20 in front of kernels.cu (`-include`):
// CUDA's qualifiers become plain C++, every thread of a block is an OS thread (so that
// __syncthreads is a real barrier; a kernel without one runs its threads one after another on
// the launching thread), blocks run one after another (so that a kernel's __shared__ arrays,
// here static, belong to one block at a time), and launches one at a time.
//
// What this cannot show: the GPU's memory model (threads here seldom overlap, so a missing
// atomic or barrier would likely go unseen), warp-level behaviour, shared memory's garbage
// before a write (static arrays start at zero), and the CUDA math library's rounding (expf
// and friends are the C library's).

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <barrier>
#include <cstddef>
#include <mutex>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// The calling thread's place in the launch, and the launch's shape.
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<>* emu_block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

static inline void __syncthreads() {
    if (!emu_block_barrier) {
        // A kernel marked as never waiting waited: the table's `barriers` is wrong.
        fputs("emulator: __syncthreads in a kernel run without barriers\n", stderr);
        abort();
    }
    emu_block_barrier->arrive_and_wait();
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
    // Whether the kernel waits at __syncthreads (its threads then run as OS threads; the
    // others' threads run one after another on the launching thread).
    bool barriers;
    std::size_t param_count;
    const std::size_t* param_sizes;
    const bool* param_pointers;
};
extern const EmuKernel emu_kernels[];  // after kernels.cu, in the emulator's last part
extern const std::size_t emu_kernel_count;

// The kernel named `name`, or null.
static const EmuKernel* emu_kernel(const char* name) {
    for (std::size_t i = 0; i < emu_kernel_count; ++i)
        if (strcmp(emu_kernels[i].name, name) == 0) return &emu_kernels[i];
    return nullptr;
}

// Runs kernel `name` over a grid of `grid` blocks of `block` threads (one-dimensional, as
// every launch of the backend): 0 on success, 1 for an unknown name, 2 when the system
// refuses a thread (the block's other threads are let go and joined first).

extern "C" int emu_launch(const char* name, unsigned int grid, unsigned int block, void** params) {
    const EmuKernel* kernel = emu_kernel(name);
    if (!kernel) return 1;
    static std::mutex one_launch;
    std::lock_guard<std::mutex> hold(one_launch);
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    if (!kernel->barriers) {
        // No thread waits for another: each block's threads one after another, here.
        emu_block_barrier = nullptr;
        for (unsigned int b = 0; b < grid; ++b)
            for (unsigned int t = 0; t < block; ++t) {
                blockIdx = {b, 0, 0};
                threadIdx = {t, 0, 0};
                kernel->invoke(params);
            }
        return 0;
    }
    for (unsigned int b = 0; b < grid; ++b) {
        std::barrier<> barrier(block);
        emu_block_barrier = &barrier;
        // Every thread waits at `start` until all exist (or the block is called off).
        std::barrier<> start(block + 1);
        std::atomic<bool> called_off{false};
        std::vector<std::thread> threads;
        threads.reserve(block);
        try {
            for (unsigned int t = 0; t < block; ++t) {
                threads.emplace_back([=, &barrier, &start, &called_off] {
                    start.arrive_and_wait();
                    if (called_off) return;
                    blockIdx = {b, 0, 0};
                    threadIdx = {t, 0, 0};
                    kernel->invoke(params);
                    // A finished thread no longer holds the others at a barrier.
                    barrier.arrive_and_drop();
                });
            }
        } catch (const std::system_error&) {
            called_off = true;
            for (std::size_t t = threads.size(); t < block; ++t) start.arrive_and_drop();
            start.arrive_and_wait();
            for (auto& th : threads) th.join();
            return 2;
        }
        start.arrive_and_wait();
        for (auto& th : threads) th.join();
    }
    return 0;
}
