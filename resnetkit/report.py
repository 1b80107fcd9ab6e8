"""One self-contained HTML page for a training run or an experiment.

    resnetkit report runs/r20 -o r20.html                # a run made by `resnetkit train`
    resnetkit report results/shortcuts -o shortcuts.html # a folder made by `resnetkit experiment`

    >>> from resnetkit import report
    >>> html = report.build_report("runs/r20")

The kind of folder is read from what it holds: ``results.json`` makes an experiment,
``summary.json`` a training run. Everything the page shows is inside the file (images as
base64 ``data:`` URIs, the architecture as inline SVG, the CSS in a ``<style>``, no script),
so it opens offline and can be mailed or archived as one file.

A run's page re-evaluates the saved model on the test split on the CPU, because neither the
confusion matrix nor the per-image predictions are stored by training. A part that cannot be
made (weights deleted, dataset moved) is replaced by a note saying why; the rest still renders.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import math
import re
import reprlib
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from .checkpoint import atomic_write_text, load
from .config import TrainConfig
from .data import Unreadable
from .draw import draw_svg
from .errors import UserError
from .evaluate import evaluate_loaded
from .experiments import PAPER_TABLE3, PAPER_TABLE6, fmt_pct
from .plots import plot_confusion, plot_curves
from .registry import create_model
from .rundir import read_metrics

GRID = 48  # test images shown in the grid
THUMB = 84  # px: the grid's image size; 28 px MNIST digits are drawn at 3x, pixel for pixel
MAX_CONFUSION_TABLE = 20  # classes; a larger confusion matrix is drawn as an image instead


# --------------------------------------------------------------------------------------------
# Small HTML helpers.


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} src="{_png_uri(png)}" alt="{_e(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _value(v: object) -> str:
    """A setting as config.yaml spells it: lists comma-separated, booleans lower-case. Anything
    else (a hand-edited file) is shown abridged: YAML aliases can nest a billion elements in a line."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v):
        return ", ".join(map(str, v)) or "-"
    return str(v) if isinstance(v, (int, float, str)) else reprlib.repr(v)


def _pairs(items, changed: set[str] | None = None) -> str:
    """Key-value pairs in a responsive grid of columns (settings, recipe, machine)."""
    return '<div class="settings">' + "".join(
        f'<div class="setting{" changed" if changed and k in changed else ""}"><span class="k">{_e(k)}</span>'
        f'<span class="v">{_e(_value(v))}</span></div>' for k, v in items) + "</div>"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8, a 5000-digit number
        raise UserError(f"cannot read {path}: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise UserError(f"cannot read {path}: it holds a JSON {type(value).__name__}, not an object")
    return value


def _real(v: object) -> bool:
    """A number a figure or a format can use: not a bool or a string, not NaN or infinite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(100 * float(v))  # percentages are drawn: 1e308 would overflow there
    except OverflowError:  # an integer beyond float's range
        return False


def _plottable(row: dict) -> bool:
    return _real(row["step"]) and all(_real(row[k]) for k in ("train_error", "test_error") if k in row)


def _figure_png(draw, path_name: str = "figure.png") -> bytes:
    """PNG bytes from a plots.py function that can only write files: ``draw(path)``."""
    with tempfile.TemporaryDirectory(prefix="resnetkit-report-") as tmp:
        path = Path(tmp) / path_name
        draw(path)
        return path.read_bytes()


def curves_png(run_dir: Path, title: str = "") -> bytes | None:
    """The run's curves.png, or the same figure redrawn from metrics.jsonl; None if neither exists."""
    if (run_dir / "curves.png").is_file():
        return (run_dir / "curves.png").read_bytes()
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if _plottable(r)]
    return _figure_png(lambda p: plot_curves(rows, p, title=title)) if rows else None


# --------------------------------------------------------------------------------------------
# A training run.


@dataclasses.dataclass
class Evaluation:
    """What the run page needs from one pass over the test split."""

    classes: list[str]
    confusion: torch.Tensor  # (K, K): rows true, columns predicted
    per_class: list[float]
    accuracy: float
    samples: list[tuple[torch.Tensor, int, int]]  # the first GRID test images: (uint8 C,H,W, true, predicted)


