#!/usr/bin/env bash
# Crashes injected at the exact moments a model directory is published (strace kills the
# process with SIGKILL inside the system call). After each, the target is the old complete
# model or the new complete one, and the next run leaves no temporaries behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sinapse
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sum() { sha256sum "$1/model.safetensors" | cut -d' ' -f1; }
killed_at() { # SYSCALL WHEN SPEC OUT: train, killed at the WHEN-th SYSCALL
  strace -f -qq -o /dev/null -e trace="$1" -e inject="$1":signal=SIGKILL:when="$2" \
    "$bin" train "$3" --out "$4" --quiet >/dev/null 2>&1 && echo "not killed" || echo "killed"
}
sed -e 's/^seed = .*/seed = 7/' -e "s|\.\./data/|$PWD/data/|" models/xor.toml > "$work/new.toml"
"$bin" train models/xor.toml --out "$work/x" --quiet >/dev/null
old=$(sum "$work/x")

# 1. Replacing a model, killed in the atomic exchange itself: the old model stays.
echo "replace, crash in renameat2: $(killed_at renameat2 1 "$work/new.toml" "$work/x")"
[ "$(sum "$work/x")" = "$old" ] || { echo "FAIL: the old model changed"; exit 1; }
"$bin" eval "$work/x" data/xor.csv >/dev/null

# 2. The probe that lost models before (a crash at the second rename of a replace): the
#    exchange needs no rename, so the save completes; the target is a complete model.
echo "replace, crash at rename 2: $(killed_at rename 2 "$work/new.toml" "$work/x")"
"$bin" eval "$work/x" data/xor.csv >/dev/null

# 3. A new target, killed at the rename that publishes it: no half model appears.
echo "new target, crash at rename 1: $(killed_at rename 1 "$work/new.toml" "$work/y")"
[ ! -e "$work/y" ] || "$bin" eval "$work/y" data/xor.csv >/dev/null

# 4. Durability: every file and the new directory are flushed before the exchange publishes
#    them, and the parent directory after it.
strace -f -qq -e trace=fsync,renameat2 -o "$work/trace" "$bin" train "$work/new.toml" --out "$work/x" --quiet >/dev/null
synced_before=$(awk '/renameat2\(/{exit} /fsync\(/{n++} END{print n+0}' "$work/trace")
synced_after=$(awk '/renameat2\(/{seen=1; next} seen && /fsync\(/{n++} END{print n+0}' "$work/trace")
files=$(find "$work/x" -type f | wc -l)
echo "durability: $synced_before fsyncs before the exchange ($files files + the directory), $synced_after after"
[ "$synced_before" -ge $((files + 1)) ] && [ "$synced_after" -ge 1 ] || { echo "FAIL: not flushed"; exit 1; }

# The next runs clean up what the killed ones left, and publish.
"$bin" train "$work/new.toml" --out "$work/x" --quiet >/dev/null
"$bin" train "$work/new.toml" --out "$work/y" --quiet >/dev/null
leftovers=$(find "$work" -maxdepth 1 -name '.*' ! -name '.' | tr '\n' ' ')
[ -z "$leftovers" ] || { echo "FAIL: temporaries left: $leftovers"; exit 1; }
[ "$(sum "$work/x")" = "$(sum "$work/y")" ] || { echo "FAIL: the new model was not published"; exit 1; }
echo "crash injection: every target stayed complete; the next runs cleaned up and published"
