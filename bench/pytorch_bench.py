"""The benchmarks of `sinapse bench` in PyTorch, for comparison with `sinapse bench NAME`.

Same work as Sinapse, on the bundled MNIST subset, only the training loop timed (batch gather,
forward, backward, step), last partial batch kept, shuffled each epoch with a fixed seed:
- mlp: MLP 784-256-128-10 with ReLU, softmax cross-entropy (mean), SGD lr 0.1, batch 128,
  5 epochs;
- cnn: conv(1->16, 5x5) ReLU maxpool 2x2, conv(16->32, 5x5) ReLU maxpool 2x2, flatten (512),
  linear(512->10); softmax cross-entropy (mean), SGD lr 0.05, batch 64, 1 epoch;
- lstm: each image as 28 rows of 28 pixels, LSTM(28->128) batch first, last step,
  linear(128->10); softmax cross-entropy (mean), Adam lr 2e-3, batch 64, 1 epoch;
- infer: the trained mlp, forward only under no_grad: the median latency of 2,000 batch-1
  calls and the samples/s of 100 batches of 1024 test images;
- mlp-large (a GPU benchmark): MLP 784-4096-4096-10 with ReLU, softmax cross-entropy, SGD
  lr 0.01, batch 1024, the training images tiled to 65,536 samples, 3 epochs; `--tf32` lets
  the matrix products use TF32 tensor cores.

    python3 bench/pytorch_bench.py mlp|cnn|lstm|infer|mlp-large [--runs 3] [--threads 2]
        [--data data/mnist-10k] [--device cpu|cuda] [--tf32] [--epochs N] [--cuda-graph]
        [--profile-kernels [STEPS]]

On `--device cuda` the data and model live on the GPU, one untimed epoch runs first (a
warm-up, as on Sinapse's side), and the peak GPU memory is printed too. The losses are kept
on the device and read every 25 steps, as Sinapse's fit reads them on a GPU. `--cuda-graph`
(a GPU option) runs the first two full batches eagerly, then captures the whole step (forward,
loss, backward, optimizer step; Adam with `capturable=True`) into one CUDA graph and replays
it for every full batch, its inputs copied into the graph's static tensors. For infer it also
captures the forward pass into a graph per batch size (after warm-up on a side stream), each
call copying its input into the graph's static input, replaying, and cloning the static
output (`sinapse bench infer --cuda-graph` gets the same from one launch: its graph copies
the input in and the output out itself).

`--profile-kernels [STEPS]` (CUDA, training benchmarks) then trains a fresh model for that many
eager steps (default 20) under torch.profiler and prints each kernel's GPU time per step, as
`sinapse bench --profile-kernels` prints Sinapse's.

Prints one line per run, the process's peak resident memory, and, last,
`NAME: N samples/s, test accuracy X` (the median run; for infer
`infer: batch1 N us, batch1024 N samples/s`).
"""
import argparse
import gzip
import os
import resource
import struct
import time

import numpy as np
import torch


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, rank = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte IDX file"
    dims = struct.unpack(">" + "I" * rank, raw[4 : 4 + 4 * rank])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def load(data, split):
    images = read_idx(os.path.join(data, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data, f"{split}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def cnn():
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 28, 28)),
        torch.nn.Conv2d(1, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(512, 10),
    )


