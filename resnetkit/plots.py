"""Figures, in the paper's style: training error dashed, test error bold, against iterations."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl rows: (per-log-step rows, per-epoch rows)."""
    steps = [r for r in rows if "train_error" in r and "test_error" not in r]
    epochs = [r for r in rows if "test_error" in r]
    return steps, epochs


def draw_curves(ax, rows: list[dict], color=None, label: str | None = None) -> None:
    steps, epochs = split_rows(rows)
    if steps:
        ax.plot([r["step"] for r in steps], [100 * r["train_error"] for r in steps], "--",
                color=color, linewidth=1, alpha=0.8)
    if epochs:
        ax.plot([r["step"] for r in epochs], [100 * r["test_error"] for r in epochs], "-", color=color,
                linewidth=2.2, marker="o", markersize=3, label=label)  # a marker keeps one epoch visible


def draw_band(ax, runs: list[list[dict]], color=None, label: str | None = None) -> None:
    """Several seeds of one model: mean curves with a shaded mean +- std band (one seed: the
    plain curves). Seeds of one recipe log at the same steps, so the curves align by index."""
    if len(runs) == 1:
        draw_curves(ax, runs[0], color=color, label=label)
        return
    for part, key, style in ((0, "train_error", dict(linestyle="--", linewidth=1, alpha=0.8)),
                             (1, "test_error", dict(linewidth=2.2, marker="o", markersize=3, label=label))):
        series = [split_rows(rows)[part] for rows in runs]
        n = min(len(s) for s in series)
        if n == 0:
            continue
        values = torch.tensor([[100 * r[key] for r in s[:n]] for s in series])
        mean, std = values.mean(0), values.std(0)
        steps = [r["step"] for r in series[0][:n]]
        ax.plot(steps, mean, color=color, **style)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18 if part else 0.1, linewidth=0)


def plot_curves(rows: list[dict], path: str | Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw_curves(ax, rows, color="C0", label="test error")
    ax.plot([], [], "--", color="C0", linewidth=1, label="training error")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path) -> None:
    k = len(classes)
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * k, 1.2 + 0.55 * k) if k <= 20 else (12, 11))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test set)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
