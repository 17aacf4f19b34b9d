#!/usr/bin/env bash
# Data-parallel scaling on this machine: the MNIST MLP spec trained by one process and by
# `mpirun -np 2 ... --distributed`, interleaved, PAIRS times; prints each run's median
# samples/s over epochs 2..15 (from history.csv) and the ratio, 2 ranks / 1 process.
# Needs the binary built with MPI: cargo build --release -p sinapse-cli --features mpi
#
#     bash bench/distributed_scaling.sh [PAIRS]      # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-5}
bin=target/release/sinapse
spec=${SPEC:-models/mnist_mlp.toml}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Median samples/s of the epochs after the first.
median() { tail -n +3 "$1/history.csv" | cut -d, -f8 | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
mpi=(mpirun -np 2)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
echo "pair  1 process  2 ranks  ratio"
ratios=()
for i in $(seq "$pairs"); do
    rm -rf "$out/one" "$out/two"
    "$bin" train "$spec" --quiet --out "$out/one" >/dev/null
    "${mpi[@]}" "$bin" train "$spec" --quiet --distributed --out "$out/two" >/dev/null
    one=$(median "$out/one"); two=$(median "$out/two")
    ratio=$(awk -v a="$two" -v b="$one" 'BEGIN {printf "%.2f", a / b}')
    ratios+=("$ratio")
    printf '%4d  %9s  %7s  %5s\n' "$i" "$one" "$two" "$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print "median ratio, 2 ranks / 1 process: " v[int((NR+1)/2)] " (min " v[1] ", max " v[NR] ")"}'
