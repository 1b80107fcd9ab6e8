"""Evaluation: accuracy, top-5, per-class accuracy and the confusion matrix.

    resnetkit eval runs/r20/model.safetensors --data fashion-mnist [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load
from .data import build_eval_loader
from .errors import UserError
from .plots import plot_confusion
from .runtime import autocast, resolve_device


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    top5: float | None  # None when there are 5 classes or fewer
    confusion: torch.Tensor  # (classes, classes) int64: rows true, columns predicted
    predictions: torch.Tensor  # (N,) int64

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag().double() / totals).tolist()


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, num_classes: int, *, precision: str = "fp32",
                   tta: bool = False, memory_format=torch.contiguous_format) -> EvalResult:
    """Run ``loader.epoch(0)`` through ``model`` in eval mode; ``tta`` averages the logits
    of each image and its mirror image."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top5_hits = torch.zeros((), device=device, dtype=torch.int64)
    preds, targets = [], []
    for x, y in loader.epoch(0):
        x = x.contiguous(memory_format=memory_format)
        with autocast(device, precision):
            logits = model(x)
            if tta:
                logits = (logits + model(x.flip(3))) / 2
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        if num_classes > 5:
            top5_hits += (logits.topk(5, 1).indices == y[:, None]).any(1).sum()
        preds.append(logits.argmax(1))
        targets.append(y)
    model.train(was_training)
    pred, target = torch.cat(preds).cpu(), torch.cat(targets).cpu()
    n = max(len(target), 1)
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes ** 2)
    return EvalResult(
        loss=loss_sum.item() / n,
        accuracy=(pred == target).double().mean().item() if len(target) else 0.0,
        top5=top5_hits.item() / n if num_classes > 5 else None,
        confusion=confusion.view(num_classes, num_classes),
        predictions=pred,
    )


def evaluate_loaded(model: nn.Module, *, data: str | None = None, data_dir: str | None = None,
                    device: str = "auto", batch_size: int | None = None, tta: bool | None = None,
                    workers: int = 2, test_subset: int = 0):
    """Evaluate a model rebuilt by ``load`` on a test split exactly as its training run did:
    same normalisation, precision, memory format, batch size and test-time augmentation, so the
    same weights on the same images give the same number here as at the end of training.
    Returns (result, class names, the test loader)."""
    dev = resolve_device(device)
    model = model.to(dev)
    meta = getattr(model, "metadata", {})
    where = getattr(model, "source", "the model")
    data = data or meta.get("dataset")
    if not data:
        raise UserError(f"{where} does not say which dataset it was trained on: pass --data")
    training = meta.get("training", {})
    loader, classes = build_eval_loader(
        data, data_dir or meta.get("data_dir"), mean=meta.get("mean"), std=meta.get("std"), device=dev,
        batch_size=batch_size or training.get("eval_batch_size", 1000), image_size=training.get("image_size", 224),
        in_chans=model.conv1.in_channels, workers=workers, test_subset=test_subset)
    if model.num_classes != len(classes):
        raise UserError(f"{where} predicts {model.num_classes} classes but {data} has {len(classes)}")
    fmt = torch.channels_last if training.get("channels_last") else torch.contiguous_format
    result = evaluate_model(model.to(memory_format=fmt), loader, len(classes),
                            precision=training.get("precision", "fp32"),
                            tta=training.get("tta", False) if tta is None else tta, memory_format=fmt)
    return result, classes, loader


def cmd_eval(args: argparse.Namespace) -> None:
    model = load(args.weights)
    result, classes, _ = evaluate_loaded(model, data=args.data, data_dir=args.data_dir, device=args.device,
                                         batch_size=args.batch_size, tta=args.tta, workers=args.workers)
    meta = model.metadata
    out = {
        "model": meta.get("model_name"), "dataset": args.data or meta.get("dataset"),
        "accuracy": result.accuracy, "error": result.error, "top5": result.top5, "loss": result.loss,
        "per_class_accuracy": dict(zip(classes, result.per_class())),
    }
    cm_path = Path(args.confusion) if args.confusion else Path(args.weights).with_name("confusion.png")
    plot_confusion(result.confusion, classes, cm_path)
    out["confusion_png"] = str(cm_path)
    if args.json:
        print(json.dumps(out))
        return
    print(f"model     {out['model']}  ({args.weights})")
    print(f"dataset   {out['dataset']} test split, {int(result.confusion.sum())} images")
    print(f"accuracy  {100 * result.accuracy:.2f}%   (error {100 * result.error:.2f}%)")
    if result.top5 is not None:
        print(f"top-5     {100 * result.top5:.2f}%")
    print("per class:")
    width = max(len(c) for c in classes)
    for c, acc in zip(classes, result.per_class()):
        print(f"  {c:<{width}}  {100 * acc:6.2f}%")
    print(f"confusion matrix: {cm_path}")
    sys.stdout.flush()


def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model on a test set")
    p.add_argument("weights", help="model.safetensors written by `resnetkit train`")
    p.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None, help="default: as in training")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with mirrored images (default: as in training)")
    p.add_argument("--confusion", default=None, help="confusion matrix PNG (default: beside the weights)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)
