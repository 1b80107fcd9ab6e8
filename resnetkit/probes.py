"""Experiments that look inside the networks: why do shortcuts help?

    resnetkit experiment gradients --out results/gradients [--depths 20 56 110] [--epochs 1] [--every 25]
    resnetkit experiment gradients --quick --out /tmp/grad        # depths 20 and 56, 2-3 CPU-minutes in fp32
    resnetkit experiment responses --out results/responses [--source results/degradation] [--resnet-depths 20 56 110]
    resnetkit experiment responses --quick --out /tmp/resp        # trains its own nets on a subset

``gradients`` tests the claim that "shortcut connections propagate larger gradient to the
first layers and allow them to learn as fast as the last layers": plain and residual nets of
each depth train with one recipe while the trainer records, every ``--every`` steps, each
layer's gradient norm and relative update |Δw|/|w| (``layer_stats``, layerstats.py). Step 0
is the network at its initialisation.

``responses`` is the paper's Fig. 7 (He et al. 2016, Sec. 4.2): the std of each 3x3 layer's
response (its output after BN, before the addition and the ReLU) on the test set, for trained
plain nets and ResNets. The paper finds ResNets' responses generally smaller than plain nets',
and smaller in deeper ResNets, "the residual functions might be generally closer to zero than
the non-residual functions". The trained nets come from a ``degradation`` experiment's folder
(every seed found there), or, with ``--quick``, are trained here on a subset.

Both share the degradation experiment's recipe (``experiments.recipe``) and write what it
writes: OUT/results.json, OUT/README.md, OUT/figure.png, and OUT/runs/<model>-seed<k>.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from pathlib import Path

import torch
import yaml

from . import experiments
from .checkpoint import atomic_write_text, load
from .data import build_eval_loader
from .errors import UserError
from .inference import torch_info
from .layerstats import layer_responses
from .plots import plt, save_figure
from .rundir import read_metrics
from .runtime import resolve_device

LABEL = {"plain": "plain", "resnet": "ResNet"}


def model_fields(depths: list[int], resnet_depths: list[int] | None = None) -> dict[str, dict]:
    """{name: {"family", "depth"}} for plain nets of ``depths`` and ResNets of ``resnet_depths``."""
    families = {"plain": list(depths), "resnet": list(resnet_depths or depths)}
    return {f"{fam}{d}": {"family": fam, "depth": d} for fam, ds in families.items() for d in ds}


def label(fields: dict) -> str:
    return f"{LABEL[fields['family']]}-{fields['depth']}"


def style(fields: dict, depths: list[int]) -> dict:
    """One colour per depth, plain dashed and ResNet solid, so twins of one depth pair up."""
    return {"color": f"C{sorted(depths).index(fields['depth'])}",
            "linestyle": "--" if fields["family"] == "plain" else "-"}


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def md_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body])


def write_readme(out: Path, result: dict, tables: list[str], notes: list[str]) -> None:
    """results.json and a README.md in the layout of the other experiments' (experiments.write_outputs),
    with this experiment's own tables and notes on how the numbers were measured."""
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    r, m = result, result["machine"]
    readme = [
        f"# Experiment: {r['experiment']}", "", r["description"], "",
        "## Command", "", "```bash", r["command"], "```", "",
        "## Recipe", "",
        ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + ".", "",
        f"Data: {r['data']}. Seeds: {r['seeds']}. Training time, all runs: "
        f"{r['train_time_total_sec'] / 60:.1f} min (evaluation excluded). Wall time of the command that wrote "
        f"this file: {r['wall_time_sec'] / 60:.1f} min (with `--resume`, finished runs are reused, not re-run).", "",
        f"Machine: {m['processor']}, {m['cpus']} CPUs, torch {m['torch']}"
        + (f", {m['cuda']}" if m["cuda"] else "") + ".", "",
        "## Results", "", *[part for t in tables for part in (t, "")], *notes, "",
        "![figure](figure.png)", "",
        "## What the numbers show", "", *[f"- {c}" for c in r["conclusion"]], "",
    ]
    atomic_write_text(out / "README.md", "\n".join(readme))


def mean_over(rows: list[list[float | None]]) -> list[float | None]:
    """Element-wise mean of equally long lists (one per seed); None where any seed has None."""
    return [None if any(v is None for v in col) else statistics.fmean(col) for col in zip(*rows)]


