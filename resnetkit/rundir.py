"""A training run's output folder, and the progress a person watches while it fills.

    OUT/config.yaml        resolved settings            OUT/checkpoint.pt    state for --resume
    OUT/metrics.jsonl      one row per log step/epoch   OUT/model.safetensors  final weights
    OUT/events.out.tfevents.*  TensorBoard              OUT/summary.json, OUT/curves.png

Every write goes through ``RunDir``, whose methods do nothing on ranks other than 0, so the
same loop can run under torchrun. Files that must survive a crash are written atomically;
metrics.jsonl is append-only, and a line torn by a crash is skipped when read back.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
from pathlib import Path

from torch import nn
from tqdm import tqdm

from .checkpoint import atomic_write_text, save_checkpoint, save_weights
from .config import TrainConfig, to_yaml
from .errors import UserError
from .plots import plot_curves


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines log (metrics.jsonl, layers.jsonl). A line that is not a JSON object
    with an integer "step", as every row we write has, is skipped: a line torn by a crash
    mid-append (even mid-character), or damage, must not stop a resume or a report."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    rows = []
    for line in raw.splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON or UTF-8, a 5000-digit number, [[[[...
            continue
        if isinstance(row, dict) and type(row.get("step")) is int:
            rows.append(row)
    return rows


def progress_bar(total: int, epoch: int, epochs: int, done: int = 0) -> tqdm:
    """One bar per epoch (tqdm): steps, loss, accuracy and img/s in its postfix. Silent unless
    stderr is a terminal, so logs and CI stay clean."""
    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                disable=not sys.stderr.isatty(), leave=True, dynamic_ncols=True)


class RunInUse(UserError):
    """Another process is training in the folder."""


class RunDir:
    """The output folder. Every write goes through here; on ranks other than 0 nothing is written."""

    # What a run leaves behind; a new run into the same folder would mix with or replace it.
    OUTPUTS = ("metrics.jsonl", "layers.jsonl", "checkpoint.pt", "model.safetensors", "summary.json", "curves.png")

    def __init__(self, out: str | Path, enabled: bool, tensorboard: bool = True, *, keep: bool = False,
                 overwrite: bool = False) -> None:
        """``keep``: continue the run in ``out`` (--resume). Otherwise a folder that already
        holds a run is refused, unless ``overwrite`` says to delete that run's files."""
        self.path, self.enabled = Path(out), enabled
        self.tb = None
        if enabled:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create output folder {self.path}: {e.strerror}") from None
            if not os.access(self.path, os.W_OK):
                raise UserError(f"output folder {self.path} is not writable")
            self.lock()
            if not keep:
                self.clear(overwrite)
            if tensorboard:
                # Imported here: TensorBoard takes a second to import and is optional (--no-tensorboard).
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path))

    def lock(self) -> None:
        """Hold an exclusive lock on the folder while training, so that a second process (a
        repeated --resume, another copy of an experiment) cannot interleave its writes with ours.
        The lock is on the folder itself (no lock file left behind), and the kernel drops it when
        this process ends, however it ends."""
        self._lock = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise RunInUse(f"{self.path} is in use: another resnetkit process is training there") from None

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if getattr(self, "_lock", None) is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def clear(self, overwrite: bool) -> None:
        held = [self.path / name for name in self.OUTPUTS if (self.path / name).exists()]
        held += list(self.path.glob("events.out.tfevents.*"))
        if held and not overwrite:
            raise UserError(f"{self.path} already holds a run ({held[0].name}); pass --resume to continue it "
                            "or --overwrite to replace it")
        for p in held:
            p.unlink()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_config(self, cfg: TrainConfig) -> None:
        if self.enabled:
            # The run's settings, not how this command was started: a resumed run's file stays the same.
            atomic_write_text(self.path / "config.yaml", to_yaml(dataclasses.replace(cfg, resume=False,
                                                                                     overwrite=False)))

    def log(self, row: dict, name: str = "metrics.jsonl") -> None:
        if not self.enabled:
            return
        try:
            with open(self.path / name, "a") as f:  # append-only; a torn last line is skipped
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {self.path / name}: {e.strerror}") from None
        if self.tb is not None and name == "metrics.jsonl":
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return read_metrics(path) if self.enabled and path.exists() else []

    def truncate_log(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we restart from, so that each step
        is logged once. The layer statistics of step s are taken before it, hence the ``<``."""
        for name, keep in (("metrics.jsonl", lambda s: s <= step), ("layers.jsonl", lambda s: s < step)):
            path = self.path / name
            if self.enabled and path.exists():
                rows = [r for r in read_metrics(path) if keep(r["step"])]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def checkpoint(self, state: dict) -> None:
        if self.enabled:
            save_checkpoint(self.checkpoint_path, state)

    def finish(self, model: nn.Module, meta: dict, summary: dict, rows: list[dict]) -> None:
        if not self.enabled:
            return
        save_weights(self.path / "model.safetensors", model, meta)
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_curves(rows, self.path / "curves.png", title=f"{summary['model']} on {summary['dataset']}")
