#!/usr/bin/env bash
# ONNX export checked by the reference runtime: every bundled spec, and five more below that
# hold the layers the bundled ones do not (stacked GRU, RNN, conv1d, average pooling with
# padding, strided and dilated conv2d, group, layer and 1-D batch norm, leaky ReLU, step, GELU, SiLU,
# softplus, ELU, dropout, embedding, transformer encoders with learned and sinusoidal positions,
# transposed convolution, adaptive pooling, nearest and bilinear upsampling, 2-D batch norm),
# is trained for one epoch, exported with sample inputs and Sinapse's outputs,
# and run in onnxruntime (from PyPI, installed into the cache folder, outside the repository),
# which must agree to 1e-5.
set -euo pipefail
cd "$(dirname "$0")/.."
# The runtime goes into a folder of its own (pip --target, as the NVRTC step of .ci/run), so
# that no virtual-environment support is needed; a half-installed folder is redone.
pkgs="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sinapse-ci/onnxruntime"
if ! PYTHONPATH="$pkgs" python3 -c "import onnxruntime, numpy" 2>/dev/null; then
    rm -rf "$pkgs"
    python3 -m pip install --quiet --disable-pip-version-check --target "$pkgs" onnxruntime numpy
fi
cargo build --release -p sinapse-cli
sinapse="${CARGO_TARGET_DIR:-target}/release/sinapse"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
data="$PWD/data/mnist-10k"
idx() {
    cat <<SPEC
seed = 0
epochs = 1
batch_size = 64
[data]
format = "idx"
train_images = "$data/train-images-idx3-ubyte.gz"
train_labels = "$data/train-labels-idx1-ubyte.gz"
test_images = "$data/t10k-images-idx3-ubyte.gz"
test_labels = "$data/t10k-labels-idx1-ubyte.gz"
[optimizer]
type = "adam"
lr = 0.001
SPEC
}
{ idx; cat <<'SPEC'
[[layers]]
type = "reshape"
shape = [28, 28]
[[layers]]
type = "gru"
hidden = 16
layers = 2
[[layers]]
type = "rnn"
hidden = 8
[[layers]]
type = "last_step"
[[layers]]
type = "dropout"
p = 0.2
[[layers]]
type = "linear"
units = 10
SPEC
} >"$work/onnx_recurrent.toml"
{ idx; cat <<'SPEC'
[[layers]]
type = "reshape"
shape = [1, 28, 28]
[[layers]]
type = "conv2d"
out_channels = 4
kernel = 3
stride = 2
padding = 1
dilation = 2
[[layers]]
type = "group_norm"
groups = 2
[[layers]]
type = "leaky_relu"
slope = 0.1
[[layers]]
type = "avg_pool2d"
kernel = 3
stride = 2
padding = 1
[[layers]]
type = "reshape"
shape = [4, 49]
[[layers]]
type = "conv1d"
out_channels = 3
kernel = 3
padding = 1
[[layers]]
type = "batch_norm1d"
momentum = 0.3
[[layers]]
type = "step"
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
units = 32
[[layers]]
type = "batch_norm1d"
eps = 0.001
[[layers]]
type = "layer_norm"
[[layers]]
type = "gelu"
[[layers]]
type = "linear"
units = 16
[[layers]]
type = "silu"
[[layers]]
type = "linear"
units = 12
[[layers]]
type = "softplus"
[[layers]]
type = "elu"
alpha = 0.5
[[layers]]
type = "linear"
units = 10
SPEC
} >"$work/onnx_conv.toml"
{ idx; cat <<'SPEC'
[[layers]]
type = "reshape"
shape = [28, 28]
[[layers]]
type = "positional_encoding"
kind = "learned"
[[layers]]
type = "transformer_encoder"
heads = 4
feedforward = 32
layers = 2
norm_first = true
activation = "gelu"
causal = true
[[layers]]
type = "positional_encoding"
[[layers]]
type = "transformer_encoder"
heads = 2
dropout = 0.0
[[layers]]
type = "last_step"
[[layers]]
type = "linear"
units = 10
SPEC
} >"$work/onnx_transformer.toml"
{ idx; cat <<'SPEC'
[[layers]]
type = "reshape"
shape = [1, 28, 28]
[[layers]]
type = "conv2d"
out_channels = 4
kernel = 3
stride = 2
[[layers]]
type = "conv_transpose2d"
out_channels = 3
kernel = 3
stride = 2
padding = 1
output_padding = 1
[[layers]]
type = "upsample"
mode = "bilinear"
[[layers]]
type = "adaptive_avg_pool2d"
size = [5, 3]
[[layers]]
type = "upsample"
scale = [2, 3]
[[layers]]
type = "conv_transpose2d"
out_channels = 2
kernel = [2, 3]
dilation = 2
bias = false
[[layers]]
type = "batch_norm2d"
[[layers]]
type = "upsample"
mode = "bilinear"
align_corners = true
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
units = 10
SPEC
} >"$work/onnx_resample.toml"
# Token sequences for the embedding: 5 whole numbers below 12, labelled by the first's parity.
python3 -c "
import random
random.seed(0)
print('t0,t1,t2,t3,t4,label')
for _ in range(200):
    t = [random.randrange(12) for _ in range(5)]
    print(','.join(map(str, t)) + ',' + ('even' if t[0] % 2 == 0 else 'odd'))
" >"$work/tokens.csv"
cat >"$work/onnx_embedding.toml" <<'SPEC'
seed = 0
epochs = 1
batch_size = 16
[data]
format = "csv"
path = "tokens.csv"
label = "label"
test_fraction = 0.2
[[layers]]
type = "embedding"
num = 12
dim = 6
[[layers]]
type = "lstm"
hidden = 5
layers = 2
[[layers]]
type = "last_step"
[[layers]]
type = "linear"
units = 2
[optimizer]
type = "sgd"
lr = 0.1
SPEC
models=()
for spec in models/*.toml "$work"/onnx_*.toml; do
    name="$(basename "$spec" .toml)"
    "$sinapse" train "$spec" --epochs 1 --quiet --out "$work/$name" >/dev/null
    "$sinapse" export "$work/$name" --onnx "$work/$name.onnx" --samples 8 >/dev/null
    models+=("$work/$name.onnx")
done
PYTHONPATH="$pkgs" python3 bench/onnx_check.py "${models[@]}"