# --- gradients -----------------------------------------------------------------------------


def read_layer_rows(path: Path) -> list[dict]:
    rows = read_metrics(path)
    if not rows:
        raise UserError(f"{path} holds no layer statistics: was the run trained with layer_stats?")
    return rows


def main_path(names: list[str]) -> list[int]:
    """Indices of the layers on the main path: projection shortcuts (options B and C) run beside
    it, so a layer index would not say how deep they are. The CIFAR nets (option A) have none."""
    return [i for i, n in enumerate(names) if "downsample" not in n]


def layer_curves(run_dirs: list[Path]) -> dict:
    """Every seed's layers.jsonl, main-path layers only, averaged over seeds step by step (the
    seeds of one recipe record the same steps)."""
    per_seed = [read_layer_rows(d / "layers.jsonl") for d in run_dirs]
    n = min(len(rows) for rows in per_seed)
    keep = main_path(per_seed[0][0]["layers"])
    curves = {"layers": [per_seed[0][0]["layers"][i] for i in keep],
              "steps": [r["step"] for r in per_seed[0][:n]]}
    for key in ("grad_norm", "update_ratio", "weight_norm"):
        curves[key] = [mean_over([[rows[s][key][i] for i in keep] for rows in per_seed]) for s in range(n)]
    return curves


def snapshot_rows(steps: list[int]) -> list[int]:
    """Row indices to draw: the initialisation, 10% and half-way through, and the last row."""
    n = len(steps)
    return sorted({0, round(0.1 * (n - 1)), round(0.5 * (n - 1)), n - 1})


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def first_last(curves: dict) -> dict:
    """The stem conv (first layer) against the last conv (the layer before the classifier): at
    initialisation (step 0), at the last recorded step, and for updates the median over the
    recorded steps (a median: one huge first step must not stand for the whole run). The
    classifier is kept apart: no BN follows it, so its gradient and update scale differently
    from every conv's."""
    g, u, w = curves["grad_norm"], curves["update_ratio"], curves["weight_norm"]
    out = {"first_layer": curves["layers"][0], "last_layer": curves["layers"][-2]}
    for when, s in (("init", 0), ("end", -1)):
        out[f"grad_first_{when}"], out[f"grad_last_{when}"] = g[s][0], g[s][-2]
        out[f"grad_ratio_{when}"] = ratio(g[s][0], g[s][-2])
        out[f"grad_fc_{when}"] = g[s][-1]
        out[f"update_first_{when}"], out[f"update_last_{when}"] = u[s][0], u[s][-2]
        out[f"update_ratio_{when}"] = ratio(u[s][0], u[s][-2])
        out[f"weight_first_{when}"], out[f"weight_last_{when}"] = w[s][0], w[s][-2]
    rows = [row for row in u if row[0] is not None and row[-2]]
    out["update_first_median"] = statistics.median(row[0] for row in rows)
    out["update_last_median"] = statistics.median(row[-2] for row in rows)
    out["update_ratio_median"] = statistics.median(row[0] / row[-2] for row in rows)
    return out


def plot_gradients(out: Path, fields: dict, curves: dict, depths: list[int], title: str) -> None:
    """Top row gradient norms, bottom row relative updates, against the layer index, one column
    per moment of training, one curve per model (log scales); the last column follows the
    first layer's value over the last conv's through training."""
    names = list(fields)
    snaps = snapshot_rows(curves[names[0]]["steps"])
    fig, axes = plt.subplots(2, len(snaps) + 1, figsize=(4.0 * (len(snaps) + 1), 7.2), squeeze=False)
    for row, (key, what) in enumerate((("grad_norm", "gradient norm |g|"), ("update_ratio", "update |Δw|/|w|"))):
        for col, s in enumerate(snaps):
            ax = axes[row][col]
            for name in names:
                c = curves[name]
                values = c[key][min(s, len(c[key]) - 1)]
                ax.plot(range(1, len(values) + 1), [math.nan if v is None else v for v in values],
                        label=label(fields[name]), linewidth=1.3, **style(fields[name], depths))
            step = curves[names[0]]["steps"][s]
            ax.set_title(("initialisation (step 0)" if step == 0 else f"step {step}") if row == 0 else "")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_xlabel("layer index (first conv ... classifier)")
            if col == 0:
                ax.set_ylabel(what)
        ax = axes[row][-1]
        for name in names:
            c = curves[name]
            over_time = [ratio(v[0], v[-2]) for v in c[key]]
            ax.plot(c["steps"], [math.nan if v is None else v for v in over_time], label=label(fields[name]),
                    linewidth=1.3, **style(fields[name], depths))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("iterations")
        ax.set_title("first conv / last conv" if row == 0 else "")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out / "figure.png")


