"""Speedrun: Fashion-MNIST test accuracy within a training budget normalised to the day's speed.

    .venv/bin/python benchmarks/speedrun.py --budget 900 --seeds 3 --set model=resnet20 ema=0.998
    .venv/bin/python benchmarks/speedrun.py --budget 300 --seeds 3 --ablation      # the lever table

This machine's speed drifts by up to 2x from day to day, so a budget is stated at the speed of
the day the project's 15-minute record was set, when the usual-way reference loop
(`train_throughput.reference_loop`: per-sample DataLoader transforms, 0 workers, fp32, NCHW,
ResNet-20, batch 256) ran at 435 img/s. The script times that loop right before each run (the
speed drifts within a session too; the median of 10-step chunks over --reference-steps) and gives
the run ``budget x 435 / that reference img/s`` seconds of training (`--time-limit`: the one-cycle
schedule runs on the clock and ends on time; evaluation is not counted). Each result is reported
in seconds, in normalised seconds (seconds x that reference / 435), and in multiply-adds per
image and training FLOPs (about 6 x MACs per image seen: 2 forward, 4 backward; an image shrunk
by --progressive counts by its share of the full area), as airbench reports them, so runs from
different days compare.

Accuracy is the final weights' on the test split, with the recipe's test-time augmentation; no
epoch or seed is picked. ``--ablation`` trains ROWS below, each adding one idea to the row before.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml
from train_throughput import reference_loop

import resnetkit
from resnetkit.checkpoint import atomic_write_text
from resnetkit.config import make_config
from resnetkit.rundir import read_metrics
from resnetkit.summary import summary as model_summary
from resnetkit.train import train

REFERENCE_IMG_S = 435.0  # the reference loop on the day of the 94.13% in 15 minutes (docs/benchmarks.md)

# Each row adds one lever to the one before (airbench's ablation layout).
ROWS: list[tuple[str, dict]] = [
    ("ResNet-20, fast recipe (bf16, channels_last, one-cycle, Nesterov, label smoothing 0.1, flip TTA)", {}),
    ("+ EMA of the weights (0.998)", {"ema": 0.998}),
    ("+ label smoothing 0.2", {"label_smoothing": 0.2}),
    ("+ alternating flip", {"alternate_flip": True}),
    ("+ 10-view TTA (flips x 1-pixel shifts)", {"tta_shift": 1}),
    ("+ frozen patch-whitening stem", {"stem": "whiten"}),
    ("+ widths 32/64/128, one block per stage (fashion_resnet8)", {"model": "fashion_resnet8", "stem": None}),
    ("+ two blocks per stage (fashion_resnet14)", {"model": "fashion_resnet14", "stem": None}),
    ("+ torch.compile", {"compile": True}),
]


def measure_reference(steps: int) -> float:
    """img/s of the usual-way loop, the day's speed measure."""
    return reference_loop("resnet20", steps, 256, 0)


def macs_per_image(overrides: dict) -> int:
    cfg = make_config({"data": "fashion-mnist", **overrides})
    model = resnetkit.create_model(cfg.model, num_classes=10, in_chans=1, **cfg.model_kwargs())
    return model_summary(model, (1, 1, 28, 28)).macs


def run(overrides: dict, seed: int, budget: float, ref_steps: int, out: Path, resume: bool) -> dict:
    """One seed's run, its budget set by the reference loop timed just before; with ``resume``, a
    finished run of the same settings and budget is read back."""
    done = out / "speedrun-run.json"
    if resume and done.exists():
        kept = json.loads(done.read_text())
        if kept["settings"] == overrides and kept["budget"] == budget:
            return kept
    ref = measure_reference(ref_steps)
    print(f"seed {seed}: reference loop {ref:.0f} img/s ({ref / REFERENCE_IMG_S:.2f}x the {REFERENCE_IMG_S:.0f} img/s "
          f"day): {budget:.0f} s is {budget * REFERENCE_IMG_S / ref:.0f} s of training", flush=True)
    cfg = make_config({"data": "fashion-mnist", "epochs": 60, "time_limit": budget * REFERENCE_IMG_S / ref,
                       "seed": seed, "out": str(out), "overwrite": True, **overrides})
    s = train_cold(cfg)
    scale = ref / REFERENCE_IMG_S  # > 1: today is faster than the record day
    epochs = [r for r in read_metrics(out / "metrics.jsonl") if "test_error" in r]
    result = {"seed": seed, "settings": overrides, "budget": budget, "reference_img_s": ref,
              "accuracy": s["test_accuracy"], "train_time": s["train_time_sec"],
              "normalised_time": s["train_time_sec"] * scale, "epochs": s["epochs"],
              "first_step": s["first_step_sec"], "images": s["steps"] * cfg.batch_size,
              "images_at_full_size": images_at_full_size(out),
              "curve": [(r["train_time"] * scale, 1 - r["test_error"]) for r in epochs]}
    atomic_write_text(done, json.dumps(result) + "\n")
    return result


