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
// Built by g++ with -DEMU_RACECHECK and -fsanitize=thread (compiled only: ThreadSanitizer's
// library is not linked, the functions its instrumentation calls are defined at the end of
// this file), the emulator also checks launches for races, as the GPU's memory model would
// expose them and running threads in turn does not: two threads that touch the same word of
// global or shared memory, at least one writing, with neither an atomic pair nor a barrier of
// their block between them (a missing atomicAdd, a missing __syncthreads), whatever order they
// ran in. The launch then returns 2 and emu_race says where. emu_launch_in_order checks every
// launch; emu_launch (the emulated driver's) every one of up to 65,536 threads and the first
// two of each larger kernel and shape.
//
// What this cannot show: the CUDA math library's rounding (expf and friends are the C
// library's), and races between launches on different streams (the backend uses one).

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <chrono>
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

// The race check's part in a launch (see the end of this file; nothing without EMU_RACECHECK):
// a launch of `grid` blocks of `block` threads begins in a function whose frame is at `frame`
// (the kernels' own frames lie below it, their callers' buffers above), a block begins,
// thread `t` of the block runs on a stack at [lo, hi) (a fiber's, else none) until it ends or
// waits at a barrier (`waits`), and a launch ends (returning whether it raced). emu_launch
// checks only some of the larger launches.
static thread_local bool emu_race_sampling = false;
#ifdef EMU_RACECHECK
// Not instrumented: the emulator's own work, done while a kernel's thread runs.
#define EMU_UNCHECKED __attribute__((no_sanitize_thread))
#else
#define EMU_UNCHECKED
#endif
static void emu_race_launch(const char* kernel, unsigned int grid, unsigned int block, uintptr_t frame);
static void emu_race_block(unsigned int threads);
static void emu_race_enter(uintptr_t lo, uintptr_t hi);
static void emu_race_leave(unsigned int t, bool waits);
static bool emu_race_found();

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
// The host sees a kernel's writes once it has run (kernels run on the calling thread here).
static inline float __fmul_rn(float a, float b) { return a * b; }  // built with -ffp-contract=off
// A GPU's cycle counter: here the host's nanoseconds.
static inline long long clock64() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
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
    // For a kernel that takes device addresses inside a struct (an optimizer's list of
    // buffers): calls visit(ctx, address, bytes, written) for each buffer the launch's
    // parameters name, address 0 for a list it cannot read; null for the other kernels.
    void (*addresses)(void* const* params, void (*visit)(void* ctx, unsigned long long address, unsigned long long bytes,
                                                        bool written),
                      void* ctx) = nullptr;
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

EMU_UNCHECKED static inline void emu_yield_to_scheduler() {
    swapcontext(&emu_fibers.contexts[emu_fibers.current], &emu_fibers.scheduler);
}

EMU_UNCHECKED static void emu_fiber_main() {
    emu_fibers.kernel->invoke(emu_fibers.params);
    emu_fibers.finished[emu_fibers.current] = 1;
}  // back to the scheduler (uc_link)

// The kernel named `name`, or null.
static const EmuKernel* emu_kernel(const char* name) {
    for (std::size_t i = 0; i < emu_kernel_count; ++i)
        if (strcmp(emu_kernels[i].name, name) == 0) return &emu_kernels[i];
    return nullptr;
}

// The byte sizes of kernel `name`'s parameters, in order, and their number in `count`; null
// for an unknown name. For tests that launch kernels by hand, to check their arguments.
extern "C" __attribute__((visibility("default"))) const std::size_t* emu_param_sizes(const char* name,
                                                                                     std::size_t* count) {
    const EmuKernel* kernel = emu_kernel(name);
    if (!kernel) return nullptr;
    *count = kernel->param_count;
    return kernel->param_sizes;
}