def gradient_conclusions(by: dict[str, dict], depths: list[int]) -> list[str]:
    lines = []
    for d in depths:
        p, r = by[f"plain{d}"], by[f"resnet{d}"]
        lines.append(
            f"Depth {d}, at initialisation: the first conv's gradient norm is {fmt(p['grad_ratio_init'])}x the "
            f"last conv's in plain-{d} and {fmt(r['grad_ratio_init'])}x in ResNet-{d} (first-layer gradient "
            f"{fmt(p['grad_first_init'])} vs {fmt(r['grad_first_init'])}; last conv {fmt(p['grad_last_init'])} "
            f"vs {fmt(r['grad_last_init'])}).")
        lines.append(
            f"Depth {d}, relative update |Δw|/|w| of the first conv over the last conv's: plain-{d} "
            f"{fmt(p['update_ratio_init'])} at step 0, {fmt(p['update_ratio_end'])} at the end, median "
            f"{fmt(p['update_ratio_median'])}; ResNet-{d} {fmt(r['update_ratio_init'])}, "
            f"{fmt(r['update_ratio_end'])}, median {fmt(r['update_ratio_median'])}.")
        lines.append(
            f"Depth {d}, the first conv's weight norm goes from {fmt(p['weight_first_init'])} to "
            f"{fmt(p['weight_first_end'])} in plain-{d} (x{fmt(p['weight_first_end'] / p['weight_first_init'])}) "
            f"and from {fmt(r['weight_first_init'])} to {fmt(r['weight_first_end'])} in ResNet-{d} "
            f"(x{fmt(r['weight_first_end'] / r['weight_first_init'])}). A BN follows it, so a weight k times "
            "larger gets a k times smaller gradient and a k^2 times smaller relative update.")
    def where(ds: list[int]) -> str:
        return "every depth" if len(ds) == len(depths) else f"depth {', '.join(map(str, ds))} only" if ds \
            else "no depth"

    pairs = [(by[f"plain{d}"], by[f"resnet{d}"]) for d in depths]
    at_init = [d for d, (p, r) in zip(depths, pairs) if r["grad_ratio_init"] > p["grad_ratio_init"]]
    at_end = [d for d, (p, r) in zip(depths, pairs) if r["grad_ratio_end"] > p["grad_ratio_end"]]
    lines.append("Claim 'shortcuts propagate larger gradient to the first layers' (the first conv's gradient over "
                 f"the last conv's, ResNet above plain): at initialisation it holds at {where(at_init)}; at the last "
                 f"recorded step at {where(at_end)} (ResNet vs plain: "
                 + "; ".join(f"depth {d} {fmt(r['grad_ratio_end'])} vs {fmt(p['grad_ratio_end'])}"
                             for d, (p, r) in zip(depths, pairs)) + ").")
    # The sequence the numbers above show at the deepest pair, stated only when they show it.
    p, r = pairs[-1]
    if (p["grad_ratio_init"] > max(1.0, r["grad_ratio_init"]) and p["grad_ratio_end"] < r["grad_ratio_end"]
            and p["weight_first_end"] / p["weight_first_init"] > r["weight_first_end"] / r["weight_first_init"]):
        lines.append(f"In plain-{depths[-1]} the gradient does not vanish at initialisation, it grows on the way "
                     "back to the first layers; the first steps then inflate the first conv's weights, and behind a "
                     "BN that shrinks their gradient and their relative update: the small first-layer gradient "
                     f"appears during training. In ResNet-{depths[-1]} the same ratio is {fmt(r['grad_ratio_init'])}x "
                     f"at initialisation and {fmt(r['grad_ratio_end'])}x at the end.")
    keeps_up = [d for d in depths if by[f"resnet{d}"]["update_ratio_median"] >= 0.5]
    lines.append(
        "Claim 'the first layers learn as fast as the last layers' (median over the run of the first conv's "
        "relative update over the last conv's at least 0.5): holds for ResNets at " + where(keeps_up)
        + " (" + ", ".join(f"ResNet-{d} {fmt(by[f'resnet{d}']['update_ratio_median'])}x" for d in depths)
        + "); plain nets: " + ", ".join(f"plain-{d} {fmt(by[f'plain{d}']['update_ratio_median'])}x" for d in depths)
        + ".")
    return lines