def evaluate_run(run_dir: Path, model: torch.nn.Module, config: dict) -> Evaluation:
    """Evaluate the saved model on the CPU as training did (``evaluate.evaluate_loaded``: same
    normalisation, precision, memory format, batch size, TTA and ``test_subset``), so the numbers
    match summary.json."""
    subset = config.get("test_subset")
    subset = subset if isinstance(subset, int) and not isinstance(subset, bool) and subset > 0 else 0
    result, classes, loader = evaluate_loaded(model, device="cpu", workers=0, test_subset=subset)
    items = [loader.sample(i) for i in range(min(GRID, len(loader.labels)))]
    images = [it for it in items if not isinstance(it, Unreadable)]  # skipped in evaluation too
    preds = result.predictions.tolist()
    samples = [(x, y, preds[i]) for i, (x, y) in enumerate(images)]
    return Evaluation(classes, result.confusion, result.per_class(), result.accuracy, samples)


def _sample_png(image: torch.Tensor) -> bytes:
    """One test image as PNG at THUMB px: small images enlarged by a whole factor with
    nearest-neighbour (pixels stay sharp squares), large ones shrunk smoothly."""
    arr = np.ascontiguousarray(image.cpu().numpy().transpose(1, 2, 0))  # H, W, C
    pic = Image.fromarray(arr if arr.shape[2] == 3 else arr[:, :, 0])  # RGB, or the first channel as grey
    side = max(pic.size)
    if side < THUMB:
        k = THUMB // side
        pic = pic.resize((pic.width * k, pic.height * k), Image.NEAREST)
    elif side > THUMB:
        pic.thumbnail((THUMB, THUMB), Image.BILINEAR)
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _grid_html(ev: Evaluation) -> str:
    cells = []
    for i, (x, y, p) in enumerate(ev.samples):
        wrong = y != p
        cls = "sample mistake" if wrong else "sample"
        truth, guess = ev.classes[y], ev.classes[p]
        caption = (f'<span class="true">true: {_e(truth)}</span>'
                   f'<span class="pred">pred: {_e(guess)}</span>')
        cells.append(f'<figure class="{cls}" data-index="{i}" data-true="{_e(truth)}" data-pred="{_e(guess)}">'
                     f'{_img(_sample_png(x), f"test image {i}: {truth}")}<figcaption>{caption}</figcaption></figure>')
    wrong = sum(y != p for _, y, p in ev.samples)
    head = (f'<p class="caption">The first {len(ev.samples)} test images in file order, with the true class '
            f'and the model\'s prediction; <span class="bad">{wrong} mistake{"s" * (wrong != 1)}</span> '
            f'outlined in red.</p>')
    return head + '<div class="grid">' + "".join(cells) + "</div>"


def _confusion_html(ev: Evaluation) -> str:
    k = len(ev.classes)
    total = int(ev.confusion.sum())
    head = (f'<p class="caption">{total:,} test images; rows: true class, columns: predicted class. '
            f"Correct predictions on the diagonal (blue), mistakes off it (red), shaded by their share "
            f"of the row. Accuracy recomputed here: {_pct(ev.accuracy)}.</p>")
    if k > MAX_CONFUSION_TABLE:
        png = _figure_png(lambda p: plot_confusion(ev.confusion, ev.classes, p))
        return head + f'<div class="confusion">{_img(png, "confusion matrix", "figure")}</div>'
    rows = []
    for i in range(k):
        row_total = max(1, int(ev.confusion[i].sum()))
        cells = []
        for j in range(k):
            n = int(ev.confusion[i, j])
            share = n / row_total
            if n == 0 and i != j:
                cells.append('<td class="zero" data-count="0"></td>')
                continue
            # A faint tint even for a small share, so every non-zero cell stands out from the zeros.
            rgb, cls = ("59,110,168", "hit") if i == j else ("200,50,50", "miss")
            style = f"background:rgba({rgb},{0.1 + 0.9 * share:.3f})" + (";color:#fff" if share > 0.5 else "")
            cells.append(f'<td class="{cls}" data-count="{n}" style="{style}">{n}</td>')
        rows.append(f'<tr><th scope="row">{_e(ev.classes[i])}</th>{"".join(cells)}'
                    f'<td class="acc">{_pct(ev.per_class[i], 1)}</td></tr>')
    cols = "".join(f'<th scope="col">{_e(c)}</th>' for c in ev.classes)
    table = (f'<table class="confusion"><thead><tr><th class="corner">pred &rarr;<br>true &darr;</th>{cols}'
             f'<th class="acc" title="accuracy of the class">acc.</th></tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table>')
    return head + f'<div class="scroll">{table}</div>'


