"""Sinapse vs PyTorch on one benchmark, interleaved: A B A B ... on the same machine.

    python3 bench/compare.py mlp [--pairs 5] [--sinapse target/release/sinapse]
    python3 bench/compare.py mlp --pairs 7 --against OLD_SINAPSE_BINARY

Runs `sinapse bench NAME --runs 1` and `python3 bench/pytorch_bench.py NAME --runs 1` alternately,
reads the samples/s each prints on its last line, and prints every pair's ratio and the median
ratio (Sinapse / PyTorch). Build first with `cargo build --release`; run with a Python that
has torch installed. With `--against`, the peer is another Sinapse binary (an A/B of two
builds, e.g. before and after a change; the ratio is new / old) and no torch is needed.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

LINE = re.compile(r"^(\w[\w-]*): (\d+) samples/s, test accuracy ([0-9.]+)$")


def last_figures(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = LINE.match(out.strip().splitlines()[-1])
    if not m:
        sys.exit(f"unexpected output of {' '.join(cmd)}:\n{out}")
    return float(m.group(2)), float(m.group(3))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=["mlp", "cnn"])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--sinapse", default=os.path.join(here, "..", "target", "release", "sinapse"))
    p.add_argument("--against", help="another sinapse binary to compare with, instead of PyTorch")
    args = p.parse_args()
    ours = [args.sinapse, "bench", args.name, "--runs", "1"]
    if args.against:
        theirs = [args.against, "bench", args.name, "--runs", "1"]
        peer = "other"
    else:
        theirs = [sys.executable, os.path.join(here, "pytorch_bench.py"), args.name, "--runs", "1"]
        peer = "pytorch"
    ratios = []
    for i in range(args.pairs):
        a, acc_a = last_figures(ours)
        b, acc_b = last_figures(theirs)
        ratios.append(a / b)
        print(f"pair {i + 1}: sinapse {a:.0f} samples/s (acc {acc_a:.4f}), "
              f"{peer} {b:.0f} samples/s (acc {acc_b:.4f}), ratio {a / b:.3f}", flush=True)
    print(f"{args.name}: median ratio sinapse/{peer} {statistics.median(ratios):.3f} "
          f"over {args.pairs} pairs (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