class Lstm(torch.nn.Module):
    """28 rows of 28 pixels through an LSTM; the last step's output through a linear layer."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(28, 128, batch_first=True)
        self.out = torch.nn.Linear(128, 10)

    def forward(self, x):
        seq, _ = self.lstm(x.view(-1, 28, 28))
        return self.out(seq[:, -1])


def mlp_large():
    return torch.nn.Sequential(
        torch.nn.Linear(784, 4096), torch.nn.ReLU(),
        torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
        torch.nn.Linear(4096, 10),
    )


def sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def adam(lr):
    # capturable: the step count and bias corrections live on the device, so the update can
    # be captured into a CUDA graph (same arithmetic).
    return lambda params: torch.optim.Adam(params, lr=lr, capturable=GRAPH)


# name: (network, optimizer, batch size, epochs, training samples tiled to (None: as they are))
BENCHMARKS = {
    "mlp": (mlp, sgd(0.1), 128, 5, None),
    "cnn": (cnn, sgd(0.05), 64, 1, None),
    "lstm": (Lstm, adam(2e-3), 64, 1, None),
    "mlp-large": (mlp_large, sgd(0.01), 1024, 3, 65536),
}
# Set by --epochs: a quick check instead of the benchmark's figure.
EPOCHS = None
# Set by --cuda-graph: the training step captured into a CUDA graph.
GRAPH = False
# Full batches run eagerly before the capture (as Sinapse's fit does).
GRAPH_WARMUP = 2


def setup(name, x, y):
    """Benchmark `name`'s training samples (tiled where it asks), a fresh model (seed 0), its
    optimizer and loss, and its batch size."""
    build, optimizer, batch, _, tiled = BENCHMARKS[name]
    if tiled:
        rows = torch.arange(tiled, device=x.device) % x.shape[0]
        x, y = x[rows], y[rows]
    torch.manual_seed(0)
    model = build().to(x.device)
    return x, y, model, optimizer(model.parameters()), torch.nn.CrossEntropyLoss(), batch


def train(name, x, y, epochs=None):
    """The model trained by benchmark `name` (for `epochs`, default its own or --epochs), and
    the training samples/s."""
    if epochs is None:
        epochs = EPOCHS if EPOCHS is not None else BENCHMARKS[name][3]
    x, y, model, opt, loss_fn, batch = setup(name, x, y)
    gen = torch.Generator().manual_seed(0)
    n = x.shape[0]
    seconds = 0.0
    if GRAPH:
        return model, train_graphed(model, opt, loss_fn, x, y, batch, epochs, gen)
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(x.device)
        pending = []
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            # The losses are read every 25 steps, as Sinapse's fit reads them (on a GPU a read
            # waits for the queued work: one each step would stall the host every step).
            pending.append(loss.detach())
            if len(pending) == 25:
                torch.stack(pending).tolist()
                pending = []
        if pending:
            torch.stack(pending).tolist()
        sync(x.device)
        seconds += time.perf_counter() - start
    return model, epochs * n / seconds


def train_graphed(model, opt, loss_fn, x, y, batch, epochs, gen):
    """The training loop with the step in a CUDA graph (PyTorch's whole-network capture);
    returns the training samples/s."""
    n = x.shape[0]
    static_x, static_y = x[:batch].clone(), y[:batch].clone()
    side = torch.cuda.Stream()
    graph, static_loss, warm = None, None, 0
    pending = []
    seconds = 0.0

    def eager_step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(x.device)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            if len(idx) != batch:
                loss = eager_step(x[idx], y[idx])
            elif graph is not None:
                static_x.copy_(x[idx])
                static_y.copy_(y[idx])
                graph.replay()
                loss = static_loss.clone()
            elif warm < GRAPH_WARMUP:
                # Warm-up on a side stream, as torch.cuda.graphs asks before a capture.
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = eager_step(x[idx], y[idx])
                torch.cuda.current_stream().wait_stream(side)
                warm += 1
            else:
                static_x.copy_(x[idx])
                static_y.copy_(y[idx])
                graph = torch.cuda.CUDAGraph()
                opt.zero_grad(set_to_none=True)
                with torch.cuda.graph(graph):
                    static_loss = loss_fn(model(static_x), static_y)
                    static_loss.backward()
                    opt.step()
                graph.replay()
                loss = static_loss.clone()
            pending.append(loss)
            if len(pending) == 25:
                torch.stack(pending).tolist()
                pending = []
        if pending:
            torch.stack(pending).tolist()
            pending = []
        sync(x.device)
        seconds += time.perf_counter() - start
    return epochs * n / seconds


def profile_kernels(name, x, y, steps):
    """Trains a fresh model of benchmark `name` for 2 eager steps, then `steps` more under
    torch.profiler, and prints each CUDA kernel's GPU time per step (CUPTI's, without the
    host's gaps), the longest first, in the format of `sinapse bench --profile-kernels`."""
    from torch.profiler import ProfilerActivity, profile

    x, y, model, opt, loss_fn, batch = setup(name, x, y)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0)).to(x.device)
    full = max(x.shape[0] // batch, 1)

    def step(i):
        idx = perm[(i % full) * batch : (i % full + 1) * batch]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    for i in range(2):
        step(i)
    sync(x.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(2 + i)
        sync(x.device)
    # A kernel's row has GPU time and no CPU time of its own (the launches' rows the reverse).
    # Copies and memsets are left out, as Sinapse's profile times kernels and products only.
    rows = []
    for e in prof.key_averages():
        gpu = getattr(e, "device_time_total", None)
        gpu = e.cuda_time_total if gpu is None else gpu
        copy = e.key.startswith(("Memcpy", "Memset"))
        if e.self_cpu_time_total < 1e-10 and gpu > 1e-10 and not copy:
            rows.append((gpu, e.count, e.key))
    rows.sort(key=lambda r: -r[0])
    total = sum(r[0] for r in rows)
    print(f"kernel profile: {steps} eager training steps, each kernel's GPU time (torch.profiler); per step:")
    print(f"{'us':>10} {'share':>6} {'launches':>8}  what")
    for gpu, count, key in rows:
        print(f"{gpu / steps:10.1f} {100 * gpu / max(total, 1e-30):5.1f}% {count / steps:8.2f}  {key[:120]}")
    launches = sum(r[1] for r in rows)
    print(
        f"kernel profile total: {total / steps:.1f} us per step in {launches / steps:.2f} launches "
        "(the GPU's time, without the host's gaps)"
    )


def sync(device):
    """Waits for the GPU's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(name, x, y, xt, yt):
    """Training samples/s and test accuracy; for infer, batch-1 latency (us) and samples/s."""
    if name == "infer":
        model, _ = train("mlp", x, y)
        return time_inference(model, xt)
    model, rate = train(name, x, y)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    return rate, acc


def graphed_forward(model, shape, device):
    """model's forward pass (under no_grad) captured into a CUDA graph for inputs of `shape`:
    a function that copies its input in, replays, and returns a clone of the output."""
    static_x = torch.zeros(shape, device=device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = model(static_x)

    def run(x):
        static_x.copy_(x)
        graph.replay()
        return static_y.clone()

    return run


def time_inference(model, xt):
    with torch.no_grad():
        one = graphed_forward(model, (1,) + tuple(xt.shape[1:]), xt.device) if GRAPH else model
        latencies = []
        for i in range(2000):
            xi = xt[i % len(xt)].unsqueeze(0)
            start = time.perf_counter()
            one(xi)
            sync(xt.device)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        big = xt[torch.arange(1024, device=xt.device) % len(xt)]
        many = graphed_forward(model, tuple(big.shape), xt.device) if GRAPH else model
        many(big)  # warm-up, not timed
        sync(xt.device)
        start = time.perf_counter()
        for _ in range(100):
            many(big)
        sync(xt.device)
        rate = 1024 * 100 / (time.perf_counter() - start)
    return latencies[len(latencies) // 2] * 1e6, rate


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=sorted(BENCHMARKS) + ["infer"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=os.path.join(here, "..", "data", "mnist-10k"))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tf32", action="store_true", help="let CUDA matrix products use TF32")
    p.add_argument("--epochs", type=int, help="train this many epochs instead (a quick check)")
    p.add_argument("--cuda-graph", action="store_true", help="capture the training step (for infer, the forward pass too) into a CUDA graph")
    p.add_argument("--profile-kernels", type=int, nargs="?", const=20, metavar="STEPS",
                   help="after the runs, print each CUDA kernel's GPU time over this many eager steps (default 20)")
    args = p.parse_args()
    if args.profile_kernels is not None:
        if args.device == "cpu" or args.name == "infer" or args.profile_kernels < 1:
            p.error("--profile-kernels needs --device cuda, a training benchmark and at least 1 step")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.cuda_graph and args.device == "cpu":
        p.error("--cuda-graph needs --device cuda")
    global EPOCHS, GRAPH
    EPOCHS = args.epochs
    GRAPH = args.cuda_graph
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, y = (t.to(device) for t in load(args.data, "train"))
    xt, yt = (t.to(device) for t in load(args.data, "t10k"))
    if device.type == "cuda":
        # One untimed epoch first, as Sinapse's side does: CUDA's lazy module loads, cuBLAS's
        # and cuDNN's first calls, the caching allocator's first blocks and the clocks' climb
        # from idle would otherwise land in run 1.
        train("mlp" if args.name == "infer" else args.name, x, y, epochs=1)
        sync(device)
        print(f"warm-up: one untimed epoch on {device} before the timed runs")
    runs = []
    for r in range(args.runs):
        a, b = run_once(args.name, x, y, xt, yt)
        runs.append((a, b))
        if args.name == "infer":
            print(f"run {r + 1}/{args.runs}: batch1 {a:.1f} us, batch1024 {b:.0f} samples/s")
        else:
            print(f"run {r + 1}/{args.runs}: {a:.0f} samples/s, test accuracy {b:.4f}")
    if args.profile_kernels is not None:
        profile_kernels(args.name, x, y, args.profile_kernels)
    runs.sort()
    a, b = runs[len(runs) // 2]
    graphed = ""
    if GRAPH:
        graphed = " (training step in a CUDA graph)"
        if args.name == "infer":
            graphed = " (training step and forward pass in CUDA graphs)"
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}{graphed}")
    if device.type == "cpu":
        # ATEN_CPU_CAPABILITY caps it (compare.py --isa sets it, and MKL's and oneDNN's caps).
        print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    if device.type == "cuda":
        print(f"peak device memory: {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB")
    # ru_maxrss is in KiB on Linux.
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    if args.name == "infer":
        print(f"infer: batch1 {a:.1f} us, batch1024 {b:.0f} samples/s")
    else:
        if args.name.startswith("mlp"):  # dense layers only: 2 x weights forward, 4 x backward
            weights = sum(p.numel() for p in BENCHMARKS[args.name][0]().parameters())
            print(f"arithmetic: {6 * weights * a / 1e12:.2f} TFLOP/s (6 x {weights} weights x samples/s)")
        print(f"{args.name}: {a:.0f} samples/s, test accuracy {b:.4f}")


if __name__ == "__main__":
    main()