def _settings_html(config: dict) -> str:
    defaults = dataclasses.asdict(TrainConfig())
    changed = {k for k, v in config.items() if k in defaults and defaults[k] != v}
    return ('<p class="caption">From config.yaml: the recipe, the config file and the flags, merged. '
            '<b>Bold</b>: differs from the built-in default.</p>' + _pairs(config.items(), changed))


def _metrics_html(summary: dict) -> str:
    def card(label: str, value: str, cls: str = "") -> str:
        return (f'<div class="metric {cls}"><div class="value">{_e(value)}</div>'
                f'<div class="label">{_e(label)}</div></div>')

    t = summary.get("train_time_sec")
    ips = summary.get("images_per_sec")
    epochs = summary.get("epochs")
    cards = [
        card("test accuracy", _pct(summary.get("test_accuracy")), "main"),
        card("test error", _pct(summary.get("test_error"))),
        card("top-5 accuracy", _pct(summary.get("test_top5"))),
        card("final training error", _pct(summary.get("final_train_error"))),
        card("test loss", f"{summary['test_loss']:.4f}" if summary.get("test_loss") is not None else "-"),
        card("training time", f"{t:.1f} s" if t is not None else "-"),
        card("images/s (median)", f"{ips:,.0f}" if ips is not None else "-"),
        card("parameters", f"{summary['params']:,}" if summary.get("params") is not None else "-"),
        card("steps" + (f" ({epochs:.2f} epochs)" if epochs is not None else ""), f"{summary.get('steps', '-')}"),
        card("device, precision", f"{summary.get('device', '-')}, {summary.get('precision', '-')}"),
    ]
    return f'<div class="metrics">{"".join(cards)}</div>'


def _architecture_svg(model: torch.nn.Module, input_size: tuple[int, ...] | None) -> str:
    """The compact diagram, traced from a weightless copy on the meta device: the forward pass
    the trace makes must not touch the loaded model (BN statistics, memory)."""
    meta = model.metadata
    with torch.device("meta"):
        shadow = create_model(meta["model_name"], **meta.get("model_args", {}))
    svg = draw_svg(shadow, style="compact", input_size=input_size)
    return svg.split("?>", 1)[-1] if svg.startswith("<?xml") else svg


# The summary.json values the page formats as numbers; another type there gets a note and a "-".
_SUMMARY_NUMBERS = ("test_accuracy", "test_error", "test_top5", "final_train_error", "test_loss",
                    "train_time_sec", "images_per_sec", "params", "epochs")


