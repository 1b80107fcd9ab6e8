"""Built-in experiments reproducing the paper's claims, with one identical recipe per experiment.

    resnetkit experiment degradation --out results/degradation [--depths 20 32 44 56] [--seeds 3]
    resnetkit experiment shortcuts --out results/shortcuts [--depth 20]
    resnetkit experiment degradation --quick --out /tmp/deg    # a smoke run, under 2 minutes

``degradation`` is the paper's Fig. 6 (left, middle): plain nets get *worse* training error
as they get deeper, ResNets of the same depths do not. ``shortcuts`` is Table 3: shortcut
options A, B, C and none at one depth. Each run is an ordinary training run in
``OUT/runs/<model>-seed<k>``; finished runs are kept, so ``--resume`` continues an
interrupted experiment where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write_text
from .config import make_config
from .errors import UserError
from .plots import draw_band, plt, save_figure
from .rundir import RunInUse, read_metrics
from .train import train

# Paper Table 6, CIFAR-10 test error (%) of the ResNets; plain nets are shown only as curves.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
# Paper Table 3, ResNet-34 on ImageNet, top-1 error (%) by shortcut option (10-crop).
PAPER_TABLE3 = {"A": 25.03, "B": 24.52, "C": 24.19, "none": 28.54}

# One recipe for every run: the paper's CIFAR recipe (SGD 0.9, wd 1e-4, batch 128, lr 0.1
# divided by 10 at 50% and 75% of training, padding + crop + flip), shortened to `epochs`.
def recipe(quick: bool, epochs: int | None, precision: str = "auto") -> dict:
    """``precision``: ``auto`` is bf16 where it is faster than fp32 (``runtime.bf16_pays``), fp32
    elsewhere, e.g. on AVX2-only CPUs, where bf16 is emulated and many times slower."""
    common = {"recipe": "paper-cifar", "max_steps": 0, "milestones": [], "precision": precision,
              "channels_last": True, "tta": False}
    if quick:  # 100 steps per model on a subset: all 8 degradation runs in about a minute and a half
        return {**common, "epochs": epochs or 1, "train_subset": 3200, "test_subset": 1000,
                "batch_size": 32, "log_every": 10}
    return {**common, "epochs": epochs or 3, "log_every": 50}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"platform": platform.platform(), "processor": _cpu_name(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


SHOWN_SETTINGS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup",
                  "label_smoothing", "pad", "flip", "precision", "train_subset", "test_subset")


def settings(common: dict, models: list[str]) -> dict:
    """The recipe as the trainer resolves it for each of ``models``. A value that differs
    between models is shown with the models it applies to (the paper's warmup for 110+ layers)."""
    cfgs = {m: make_config({**common, "model": m}) for m in models}
    shown = {}
    for k in SHOWN_SETTINGS:
        by_value: dict = {}
        for m, cfg in cfgs.items():
            by_value.setdefault(getattr(cfg, k), []).append(m)
        shown[k] = next(iter(by_value)) if len(by_value) == 1 else "; ".join(
            f"{v} ({', '.join(ms)})" for v, ms in by_value.items())
    return shown | {"milestones": next(iter(cfgs.values())).milestones or "50% and 75% of training"}


def final_train_error(rows: list[dict]) -> float:
    """Mean training error over the last 10% of logged steps (at least one row): the
    running error under augmentation, as in the paper's curves, smoothed a little."""
    steps = [r for r in rows if "train_error" in r]
    tail = steps[-max(1, len(steps) // 10):]
    return sum(r["train_error"] for r in tail) / len(tail)


def run_one(name: str, kwargs: dict, common: dict, seed: int, out: Path, resume: bool, quiet: bool) -> dict:
    run_dir = out / "runs" / f"{name}-seed{seed}"
    done = run_dir / "summary.json"
    if resume and done.exists():
        summary = json.loads(done.read_text())
    else:
        cfg = make_config({**common, **kwargs, "seed": seed, "out": str(run_dir), "resume": resume})
        if not quiet:
            print(f"--- {name} seed {seed}", flush=True)
        summary = train(cfg, verbose=not quiet)
    rows = read_metrics(run_dir / "metrics.jsonl")
    return {"name": name, "seed": seed, "params": summary["params"],
            "final_train_error": final_train_error(rows), "final_test_error": summary["test_error"],
            "train_time_sec": summary["train_time_sec"], "run_dir": str(run_dir.relative_to(out))}


def run_many(jobs: list[tuple[str, dict, int]], common: dict, out: Path, resume: bool, quiet: bool) -> list[dict]:
    """``run_one`` for each (name, model settings, seed), in order. Copies of one experiment
    command started with --resume share its runs, one copy per core: a run that another copy
    is training (its folder is locked) is passed over, and waited for at the end."""
    done: dict[int, dict] = {}
    for wait in (False, True):
        for i, (name, kwargs, seed) in enumerate(jobs):
            while i not in done:
                try:
                    done[i] = run_one(name, kwargs, common, seed, out, resume, quiet)
                except RunInUse:
                    if not wait:
                        break
                    time.sleep(10)
    return [done[i] for i in range(len(jobs))]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(runs: list[dict], key_fields: dict[str, dict]) -> list[dict]:
    """Per model: mean and std over seeds."""
    out = []
    for name, fields in key_fields.items():
        mine = [r for r in runs if r["name"] == name]
        tr, tr_sd = mean_std([r["final_train_error"] for r in mine])
        te, te_sd = mean_std([r["final_test_error"] for r in mine])
        t, _ = mean_std([r["train_time_sec"] for r in mine])
        out.append({"model": name, **fields, "params": mine[0]["params"], "seeds": len(mine),
                    "train_error": tr, "train_error_std": tr_sd, "test_error": te, "test_error_std": te_sd,
                    "train_time_sec": t})
    return out


def compare(a: dict, b: dict, key: str, what: str) -> str:
    """One sentence comparing ``key`` of model a and b, honest about the seed spread."""
    da, db = 100 * a[key], 100 * b[key]
    sa, sb = a.get(key + "_std"), b.get(key + "_std")
    rel = "higher" if da > db else "lower" if da < db else "equal"
    line = f"{a['model']} {what} {da:.2f}% vs {b['model']} {db:.2f}%: {rel} by {abs(da - db):.2f} points"
    if sa is None or sb is None:
        return line + " (one seed: no spread measured, so this is not a claim)"
    spread = 100 * math.hypot(sa, sb)
    if abs(da - db) <= spread:
        return line + f", within the seed-to-seed spread ({spread:.2f}): not a real difference"
    return line + f", beyond the spread ({spread:.2f})"


def fmt_pct(v: float, sd: float | None) -> str:
    return f"{100 * v:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def table(models: list[dict], paper: dict, paper_key: str, paper_label: str) -> str:
    head = ["model", "params", "train err %", "test err %", f"paper {paper_label}", "time (s)"]
    body = [[m["model"], f"{m['params']:,}", fmt_pct(m["train_error"], m["train_error_std"]),
             fmt_pct(m["test_error"], m["test_error_std"]),
             f"{paper[m[paper_key]]:.2f}" if m.get(paper_key) in paper and m.get("family") != "plain" else "-",
             f"{m['train_time_sec']:.0f}"] for m in models]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)


def plot_panels(out: Path, panels: list[tuple[str, list[tuple[str, list[list[dict]]]]]], title: str) -> None:
    """Paper Fig. 6 style: dashed training error, bold test error, one color per model; with
    several seeds, the mean and a +- std band."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), sharey=True, squeeze=False)
    top = 0.0
    for ax, (panel_title, curves) in zip(axes[0], panels):
        for i, (label, runs) in enumerate(curves):
            draw_band(ax, runs, color=f"C{i}", label=label)
            top = max([top] + [100 * r.get("test_error", 0) for rows in runs for r in rows])
        ax.set_title(panel_title)
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        ax.legend(title="bold: test, dashed: train", fontsize=8, title_fontsize=8)
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].set_ylim(0, min(100, max(20, 1.3 * top)))
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out / "figure.png")


def write_outputs(out: Path, result: dict, table_text: str) -> None:
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    r = result
    readme = [
        f"# Experiment: {r['experiment']}", "",
        f"{r['description']}", "",
        "## Command", "", "```bash", r["command"], "```", "",
        "## Recipe", "",
        ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + ".", "",
        f"Data: {r['data']}. Seeds: {r['seeds']}. Training time, all runs: "
        f"{r['train_time_total_sec'] / 60:.1f} min (evaluation excluded). Wall time of the command that wrote "
        f"this file: {r['wall_time_sec'] / 60:.1f} min (with `--resume`, finished runs are reused, not re-run).", "",
        f"Machine: {r['machine']['processor']}, {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}"
        + (f", {r['machine']['cuda']}" if r["machine"]["cuda"] else "") + ".", "",
        "## Results", "", table_text, "",
        "Training error: the running error under augmentation over the last 10% of logged steps; "
        f"test error: the full test split after the last step. The paper column is {r['paper_note']}.", "",
        "![figure](figure.png)", "",
        "## What the numbers show", "", *[f"- {c}" for c in r["conclusion"]], "",
    ]
    atomic_write_text(out / "README.md", "\n".join(readme))


CURVES_CAPTION = ("Training error dashed (running, under augmentation), test error bold, one colour per model; "
                  "with several seeds the curves are the mean and the band mean ± std.")


def degradation(out: str | Path, depths: list[int] = (20, 32, 44, 56), data: str = "fashion-mnist",
                data_dir: str | None = None, seeds: int = 1, quick: bool = False, epochs: int | None = None,
                resume: bool = False, quiet: bool = False, command: str = "",
                resnet_depths: list[int] | None = None, precision: str = "auto") -> dict:
    """Plain and residual nets of ``depths`` (ResNets of ``resnet_depths`` if given, for a
    ResNet-110 without its costly plain twin), every model under each seed in turn: an
    interrupted experiment has all models at the seeds it finished, not all seeds of a few."""
    out = Path(out)
    common = {**recipe(quick, epochs, precision), "data": data, "data_dir": data_dir}
    t0 = time.perf_counter()
    models_by_family = {"plain": list(depths), "resnet": list(resnet_depths or depths)}
    fields = {f"{fam}{d}": {"family": fam, "depth": d} for fam, ds in models_by_family.items() for d in ds}
    runs = run_many([(name, {"model": name}, seed) for seed in range(seeds) for name in fields],
                    common, out, resume, quiet)
    curves = {"plain": [], "resnet": []}
    for name, f in fields.items():
        label = f"{'plain' if f['family'] == 'plain' else 'ResNet'}-{f['depth']}"
        curves[f["family"]].append((label, [read_metrics(out / r["run_dir"] / "metrics.jsonl")
                                            for r in runs if r["name"] == name]))
    models = aggregate(runs, fields)
    by = {m["model"]: m for m in models}
    lo, hi = min(depths), max(depths)
    conclusion = [
        compare(by[f"plain{hi}"], by[f"plain{lo}"], "train_error", "training error"),
        compare(by[f"resnet{hi}"], by[f"resnet{lo}"], "train_error", "training error"),
        compare(by[f"plain{hi}"], by[f"resnet{hi}"], "train_error", "training error"),
        compare(by[f"plain{hi}"], by[f"plain{lo}"], "test_error", "test error"),
        compare(by[f"resnet{hi}"], by[f"resnet{lo}"], "test_error", "test error"),
    ]
    plain_cost = 100 * (by[f"plain{hi}"]["train_error"] - by[f"plain{lo}"]["train_error"])
    res_cost = 100 * (by[f"resnet{hi}"]["train_error"] - by[f"resnet{lo}"]["train_error"])
    conclusion.append(f"Going from {lo} to {hi} layers changes the training error by {plain_cost:+.2f} points "
                      f"for plain nets and {res_cost:+.2f} points for ResNets.")
    for deeper in sorted(d for d in models_by_family["resnet"] if d > hi):
        conclusion += [compare(by[f"resnet{deeper}"], by[f"resnet{lo}"], "train_error", "training error"),
                       compare(by[f"resnet{deeper}"], by[f"plain{hi}"], "train_error", "training error")]
    shows = plain_cost > 0 and res_cost <= 0
    if shows:
        verdict = "The degradation problem shows: the deeper plain net trains worse, the deeper ResNet does not."
    elif plain_cost > 0 and res_cost < plain_cost:
        verdict = ("Plain nets degrade with depth as the paper reports, and shortcuts remove most of it; but "
                   "the deeper ResNet does not reach the shallower one's training error here, so the paper's "
                   "full claim (deeper ResNets train at least as well) is not confirmed by this run.")
    else:
        verdict = "The expected pattern (deeper plain worse, deeper ResNet not worse) does NOT show here."
    conclusion.append(verdict)
    plot_panels(out, [("plain networks", curves["plain"]), ("residual networks", curves["resnet"])],
                f"Degradation: plain vs residual on {data}")
    result = {"experiment": "degradation", "command": command,
              "description": "Plain networks and ResNets of the same depths trained with one recipe "
                             "(paper Fig. 6 left and middle).",
              "data": data, "seeds": seeds, "quick": quick, "recipe": common,
              "settings": settings(common, list(fields)), "machine": machine(),
              "wall_time_sec": time.perf_counter() - t0,
              "train_time_total_sec": sum(r["train_time_sec"] for r in runs), "models": models, "runs": runs,
              "caption": CURVES_CAPTION,
              "paper_note": "CIFAR-10 test error from the paper's Table 6 (a different dataset: for scale only)",
              "conclusion": conclusion, "degradation_shown": shows}
    text = table(models, PAPER_TABLE6, "depth", "Table 6")
    write_outputs(out, result, text)
    if not quiet:
        print(text + "\n" + "\n".join(conclusion))
    return result


def shortcuts(out: str | Path, depth: int = 20, data: str = "fashion-mnist", data_dir: str | None = None,
              seeds: int = 1, quick: bool = False, epochs: int | None = None, resume: bool = False,
              quiet: bool = False, command: str = "", options: tuple[str, ...] = ("A", "B", "C", "none"),
              precision: str = "auto") -> dict:
    out = Path(out)
    common = {**recipe(quick, epochs, precision), "data": data, "data_dir": data_dir}
    t0 = time.perf_counter()
    fields = {f"resnet{depth}-{o}": {"option": o, "depth": depth, "family": "plain" if o == "none" else "resnet"}
              for o in options}
    runs = run_many([(name, {"model": f"resnet{depth}", "shortcut": f["option"]}, seed)
                     for name, f in fields.items() for seed in range(seeds)], common, out, resume, quiet)
    curves = [(f"option {f['option']}", [read_metrics(out / r["run_dir"] / "metrics.jsonl")
                                         for r in runs if r["name"] == name]) for name, f in fields.items()]
    models = aggregate(runs, fields)
    by = {m["option"]: m for m in models}
    conclusion = [compare(by[o], by["A"], "test_error", "test error") for o in options if o != "A"]
    conclusion += [compare(by["none"], by["A"], "train_error", "training error")] if "none" in by else []
    conclusion.append("Parameters: " + ", ".join(f"{o} {by[o]['params']:,}" for o in options)
                      + " (A and none add nothing; B projects where shapes change; C everywhere).")
    plot_panels(out, [(f"ResNet-{depth}: shortcut options", curves)], f"Shortcut options on {data}")
    result = {"experiment": "shortcuts", "command": command,
              "description": f"Shortcut options A, B, C and none on ResNet-{depth}, one recipe (paper Table 3).",
              "data": data, "seeds": seeds, "quick": quick, "recipe": common,
              "settings": settings(common, [f"resnet{depth}"]), "machine": machine(),
              "wall_time_sec": time.perf_counter() - t0,
              "train_time_total_sec": sum(r["train_time_sec"] for r in runs), "models": models, "runs": runs,
              "caption": CURVES_CAPTION,
              "paper_note": "ImageNet top-1 error of ResNet-34 from the paper's Table 3 (another dataset "
                            "and depth: for the ordering only)",
              "conclusion": conclusion}
    text = table(models, {**PAPER_TABLE3}, "option", "Table 3")
    write_outputs(out, result, text)
    if not quiet:
        print(text + "\n" + "\n".join(conclusion))
    return result


def add_cli(sub, more: dict | None = None) -> argparse.ArgumentParser:
    """The `experiment` command. ``more``: further experiments by name, each a function of the
    parsed arguments and the keywords every experiment takes; probes.py adds its own this way
    (it imports this module, so this one cannot import it). Returns the parser for their options."""
    more = more or {}
    names = ["degradation", "shortcuts", *more]
    p = sub.add_parser("experiment", help="reproduce the paper's claims: " + ", ".join(names))
    p.add_argument("name", choices=names)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--depths", type=int, nargs="+", default=None,
                   help="degradation (default 20 32 44 56), gradients (20 56 110; quick 20 56), responses (20 56)")
    p.add_argument("--resnet-depths", type=int, nargs="+", default=None,
                   help="degradation, responses: ResNet depths if not --depths (e.g. add 110 without plain-110)")
    p.add_argument("--depth", type=int, default=20, help="shortcuts")
    p.add_argument("--options", nargs="+", choices=["A", "B", "C", "none"], default=["A", "B", "C", "none"],
                   help="shortcuts: the options to train (A, the paper's CIFAR choice, is always among them)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="default 3, gradients 1 (quick: 1 on a subset)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 where it beats fp32 on this device (AMX, AVX-512 BF16 on AMD, "
                        "bf16 GPUs), else fp32")
    p.add_argument("--quick", action="store_true", help="a few hundred steps on a subset (< 2 min)")
    p.add_argument("--resume", action="store_true", help="keep finished runs, resume unfinished ones")
    p.set_defaults(func=cmd_experiment, more=more)
    return p


def cmd_experiment(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    valid = {20, 32, 44, 56, 110}
    for d in ((args.depths or []) + (args.resnet_depths or []) if args.name != "shortcuts" else [args.depth]):
        if d not in valid:
            raise UserError(f"depth {d} has no registered plain/ResNet pair; choose from {sorted(valid)}")
    command = "resnetkit " + shlex.join(args.argv)
    kw = {"data": args.data, "data_dir": args.data_dir, "seeds": args.seeds, "quick": args.quick,
          "epochs": args.epochs, "resume": args.resume, "command": command,
          "precision": args.precision}
    more = getattr(args, "more", {})
    if args.name in more:
        more[args.name](args, kw)
    elif args.name == "degradation":
        degradation(args.out, args.depths or [20, 32, 44, 56], resnet_depths=args.resnet_depths, **kw)
    else:
        shortcuts(args.out, args.depth, options=tuple(dict.fromkeys(["A", *args.options])), **kw)
