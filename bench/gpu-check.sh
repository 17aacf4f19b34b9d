#!/usr/bin/env bash
# The GPU check: run on a machine with an NVIDIA GPU, from the repository root, after
# bench/gpu-prepare.sh has built gpu-run/ (on any machine with cargo; the GPU machine needs
# no Rust). It runs, each step bounded in time:
#   1. the library's unit tests (the NVRTC compile of every kernel among them);
#   2. the device op suite with CUDA required (every op and optimizer against the CPU, and
#      NCCL's all-reduce and broadcast on one rank, with PyTorch's libnccl when it has one);
#   3. the MNIST MLP, CNN, batch-normalised CNN and LSTM specs trained with --device cuda
#      (test accuracy), and the MLP with its step in a CUDA graph;
#   4. the benchmarks on the GPU (mlp-large in fp32 and TF32 too; mlp and cnn also with the
#      training step in a CUDA graph, infer with the forward pass in one), Sinapse and
#      PyTorch (python3 with CUDA) interleaved;
#   5. the kernel profiles of the mlp and cnn steps (each launch's GPU time), both sides, and
#      the launch floor (bench/launch_floor.cu: empty kernels launched and waited for, where
#      nvcc is found);
#   6. lstm's benchmark, eager and graphed (no target of its own: last, where the budget
#      runs out first);
# and prints one table last. Logs go to $OUT (or gpu-run/out/), and the table too, a row at a
# time (table.txt), so a check stopped part way still leaves the rows it made.
#
#     bash bench/gpu-check.sh [--quick]      # --quick: 1 run per benchmark instead of 3, and
#                                            # 540 s in all (CHECK_BUDGET_S sets it; 0: none)
#
# CHECK_STEP_S caps each step's time limit (default: none beyond the steps' own), so that one
# step that hangs cannot spend a short budget alone.
#
# With a budget, each step's time limit is cut to what is left of it, and the steps it does not
# reach are rows that say so: the table comes out before a caller's limit (10 minutes a
# command on the lent GPU machine) stops the script.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x gpu-run/sinapse ] || cd ..   # also when run as gpu-run/check.sh
bin=gpu-run
logs="${OUT:-gpu-run/out}"
mkdir -p "$logs"
: >"$logs/table.txt"
runs=3
budget=${CHECK_BUDGET_S:-0}
[ "${1:-}" = "--quick" ] && { runs=1; budget=${CHECK_BUDGET_S:-540}; }
case $budget in
    '' | *[!0-9]*) echo "CHECK_BUDGET_S must be a whole number of seconds, not '$budget'" >&2; exit 2 ;;
esac
step_cap=${CHECK_STEP_S:-0}
case $step_cap in
    '' | *[!0-9]*) echo "CHECK_STEP_S must be a whole number of seconds, not '$step_cap'" >&2; exit 2 ;;
esac
rows=()

row() {
    local line
    printf -v line '%-34s %s' "$1" "$2"
    rows+=("$line")
    echo "$line" >>"$logs/table.txt"
}

# failed LOG: what a failed step's row says: that it did not run (out of budget), or FAILED
# and the log's last line.
failed() {
    if grep -q '^not run: ' "$1"; then head -n 1 "$1"; else echo "FAILED: $(tail -n 1 "$1")"; fi
}

