"""The `mlp` and `cnn` benchmarks in PyTorch, for comparison with `sinapse bench mlp|cnn`.

Same work as Sinapse, on the bundled MNIST subset, only the training loop timed (batch gather,
forward, backward, step), last partial batch kept, shuffled each epoch with a fixed seed:
- mlp: MLP 784-256-128-10 with ReLU, softmax cross-entropy (mean), SGD lr 0.1, batch 128,
  5 epochs;
- cnn: conv(1->16, 5x5) ReLU maxpool 2x2, conv(16->32, 5x5) ReLU maxpool 2x2, flatten (512),
  linear(512->10); softmax cross-entropy (mean), SGD lr 0.05, batch 64, 1 epoch.

    python3 bench/pytorch_bench.py mlp|cnn [--runs 3] [--threads 2] [--data data/mnist-10k]

Prints one line per run and, last, `NAME: N samples/s, test accuracy X` (the median run).
"""
import argparse
import gzip
import os
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


# name: (network, learning rate, batch size, epochs)
BENCHMARKS = {"mlp": (mlp, 0.1, 128, 5), "cnn": (cnn, 0.05, 64, 1)}


def run_once(name, x, y, xt, yt):
    build, lr, batch, epochs = BENCHMARKS[name]
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    n = x.shape[0]
    seconds = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        seconds += time.perf_counter() - start
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    return epochs * n / seconds, acc


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=os.path.join(here, "..", "data", "mnist-10k"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load(args.data, "train")
    xt, yt = load(args.data, "t10k")
    runs = []
    for r in range(args.runs):
        rate, acc = run_once(args.name, x, y, xt, yt)
        print(f"run {r + 1}/{args.runs}: {rate:.0f} samples/s, test accuracy {acc:.4f}")
        runs.append((rate, acc))
    runs.sort()
    rate, acc = runs[len(runs) // 2]
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{args.name}: {rate:.0f} samples/s, test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
