"""How fast the speedrun recipe's trainer runs with each step-time lever, in the same run.

    .venv/bin/python benchmarks/speedrun_step.py [--rounds 3] [--steps 40]

The real trainer (`resnetkit.train`, `--recipe speedrun` without compiling, on Fashion-MNIST:
data pipeline, bf16 or fp32 as `--precision auto` picks, Muon, SGD and EMA included), run for
``--steps`` logged steps per variant; rows are interleaved over ``--rounds`` rounds so the
machine's drift falls on every row alike, and each row reports the median over rounds of the
median images/s of its logging intervals, and the ratio to the first row.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import nullcontext
from unittest import mock

import torch.nn.functional as F
from train_throughput import ours

from resnetkit.blocks import ZeroPadShortcut


def slice_shortcut(self, x):
    """The option-A shortcut as it was until 2026-12-06's fifth session: a strided slice, whose
    backward hands the block an NCHW gradient among channels_last ones."""
    if self.stride > 1:
        x = x[:, :, :: self.stride, :: self.stride]
    return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


# Each row adds one lever to the row above; the last is today's --recipe speedrun.
LEVERS = [
    ("the recipe until 2026-12-06: fashion_resnet8_pool, Muon's 5 Newton-Schulz steps, batch 256",
     {"model": "fashion_resnet8_pool", "muon_ns_steps": 5, "batch_size": 256, "slice": True}),
    ("+ whiten16-pool stem (fashion_resnet8_pool16: 16 filters, BN after the pool)",
     {"model": "fashion_resnet8_pool16"}),
    ("+ 3 Newton-Schulz steps", {"muon_ns_steps": 3}),
    ("+ batch 512", {"batch_size": 512}),
    ("+ the shortcut's gradient kept channels_last (--recipe speedrun)", {"slice": False}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    settings, chosen = [], {}
    for _, lever in LEVERS:
        chosen = {**chosen, **lever}
        settings.append(chosen)
    rates: list[list[float]] = [[] for _ in LEVERS]
    for r in range(args.rounds):
        for i, s in enumerate(settings):
            rest = {k: v for k, v in s.items() if k not in ("model", "batch_size", "slice")}
            with mock.patch.object(ZeroPadShortcut, "forward", slice_shortcut) if s["slice"] else nullcontext():
                rates[i].append(ours(s["model"], args.steps, s["batch_size"], recipe="speedrun", compile=False,
                                     tta_shift=0, log_every=5, **rest))
            print(f"round {r + 1}: row {i}: {rates[i][-1]:.0f} img/s", flush=True)
    base = statistics.median(rates[0])
    print("\n| row | img/s (rounds) | vs row 0 |\n|---|---|---|")
    for (name, _), rs in zip(LEVERS, rates):
        m = statistics.median(rs)
        print(f"| {name} | {m:,.0f} ({', '.join(f'{x:.0f}' for x in rs)}) | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