def _run_page(run_dir: Path) -> tuple[str, str, list[str]]:
    """(title, body HTML, notes) of a training run's page."""
    summary = _read_json(run_dir / "summary.json")
    notes: list[str] = []
    for key in _SUMMARY_NUMBERS:
        if summary.get(key) is not None and not _real(summary[key]):
            notes.append(f"summary.json: {key} is {reprlib.repr(summary[key])}, not a number")
            summary[key] = None
    config: dict = {}
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_bytes()) or {}
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            notes.append(f"config.yaml unreadable: {(str(e).splitlines() or [type(e).__name__])[0]}")
        if not isinstance(config, dict):
            notes.append(f"config.yaml unreadable: it holds a {type(config).__name__}, not settings")
            config = {}
    title = f"{summary.get('model', '?')} on {summary.get('dataset', '?')}"
    parts = [f'<section id="results"><h2>Results</h2>{_metrics_html(summary)}</section>']

    # Curves and confusion matrix side by side: the first thing a reader compares.
    curves = curves_png(run_dir, title)
    curves_html = _img(curves, "training and test error curves", "figure") if curves else \
        _note("no curves.png and no metrics.jsonl in this folder")
    evaluation, model = None, None
    weights = run_dir / "model.safetensors"
    if weights.is_file():
        try:
            model = load(weights)
            evaluation = evaluate_run(run_dir, model, config)
        except (UserError, OSError, KeyError) as e:
            notes.append(f"could not evaluate the model: {e}")
    else:
        notes.append(f"no model.safetensors in {run_dir}: no confusion matrix, test images or diagram")
    confusion = (f'<section id="confusion"><h2>Confusion matrix</h2>{_confusion_html(evaluation)}</section>'
                 if evaluation else "")
    parts.append('<div class="pair">'
                 f'<section id="curves"><h2>Error curves</h2><p class="caption">Training error (dashed, '
                 f'running, under augmentation) and test error (bold, after each epoch) against steps.</p>'
                 f"{curves_html}</section>{confusion}</div>")

    if evaluation:
        parts.append(f'<section id="samples"><h2>Test images</h2>{_grid_html(evaluation)}</section>')
    if config:
        parts.append(f'<section id="settings"><h2>Settings</h2>{_settings_html(config)}</section>')
    if model is not None:
        size = tuple(evaluation.samples[0][0].shape) if evaluation and evaluation.samples else \
            tuple(model.default_input_size)
        try:
            svg = _architecture_svg(model, size)
            parts.append('<section id="architecture"><h2>Architecture</h2><p class="caption">One box per '
                         f'residual block, traced from the saved model (input {"x".join(map(str, size))}).'
                         f'</p><div class="diagram">{svg}</div></section>')
        except (UserError, KeyError) as e:
            notes.append(f"could not draw the architecture: {e}")
    sub = (f"{_e(run_dir)} &middot; {summary.get('steps', '?')} steps &middot; "
           f"torch {_e(summary.get('torch', '?'))}")
    shown = "".join(_note(n) for n in notes)  # what is missing and why, above what is there
    return title, f'<p class="sub">{sub}</p>{shown}' + "".join(parts), notes


# --------------------------------------------------------------------------------------------
# An experiment.


def _experiment_page(exp_dir: Path) -> tuple[str, str, list[str]]:
    r = _read_json(exp_dir / "results.json")
    notes: list[str] = []
    title = f"Experiment: {r.get('experiment', exp_dir.name)}"
    parts = []
    machine = r.get("machine") or {}
    where = [machine.get("processor"), f"{machine['cpus']} CPUs" if machine.get("cpus") else None, machine.get("cuda")]
    wall = r.get("wall_time_sec")
    facts = [("data", r.get("data")), ("seeds", r.get("seeds")),
             ("wall time", f"{wall / 60:.1f} min" if wall is not None else None),
             ("machine", ", ".join(str(x) for x in where if x) or None), ("torch", machine.get("torch"))]
    parts.append(f'<section id="about"><p class="lead">{_e(r.get("description", ""))}</p>'
                 f"{_pairs((k, v) for k, v in facts if v is not None)}</section>")

    if (exp_dir / "figure.png").is_file():
        caption = r.get("caption") if isinstance(r.get("caption"), str) else ""
        parts.append(f'<section id="figure"><h2>Comparison</h2><p class="caption">{_e(caption)}</p>'
                     f'{_img((exp_dir / "figure.png").read_bytes(), "comparison figure", "figure wide")}</section>')
    else:
        notes.append(f"no figure.png in {exp_dir}")
        parts.append(_note(notes[-1]))

    runs = r.get("runs", [])
    first_run: dict[str, dict] = {}
    for run in runs:
        first_run.setdefault(run["name"], run)
    # The paper's number for the same depth / option, as the README's table shows it.
    paper, key, label = {"degradation": (PAPER_TABLE6, "depth", "Table 6"),
                         "shortcuts": (PAPER_TABLE3, "option", "Table 3")}.get(r.get("experiment"),
                                                                                 ({}, "", ""))
    rows = []
    for m in r.get("models", []):
        name = m["model"]
        link = f'<a href="#run-{_slug(first_run[name]["run_dir"])}">{_e(name)}</a>' if name in first_run else _e(name)
        ref = f"{paper[m[key]]:.2f}" if m.get(key) in paper and m.get("family") != "plain" else "-"
        rows.append(f'<tr><td class="name">{link}</td><td class="num">{m["params"]:,}</td>'
                    f'<td class="num">{_e(fmt_pct(m["train_error"], m.get("train_error_std")))}</td>'
                    f'<td class="num">{_e(fmt_pct(m["test_error"], m.get("test_error_std")))}</td>'
                    + (f'<td class="num">{ref}</td>' if paper else "")
                    + f'<td class="num">{m["train_time_sec"]:.0f}</td></tr>')
    seeds = r.get("seeds", 1)
    spread = " (mean ± std over seeds)" if seeds and seeds > 1 else ""
    paper_th = f"<th>paper {label}</th>" if paper else ""
    paper_note = f" The paper column is {_e(r['paper_note'])}." if paper and r.get("paper_note") else ""
    parts.append('<section id="models"><h2>Models</h2>'
                 f'<p class="caption">Errors in %{spread}. Training error: the running error over the last '
                 f'10% of logged steps; test error: the full test split after the last step.{paper_note}</p>'
                 '<table class="models"><thead><tr><th>model</th><th>params</th><th>train err %</th>'
                 f'<th>test err %</th>{paper_th}<th>time (s)</th></tr></thead><tbody>{"".join(rows)}</tbody>'
                 '</table></section>')
    conclusion = "".join(f"<li>{_e(c)}</li>" for c in r.get("conclusion", []))
    parts.append(f'<section id="conclusion"><h2>What the numbers show</h2><ul class="conclusion">{conclusion}'
                 "</ul></section>")
    parts.append(f'<section id="command"><h2>How it was made</h2><pre>{_e(r.get("command") or "(not recorded)")}'
                 f'</pre><p class="caption">Recipe given to every run:</p>'
                 f"{_pairs((r.get('recipe') or {}).items())}</section>")

    cards = []
    for run in runs:
        run_dir = exp_dir / run["run_dir"]
        png = curves_png(run_dir, f"{run['name']} seed {run['seed']}")
        pic = _img(png, f"curves of {run['name']} seed {run['seed']}", "thumb") if png else \
            _note(f"no curves for {run['run_dir']}")
        cards.append(f'<div class="run" id="run-{_slug(run["run_dir"])}"><h3>{_e(run["name"])} '
                     f'<span class="seed">seed {run["seed"]}</span></h3>{pic}'
                     f'<p>test error {_pct(run["final_test_error"])} &middot; train error '
                     f'{_pct(run["final_train_error"])} &middot; {run["train_time_sec"]:.0f} s</p>'
                     f'<p class="path"><code>{_e(run["run_dir"])}</code></p></div>')
    parts.append(f'<section id="runs"><h2>Runs</h2><p class="caption">Every run is an ordinary training '
                 f'folder: <code>resnetkit report {_e(exp_dir)}/runs/NAME</code> gives its own page.</p>'
                 f'<div class="runs">{"".join(cards)}</div></section>')
    return title, "".join(parts), notes


