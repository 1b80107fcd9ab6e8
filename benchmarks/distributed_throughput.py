"""Training throughput of one process against two torchrun processes on this CPU.

    .venv/bin/python benchmarks/distributed_throughput.py --steps 60 --rounds 3

Runs the real `resnetkit train` (ResNet-20, Fashion-MNIST, fast recipe: bf16, channels_last,
global batch 256) as 1 process x 2 threads, 1 process x 1 thread, and 2 processes x 1 thread
(`torchrun --standalone --nproc-per-node=2`, gloo), each for --steps steps, in interleaved
rounds so that drift of the machine's speed hits every row alike. A row's img/s is the median
of its log intervals after the first (warm-up), then the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from resnetkit.checkpoint import atomic_write_text
from resnetkit.rundir import read_metrics

BIN = Path(sys.executable).parent
ROWS = [("1 process x 2 threads", 1, 2), ("1 process x 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1)]


def run(procs: int, threads: int, steps: int, out: Path) -> float:
    train = ["train", "--model", "resnet20", "--data", "fashion-mnist", "--epochs", "1", "--max-steps", str(steps),
             "--log-every", "10", "--no-tensorboard", "--out", str(out)]
    if procs == 1:
        cmd = [str(BIN / "resnetkit"), *train]
    else:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={procs}", "-m", "resnetkit", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates = [r["images_per_sec"] for r in read_metrics(out / "metrics.jsonl") if "images_per_sec" in r]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/distributed_throughput.json")
    args = p.parse_args()
    measured: dict[str, list[float]] = {name: [] for name, _, _ in ROWS}
    with tempfile.TemporaryDirectory(prefix="resnetkit-ddp-bench-") as tmp:
        for r in range(args.rounds):
            for name, procs, threads in ROWS:
                measured[name].append(run(procs, threads, args.steps, Path(tmp) / f"{r}-{procs}-{threads}"))
    base = statistics.median(measured[ROWS[0][0]])
    print(f"ResNet-20, Fashion-MNIST, fast recipe, global batch 256, {args.steps} steps, {args.rounds} rounds")
    print(f"{'setting':<24} {'img/s':>8} {'vs 1x2':>7}  per round")
    table = []
    for name, _, _ in ROWS:
        ips = statistics.median(measured[name])
        print(f"{name:<24} {ips:8.0f} {ips / base:7.2f}  {' '.join(f'{v:.0f}' for v in measured[name])}")
        table.append({"setting": name, "images_per_sec": ips, "ratio": ips / base, "rounds": measured[name]})
    atomic_write_text(args.json, json.dumps({"steps": args.steps, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
