#!/usr/bin/env bash
# Builds what bench/gpu-check.sh runs on a GPU machine that has no Rust toolchain: the
# `sinapse` binary, the device op suite and the library's unit tests, copied into one folder
# (default gpu-run/, which git ignores). Run from anywhere, on a machine with cargo:
#
#     bash bench/gpu-prepare.sh            # then bring the repository (with gpu-run/) over
#     bash bench/gpu-check.sh              # on the GPU machine, from the repository root
#
# The binaries load CUDA's libraries at run time, so they are built without CUDA here.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-run}"
mkdir -p "$out"
cargo build --release -p sinapse-cli
cargo test --release --no-run -p sinapse --lib --test devices --message-format=json >"$out/.build.json"
python3 - "$out" <<'EOF'
import json, shutil, sys
out = sys.argv[1]
found = {}
for line in open(f"{out}/.build.json"):
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] != ["bin"]:
        kind = msg["target"]["kind"][0]
        name = "unit" if kind == "lib" else msg["target"]["name"]
        found[name] = msg["executable"]
for name in ("unit", "devices"):
    shutil.copy(found[name], f"{out}/{name}")
EOF
rm "$out/.build.json"
cp target/release/sinapse "$out/sinapse"
cp bench/gpu-check.sh "$out/check.sh"
ls -l "$out"
echo "ready: $out/ (run bash $out/check.sh from the repository root on the GPU machine)"