# --------------------------------------------------------------------------------------------
# The page.

_CSS = """
body { margin: 0; background: #f4f6f8; color: #1f2328;
       font: 15px/1.45 "DejaVu Sans", Arial, Helvetica, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 48px; }
h1 { font-size: 26px; margin: 8px 0 2px; }
h2 { font-size: 18px; margin: 0 0 8px; color: #24415f; }
h3 { font-size: 15px; margin: 0 0 6px; }
section { background: #ffffff; border: 1px solid #d6dde5; border-radius: 8px; padding: 16px 18px;
          margin: 16px 0; }
.sub { color: #5b6670; margin: 0 0 8px; font-size: 13px; }
.lead { font-size: 16px; margin: 6px 0 12px; }
.caption { color: #4d5863; font-size: 13px; margin: 0 0 10px; }
.note { color: #8a5a00; background: #fff6e0; border: 1px solid #f0d9a0; border-radius: 6px; padding: 8px 10px; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; }
.pair > section { margin: 0; }
img.figure { max-width: 100%; height: auto; display: block; }
img.wide { margin: 0 auto; }
.metrics { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.metric { border: 1px solid #dfe5eb; border-radius: 6px; padding: 8px 12px; background: #fafbfc; }
.metric .value { font-size: 20px; font-weight: bold; }
.metric .label { font-size: 12px; color: #5b6670; }
.metric.main { background: #e8f0fa; border-color: #9db8d9; }
.metric.main .value { color: #24558f; }
.settings { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 2px 18px; }
.setting { display: flex; justify-content: space-between; gap: 10px; border-bottom: 1px solid #eef1f4;
           padding: 2px 0; font-size: 13px; }
.setting .k { color: #5b6670; }
.setting .v { font-family: "DejaVu Sans Mono", monospace; text-align: right; overflow-wrap: anywhere; }
.setting.changed .v { font-weight: bold; color: #1f2328; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
table.confusion th, table.confusion td { border: 1px solid #e3e8ee; padding: 3px 6px; text-align: center; }
table.confusion td { min-width: 26px; font-variant-numeric: tabular-nums; }
table.confusion thead th { font-weight: normal; color: #4d5863; max-width: 70px; overflow-wrap: anywhere; }
table.confusion th[scope=row] { text-align: right; font-weight: normal; color: #4d5863; white-space: nowrap; }
table.confusion th.corner { font-size: 11px; color: #8a949e; white-space: nowrap; max-width: none; }
table.confusion td.acc, table.confusion th.acc { border-left: 2px solid #b8c4d0; color: #24415f;
                                            white-space: nowrap; max-width: none; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(100px, 1fr)); gap: 10px; }
figure.sample { margin: 0; padding: 6px 4px; text-align: center; border: 2px solid #e3e8ee;
                border-radius: 6px; background: #ffffff; }
figure.sample img { width: 84px; height: 84px; object-fit: contain; image-rendering: pixelated;
                    display: block; margin: 0 auto 4px; }
figure.sample figcaption { font-size: 11.5px; line-height: 1.3; }
figure.sample figcaption span { display: block; overflow-wrap: anywhere; }
figure.sample .true { color: #4d5863; }
figure.mistake { border-color: #d03030; background: #fdf0f0; }
figure.mistake .pred { color: #c02020; font-weight: bold; }
.bad { color: #c02020; font-weight: bold; }
.diagram { overflow: auto; }
.diagram svg { display: block; margin: 0 auto; }
table.models th, table.models td { border-bottom: 1px solid #e3e8ee; padding: 5px 12px; text-align: left; }
table.models thead th { border-bottom: 2px solid #b8c4d0; }
table.models td.num { text-align: right; font-variant-numeric: tabular-nums; }
a { color: #24558f; }
ul.conclusion li { margin: 4px 0; }
pre { background: #f3f5f7; border: 1px solid #e1e6eb; border-radius: 6px; padding: 8px 10px;
      overflow-x: auto; font-size: 13px; }
.runs { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
.run { border: 1px solid #e1e6eb; border-radius: 6px; padding: 10px; }
.run img.thumb { width: 100%; height: auto; display: block; }
.run p { margin: 4px 0 0; font-size: 13px; }
.run .seed, .run .path { color: #6b7680; font-weight: normal; font-size: 12px; }
"""