def gradients(out: str | Path, depths: list[int] | None = None, data: str = "fashion-mnist",
              data_dir: str | None = None, seeds: int = 1, quick: bool = False, epochs: int | None = None,
              every: int | None = None, resume: bool = False, quiet: bool = False, command: str = "",
              precision: str = "auto") -> dict:
    """Plain and ResNet of each depth (default 20, 56, 110; quick: 20, 56), trained ``epochs``
    (default 1: the early steps are where plain and residual nets differ most) with per-layer
    statistics every ``every`` steps."""
    out, depths = Path(out), list(depths or ((20, 56) if quick else (20, 56, 110)))
    every = every or (10 if quick else 25)
    if every < 1:
        raise UserError(f"--every must be at least 1, got {every}")
    common = {**experiments.recipe(quick, epochs or 1, precision), "data": data, "data_dir": data_dir}
    t0 = time.perf_counter()
    fields = model_fields(depths)
    runs = experiments.run_many([(name, {"model": name, "layer_stats": every}, seed)
                                 for seed in range(seeds) for name in fields], common, out, resume, quiet)
    curves = {name: layer_curves([out / r["run_dir"] for r in runs if r["name"] == name]) for name in fields}
    models = experiments.aggregate(runs, fields)
    for m in models:
        m.update(first_last(curves[m["model"]]), layers=len(curves[m["model"]]["layers"]))
    by = {m["model"]: m for m in models}
    conclusion = gradient_conclusions(by, depths)
    if quick:
        steps = json.loads((out / runs[0]["run_dir"] / "summary.json").read_text())["steps"]
        conclusion.append(f"Quick mode: {steps} steps on at most {common['train_subset']:,} images, the start of "
                          "training only.")
    plot_gradients(out, fields, curves, depths, f"Per-layer gradients and updates on {data}")
    snaps = snapshot_rows(curves[next(iter(fields))]["steps"])
    result = {
        "experiment": "gradients", "command": command,
        "description": "Plain networks and ResNets of the same depths trained with one recipe, recording every "
                       "layer's gradient norm and relative update |Δw|/|w| (does the gradient reach the first "
                       "layers, and do they learn as fast as the last ones?).",
        "caption": "Per-layer gradient norm (top) and relative update |Δw|/|w| per step (bottom) against the "
                   "layer index at several moments of training, and the first conv's value over the last "
                   "conv's through training (right), one curve per model, mean over seeds; log scales.",
        "data": data, "seeds": seeds, "quick": quick, "every": every, "recipe": common,
        "settings": experiments.settings(common, list(fields)), "machine": experiments.machine(),
        "wall_time_sec": time.perf_counter() - t0,
        "train_time_total_sec": sum(r["train_time_sec"] for r in runs), "models": models, "runs": runs,
        # Per model, averaged over seeds: the rows drawn in the figure, and the first/last series.
        "curves": {name: {"layers": c["layers"], "steps": [c["steps"][s] for s in snaps],
                          "grad_norm": [c["grad_norm"][s] for s in snaps],
                          "update_ratio": [c["update_ratio"][s] for s in snaps],
                          "all_steps": c["steps"],
                          "grad_first_last": [[v[0], v[-2]] for v in c["grad_norm"]],
                          "update_first_last": [[v[0], v[-2]] for v in c["update_ratio"]],
                          "weight_first_last": [[v[0], v[-2]] for v in c["weight_norm"]]}
                   for name, c in curves.items()},
        "conclusion": conclusion,
    }
    head = ["model", "train err %", "first (init)", "last (init)", "first/last (init)", "first (end)", "last (end)",
            "first/last (end)"]
    grad_table = md_table(head, [[m["model"], f"{100 * m['train_error']:.2f}", fmt(m["grad_first_init"]),
                                  fmt(m["grad_last_init"]), fmt(m["grad_ratio_init"]), fmt(m["grad_first_end"]),
                                  fmt(m["grad_last_end"]), fmt(m["grad_ratio_end"])] for m in models])
    head = ["model", "first (init)", "last (init)", "first/last (init)", "first (end)", "last (end)",
            "first/last (end)", "first (median)", "last (median)", "first/last (median)"]
    update_table = md_table(head, [[m["model"]] + [fmt(m[f"update_{k}_{w}"]) for w in ("init", "end", "median")
                                                   for k in ("first", "last", "ratio")] for m in models])
    last_step = result["curves"][next(iter(fields))]["all_steps"][-1]
    notes = [f"Gradient norms (first table) and relative updates |Δw|/|w| (second table) of the first layer (the "
             f"stem conv) and the last conv (the layer before the classifier), at initialisation (step 0) and at "
             f"the last recorded step ({last_step}); 'median': over all recorded steps (every {every}), of each "
             "layer's update and of their ratio step by step. "
             "Gradients as backward leaves them; the update is the step SGD really took, momentum and weight "
             "decay included. Training error as in the degradation experiment."]
    # No "|" inside the tables' cells: Markdown would read it as a column border.
    write_readme(out, result, ["Gradient L2 norm, first conv and last conv:\n\n" + grad_table,
                               "Relative update |Δw|/|w|, first conv and last conv:\n\n" + update_table], notes)
    if not quiet:
        print(grad_table + "\n\n" + update_table + "\n" + "\n".join(conclusion))
    return result


