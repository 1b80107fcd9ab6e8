"""Why `--precision auto`: training-step speed in fp32 and bf16 autocast on this CPU.

    .venv/bin/python benchmarks/precision.py [--model resnet20] [--batch 128] [--steps 8] [--rounds 3]

One training step (forward, loss, backward, SGD) of the model on a fixed Fashion-MNIST-sized
batch (1x28x28, 10 classes), in fp32 and under bf16 autocast, each in NCHW and channels_last.
Rounds alternate between the four so that a change in the machine's speed hits all alike;
images/s is the median over rounds. bf16 instructions do not make bf16 fast by themselves: AMX
and AMD Zen 4's AVX-512 BF16 run the step faster than fp32, an Intel Xeon with AVX-512 BF16 and
no AMX ran it slower, and AVX2-only CPUs emulate bf16 many times slower. `auto` (the fast
recipe's default) follows these measurements (`resnetkit.runtime.bf16_pays`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import resnetkit
from resnetkit.runtime import autocast, bf16_pays, cpu_info


def step_rate(model_name: str, batch: int, steps: int, precision: str, channels_last: bool) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = resnetkit.create_model(model_name, num_classes=10, in_chans=1).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    device = torch.device("cpu")

    def step():
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN picks and caches its kernels
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def machine() -> str:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    vendor, flags = cpu_info()
    shown = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})
    return f"{name} ({vendor}); flags: {', '.join(shown)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    paths = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    rates: dict = {p: [] for p in paths}
    for _ in range(args.rounds):
        for p in paths:
            rates[p].append(step_rate(args.model, args.batch, args.steps, *p))
    print(f"Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds; "
          f"`--precision auto` picks {'bf16' if bf16_pays('cpu') else 'fp32'} here\n")
    base = statistics.median(rates[("fp32", False)])
    print("| precision | memory format | img/s (median) | vs fp32 NCHW | rounds |")
    print("|---|---|---|---|---|")
    for (precision, cl), r in rates.items():
        m = statistics.median(r)
        print(f"| {precision} | {'channels_last' if cl else 'NCHW'} | {m:.0f} | {m / base:.2f}x | "
              f"{' '.join(f'{v:.0f}' for v in r)} |")


if __name__ == "__main__":
    main()