// Runs kernel `name` over a grid of `grid` blocks of `block` threads (one-dimensional, as
// every launch of the backend), its blocks and threads in ascending order, or descending
// with `reverse`: 0 on success, 1 for an unknown name, 2 for a race (EMU_RACECHECK builds).
extern "C" __attribute__((visibility("default"), noinline)) int emu_launch_in_order(const char* name, unsigned int grid,
                                                                         unsigned int block, void** params,
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
    emu_race_launch(kernel->name, grid, block, (uintptr_t)__builtin_frame_address(0));
    if (!kernel->barriers) {
        // No thread waits for another: each block's threads one after another, here.
        for (unsigned int bi = 0; bi < grid; ++bi) {
            emu_race_block(block);
            for (unsigned int ti = 0; ti < block; ++ti) {
                blockIdx = {nth(bi, grid), 0, 0};
                threadIdx = {nth(ti, block), 0, 0};
                emu_race_enter(0, 0);
                kernel->invoke(params);
                emu_race_leave(threadIdx.x, false);
            }
        }
        return emu_race_found() ? 2 : 0;
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
        emu_race_block(block);
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
                emu_race_enter((uintptr_t)f.stacks[t], (uintptr_t)f.stacks[t] + EmuFibers::stack_bytes);
                swapcontext(&f.scheduler, &f.contexts[t]);
                emu_race_leave(t, !f.finished[t]);
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
    return emu_race_found() ? 2 : 0;
}

// emu_launch_in_order in the order SINAPSE_EMULATOR_ORDER names: `ascending` (or unset) or
// `descending`; another value stops the process. For the emulated driver, whose training
// loops repeat their launches many times: the race check (EMU_RACECHECK) looks at every
// launch of at most 65,536 threads, and at the first two launches of each kernel with each
// larger grid and block size.
extern "C" int emu_launch(const char* name, unsigned int grid, unsigned int block, void** params) {
    static const int reverse = [] {
        const char* order = getenv("SINAPSE_EMULATOR_ORDER");
        if (!order || strcmp(order, "ascending") == 0) return 0;
        if (strcmp(order, "descending") == 0) return 1;
        fprintf(stderr, "emulator: SINAPSE_EMULATOR_ORDER is '%s', not ascending or descending\n", order);
        abort();
    }();
    emu_race_sampling = true;
    int status = emu_launch_in_order(name, grid, block, params, reverse);
    emu_race_sampling = false;
    return status;
}

// The race check. Every load and store the kernels make calls one of the __tsan_* functions
// below (the compiler's ThreadSanitizer instrumentation); they are built without it. While a
// kernel's thread runs, each access to a word that is not on its stack is compared with
// the last write and the last two reads of that word in this launch, by other threads: two
// accesses race unless both are atomic, or both come from one block and the earlier one was
// made before a __syncthreads that the later one was made after (each thread counts its
// barriers: its "phase"). The record of __shared__ words starts afresh with each block (here
// one static array serves every block in turn). Reads that no write races with are not
// races, so the last two readers suffice to catch a write racing with one of them (more
// would be needed to catch every such write; a missing atomic, a read-modify-write, races
// at its read). Words are 4 bytes: two threads writing neighbouring bytes of one word (the
// kernels write none narrower) would be taken for a race. The record is kept per 4 KiB page
// of memory, 24 KiB of it (so a launch touching N bytes adds 6 N), and dropped between
// launches once it passes 4 Ki pages.
#ifdef EMU_RACECHECK
#include <pthread.h>

namespace emu_racecheck {
// Who touched a word, packed: valid bit, atomic bit, block (24 bits), thread (11 bits), phase.
typedef uint64_t Access;
constexpr Access valid = 1ull << 63, atomic = 1ull << 62;
// A word's last write and last two reads (by different threads) in this launch.
struct Cell {
    Access write, read, read2;
};
// The cells of one 4 KiB page of memory, valid for the launch they were stamped with.
struct Page {
    uint64_t launch;
    Cell cells[1024];
};
// Pages by page number (open addressing; a number of 0 marks a free slot), and the last one
// found (kernels mostly walk memory in order).
struct Slot {
    uint64_t number;
    Page* page;
};
static Slot* slots = nullptr;
static uint64_t capacity = 0, used = 0, launch = 0;
static uint64_t last_number = ~0ull;
// Added to the page number of a __shared__ word: their pages are apart from the others'.
constexpr uint64_t shared_pages = 1ull << 60;
static Page* last_page = nullptr;
// A kernel's thread runs, on the OS thread `launcher`. Not thread-local (a thread-local costs
// a call on every access, checked or not, in a shared library): instrumented code that
// another OS thread runs meanwhile (the driver's entry points, say) also sees it set, and
// `check` (which costs more anyway) leaves it alone.
static bool checking = false;
static pthread_t launcher;
static uintptr_t stack_lo, stack_hi;          // the launching thread's stack below the launch's frame
static uintptr_t fiber_lo, fiber_hi;          // the running fiber's stack, if any
static unsigned int phase[1024];              // barriers each thread of the block has passed
static const char* kernel = nullptr;
static char report[512];                      // the launch's first race (under the launch lock)
static thread_local char last_report[512];    // the calling thread's last launch's (emu_race)
static bool raced = false;
static bool active = false;                   // this launch is checked
// The launch shapes emu_launch has checked, and how often.
struct Shape {
    const char* kernel;
    unsigned int grid, block, count;
};
static Shape shapes[4096];
static unsigned int shape_count = 0;

EMU_UNCHECKED static Access now(bool is_atomic) {
    return valid | (is_atomic ? atomic : 0) | (uint64_t)(blockIdx.x & 0xffffff) << 38 |
           (uint64_t)(threadIdx.x & 0x7ff) << 27 | (phase[threadIdx.x & 1023] & 0x7ffffff);
}
EMU_UNCHECKED static unsigned int block_of(Access a) { return (a >> 38) & 0xffffff; }
EMU_UNCHECKED static unsigned int thread_of(Access a) { return (a >> 27) & 0x7ff; }
EMU_UNCHECKED static unsigned int phase_of(Access a) { return a & 0x7ffffff; }
EMU_UNCHECKED static bool same_thread(Access a, Access b) {
    return block_of(a) == block_of(b) && thread_of(a) == thread_of(b);
}
// Whether `before` (by another thread) and `later` can happen in either order.
EMU_UNCHECKED static bool race(Access before, Access later) {
    if (!(before & valid) || same_thread(before, later)) return false;
    if ((before & atomic) && (later & atomic)) return false;
    return !(block_of(before) == block_of(later) && phase_of(before) < phase_of(later));
}

// Drops every page (between launches, once they take more than 96 MiB).
EMU_UNCHECKED static void forget() {
    for (uint64_t i = 0; i < capacity; ++i) free(slots[i].page);
    free(slots);
    slots = nullptr;
    capacity = used = 0;
    last_number = ~0ull;
    last_page = nullptr;
}

// The cells of page `number` for this launch (cleared if they were another launch's).
EMU_UNCHECKED static Page* page(uint64_t number) {
    if (number == last_number && last_page && last_page->launch == launch) return last_page;
    if (2 * (used + 1) > capacity) {
        Slot* old = slots;
        uint64_t old_capacity = capacity;
        capacity = capacity ? 2 * capacity : 1024;
        slots = static_cast<Slot*>(calloc(capacity, sizeof(Slot)));
        if (!slots) {
            fputs("emulator: no memory for the race check\n", stderr);
            abort();
        }
        for (uint64_t i = 0; i < old_capacity; ++i) {
            if (!old[i].number) continue;
            uint64_t j = (old[i].number * 0x9e3779b97f4a7c15ull) >> 24 & (capacity - 1);
            while (slots[j].number) j = (j + 1) & (capacity - 1);
            slots[j] = old[i];
        }
        free(old);
    }
    uint64_t j = (number * 0x9e3779b97f4a7c15ull) >> 24 & (capacity - 1);
    while (slots[j].number && slots[j].number != number) j = (j + 1) & (capacity - 1);
    if (!slots[j].number) {
        Page* fresh = static_cast<Page*>(malloc(sizeof(Page)));
        if (!fresh) {
            fputs("emulator: no memory for the race check\n", stderr);
            abort();
        }
        fresh->launch = 0;
        slots[j] = Slot{number, fresh};
        ++used;
    }
    Page* found = slots[j].page;
    if (found->launch != launch) {
        memset(found->cells, 0, sizeof found->cells);
        found->launch = launch;
    }
    last_number = number;
    last_page = found;
    return found;
}

EMU_UNCHECKED static void say(const char* what, uintptr_t word, bool shared, Access earlier, const char* did) {
    if (raced) return;
    raced = true;
    snprintf(report, sizeof report,
             "%s: thread %u of block %u %s the %s word at %#lx that thread %u of block %u %s, "
             "with no atomic pair or barrier between (a missing atomicAdd or __syncthreads?)",
             kernel, threadIdx.x, blockIdx.x, what, shared ? "shared" : "global", (unsigned long)word,
             thread_of(earlier), block_of(earlier), did);
}

EMU_UNCHECKED __attribute__((noinline)) static void check(const volatile void* p, unsigned long size, bool write,
                                                          bool is_atomic) {
    if (!pthread_equal(pthread_self(), launcher)) return;
    uintptr_t a = (uintptr_t)p;
    if ((a >= stack_lo && a < stack_hi) || (a >= fiber_lo && a < fiber_hi)) return;
    bool shared = __start_emu_shared != nullptr && a >= (uintptr_t)__start_emu_shared &&
                  a < (uintptr_t)__stop_emu_shared;
    Access me = now(is_atomic);
    for (uintptr_t w = a & ~(uintptr_t)3; w < a + size; w += 4) {
        Cell* c = &page(w >> 12 | (shared ? shared_pages : 0))->cells[(w >> 2) & 1023];
        if (race(c->write, me)) say(write ? "writes" : "reads", w, shared, c->write, "wrote");
        if (write) {
            if (race(c->read, me)) say("writes", w, shared, c->read, "read");
            if (race(c->read2, me)) say("writes", w, shared, c->read2, "read");
            c->write = me;
        } else if (!(c->read & valid) || same_thread(c->read, me)) {
            c->read = me;
        } else {
            c->read2 = c->read;
            c->read = me;
        }
    }
}
// An access by the running code: checked while a kernel's thread runs (the test kept out of
// `check`, whose frame costs more than most accesses do unchecked).
EMU_UNCHECKED static inline void access(const volatile void* p, unsigned long size, bool write, bool is_atomic) {
    if (checking) check(p, size, write, is_atomic);
}
}  // namespace emu_racecheck

EMU_UNCHECKED static void emu_race_launch(const char* name, unsigned int grid, unsigned int block, uintptr_t frame) {
    using namespace emu_racecheck;
    if (used > 1 << 12) forget();
    ++launch;
    raced = false;
    kernel = name;
    active = true;
    if (emu_race_sampling && (uint64_t)grid * block > 1 << 16) {
        unsigned int i = 0;
        auto same = [&](const Shape& s) { return s.kernel == name && s.grid == grid && s.block == block; };
        while (i < shape_count && !same(shapes[i])) ++i;
        if (i == shape_count && shape_count == 4096) {
            static bool said = false;
            if (!said) fputs("emulator: the race check's table of launch shapes is full; new large shapes go unchecked\n", stderr);
            said = true;
            active = false;
        } else {
            if (i == shape_count) shapes[shape_count++] = Shape{name, grid, block, 0};
            active = shapes[i].count++ < 2;
        }
    }
    // This thread's stack below the launch's frame: the kernels' locals, parameters and
    // fiber bookkeeping (its lowest address looked up once per thread).
    static thread_local uintptr_t lowest = 0;
    if (!lowest) {
        pthread_attr_t attr;
        void* base = nullptr;
        size_t bytes = 0;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &base, &bytes);
            pthread_attr_destroy(&attr);
        }
        lowest = base ? (uintptr_t)base : frame - (8u << 20);
    }
    launcher = pthread_self();
    stack_lo = lowest;
    stack_hi = frame;
}
EMU_UNCHECKED static void emu_race_block(unsigned int threads) {
    using namespace emu_racecheck;
    for (unsigned int t = 0; t < threads && t < 1024; ++t) phase[t] = 0;
    // Each block has __shared__ arrays of its own (here the same static ones in turn): the
    // previous block's accesses to them are forgotten.
    if (__start_emu_shared == nullptr || !active) return;
    uintptr_t first = (uintptr_t)__start_emu_shared & ~(uintptr_t)4095;
    for (uintptr_t w = first; w < (uintptr_t)__stop_emu_shared; w += 4096) page(w >> 12 | shared_pages)->launch = 0;
}
EMU_UNCHECKED static void emu_race_enter(uintptr_t lo, uintptr_t hi) {
    emu_racecheck::fiber_lo = lo;
    emu_racecheck::fiber_hi = hi;
    emu_racecheck::checking = emu_racecheck::active;
}
EMU_UNCHECKED static void emu_race_leave(unsigned int t, bool waits) {
    emu_racecheck::checking = false;
    if (waits) ++emu_racecheck::phase[t & 1023];
}
// Whether the launch raced; the report, if so, is kept for emu_race on this thread.
EMU_UNCHECKED static bool emu_race_found() {
    using namespace emu_racecheck;
    if (raced) memcpy(last_report, report, sizeof report);
    return raced;
}
// What the calling thread's last launch that raced found (empty if none has).
extern "C" __attribute__((visibility("default"))) EMU_UNCHECKED const char* emu_race() {
    return emu_racecheck::last_report;
}