# step NAME TIMEOUT COMMAND...: runs it, logs it, returns its status (124 when it ran out of
# time, or was not started because the budget is spent).
step() {
    local name=$1 limit=$2
    shift 2
    [ "$step_cap" -gt 0 ] && [ "$step_cap" -lt "$limit" ] && limit=$step_cap
    if [ "$budget" -gt 0 ]; then
        local left=$((budget - SECONDS))
        if [ "$left" -lt 15 ]; then
            echo "not run: the check's $budget s were spent" >"$logs/$name.log"
            echo "== $name: $(cat "$logs/$name.log")"
            return 124
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "== $name: $*"
    timeout -k 10 "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    tail -n 3 "$logs/$name.log"
    return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$logs/gpu.txt"
row "GPU" "$(head -n 1 "$logs/gpu.txt")"

if SINAPSE_REQUIRE_NVRTC=1 step unit 300 "$bin/unit" --test-threads 2; then
    row "unit tests (NVRTC compile incl.)" "$(grep -o '[0-9]* passed' "$logs/unit.log" | tail -n 1)"
else
    row "unit tests (NVRTC compile incl.)" "$(failed "$logs/unit.log") (see $logs/unit.log)"
fi

# NCCL (gradient all-reduce between GPUs) is loaded at run time: PyTorch's CUDA wheels bring
# it as the nvidia-nccl package.
# The wheel has only libnccl.so.2, a name cudarc does not look for (it tries libnccl.so and
# libnccl.so.<CUDA major>, ...): a libnccl.so link to it goes on the library path.
nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
if [ -n "$nccl_lib" ] && [ -e "$nccl_lib/libnccl.so.2" ]; then
    mkdir -p "$logs/nccl-link"
    link_dir=$(cd "$logs/nccl-link" && pwd)
    ln -sf "$nccl_lib/libnccl.so.2" "$link_dir/libnccl.so"
    export LD_LIBRARY_PATH="$link_dir:$nccl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export SINAPSE_REQUIRE_NCCL=1   # found: not running it is a failure
fi
if SINAPSE_REQUIRE_CUDA=1 step devices 300 "$bin/devices"; then
    row "device op suite on cuda" "$(grep 'all .* passed' "$logs/devices.log")"
else
    row "device op suite on cuda" "$(failed "$logs/devices.log") (see $logs/devices.log)"
fi
if grep -q "^FAILED NCCL" "$logs/devices.log"; then
    row "NCCL, one rank" "FAILED: $(grep -m1 '^FAILED NCCL' "$logs/devices.log")"
elif grep -q "NCCL not covered" "$logs/devices.log"; then
    row "NCCL, one rank" "not run: $(grep -m1 'NCCL not covered' "$logs/devices.log")"
elif grep -q "all .* comparisons passed" "$logs/devices.log"; then
    row "NCCL, one rank" "all-reduce, broadcast, gradients: passed (in the suite's count)"
elif grep -q '^not run: ' "$logs/devices.log"; then
    row "NCCL, one rank" "not run: the device suite did not run"
else
    row "NCCL, one rank" "unknown: the suite did not finish (see $logs/devices.log)"
fi

for spec in mnist_mlp mnist_cnn mnist_cnn_bn mnist_lstm; do
    if step "train-$spec" 300 "$bin/sinapse" train "models/$spec.toml" --device cuda --out "$logs/model-$spec"; then
        row "train $spec --device cuda" "$(grep 'test accuracy' "$logs/train-$spec.log" | tail -n 1)"
    else
        row "train $spec --device cuda" "$(failed "$logs/train-$spec.log")"
    fi
done
# The same MLP with its training step in a CUDA graph: the same accuracy bar.
if step "train-mnist_mlp-graph" 300 "$bin/sinapse" train models/mnist_mlp.toml --device cuda --cuda-graph \
    --out "$logs/model-mnist_mlp-graph"; then
    row "train mnist_mlp --cuda-graph" "$(grep 'test accuracy' "$logs/train-mnist_mlp-graph.log" | tail -n 1); \
$(grep -m1 -o 'cuda_graph: [a-z ]*' "$logs/train-mnist_mlp-graph.log")"
else
    row "train mnist_mlp --cuda-graph" "$(failed "$logs/train-mnist_mlp-graph.log")"
fi

# Benchmarks: Sinapse and PyTorch on the same card, one after the other, per benchmark.
# result NAME LOG: the benchmark's last line, its peak device memory and its launches per
# training step (Sinapse's), or why it failed.
result() {
    if grep -qE "^$1: " "$2"; then
        local launches
        launches=$(grep -m1 -o 'launches per training step: [^(]*host copies' "$2")
        echo "$(grep -E "^$1: " "$2" | tail -n 1 | sed "s/^$1: //"); $(grep 'peak device' "$2")${launches:+; $launches}"
    else
        failed "$2"
    fi
}
for name in mlp cnn infer; do
    step "bench-$name-sinapse" 300 "$bin/sinapse" bench "$name" --device cuda --runs "$runs"
    step "bench-$name-torch" 300 python3 bench/pytorch_bench.py "$name" --device cuda --runs "$runs"
    row "bench $name: sinapse" "$(result "$name" "$logs/bench-$name-sinapse.log")"
    row "bench $name: pytorch eager" "$(result "$name" "$logs/bench-$name-torch.log")"
done
# The training step captured into one CUDA graph and replayed, on both sides (the issue's
# targets for mlp and cnn are PyTorch's graphed figures); for infer, the forward pass too.
for name in mlp cnn infer; do
    step "bench-$name-graph-sinapse" 300 "$bin/sinapse" bench "$name" --device cuda --cuda-graph --runs "$runs"
    step "bench-$name-graph-torch" 300 python3 bench/pytorch_bench.py "$name" --device cuda --cuda-graph --runs "$runs"
    graph_note=$(grep -m1 '^cuda_graph:' "$logs/bench-$name-graph-sinapse.log" | cut -c1-60)
    row "bench $name graph: sinapse" "$(result "$name" "$logs/bench-$name-graph-sinapse.log") [$graph_note]"
    row "bench $name graph: pytorch" "$(result "$name" "$logs/bench-$name-graph-torch.log")"
done
# mlp-large (784-4096-4096-10, batch 1024): the matrix product's speed, in fp32 and TF32.
for mode in fp32 tf32; do
    flag=(); [ "$mode" = tf32 ] && flag=(--tf32)
    step "bench-mlp-large-$mode-sinapse" 300 "$bin/sinapse" bench mlp-large --device cuda --runs "$runs" ${flag[@]+"${flag[@]}"}
    step "bench-mlp-large-$mode-torch" 300 python3 bench/pytorch_bench.py mlp-large --device cuda --runs "$runs" ${flag[@]+"${flag[@]}"}
    row "bench mlp-large $mode: sinapse" "$(result mlp-large "$logs/bench-mlp-large-$mode-sinapse.log")"
    row "bench mlp-large $mode: pytorch" "$(result mlp-large "$logs/bench-mlp-large-$mode-torch.log")"
done

# Where a step's GPU time goes: each kernel and cuBLAS product of 20 eager steps timed alone
# (Sinapse: CUDA events after a spin kernel; PyTorch: torch.profiler), for sessions without a
# GPU to work from; the whole lists are in the logs, and the rows have the totals and the
# longest.
# profiled LOG: the profile's total and its longest kernel, or why there is none.
profiled() {
    if grep -q '^kernel profile total: ' "$1"; then
        local top
        top=$(grep -A1 -E '^ +us +share' "$1" | tail -n 1 | grep -vE '^ +us +share' |
            sed -E 's/^ *([0-9.]+) +([0-9.]+%) +[0-9.]+ +/\1 us (\2): /')
        echo "$(grep '^kernel profile total: ' "$1" | sed 's/^kernel profile total: //'); longest: ${top:-none}"
    else
        failed "$1"
    fi
}
for name in mlp cnn; do
    step "profile-$name-sinapse" 120 "$bin/sinapse" bench "$name" --device cuda --runs 1 --epochs 1 --profile-kernels 20
    step "profile-$name-torch" 120 python3 bench/pytorch_bench.py "$name" --device cuda --runs 1 --epochs 1 \
        --profile-kernels 20
    row "kernel profile $name: sinapse" "$(profiled "$logs/profile-$name-sinapse.log")"
    row "kernel profile $name: pytorch" "$(profiled "$logs/profile-$name-torch.log")"
done
# The floor under batch-1 latency on this machine: empty kernels launched and waited for,
# eagerly and as one graph (where nvcc is found; the GPU machine's image has it).
if command -v nvcc >/dev/null; then
    if step launch-floor 120 bash -c 'nvcc -O2 -arch=sm_90 -o "$1" bench/launch_floor.cu && "$1"' _ "$logs/launch_floor"; then
        row "launch floor, 3 empty kernels" "$(grep '^3 empty' "$logs/launch-floor.log" | sed 's/^3 empty kernels: //')"
    else
        row "launch floor, 3 empty kernels" "$(failed "$logs/launch-floor.log")"
    fi
else
    row "launch floor, 3 empty kernels" "not run: no nvcc here"
fi
# lstm last (no target of the CUDA issue): eager, then its step in a graph.
for graph in "" --cuda-graph; do
    tag=${graph:+-graph}
    step "bench-lstm$tag-sinapse" 300 "$bin/sinapse" bench lstm --device cuda $graph --runs "$runs"
    step "bench-lstm$tag-torch" 300 python3 bench/pytorch_bench.py lstm --device cuda $graph --runs "$runs"
    note=$(grep -m1 '^cuda_graph:' "$logs/bench-lstm$tag-sinapse.log" | cut -c1-60)
    row "bench lstm${graph:+ graph}: sinapse" "$(result lstm "$logs/bench-lstm$tag-sinapse.log")${graph:+ [$note]}"
    row "bench lstm${graph:+ graph}: pytorch" "$(result lstm "$logs/bench-lstm$tag-torch.log")"
done

echo
echo "== GPU check (logs in $logs)"
printf '%s\n' "${rows[@]}"