def _build(run_dir: str | Path) -> tuple[str, list[str]]:
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"report: folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"report: not a folder: {path}")
    if (path / "results.json").is_file():
        title, body, notes = _experiment_page(path)
    elif (path / "summary.json").is_file():
        title, body, notes = _run_page(path)
    else:
        raise UserError(f"report: neither a training run (summary.json) nor an experiment (results.json): {path}")
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} (resnetkit report)</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body><main>",
        f"<h1>{_e(title)}</h1>",
        body,
        "</main></body>",
        "</html>",
        "",
    ])
    return page, notes


def build_report(run_dir: str | Path) -> str:
    """The report page of a training run or an experiment folder, as one HTML string."""
    return _build(run_dir)[0]


def write_report(run_dir: str | Path, out_path: str | Path) -> Path:
    """Write the report of ``run_dir`` to ``out_path`` atomically (whole or not at all)."""
    out = Path(out_path)
    atomic_write_text(out, build_report(run_dir))
    return out


# --------------------------------------------------------------------------------------------
# Command line: `resnetkit report`.


def cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.output) if args.output else Path(args.folder) / "report.html"
    page, notes = _build(args.folder)
    atomic_write_text(out, page)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")


def add_cli(sub) -> None:
    """Register `resnetkit report` on the command line's subparsers."""
    p = sub.add_parser("report", help="one self-contained HTML page for a training run or an experiment",
                       description="A single HTML file, images inline, for a folder made by "
                                   "`resnetkit train --out` or `resnetkit experiment --out`.")
    p.add_argument("folder", metavar="RUN_DIR", help="a training run or an experiment folder")
    p.add_argument("-o", "--output", metavar="FILE", default=None, help="default: RUN_DIR/report.html")
    p.set_defaults(func=cmd_report)
