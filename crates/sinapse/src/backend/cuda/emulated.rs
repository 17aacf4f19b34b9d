//! The CUDA kernels, and a CUDA driver and cuBLAS around them, compiled for the CPU by the
//! system's C++ compiler (`$CXX`, else `g++`): the kernel emulator of the unit tests
//! (`emulator.rs`) and the emulated GPU of the device suite ([`install`]).

use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};

use super::gpu::{self, KERNELS};

/// A folder of this process's own under the system's temporary folder, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// A new folder that nobody else can write (creating it fails if the name exists).
    pub(crate) fn new() -> Result<Scratch, String> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The time too: a folder left by an earlier process of the same id is not this one's.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sinapse-kernel-emulator-{}-{n}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether kernel `name`'s body in `kernels.cu` waits at `__syncthreads` (its threads then
/// run as fibers, each to its next barrier in turn; the others run one after another).
fn waits(name: &str) -> bool {
    gpu::kernel_text(name).contains("__syncthreads")
}

/// The buffers an optimizer launch's list (its first parameter, `UpdateList`) names, for the
/// emulated driver's checks: each parameter's values and state buffers (written), its
/// gradient and its staged numbers (read).
const LIST_ADDRESSES: &str = r#"
EMU_UNCHECKED static void emu_list_addresses(void* const* params,
                                             void (*visit)(void*, unsigned long long, unsigned long long, bool),
                                             void* ctx) {
    const UpdateList& l = *static_cast<const UpdateList*>(params[0]);
    if (l.count > LIST_MAX) return visit(ctx, 0, 0, false);
    for (unsigned int t = 0; t < l.count; ++t) {
        u64 bytes = l.n[t] * sizeof(float);
        visit(ctx, l.w[t], bytes, true);
        visit(ctx, l.g[t], bytes, false);
        if (l.s0[t]) visit(ctx, l.s0[t], bytes, true);
        if (l.s1[t]) visit(ctx, l.s1[t], bytes, true);
        if (l.staged[t]) visit(ctx, l.staged[t], sizeof l.nums[t], false);
    }
}
"#;

/// Whether kernel `name` takes an optimizer's list of buffers (`UpdateList`) first.
fn takes_list(name: &str) -> bool {
    gpu::kernel_text(name).contains(&format!(" void {name}(UpdateList "))
}

/// `kernels.cu` as the emulator compiles it: its kernels, then their table (name, caller,
/// whether it waits at barriers, parameter sizes, which are pointers, and for the optimizers
/// the buffers their lists name).
fn kernels_source() -> String {
    let mut source = String::from(gpu::SOURCE);
    source.push_str(LIST_ADDRESSES);
    source.push_str("\nconst EmuKernel emu_kernels[] = {\n");
    for name in KERNELS {
        let list = if takes_list(name) { ", emu_list_addresses" } else { "" };
        source.push_str(&format!(
            "    {{\"{name}\", [](void** p) {{ emu_invoke({name}, p); }}, {}, emu_count({name}), emu_sizes({name}), \
             emu_pointers({name}){list}}},\n",
            waits(name)
        ));
    }
    source.push_str("};\nconst std::size_t emu_kernel_count = sizeof emu_kernels / sizeof emu_kernels[0];\n");
    source
}

/// The C++ compiler: `$CXX`, else `g++`.
fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}

/// [`compile`] with the race check of emulator.hpp: `source` compiled with `-fsanitize=thread
/// -DEMU_RACECHECK` and `extra`, for GCC's instrumentation only, then linked with `link` and
/// without ThreadSanitizer's library (the emulator defines the functions the instrumentation
/// calls). GCC only: clang's instrumentation calls functions the emulator does not define.
fn compile_racecheck(dir: &Path, file: &str, source: &str, extra: &[&str], link: &[&str]) -> Result<PathBuf, String> {
    let cxx = cxx();
    let version = std::process::Command::new(&cxx).arg("--version").output();
    if version.is_ok_and(|v| String::from_utf8_lossy(&v.stdout).contains("clang")) {
        return Err(format!("the race check needs GCC's instrumentation, and {cxx} is clang"));
    }
    let mut flags = vec!["-c", "-fsanitize=thread", "-DEMU_RACECHECK"];
    if file.ends_with(".so") {
        flags.push("-fPIC");
    }
    flags.extend_from_slice(extra);
    let object = compile(dir, &format!("{file}.o"), source, false, &flags)?;
    let object = object.to_str().ok_or("a scratch path that is not UTF-8")?;
    compile(dir, file, "", true, &[&[object], link].concat())
}

