"""Time to accuracy: the default ("fast") recipe on Fashion-MNIST, test accuracy against training time.

    .venv/bin/python benchmarks/time_to_accuracy.py --epochs 16 --out benchmarks/results/time-to-acc-r20-16ep
    .venv/bin/python benchmarks/time_to_accuracy.py --epochs 15 --set ema=0.998 --out ...

Trains with `resnetkit.train.train` (the real trainer) and prints, per epoch, the test accuracy
and the cumulative training time (evaluation excluded), then the first time each target was
reached. Per-epoch evaluations use no test-time flips; the final one uses them when the
recipe does (as `resnetkit train` reports). Writes the table to OUT/time_to_accuracy.json as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from resnetkit.checkpoint import atomic_write_text
from resnetkit.config import make_config
from resnetkit.rundir import read_metrics
from resnetkit.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results/time-to-acc")
    p.add_argument("--targets", type=float, nargs="+", default=[0.93, 0.94, 0.95])
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, as in the YAML config (e.g. ema=0.998 erase=0.5)")
    args = p.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = make_config({"model": args.model, "data": "fashion-mnist", "epochs": args.epochs, "out": args.out,
                       **overrides})
    summary = train(cfg, tensorboard=False)
    epochs = [r for r in read_metrics(Path(args.out) / "metrics.jsonl") if "test_error" in r]
    recipe = f"fast recipe with {overrides}" if overrides else "fast recipe"
    print(f"\n{args.model}, {recipe}, {args.epochs} epochs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'epoch':>5}  {'train time (s)':>14}  {'test acc %':>10}")
    for r in epochs:
        print(f"{r['epoch']:5.1f}  {r['train_time']:14.1f}  {100 * (1 - r['test_error']):10.2f}")
    reached = {}
    for t in args.targets:
        hit = next((r for r in epochs if 1 - r["test_error"] >= t), None)
        reached[f"{100 * t:.0f}%"] = hit["train_time"] if hit else None
        print(f"time to {100 * t:.0f}%: " + (f"{hit['train_time']:.0f} s (epoch {hit['epoch']:.0f})" if hit
                                              else "not reached"))
    print(f"final (with the recipe's test-time flips): {100 * summary['test_accuracy']:.2f}% after "
          f"{summary['train_time_sec']:.0f} s of training")
    atomic_write_text(Path(args.out) / "time_to_accuracy.json", json.dumps(
        {"model": args.model, "epochs": args.epochs, "overrides": overrides, "curve": [
            {"epoch": r["epoch"], "train_time": r["train_time"], "test_accuracy": 1 - r["test_error"]}
            for r in epochs], "time_to": reached, "final_accuracy": summary["test_accuracy"],
         "train_time_sec": summary["train_time_sec"], "images_per_sec": summary["images_per_sec"]},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
