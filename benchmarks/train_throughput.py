"""Training throughput: resnetkit's trainer against a reference loop written the usual way.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--rounds 3] [--model resnet20]

Reference: a torch Dataset that crops and flips one sample at a time in Python, a
DataLoader (shuffle, workers), fp32, NCHW, eager. Ours: the real `resnetkit.train.train`
loop (data on the device as one tensor, whole-batch augmentation, `--precision auto`: bf16
autocast where it beats fp32 on this CPU, channels_last), plus the steps in between to show
where the speed comes from.
Same model, batch size, optimiser and images in every row; images/s is the median
over logging intervals after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import resnetkit
from resnetkit.config import make_config
from resnetkit.data import channel_stats, load_arrays
from resnetkit.rundir import read_metrics
from resnetkit.runtime import bf16_pays
from resnetkit.train import train

AUTO = "bf16" if bf16_pays("cpu") else "fp32"  # what the trainer's --precision auto picks here


class PerSampleDataset(torch.utils.data.Dataset):
    """The common tutorial pipeline: uint8 -> float, pad, random crop, random flip, normalise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, pad: int = 2):
        self.images, self.labels, self.mean, self.std, self.pad = images, labels, mean, std, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float().div(255)
        x = F.pad(x, (self.pad,) * 4)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        h, w = self.images.shape[2:]
        x = x[:, dy:dy + h, dx:dx + w]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return (x - self.mean) / self.std, self.labels[i]