// The functions GCC's instrumentation calls (their types as GCC declares them).
#define EMU_ACCESS(n)                                                                                              \
    extern "C" EMU_UNCHECKED void __tsan_read##n(void* p) { emu_racecheck::access(p, n, false, false); }           \
    extern "C" EMU_UNCHECKED void __tsan_write##n(void* p) { emu_racecheck::access(p, n, true, false); }           \
    extern "C" EMU_UNCHECKED void __tsan_unaligned_read##n(void* p) { emu_racecheck::access(p, n, false, false); } \
    extern "C" EMU_UNCHECKED void __tsan_unaligned_write##n(void* p) { emu_racecheck::access(p, n, true, false); }
EMU_ACCESS(1)
EMU_ACCESS(2)
EMU_ACCESS(4)
EMU_ACCESS(8)
EMU_ACCESS(16)
extern "C" EMU_UNCHECKED void __tsan_read_range(void* p, unsigned long n) { emu_racecheck::access(p, n, false, false); }
extern "C" EMU_UNCHECKED void __tsan_write_range(void* p, unsigned long n) { emu_racecheck::access(p, n, true, false); }
extern "C" EMU_UNCHECKED void __tsan_init() {}
extern "C" EMU_UNCHECKED void __tsan_func_entry(void*) {}
extern "C" EMU_UNCHECKED void __tsan_func_exit() {}
extern "C" EMU_UNCHECKED void __tsan_vptr_update(void**, void*) {}
extern "C" EMU_UNCHECKED void __tsan_atomic_thread_fence(int mo) { __atomic_thread_fence(mo); }
extern "C" EMU_UNCHECKED void __tsan_atomic_signal_fence(int mo) { __atomic_signal_fence(mo); }
// An atomic read-modify-write `op` (fetch_sub, ...) of a T.
#define EMU_ATOMIC_RMW(bits, T, op)                                                                      \
    extern "C" EMU_UNCHECKED T __tsan_atomic##bits##_##op(volatile void* p, T v, int mo) {               \
        emu_racecheck::access(p, sizeof(T), true, true);                                                 \
        return __atomic_##op((volatile T*)p, v, mo);                                                     \
    }