def train_cold(cfg) -> dict:
    """Trains in a fresh process with an empty inductor cache, so that under --compile every seed
    pays the compile time a fresh clone pays (a later run in the same process, or one reading a
    warm cache, would reuse the kernels)."""
    with tempfile.TemporaryDirectory() as cache, ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker, initargs=(cache, os.getpid())) as pool:
        return pool.submit(train, cfg, tensorboard=False, verbose=False).result()


def start_worker(cache: str, parent: int) -> None:
    """The training process's set-up: its own inductor cache, and an exit as soon as ``parent``
    (this script) is gone. A stopped script would otherwise leave its seed training on, unseen,
    and every later run on the machine would share the cores with it (and time a slow reference)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache

    def watch() -> None:
        while os.getppid() == parent:  # a process whose parent dies is handed to another
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def images_at_full_size(out: Path, full: int = 28) -> float:
    """Images seen, those shrunk by --progressive counted by their share of the full size's area
    (a convolution's multiply-adds scale with the area), for the training FLOPs."""
    return sum(r["images"] * (r.get("image_size", full) / full) ** 2
               for r in read_metrics(out / "metrics.jsonl") if "images" in r)


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Normalised training seconds at the first per-epoch evaluation (no TTA) at or above ``target``."""
    return next((t for t, acc in curve if acc >= target), None)


def summarise(i: int, label: str, overrides: dict, runs: list[dict], target: float) -> dict:
    accs = [r["accuracy"] for r in runs]
    hit = [time_to(r["curve"], target) for r in runs]
    macs = macs_per_image(overrides)
    return {"row": i, "label": label, "settings": overrides, "runs": runs,
            "accuracy": statistics.fmean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "epochs": statistics.fmean(r["epochs"] for r in runs),
            "train_time": statistics.fmean(r["train_time"] for r in runs),
            "normalised_time": statistics.fmean(r["normalised_time"] for r in runs),
            "first_step": statistics.fmean(r.get("first_step") or 0.0 for r in runs),
            "macs": macs, "train_flops": 6 * macs * statistics.fmean(r["images_at_full_size"] for r in runs),
            "time_to_target": statistics.fmean(hit) if None not in hit else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=900, help="seconds of training at the reference speed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ablation", action="store_true", help="train every row of ROWS")
    p.add_argument("--rows", type=int, nargs="+", help="with --ablation: only these rows (0-based)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings, as in the YAML config")
    p.add_argument("--label", default="recipe", help="without --ablation: the row's name in the table")
    p.add_argument("--target", type=float, default=0.94, help="accuracy whose time is reported")
    p.add_argument("--reference-steps", type=int, default=80, help="steps of the reference loop before each run")
    p.add_argument("--resume", action="store_true", help="keep finished runs of the same settings and budget")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/speedrun"))
    p.add_argument("--against", type=Path, metavar="RESULTS", help="a results folder of 3+ seeds: each seed's "
                   "accuracy against that row's line through seconds of training and accuracy")
    args = p.parse_args()
    base = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    # Rows from earlier invocations into the same --out are kept, so an ablation can run in parts.
    table = args.out / "speedrun.json"
    kept = json.loads(table.read_text()) if table.exists() else {}
    rows = {r["row"]: r for r in kept.get("rows", []) if kept.get("budget") == args.budget}
    overrides = dict(base)
    for i, (label, extra) in enumerate(ROWS if args.ablation else [(args.label, {})]):
        overrides = {**overrides, **extra}
        if args.ablation and args.rows and i not in args.rows:
            continue
        runs = [run(overrides, seed, args.budget, args.reference_steps, args.out / f"row{i}-seed{seed}", args.resume)
                for seed in range(args.seeds)]
        rows[i] = summarise(i, label, overrides, runs, args.target)
        for seed, r in enumerate(runs):
            print(seed_line(r, args.out / f"row{i}-seed{seed}"))
        if len(runs) >= 3:
            print(seconds_fit(runs))
        if args.against:
            print(against_line(runs, args.against))
        print(format_row(rows[i]), flush=True)
        result = {"reference_basis_img_s": REFERENCE_IMG_S, "budget": args.budget, "target": args.target,
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "rows": [rows[k] for k in sorted(rows)]}
        atomic_write_text(table, json.dumps(result, indent=2) + "\n")

    print(f"\n| row | accuracy % | epochs | train s (first step) | normalised s | MACs/img | train FLOPs | "
          f"normalised s to {100 * args.target:.0f}% |\n|---|---|---|---|---|---|---|---|")
    for k in sorted(rows):
        print(format_row(rows[k]))


def seed_line(r: dict, out: Path) -> str:
    """One seed's numbers beyond the table's: the trainer's img/s after its first step (which holds
    --compile's compile), and the training error over the last, partial epoch (metrics.jsonl's
    ``train_error`` rows after the last whole epoch, weighted by their images): how far the net
    still underfits when the clock stops."""
    rows = read_metrics(out / "metrics.jsonl")
    whole = max((x["step"] for x in rows if "test_error" in x and x["epoch"] == round(x["epoch"])), default=0)
    tail = [x for x in rows if "train_error" in x and x["step"] > whole]
    seen = sum(x["images"] for x in tail)
    error = (f"{100 * sum(x['train_error'] * x['images'] for x in tail) / seen:.1f}% over the last partial epoch"
             if seen else "not measured (the run ended on a whole epoch)")
    first = r.get("first_step") or 0.0
    return (f"seed {r['seed']}: {100 * r['accuracy']:.2f}%, {r['epochs']:.2f} epochs in {r['train_time']:.0f} s "
            f"(first step {first:.1f} s), reference {r['reference_img_s']:.0f} img/s, trainer "
            f"{r['images'] / (r['train_time'] - first):.0f} img/s after the first step, training error {error}")


def seconds_and_accuracy(runs: list[dict]) -> tuple[list[float], list[float]]:
    return [r["train_time"] for r in runs], [100 * r["accuracy"] for r in runs]


def seconds_fit(runs: list[dict]) -> str:
    """How much of the seeds' spread their budgets explain: each seed trains as long as the
    reference loop timed just before it allows, so its accuracy is fitted (least squares) against
    its seconds of training."""
    t, acc = seconds_and_accuracy(runs)
    fit, r = statistics.linear_regression(t, acc), statistics.correlation(t, acc)
    return (f"accuracy against seconds of training, {len(runs)} seeds: correlation {r:.2f}, "
            f"{100 * fit.slope:.2f} points per 100 s (accuracy % = {fit.intercept:.3f} + {fit.slope:.5f} x seconds)")


def against_line(runs: list[dict], results: Path) -> str:
    """Each seed's accuracy minus what the first row of ``results`` (a baseline of 3+ seeds)
    predicts for its seconds of training: a seed's budget moves its accuracy by as much as many a
    lever does, so a few seeds of a lever are read against the baseline's line, not its mean."""
    base = json.loads((results / "speedrun.json").read_text())["rows"][0]["runs"]
    fit = statistics.linear_regression(*seconds_and_accuracy(base))
    off = [acc - fit.intercept - fit.slope * t for t, acc in zip(*seconds_and_accuracy(runs))]
    return (f"against the line of {results.name} ({len(base)} seeds): "
            f"{', '.join(f'{x:+.2f}' for x in off)} points; mean {statistics.fmean(off):+.2f}")


def format_row(row: dict) -> str:
    sd = f" ± {100 * row['accuracy_std']:.2f}" if row["accuracy_std"] is not None else ""
    hit = f"{row['time_to_target']:.0f}" if row["time_to_target"] is not None else "not reached"
    return (f"| {row['label']} | {100 * row['accuracy']:.2f}{sd} | {row['epochs']:.1f} | "
            f"{row['train_time']:.0f} ({row.get('first_step', 0.0):.0f}) | "
            f"{row['normalised_time']:.0f} | {row['macs'] / 1e6:.1f}M | {row['train_flops']:.2e} | {hit} |")


if __name__ == "__main__":
    main()