/// Compiles `source` (C++20, behind `emulator.hpp` unless `bare`) into `dir/file`, a shared
/// library (an executable where `file` does not end in `.so`), with `extra` arguments, and
/// returns its path.
fn compile(dir: &Path, file: &str, source: &str, bare: bool, extra: &[&str]) -> Result<PathBuf, String> {
    let (header, cpp, lib) = (dir.join("emulator.hpp"), dir.join(format!("{file}.cpp")), dir.join(file));
    let write =
        |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()));
    write(&header, include_str!("emulator.hpp"))?;
    write(&cpp, source)?;
    let cxx = cxx();
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-w"])
        .args(if file.ends_with(".so") { &["-fPIC", "-shared"][..] } else { &[] })
        .args(if bare { vec![] } else { vec!["-include".as_ref(), header.as_os_str()] })
        .arg(&cpp)
        .args(extra)
        .arg("-o")
        .arg(&lib)
        .output()
        .map_err(|e| format!("running {cxx}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cxx} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(lib)
}

/// Loads the library at `path` for the life of the process (its symbols global with
/// `global`), or says why not.
fn load(path: &Path, global: bool) -> Result<*mut c_void, String> {
    let name = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let flags = libc::RTLD_NOW | if global { libc::RTLD_GLOBAL } else { libc::RTLD_LOCAL };
    // SAFETY: a library just built from the emulator's sources, whose initialisers only set up
    // tables; it is never unloaded.
    let handle = unsafe { libc::dlopen(name.as_ptr(), flags) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message or null.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() {
            "unknown".into()
        } else {
            // SAFETY: checked for null above.
            unsafe { std::ffi::CStr::from_ptr(why) }.to_string_lossy().into_owned()
        };
        return Err(format!("loading {}: {why}", path.display()));
    }
    Ok(handle)
}

/// Builds and loads the kernel emulator alone; returns its entry points, `emu_race` among
/// them with `racecheck`: that build ([`compile_racecheck`]) checks every launch for races.
#[cfg(test)]
pub(crate) fn kernel_emulator(racecheck: bool) -> Result<KernelEmulator, String> {
    let scratch = Scratch::new()?;
    let lib = if racecheck {
        compile_racecheck(&scratch.0, "libkernels-racecheck.so", &kernels_source(), &["-fvisibility=hidden"], &[])?
    } else {
        compile(&scratch.0, "libkernels.so", &kernels_source(), false, &[])?
    };
    let handle = load(&lib, false)?;
    let symbol = |name: &std::ffi::CStr| {
        // SAFETY: `handle` is a loaded library; the name is NUL-terminated.
        let found = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if found.is_null() {
            Err(format!("{name:?} not found in the emulator"))
        } else {
            Ok(found)
        }
    };
    let race = if racecheck { Some(symbol(c"emu_race")?) } else { None };
    Ok(KernelEmulator { launch: symbol(c"emu_launch_in_order")?, param_sizes: symbol(c"emu_param_sizes")?, race })
}

/// The entry points of a loaded kernel emulator (see emulator.hpp): `emu_launch_in_order`,
/// `emu_param_sizes`, and `emu_race` in a race-checked build.
#[cfg(test)]
pub(crate) struct KernelEmulator {
    pub(crate) launch: *mut c_void,
    pub(crate) param_sizes: *mut c_void,
    pub(crate) race: Option<*mut c_void>,
}

/// Makes `cuda:0` an emulated GPU on the CPU, for tests of the CUDA backend on machines
/// without one: builds a CUDA driver (`libcuda.so`) and cuBLAS (`libcublas.so`) from
/// `emulated_driver.cpp` and the kernel emulator with the C++ compiler (`$CXX`, else `g++`),
/// and loads them in place of NVIDIA's, so that the backend's own code (allocator, launch
/// arguments, cuBLAS operands, graph capture) runs unchanged over kernels run on the CPU.
/// NVRTC is still NVIDIA's (the kernels are compiled to PTX as on a GPU).
///
/// Call it first thing in a test process, before any GPU is asked for: afterwards the real
/// driver may already be loaded, and this is an error. Slow (each kernel thread runs on the
/// CPU), and not for a machine whose real GPU is to be used. `SINAPSE_EMULATOR_ORDER=descending`
/// runs each launch's blocks and threads in descending order; `SINAPSE_EMULATOR_RACECHECK=1`
/// checks launches for races (every launch of up to 65,536 threads, the first two of each
/// larger kernel and shape): a launch in which a thread touches a word, one of the two
/// accesses a write, that another thread wrote or was among the last two to read, with no
/// atomic pair or barrier between them, fails.
pub fn install() -> Result<(), String> {
    install_driver()?;
    INSTALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Set once [`install`] has made `cuda:0` the emulated GPU.
static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The emulated driver's `sinapse_emulated_in_use`, once [`install`] has loaded it.
static IN_USE: std::sync::OnceLock<unsafe extern "C" fn(u64, usize) -> std::ffi::c_int> = std::sync::OnceLock::new();

/// Tells the emulated driver, where it is installed, that the block at `ptr` now holds a
/// tensor of `bytes`: a kernel (through a pointer argument or an optimizer's list of
/// buffers), copy or product that then writes past that inside the block (the allocator
/// rounds blocks up) fails; said during a capture, it is recorded in the graph and said
/// again at that point of each replay. Nothing on a real GPU.
pub(crate) fn in_use(ptr: u64, bytes: usize) {
    if let Some(mark) = IN_USE.get() {
        // SAFETY: the driver's function, which looks `ptr` up among its allocations (under
        // its lock) and writes only past `bytes` of one that holds more.
        unsafe { mark(ptr, bytes) };
    }
}

/// Whether `cuda:0` is the emulated GPU of [`install`].
pub(crate) fn installed() -> bool {
    INSTALLED.load(std::sync::atomic::Ordering::SeqCst)
}

/// [`install`]'s work.
fn install_driver() -> Result<(), String> {
    if gpu::opened(0).is_some() {
        return Err("a GPU was already opened in this process".into());
    }
    let scratch = Scratch::new()?;
    let dir = &scratch.0;
    let source = format!("{}\n{}", kernels_source(), include_str!("emulated_driver.cpp"));
    // Only the driver's entry points (and the emulator's, emu_launch_in_order and emu_race) are
    // exported: the kernels' names are not.
    let cuda = if std::env::var("SINAPSE_EMULATOR_RACECHECK").is_ok_and(|v| v == "1") {
        compile_racecheck(dir, "libcuda.so", &source, &["-fvisibility=hidden"], &["-Wl,-soname,libcuda.so"])?
    } else {
        compile(dir, "libcuda.so", &source, false, &["-fvisibility=hidden", "-Wl,-soname,libcuda.so"])?
    };
    // Empty: its symbols are found in the library it needs, the driver above.
    let dir_arg = format!("-L{}", dir.display());
    let cublas = compile(
        dir,
        "libcublas.so",
        "",
        true,
        &["-Wl,-soname,libcublas.so", "-Wl,--no-as-needed", &dir_arg, "-lcuda"],
    )?;
    // Loaded by path now; cudarc's later loads by name (libcuda.so, libcublas.so) find these,
    // already loaded under those names (so the files can go with the folder).
    load(&cuda, true)?;
    load(&cublas, true)?;
    // SAFETY: only looks for the library, now loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("the emulated driver was built but cudarc does not find it".into());
    }
    // The libcuda.so a load by name finds is this one, not NVIDIA's.
    // SAFETY: RTLD_NOLOAD only looks among loaded libraries; the names are NUL-terminated.
    let found = unsafe { libc::dlopen(c"libcuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    // SAFETY: a handle from dlopen (checked for null first).
    if found.is_null() || unsafe { libc::dlsym(found, c"sinapse_emulated_driver".as_ptr()) }.is_null() {
        return Err("libcuda.so loads as NVIDIA's driver, not the emulated one".into());
    }
    // SAFETY: a handle from dlopen; the name is NUL-terminated.
    let mark = unsafe { libc::dlsym(found, c"sinapse_emulated_in_use".as_ptr()) };
    if mark.is_null() {
        return Err("the emulated driver lacks sinapse_emulated_in_use".into());
    }
    // SAFETY: `sinapse_emulated_in_use` in emulated_driver.cpp has this signature.
    let mark = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u64, usize) -> std::ffi::c_int>(mark) };
    let _ = IN_USE.set(mark);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program `name` built from `source` behind the emulator's header in `scratch`, with
    /// the race check if `racecheck`; `None` (after a line on stderr) without a C++ compiler, a
    /// failure when `SINAPSE_REQUIRE_EMULATOR=1`.
    fn test_program(scratch: &Scratch, name: &str, source: &str, racecheck: bool) -> Option<PathBuf> {
        let built = if racecheck {
            compile_racecheck(&scratch.0, name, source, &[], &[])
        } else {
            compile(&scratch.0, name, source, false, &[])
        };
        match built {
            Ok(exe) => Some(exe),
            Err(why) => {
                let required = std::env::var("SINAPSE_REQUIRE_EMULATOR").is_ok_and(|v| v == "1");
                assert!(!required, "SINAPSE_REQUIRE_EMULATOR=1 but {name} did not build: {why}");
                eprintln!("skipped: no C++ compiler ({why})");
                None
            }
        }
    }

    /// Kernels that wait at a barrier, one that should and does not, and a program that runs
    /// one by name over a block of 8 threads (in descending order if asked) and prints what it
    /// wrote.
    const PROGRAM: &str = r#"
extern "C" __global__ void uniform(float* out) {
    out[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[8 + threadIdx.x] = out[(threadIdx.x + 1) % blockDim.x];
}
// The same without the barrier: what a thread reads of its neighbour's write depends on
// which of the two ran first.
extern "C" __global__ void racy(float* out) {
    out[threadIdx.x] = (float)threadIdx.x;
    out[8 + threadIdx.x] = out[(threadIdx.x + 1) % blockDim.x];
}
// Threads 0 to 3 write shared memory, all 8 read it.
extern "C" __global__ void unwritten(float* out) {
    __shared__ float part[8];
    if (threadIdx.x < 4) part[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = part[threadIdx.x];
}
// Thread 3 leaves before the barrier the others wait at.
extern "C" __global__ void partial(float* out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
// Thread 0 goes about 20 KB past the end of its fiber's 128 KB stack.
__device__ float deep(int n) {
    volatile char frame[1024];
    frame[0] = (char)n;
    return n == 0 ? 0.0f : deep(n - 1) + (float)frame[0];
}
extern "C" __global__ void overflow(float* out) {
    __syncthreads();
    out[threadIdx.x] = threadIdx.x == 0 ? deep(150) : 0.0f;
}
extern "C" __global__ void atomic_sum(float* out) { atomicAdd(&out[0], 1.0f); }
extern "C" __global__ void plain_sum(float* out) { out[0] += 1.0f; }
// Every block uses its __shared__ array, with a barrier between writes and reads (the
// emulator's one static array serves every block in turn).
extern "C" __global__ void shared_per_block(float* out) {
    __shared__ float part[8];
    part[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[blockIdx.x * 8 + threadIdx.x] = part[7 - threadIdx.x];
}
// A shared word overwritten while another thread of the block may still read it.
extern "C" __global__ void shared_overwritten(float* out) {
    __shared__ float part[8];
    part[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = part[7 - threadIdx.x];
    part[threadIdx.x] = 0.0f;
}
#define ENTRY(k, b) {#k, [](void** p) { emu_invoke(k, p); }, b, emu_count(k), emu_sizes(k), emu_pointers(k)}
const EmuKernel emu_kernels[] = {ENTRY(uniform, true),          ENTRY(racy, false),       ENTRY(unwritten, true),
                                 ENTRY(partial, true),          ENTRY(overflow, true),    ENTRY(atomic_sum, false),
                                 ENTRY(plain_sum, false),       ENTRY(shared_per_block, true),
                                 ENTRY(shared_overwritten, true)};
const std::size_t emu_kernel_count = 9;
// Arguments: kernel, order (ascending or descending), blocks (1), threads a block (8). Prints
// the first 16 floats written, or with the race check the launch's status and report.
int main(int argc, char** argv) {
    float out[64];
    for (float& v : out) v = -1.0f;
    void* arg = out;
    void* params[] = {&arg};
    if (argc < 2) return 2;
    int descending = argc > 2 && strcmp(argv[2], "descending") == 0;
    unsigned int grid = argc > 3 ? atoi(argv[3]) : 1, block = argc > 4 ? atoi(argv[4]) : 8;
    int status = emu_launch_in_order(argv[1], grid, block, params, descending);
#ifdef EMU_RACECHECK
    printf("%d %s", status, status == 2 ? emu_race() : "");
#else
    if (status != 0) return 2;
    for (int i = 0; i < 16; ++i) printf("%g ", out[i]);
#endif
    return 0;
}
"#;

    /// A block whose threads all reach a barrier runs, in either order to the same result; a
    /// missing barrier shows as results that differ between the orders; shared memory reads
    /// as NaN until written; a barrier that only some threads reach stops the emulator (CUDA
    /// leaves it undefined, and a GPU may hang); a fiber that overruns its stack faults at the
    /// page below it instead of writing over the memory there. Each in a child process.
    #[test]
    fn the_emulator_shows_missing_barriers_unwritten_shared_memory_and_stack_overruns() {
        use std::os::unix::process::ExitStatusExt;
        let scratch = Scratch::new().expect("a scratch folder");
        let Some(exe) = test_program(&scratch, "barriers", PROGRAM, false) else { return };
        let run_in = |kernel: &str, order: &str| {
            std::process::Command::new(&exe).args([kernel, order]).output().expect("the program runs")
        };
        let run = |kernel: &str| run_in(kernel, "ascending");
        let printed = |kernel: &str, order: &str| {
            let out = run_in(kernel, order);
            assert!(out.status.success(), "{kernel}, {order}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        for order in ["ascending", "descending"] {
            let want = "0 1 2 3 4 5 6 7 1 2 3 4 5 6 7 0 ";
            assert_eq!(printed("uniform", order), want, "each thread read its neighbour's write ({order})");
        }
        // Without the barrier, each thread but the last reads its neighbour's value before it
        // is written in ascending order, and each but the last after it in descending order.
        assert_eq!(printed("racy", "ascending"), "0 1 2 3 4 5 6 7 -1 -1 -1 -1 -1 -1 -1 0 ");
        assert_eq!(printed("racy", "descending"), "0 1 2 3 4 5 6 7 1 2 3 4 5 6 7 -1 ");
        // Shared memory no thread wrote reads as NaN (all bits set), not as a tidy zero.
        assert_eq!(printed("unwritten", "ascending"), "1 1 1 1 -nan -nan -nan -nan -1 -1 -1 -1 -1 -1 -1 -1 ");
        let out = run("partial");
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "partial: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("in partial, block 0: __syncthreads reached by only some threads"), "{said}");
        let out = run("overflow");
        assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "overflow: {out:?}");
    }

    /// The race check (emulator.hpp, built as the tests build it: instrumented by GCC,
    /// ThreadSanitizer's library not linked) finds a missing barrier, a missing atomic within
    /// a block and across blocks, and a shared word overwritten before the others' reads;
    /// barriers, atomics and each block's own shared arrays pass. Each in a child process.
    #[test]
    fn the_race_check_finds_missing_atomics_and_barriers() {
        let scratch = Scratch::new().expect("a scratch folder");
        let Some(exe) = test_program(&scratch, "races", PROGRAM, true) else { return };
        let run = |kernel: &str, grid: u32, block: u32| {
            let out = std::process::Command::new(&exe)
                .args([kernel, "ascending", &grid.to_string(), &block.to_string()])
                .output()
                .expect("the program runs");
            assert!(out.status.success(), "{kernel}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        for (kernel, grid, block) in
            [("uniform", 1, 8), ("atomic_sum", 4, 8), ("plain_sum", 1, 1), ("shared_per_block", 3, 8)]
        {
            assert_eq!(run(kernel, grid, block), "0 ", "{kernel} over {grid} x {block}");
        }
        let races = [
            ("racy", 1, 8, "thread 1 of block 0 writes the global word at 0x", "that thread 0 of block 0 read"),
            ("plain_sum", 1, 2, "thread 1 of block 0 reads the global word at 0x", "that thread 0 of block 0 wrote"),
            ("plain_sum", 2, 1, "thread 0 of block 1 reads the global word at 0x", "that thread 0 of block 0 wrote"),
            (
                "shared_overwritten",
                1,
                8,
                "thread 4 of block 0 reads the shared word at 0x",
                "that thread 3 of block 0 wrote",
            ),
        ];
        for (kernel, grid, block, who, whom) in races {
            let said = run(kernel, grid, block);
            assert!(said.starts_with(&format!("2 {kernel}: {who}")), "{kernel} over {grid} x {block}: {said}");
            assert!(said.contains(whom), "{kernel} over {grid} x {block}: {said}");
        }
    }

    /// A kernel that writes one element into a driver allocation of 128 floats, at the index
    /// given, and says so.
    const PAST_THE_END: &str = r#"
extern "C" __global__ void write_at(float* out, unsigned long long i) { out[i] = 1.0f; }
const EmuKernel emu_kernels[] = {{"write_at", [](void** p) { emu_invoke(write_at, p); }, false, emu_count(write_at),
                                  emu_sizes(write_at), emu_pointers(write_at)}};
const std::size_t emu_kernel_count = 1;
"#;
    const PAST_THE_END_MAIN: &str = r#"
int main(int argc, char** argv) {
    CUdeviceptr p;
    if (argc < 2 || allocate(&p, 512) != EMU_SUCCESS) return 2;
    void* out = reinterpret_cast<void*>(p);
    unsigned long long i = strtoull(argv[1], nullptr, 10);
    void* params[] = {&out, &i};
    if (emu_launch("write_at", 1, 1, params) != 0) return 2;
    printf("wrote element %llu\n", i);
    return 0;
}
"#;

    /// A program of [`PAST_THE_END`]'s kernel, the emulated driver and `main`, built in
    /// `scratch`; returns a function that runs it with the arguments given.
    fn write_at_program(scratch: &Scratch, name: &str, main: &str) -> Option<impl Fn(&[&str]) -> std::process::Output> {
        let source = format!("{PAST_THE_END}\n{}\n{WRITE_AT_SETUP}\n{main}", include_str!("emulated_driver.cpp"));
        let exe = test_program(scratch, name, &source, false)?;
        Some(move |args: &[&str]| std::process::Command::new(&exe).args(args).output().expect("the program runs"))
    }

    /// The start the `write_at` programs share: the device's context made current, a 512-byte
    /// block at `*p` and the kernel in `*f`; false if any of it fails.
    const WRITE_AT_SETUP: &str = r#"
static bool write_at_setup(CUdeviceptr* p, void** f) {
    void* context;
    return cuDevicePrimaryCtxRetain(&context, 0) == EMU_SUCCESS && cuCtxSetCurrent(context) == EMU_SUCCESS &&
           cuMemAlloc_v2(p, 512) == EMU_SUCCESS && cuModuleGetFunction(f, nullptr, "write_at") == EMU_SUCCESS;
}
"#;

    /// That `run` with the index `last` prints status 0, and with the next index 719
    /// (CUDA_ERROR_LAUNCH_FAILED) after the line naming `write_at` and the `bytes`-byte
    /// tensor in its 512-byte block.
    fn last_passes_and_next_fails(run: impl Fn(&[&str]) -> std::process::Output, last: usize, bytes: usize) {
        let out = run(&[&last.to_string()]);
        assert!(out.status.success(), "the last element: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "the last element: {out:?}");
        let out = run(&[&(last + 1).to_string()]);
        assert!(out.status.success(), "one past the end: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "719\n", "CUDA_ERROR_LAUNCH_FAILED: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        let want = format!("emulated CUDA: write_at wrote past the end of the {bytes}-byte tensor at 0x");
        assert!(said.contains(&want) && said.contains(&format!(": byte {bytes} of its 512-byte block")), "{said}");
    }

    /// Launches `write_at` through the driver at the index given, on a tensor of 100 floats
    /// in a 512-byte block, and prints the launch's status.
    const PAST_THE_TENSOR_MAIN: &str = r#"
int main(int argc, char** argv) {
    CUdeviceptr p;
    void* f;
    if (argc < 2 || !write_at_setup(&p, &f) || sinapse_emulated_in_use(p, 400) != 0) return 2;
    void* out = reinterpret_cast<void*>(p);
    unsigned long long i = strtoull(argv[1], nullptr, 10);
    void* params[] = {&out, &i};
    printf("%d\n", cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, params, nullptr));
    return 0;
}
"#;

    /// A tensor of 100 floats in the allocator's 512-byte block: the kernel may write its last
    /// element, and a write to the next (inside the block, where no guard page is) fails the
    /// launch with a line naming the kernel.
    #[test]
    fn a_kernel_writing_past_its_tensor_inside_the_block_fails() {
        let scratch = Scratch::new().expect("a scratch folder");
        let Some(run) = write_at_program(&scratch, "past_the_tensor", PAST_THE_TENSOR_MAIN) else { return };
        last_passes_and_next_fails(run, 99, 400);
    }

    /// Captures `write_at` at the index given on a tensor of 10 floats handed out during the
    /// capture, then says that the block holds 100 floats (as the eager code's next tensor
    /// there might), replays the graph and prints the replay's status.
    const PAST_THE_TENSOR_IN_A_REPLAY_MAIN: &str = r#"
int main(int argc, char** argv) {
    CUdeviceptr p;
    void *f, *graph, *exec;
    if (argc < 2 || !write_at_setup(&p, &f) || cuStreamBeginCapture_v2(nullptr, 0) != EMU_SUCCESS ||
        sinapse_emulated_in_use(p, 40) != 0)
        return 2;
    void* out = reinterpret_cast<void*>(p);
    unsigned long long i = strtoull(argv[1], nullptr, 10);
    void* params[] = {&out, &i};
    if (cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, params, nullptr) != EMU_SUCCESS ||
        cuStreamEndCapture(nullptr, &graph) != EMU_SUCCESS || cuGraphInstantiateWithFlags(&exec, graph, 0) != EMU_SUCCESS ||
        sinapse_emulated_in_use(p, 400) != 0)
        return 2;
    printf("%d\n", cuGraphLaunch(exec, nullptr));
    return 0;
}
"#;

    /// A graph's replay gives each block the capture handed out its tensor's size again: a
    /// write past a tensor of 10 floats fails in the replay although the block held 100 floats
    /// just before it.
    #[test]
    fn a_replay_writing_past_a_tensor_it_allocated_fails() {
        let scratch = Scratch::new().expect("a scratch folder");
        let Some(run) = write_at_program(&scratch, "past_the_tensor_in_a_replay", PAST_THE_TENSOR_IN_A_REPLAY_MAIN)
        else {
            return;
        };
        last_passes_and_next_fails(run, 9, 40);
    }

    /// A block holding 100 floats before a capture, which the captured step writes at the
    /// first index given, then frees and hands out again for 10 floats, written at the second:
    /// prints the status of the graph's second replay (exits with 3 if its first fails).
    const REUSED_IN_A_CAPTURE_MAIN: &str = r#"
int main(int argc, char** argv) {
    CUdeviceptr p;
    void *f, *graph, *exec;
    if (argc < 3 || !write_at_setup(&p, &f) || sinapse_emulated_in_use(p, 400) != 0 ||
        cuStreamBeginCapture_v2(nullptr, 0) != EMU_SUCCESS)
        return 2;
    void* out = reinterpret_cast<void*>(p);
    unsigned long long early = strtoull(argv[1], nullptr, 10), late = strtoull(argv[2], nullptr, 10);
    void* first[] = {&out, &early};
    void* second[] = {&out, &late};
    if (cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, first, nullptr) != EMU_SUCCESS ||
        sinapse_emulated_in_use(p, 40) != 0 || cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, second, nullptr) != EMU_SUCCESS ||
        cuStreamEndCapture(nullptr, &graph) != EMU_SUCCESS || cuGraphInstantiateWithFlags(&exec, graph, 0) != EMU_SUCCESS ||
        cuGraphLaunch(exec, nullptr) != EMU_SUCCESS)
        return 3;
    printf("%d\n", cuGraphLaunch(exec, nullptr));
    return 0;
}
"#;

    /// A block from before a capture that the captured step writes, frees and takes again for
    /// a smaller tensor is checked in each replay against the earlier tensor first, then the
    /// later one: no false alarm for the early write, and a write past either still fails.
    #[test]
    fn a_replay_checks_a_block_reused_within_its_capture_against_each_tensor() {
        let scratch = Scratch::new().expect("a scratch folder");
        let Some(run) = write_at_program(&scratch, "reused_in_a_capture", REUSED_IN_A_CAPTURE_MAIN) else { return };
        let out = run(&["99", "9"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "99, 9: {out:?}");
        // Past either tensor: the graph's first replay fails.
        for (early, late, tensor) in [("99", "10", 40), ("100", "9", 400)] {
            let out = run(&[early, late]);
            assert_eq!(out.status.code(), Some(3), "{early}, {late}: {out:?}");
            let said = String::from_utf8_lossy(&out.stderr);
            let want = format!("write_at wrote past the end of the {tensor}-byte tensor at 0x");
            assert!(said.contains(&want), "{early}, {late}: {said}");
        }
    }

    /// Launches `sgd` through the driver on a list of one parameter of the length given, its
    /// values a tensor of 100 floats in a 512-byte block and its gradient 200 floats of 1,
    /// and prints the launch's status.
    const OPTIMIZER_LIST_MAIN: &str = r#"
int main(int argc, char** argv) {
    void* context;
    CUdeviceptr w, g;
    void* f;
    float ones[200];
    for (float& v : ones) v = 1.0f;
    if (argc < 2 || cuDevicePrimaryCtxRetain(&context, 0) != EMU_SUCCESS || cuCtxSetCurrent(context) != EMU_SUCCESS ||
        cuMemAlloc_v2(&w, 512) != EMU_SUCCESS || sinapse_emulated_in_use(w, 400) != 0 ||
        cuMemAlloc_v2(&g, 800) != EMU_SUCCESS || cuMemcpyHtoD_v2(g, ones, 800) != EMU_SUCCESS ||
        cuMemcpyHtoD_v2(w, ones, 400) != EMU_SUCCESS || cuModuleGetFunction(&f, nullptr, "sgd") != EMU_SUCCESS)
        return 2;
    UpdateList l{};
    l.count = 1, l.start[1] = 1, l.n[0] = strtoull(argv[1], nullptr, 10), l.w[0] = w, l.g[0] = g;
    l.nums[0][0] = 0.5f;
    float mu = 0.0f, wd = 0.0f, unused = 0.0f;
    int nesterov = 0;
    void* params[] = {&l, &mu, &wd, &unused, &unused, &nesterov};
    printf("%d\n", cuLaunchKernel(f, 1, 1, 1, 256, 1, 1, 0, nullptr, params, nullptr));
    return 0;
}
"#;

    /// The buffers an optimizer's list names are checked as pointer arguments are: updating
    /// the values' 100 floats passes, a 101st (inside the block) fails the launch naming the
    /// kernel, and a list reaching past the block's allocation is refused before it runs.
    #[test]
    fn an_optimizer_list_past_its_tensors_fails() {
        let scratch = Scratch::new().expect("a scratch folder");
        let source = format!("{}\n{}\n{OPTIMIZER_LIST_MAIN}", kernels_source(), include_str!("emulated_driver.cpp"));
        let Some(exe) = test_program(&scratch, "optimizer_list", &source, false) else { return };
        let run = |n: &str| std::process::Command::new(&exe).arg(n).output().expect("the program runs");
        let out = run("100");
        assert!(out.status.success(), "100 values: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "100 values: {out:?}");
        let out = run("101");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "719\n", "101 values: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        let want = "emulated CUDA: sgd wrote past the end of the 400-byte tensor at 0x";
        assert!(said.contains(want) && said.contains(": byte 400 of its 512-byte block"), "{said}");
        let out = run("200");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "200 values: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("emulated CUDA: sgd: the 800 bytes at 0x")
                && said.contains("its list names are in no allocation"),
            "{said}"
        );
    }

    /// The emulated driver's allocations end at an inaccessible page: the last element can be
    /// written, the one after it stops the process with a line naming the kernel.
    #[test]
    fn a_kernel_writing_past_an_allocation_stops_at_its_end() {
        use std::os::unix::process::ExitStatusExt;
        let scratch = Scratch::new().expect("a scratch folder");
        let Some(run) = write_at_program(&scratch, "past_the_end", PAST_THE_END_MAIN) else { return };
        let out = run(&["127"]);
        assert!(out.status.success(), "the last element: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "wrote element 127\n");
        let out = run(&["128"]);
        assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "one past the end: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("write_at reached 0 bytes past the end of the 512-byte allocation at 0x"), "{said}");
        assert!(out.stdout.is_empty(), "the write after the end returned: {out:?}");
    }
}