def reference_loop(model_name: str, steps: int, batch_size: int, workers: int) -> float:
    train_set = load_arrays("fashion-mnist", None, train=True)
    (mean,), (std,) = channel_stats(train_set.images)
    ds = PerSampleDataset(train_set.images, train_set.labels, mean, std)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    model = resnetkit.create_model(model_name, num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    rates, t, seen, warm = [], None, 0, 5
    for i, (x, y) in enumerate(loader):
        if i == warm:
            t, seen = time.perf_counter(), 0
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if t is not None and (i - warm + 1) % 10 == 0:
            now = time.perf_counter()
            rates.append(seen / (now - t))
            t, seen = now, 0
        if i + 1 >= steps + warm:
            break
    return statistics.median(rates)


def fixed_batch_step(model: str | torch.nn.Module, batch_size: int, compile: bool = False, precision: str = AUTO):
    """One training step (``precision``, channels_last, SGD) on one fixed random batch, as a function."""
    if isinstance(model, str):
        model = resnetkit.create_model(model, num_classes=10, in_chans=1)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(forward(x).float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def model_only(model: str | torch.nn.Module, steps: int, batch_size: int, compile: bool = False,
               precision: str = AUTO) -> float:
    """An upper bound for any data pipeline: the same training step on one fixed batch."""
    step = fixed_batch_step(model, batch_size, compile, precision)
    rates = []
    for i in range(steps + 5):
        t = time.perf_counter()
        step()
        if i >= 5:  # warm-up (and compilation) excluded
            rates.append(batch_size / (time.perf_counter() - t))
    return statistics.median(rates)


def ours(model_name: str, steps: int, batch_size: int, **overrides) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = make_config({"model": model_name, "data": "fashion-mnist", "epochs": 1, "max_steps": steps + 10,
                           "batch_size": batch_size, "log_every": 10, "out": out, "tta": False, **overrides})
        # Evaluation at the end is not billed: images/s comes from the logged training intervals.
        train(cfg, tensorboard=False, verbose=False)
        rows = [r for r in read_metrics(f"{out}/metrics.jsonl") if "images_per_sec" in r]
        return statistics.median(r["images_per_sec"] for r in rows[1:])  # first interval: warm-up


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of one large square matmul: what the cores reach on the most favourable kernel."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="every row is measured once per round")
    args = p.parse_args()
    print(f"{args.model}, Fashion-MNIST 28x28, batch {args.batch_size}, {args.steps} timed steps, "
          f"{args.rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    m, n, b = args.model, args.steps, args.batch_size

    # How close the step is to the machine: training costs about 6 FLOPs per multiply-add of the
    # forward pass (2 forward, 4 backward), compared with a large bf16 matmul in the same run.
    def macs(stem: str | None = None, size: int = 28) -> int:
        model = resnetkit.create_model(m, num_classes=10, in_chans=1, **({"stem": stem} if stem else {}))
        return resnetkit.summary(model, (1, 1, size, size)).macs

    full = macs()
    whitened = not resnetkit.create_model(m, num_classes=10, in_chans=1).conv1.weight.requires_grad
    row_macs: dict[str, int] = {}  # per row: its net at the image size it trains on
    rows = {f"reference: DataLoader per-sample transforms, {w} workers, fp32, NCHW":
            (lambda w=w: reference_loop(m, n, b, w)) for w in (0, 2)}
    a = f"{AUTO}, channels_last"
    for label, kw in [
        ("resnetkit trainer, fp32, NCHW", {"precision": "fp32", "channels_last": False}),
        ("resnetkit trainer, fp32, channels_last" + (" (default)" if AUTO == "fp32" else ""),
         {"precision": "fp32", "channels_last": True}),
        ("resnetkit trainer, bf16, channels_last" + (" (default)" if AUTO == "bf16" else ""),
         {"precision": "bf16", "channels_last": True}),
        (f"resnetkit trainer, {a}, --compile", {"precision": AUTO, "channels_last": True, "compile": True}),
        # A whitening stem, and the first steps under --progressive 16 (16x16 images); not for a
        # net that has its own whitening stem (a frozen conv1), which stem="whiten" would replace.
        *([] if whitened else [
            (f"resnetkit trainer, {a}, whitening stem", {"precision": AUTO, "channels_last": True, "stem": "whiten"}),
            (f"resnetkit trainer, {a}, whitening stem, 16x16 (--progressive 16, early steps)",
             {"precision": AUTO, "channels_last": True, "stem": "whiten", "progressive": 16})]),
    ]:
        rows[label] = lambda kw=kw: ours(m, n, b, **kw)
        row_macs[label] = macs(kw.get("stem"), kw.get("progressive") or 28)
    rows[f"model step alone, fixed batch, no data (upper bound), {a}"] = lambda: model_only(m, n, b)
    rows[f"model step alone, fixed batch, no data, {a}, torch.compile"] = lambda: model_only(m, n, b, compile=True)
    # The machine is shared and its speed drifts by 10-20% over minutes: every round measures
    # every row, and a row's ratio is the median over rounds of (row / the faster reference of
    # the same round), so a slow minute does not favour one side.
    rates: dict[str, list[float]] = {label: [] for label in rows}
    ratios: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(args.rounds):
        got = {label: fn() for label, fn in rows.items()}
        base = max(r for label, r in got.items() if label.startswith("reference"))
        for label, r in got.items():
            rates[label].append(r)
            ratios[label].append(r / base)
    # The machine's peak: the faster of a large fp32 and bf16 matmul (bf16 only wins with AMX or on AMD).
    peak, peak_dtype = max((matmul_peak(dt), str(dt)[6:]) for dt in (torch.float32, torch.bfloat16))
    width = max(map(len, rows))
    print(f"{'path':<{width}}  {'img/s (median)':>14}  {'vs baseline':>11}  {'GFLOP/s':>7}  {'of peak':>7}  per round")
    for label in rows:
        per_round = " ".join(f"{r:.2f}" for r in ratios[label])
        flops = 6 * row_macs.get(label, full) * statistics.median(rates[label]) / 1e9
        print(f"{label:<{width}}  {statistics.median(rates[label]):14.0f}  "
              f"{statistics.median(ratios[label]):10.2f}x  {flops:7.0f}  {100 * flops / peak:6.1f}%  {per_round}")
    print(f"\n{m}: {full / 1e6:.1f}M multiply-adds per 28x28 image; GFLOP/s = 6 x MACs x img/s, against a "
          f"2048x2048 {peak_dtype} matmul's {peak:.0f} GFLOP/s on the same cores (the faster of fp32 and bf16)")


if __name__ == "__main__":
    main()
