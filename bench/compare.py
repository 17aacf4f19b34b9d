"""Sinapse vs PyTorch, interleaved: A B B A A B ... on the same machine, in one run.

    python3 bench/compare.py [mlp cnn lstm infer] [--pairs 5] [--sinapse target/release/sinapse]
    python3 bench/compare.py mlp --pairs 7 --against OLD_SINAPSE_BINARY
    python3 bench/compare.py --isa avx2|baseline [NAME ...]

For each benchmark named (all four when none is), runs `sinapse bench NAME --runs 1` and
`python3 bench/pytorch_bench.py NAME --runs 1` alternately (which of the two runs first in a
pair alternates too: the first of a back-to-back pair ran slower), reads the figures each
prints, and prints every pair's ratio and the median ratio (Sinapse / PyTorch: above 1 means Sinapse is
faster; for batch-1 latency the ratio is PyTorch's time over Sinapse's, so above 1 is faster
too), and the peak resident memory of both processes. Build first with
`cargo build --release`; run with a Python that has torch installed. With `--against`, the
peer is another Sinapse binary (an A/B of two builds; the ratio is new / old), and no torch
is needed.

`--isa avx2` runs both sides with their CPU kernels capped to AVX2 and FMA, as on a CPU
without AVX-512: Sinapse through `SINAPSE_CPU_CAPABILITY=avx2`, PyTorch through
`ATEN_CPU_CAPABILITY=avx2` with MKL's (`MKL_ENABLE_INSTRUCTIONS=AVX2`) and oneDNN's
(`ONEDNN_MAX_CPU_ISA=AVX2`) caps. `--isa baseline` runs both without AVX, as on an x86-64
CPU without AVX2 (or a virtual machine's generic CPU model): Sinapse through
`SINAPSE_CPU_CAPABILITY=baseline` (SSE2, part of every x86-64 CPU), PyTorch through
`ATEN_CPU_CAPABILITY=default`, `MKL_CBWR=COMPATIBLE` (MKL's SSE2 code path) and
`ONEDNN_MAX_CPU_ISA=SSE41` (oneDNN's lowest cap, so its kernels keep SSE4.1). MKL's own cap
`MKL_ENABLE_INSTRUCTIONS=SSE4_2` held on an Intel Xeon (PyTorch's 1024x784x256 product fell
to 34 GFLOP/s) but not on an AMD EPYC (Zen 4), where that product ran at 141-177 GFLOP/s
under it, its AVX speed, and at 44 under `MKL_CBWR=COMPATIBLE`. That path is SSE2, as
Sinapse's is under the cap; a real CPU without AVX2 would let MKL run SSE4.2 (or AVX) code.
Whether `MKL_ENABLE_INSTRUCTIONS=AVX2` holds on AMD CPUs was not measured (`MKL_CBWR=AVX2`
does not: MKL_VERBOSE reports `CNR:AUTO` under it there), so on them `--isa avx2` caps
ATen's and oneDNN's kernels for certain and MKL's perhaps.
Each side's instruction set, as it reports it, is printed with the first pair.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

NAMES = ["mlp", "cnn", "lstm", "infer"]
TRAINING = re.compile(r"^(\w[\w-]*): (\d+) samples/s, test accuracy ([0-9.]+)$")
INFER = re.compile(r"^infer: batch1 ([0-9.]+) us, batch1024 (\d+) samples/s$")
MEMORY = re.compile(r"^peak resident memory: ([0-9.]+) MiB$", re.M)


ISA = re.compile(r"^(?:vector instructions|cpu capability): (\S+)$", re.M)
# The environment each side runs in under `--isa`.
CAPS = {"avx2": ({"SINAPSE_CPU_CAPABILITY": "avx2"},
                 {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
        "baseline": ({"SINAPSE_CPU_CAPABILITY": "baseline"},
                     {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                      "ONEDNN_MAX_CPU_ISA": "SSE41"})}


def figures(cmd, name, env, label, shown=set()):
    """(figure a, figure b, peak MiB): samples/s and accuracy, or latency us and samples/s.
    Prints the instruction set the program reports, the first time for each `label` (the
    set `shown` is kept across calls on purpose)."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, **env)).stdout
    isa = ISA.search(out)
    if isa and label not in shown:
        shown.add(label)
        print(f"{label}: {isa.group(0)}", flush=True)
    m = (INFER if name == "infer" else TRAINING).match(out.strip().splitlines()[-1])
    mem = MEMORY.search(out)
    if not m or not mem:
        sys.exit(f"unexpected output of {' '.join(cmd)}:\n{out}")
    return float(m.group(1 if name == "infer" else 2)), float(m.group(2 if name == "infer" else 3)), float(mem.group(1))


def summary(label, ratios):
    return (f"{label} {statistics.median(ratios):.3f} over {len(ratios)} pairs "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def compare(name, args, here):
    ours = [args.sinapse, "bench", name, "--runs", "1"]
    if args.against:
        theirs = [args.against, "bench", name, "--runs", "1"]
        peer = "other"
    else:
        theirs = [sys.executable, os.path.join(here, "pytorch_bench.py"), name, "--runs", "1"]
        peer = "pytorch"
    ours_env, theirs_env = CAPS[args.isa] if args.isa else ({}, {})
    if args.against:
        theirs_env = ours_env
    first, second, memory = [], [], []
    for i in range(args.pairs):
        # Which program runs first alternates: run back to back, the first of two identical
        # binaries measured about 7% slower than the second (an A/B of one build against
        # itself), and a fixed order would hand that to one side.
        if i % 2 == 0:
            a1, a2, am = figures(ours, name, ours_env, "sinapse")
            b1, b2, bm = figures(theirs, name, theirs_env, peer)
        else:
            b1, b2, bm = figures(theirs, name, theirs_env, peer)
            a1, a2, am = figures(ours, name, ours_env, "sinapse")
        memory.append(am / bm)
        if name == "infer":
            first.append(b1 / a1)
            second.append(a2 / b2)
            print(f"pair {i + 1}: sinapse batch1 {a1:.1f} us, batch1024 {a2:.0f}/s, {am:.0f} MiB; "
                  f"{peer} batch1 {b1:.1f} us, batch1024 {b2:.0f}/s, {bm:.0f} MiB", flush=True)
        else:
            first.append(a1 / b1)
            print(f"pair {i + 1}: sinapse {a1:.0f} samples/s (acc {a2:.4f}, {am:.0f} MiB), "
                  f"{peer} {b1:.0f} samples/s (acc {b2:.4f}, {bm:.0f} MiB), ratio {a1 / b1:.3f}", flush=True)
    if name == "infer":
        print(f"infer: {summary(f'batch-1 speed ratio sinapse/{peer}', first)}")
        print(f"infer: {summary(f'batch-1024 throughput ratio sinapse/{peer}', second)}")
    else:
        print(f"{name}: {summary(f'median ratio sinapse/{peer}', first)}")
    print(f"{name}: {summary(f'peak memory ratio sinapse/{peer}', memory)}", flush=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(NAMES)} (default: all)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--sinapse", default=os.path.join(here, "..", "target", "release", "sinapse"))
    p.add_argument("--against", help="another sinapse binary to compare with, instead of PyTorch")
    p.add_argument("--isa", choices=sorted(CAPS), help="cap both sides' CPU kernels to this instruction set")
    args = p.parse_args()
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r} (valid: {', '.join(NAMES)})")
    for name in args.names or NAMES:
        compare(name, args, here)


if __name__ == "__main__":
    main()