# --- responses -----------------------------------------------------------------------------


def source_runs(source: Path, name: str) -> list[int]:
    """Seeds of ``name`` that finished in ``source`` (a summary.json and weights are written last)."""
    seeds = []
    for d in (source / "runs").glob(f"{name}-seed*"):
        m = re.fullmatch(rf"{re.escape(name)}-seed(\d+)", d.name)
        if m and (d / "summary.json").exists() and (d / "model.safetensors").exists():
            seeds.append(int(m.group(1)))
    return sorted(seeds)


def run_settings(run_dir: Path) -> dict:
    """The recipe settings a finished run resolved (its config.yaml), shown as experiments.settings shows them."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {k: cfg.get(k) for k in experiments.SHOWN_SETTINGS} | {
        "milestones": cfg.get("milestones") or "50% and 75% of training"}


def measure(weights: Path, device: torch.device, data_dir: str | None, test_subset: int, loaders: dict) -> dict:
    """``layer_responses`` of a trained model on its own test split, its images normalised as in
    its training (``evaluate.evaluate_loaded`` prepares them the same way)."""
    model = load(weights, map_location="cpu").to(device)
    info = torch_info(model)
    key = (info.dataset, data_dir or info.data_dir, tuple(info.mean or ()), tuple(info.std or ()))
    if key not in loaders:  # models trained on the same data share one loader
        loaders[key], _ = build_eval_loader(info.dataset, key[1], mean=info.mean, std=info.std, device=device,
                                            batch_size=500, image_size=info.image_size, in_chans=info.in_chans,
                                            test_subset=test_subset)
    return {**layer_responses(model, loaders[key].epoch(0)), "dataset": info.dataset}


def plot_responses(out: Path, fields: dict, stds: dict[str, list[float]], depths: list[int], title: str) -> None:
    """Paper Fig. 7: the std of every response by layer index (top) and sorted by size (bottom)."""
    fig, axes = plt.subplots(2, 1, figsize=(8.0, 7.6))
    for name, f in fields.items():
        values = stds[name]
        axes[0].plot(range(1, len(values) + 1), values, label=label(f), linewidth=1.4, **style(f, depths))
        axes[1].plot(range(1, len(values) + 1), sorted(values, reverse=True), label=label(f), linewidth=1.4,
                     **style(f, depths))
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out / "figure.png")


def compare_std(a: dict, b: dict) -> str:
    """One sentence comparing the mean response std of models a and b, honest about seeds."""
    va, vb = a["response_std"], b["response_std"]
    rel = "smaller" if va < vb else "larger" if va > vb else "equal"
    line = f"{a['model']} mean response std {va:.3f} vs {b['model']} {vb:.3f}: {rel} by {abs(va - vb):.3f}"
    sa, sb = a["response_std_std"], b["response_std_std"]
    if sa is None or sb is None:
        return line + " (one seed: no spread measured)"
    spread = math.hypot(sa, sb)
    verdict = "within the seed-to-seed spread" if abs(va - vb) <= spread else "beyond the spread"
    return line + f", {verdict} ({spread:.3f})"


def response_conclusions(by: dict[str, dict], fields: dict, stds: dict) -> list[str]:
    lines, smaller_than_plain = [], []
    for d in sorted({f["depth"] for f in fields.values() if f["family"] == "plain"}):
        if f"resnet{d}" not in by:
            continue
        r, p = by[f"resnet{d}"], by[f"plain{d}"]
        below = sum(a < b for a, b in zip(stds[f"resnet{d}"], stds[f"plain{d}"]))
        lines.append(compare_std(r, p) + f"; smaller at {below} of {len(stds[f'plain{d}'])} layers.")
        smaller_than_plain.append(r["response_std"] < p["response_std"])
    resnets = sorted(f["depth"] for f in fields.values() if f["family"] == "resnet")
    deeper_smaller = []
    for lo, hi in zip(resnets, resnets[1:]):
        lines.append(compare_std(by[f"resnet{hi}"], by[f"resnet{lo}"]) + ".")
        deeper_smaller.append(by[f"resnet{hi}"]["response_std"] < by[f"resnet{lo}"]["response_std"])
    if smaller_than_plain:
        lines.append("Claim that ResNets' responses are generally smaller than plain nets': "
                     + ("holds at every depth measured." if all(smaller_than_plain) else
                        "holds at some depths only." if any(smaller_than_plain) else "does NOT hold here."))
    if deeper_smaller:
        lines.append("Claim that deeper ResNets have smaller responses: "
                     + ("holds at every step in depth measured." if all(deeper_smaller) else
                        "holds for some steps in depth only." if any(deeper_smaller) else "does NOT hold here."))
    return lines


def responses(out: str | Path, depths: list[int] = (20, 56), resnet_depths: list[int] | None = None,
              source: str | Path = "results/degradation", data: str = "fashion-mnist", data_dir: str | None = None,
              seeds: int = 1, quick: bool = False, epochs: int | None = None, test_subset: int = 0,
              device: str = "auto", resume: bool = False, quiet: bool = False, command: str = "",
              precision: str = "auto") -> dict:
    """Response stds of trained plain nets of ``depths`` and ResNets of ``resnet_depths`` (default
    ``depths``): every seed found in ``source``'s runs, or with ``quick`` ``seeds`` runs trained
    in OUT/runs. ``test_subset``: measure on the first N test images (0: all; quick: the recipe's)."""
    out, depths = Path(out), list(depths)
    fields = model_fields(depths, resnet_depths)
    t0 = time.perf_counter()
    if quick:
        common = {**experiments.recipe(True, epochs, precision), "data": data, "data_dir": data_dir}
        runs = experiments.run_many([(name, {"model": name}, seed) for seed in range(seeds) for name in fields],
                                    common, out, resume, quiet)
        test_subset = test_subset or common["test_subset"]
        where = out
    else:
        where = Path(source)
        found = {name: source_runs(where, name) for name in fields}
        missing = [name for name, s in found.items() if not s]
        if missing:
            raise UserError(f"no finished runs of {', '.join(missing)} in {where}/runs: run `resnetkit experiment "
                            f"degradation --out {where}` with those depths, or pass --quick to train small ones here")
        # Finished runs are only read: run_one with resume=True returns a finished run's record.
        runs = [experiments.run_one(name, {"model": name}, {}, seed, where, True, True)
                for name in fields for seed in found[name]]
    dev = resolve_device(device)
    loaders: dict = {}
    for r in runs:
        r.update(measure(where / r["run_dir"] / "model.safetensors", dev, data_dir, test_subset, loaders))
        r["run_dir"] = os.path.relpath(where / r["run_dir"], out)  # the report links runs from OUT
        if not quiet:
            print(f"{r['name']} seed {r['seed']}: mean response std {statistics.fmean(r['std']):.3f} "
                  f"({r['images']} images, error {100 * r['error']:.2f}%)", flush=True)
    models = experiments.aggregate(runs, fields)
    stds = {}
    for m in models:
        mine = [r for r in runs if r["name"] == m["model"]]
        stds[m["model"]] = mean_over([r["std"] for r in mine])
        means = [statistics.fmean(r["std"]) for r in mine]
        m.update(layers=mine[0]["layers"], std_by_layer=stds[m["model"]], response_std=statistics.fmean(means),
                 response_std_std=statistics.stdev(means) if len(means) > 1 else None,
                 measured_error=statistics.fmean(r["error"] for r in mine), images=mine[0]["images"])
    by = {m["model"]: m for m in models}
    conclusion = response_conclusions(by, fields, stds)
    if quick:
        conclusion.append(f"Quick mode: each network trained {common['epochs']} epoch(s) on {common['train_subset']:,} "
                          "images, far from the paper's trained nets: these numbers check the machinery, not the "
                          "claims.")
    data = runs[0]["dataset"] or data
    plot_responses(out, fields, stds, sorted({f["depth"] for f in fields.values()}),
                   f"Std of layer responses (3x3 layers, after BN) on the {data} test set")
    n_seeds = min(m["seeds"] for m in models)
    result = {
        "experiment": "responses", "command": command,
        "description": "The std of each 3x3 layer's response (after BN, before the addition and the ReLU) on the "
                       "test set, for trained plain networks and ResNets (paper Fig. 7).",
        "caption": "Std of each 3x3 layer's response (after BN, before the addition and the ReLU) on the test "
                   "set, by layer index (top) and sorted by magnitude (bottom), as in the paper's Fig. 7.",
        "data": data, "seeds": n_seeds, "quick": quick, "source": None if quick else str(source),
        "test_subset": test_subset, "recipe": common if quick else {"from": str(source)},
        "settings": experiments.settings(common, list(fields)) if quick else run_settings(out / runs[0]["run_dir"]),
        "machine": experiments.machine(),
        "wall_time_sec": time.perf_counter() - t0,
        "train_time_total_sec": sum(r["train_time_sec"] for r in runs), "models": models, "runs": runs,
        "conclusion": conclusion,
    }
    head = ["model", "seeds", "layers", "mean response std", "median", "max", "test err % (this pass)"]
    body = [[m["model"], str(m["seeds"]), str(len(m["layers"])),
             f"{m['response_std']:.3f}" + (f" ± {m['response_std_std']:.3f}" if m["response_std_std"] else ""),
             f"{statistics.median(m['std_by_layer']):.3f}", f"{max(m['std_by_layer']):.3f}",
             f"{100 * m['measured_error']:.2f}"] for m in models]
    text = md_table(head, body)
    notes = [f"The response of a layer: its output after BN, before the addition and the ReLU, measured in eval mode "
             f"on {'the first ' + str(test_subset) if test_subset else 'all'} test images"
             f"{'' if quick else f' with the trained networks of {source}'}. Its std: per channel over every "
             "image and position, then averaged over the channels. 'layers': the stem and the two 3x3 convs of "
             "every block. Mean response std: the mean over layers (± the std over seeds); the figure shows the "
             "mean over seeds, layer by layer."]
    write_readme(out, result, [text], notes)
    if not quiet:
        print(text + "\n" + "\n".join(conclusion))
    return result


# --- the command line ------------------------------------------------------------------------


def cmd_gradients(args: argparse.Namespace, kw: dict) -> None:
    gradients(args.out, args.depths, every=args.every, **kw)


def cmd_responses(args: argparse.Namespace, kw: dict) -> None:
    if args.test_subset < 0:
        raise UserError(f"--test-subset must not be negative, got {args.test_subset}")
    responses(args.out, args.depths or [20, 56], resnet_depths=args.resnet_depths, source=args.source,
              test_subset=args.test_subset, **kw)


def add_cli(sub) -> None:
    """The `experiment` command with these two experiments added to experiments.py's own."""
    p = experiments.add_cli(sub, {"gradients": cmd_gradients, "responses": cmd_responses})
    p.add_argument("--every", type=int, default=None, help="gradients: steps between layer statistics "
                   "(default 25; quick: 10)")
    p.add_argument("--source", default="results/degradation",
                   help="responses: a degradation experiment's folder holding the trained runs")
    p.add_argument("--test-subset", type=int, default=0, help="responses: first N test images (0: all)")