#define EMU_ATOMICS(bits, T)                                                                                    \
    extern "C" EMU_UNCHECKED T __tsan_atomic##bits##_load(const volatile void* p, int mo) {                     \
        emu_racecheck::access(p, sizeof(T), false, true);                                                       \
        return __atomic_load_n((const volatile T*)p, mo);                                                       \
    }                                                                                                           \
    extern "C" EMU_UNCHECKED void __tsan_atomic##bits##_store(volatile void* p, T v, int mo) {                  \
        emu_racecheck::access(p, sizeof(T), true, true);                                                        \
        __atomic_store_n((volatile T*)p, v, mo);                                                                \
    }                                                                                                           \
    extern "C" EMU_UNCHECKED T __tsan_atomic##bits##_exchange(volatile void* p, T v, int mo) {                  \
        emu_racecheck::access(p, sizeof(T), true, true);                                                        \
        return __atomic_exchange_n((volatile T*)p, v, mo);                                                      \
    }                                                                                                           \
    EMU_ATOMIC_RMW(bits, T, fetch_sub)                                                                   \
    EMU_ATOMIC_RMW(bits, T, fetch_and)                                                                   \
    EMU_ATOMIC_RMW(bits, T, fetch_or)                                                                    \
    EMU_ATOMIC_RMW(bits, T, fetch_xor)                                                                   \
    EMU_ATOMIC_RMW(bits, T, fetch_nand)                                                                  \
    extern "C" EMU_UNCHECKED T __tsan_atomic##bits##_compare_exchange_val(volatile void* p, T c, T v, int mo,  \
                                                                          int fail) {                    \
        emu_racecheck::access(p, sizeof(T), true, true);                                                 \
        __atomic_compare_exchange_n((volatile T*)p, &c, v, false, mo, fail);                            \
        return c;                                                                                        \
    }                                                                                                    \
    extern "C" EMU_UNCHECKED T __tsan_atomic##bits##_fetch_add(volatile void* p, T v, int mo) {                 \
        emu_racecheck::access(p, sizeof(T), true, true);                                                        \
        return __atomic_fetch_add((volatile T*)p, v, mo);                                                       \
    }                                                                                                           \
    extern "C" EMU_UNCHECKED bool __tsan_atomic##bits##_compare_exchange_strong(volatile void* p, void* c, T v, \
                                                                               int mo, int fail) {              \
        emu_racecheck::access(p, sizeof(T), true, true);                                                        \
        return __atomic_compare_exchange_n((volatile T*)p, (T*)c, v, false, mo, fail);                          \
    }                                                                                                           \
    extern "C" EMU_UNCHECKED bool __tsan_atomic##bits##_compare_exchange_weak(volatile void* p, void* c, T v,   \
                                                                             int mo, int fail) {                \
        emu_racecheck::access(p, sizeof(T), true, true);                                                        \
        return __atomic_compare_exchange_n((volatile T*)p, (T*)c, v, true, mo, fail);                           \
    }
EMU_ATOMICS(8, uint8_t)
EMU_ATOMICS(16, uint16_t)
EMU_ATOMICS(32, uint32_t)
EMU_ATOMICS(64, uint64_t)
#else
static inline void emu_race_launch(const char*, unsigned int, unsigned int, uintptr_t) {}
static inline void emu_race_block(unsigned int) {}
static inline void emu_race_enter(uintptr_t, uintptr_t) {}
static inline void emu_race_leave(unsigned int, bool) {}
static inline bool emu_race_found() { return false; }
#endif
