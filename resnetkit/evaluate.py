"""Evaluation: accuracy, top-5, per-class accuracy and the confusion matrix.

    resnetkit eval runs/r20/model.safetensors --data fashion-mnist [--json]
    resnetkit eval fashion-resnet20                            # the shipped model, as trained
    resnetkit eval fashion-resnet20 --backend onnx --precision int8
    resnetkit eval model_int8.onnx

One loop (``evaluate_model``) scores every way of running a network: the module as training
evaluated it, the PyTorch fast path, and onnxruntime in fp32 or int8 (``inference.py``), so
their accuracies differ only by what the paths compute, never by how they are measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import build_eval_loader
from .errors import UserError
from .inference import (
    SHIPPED,
    Engine,
    add_engine_args,
    engine_from_args,
    load_network,
    module_logits,
    shifted_logits,
    torch_info,
)
from .plots import plot_confusion
from .runtime import resolve_device


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


def evaluate_model(model: nn.Module | Engine, loader, num_classes: int, *, precision: str = "fp32", tta: bool = False,
                   tta_shift: int = 0, memory_format: torch.memory_format = torch.contiguous_format) -> EvalResult:
    """Run ``loader.epoch(0)`` through ``model`` and score it; ``tta`` averages the logits of
    each image and its mirror image, ``tta_shift`` those of shifted copies too (``shifted_logits``).

    ``model`` is an ``nn.Module`` (run here in eval mode with ``precision`` and ``memory_format``,
    as training evaluates) or an engine from ``inference.open_model`` (the PyTorch fast path,
    onnxruntime fp32 or int8), which brings its own precision. Either way the batches, the
    scoring and the averaging of mirrored views are this one loop.
    """
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return _score(partial(module_logits, model, precision=precision, memory_format=memory_format),
                              loader, num_classes, tta, tta_shift)
        finally:
            model.train(was_training)
    return _score(model, loader, num_classes, tta, tta_shift)


def _score(logits_of, loader, num_classes: int, tta: bool, tta_shift: int) -> EvalResult:
    """``logits_of(x, tta=...)`` gives float32 logits of a normalised batch."""
    loss_sum, top5_hits, n_seen = 0.0, 0, 0
    preds, targets = [], []
    for x, y in loader.epoch(0):
        logits = shifted_logits(logits_of, x, tta, tta_shift).to(y.device)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        if num_classes > 5:
            top5_hits += (logits.topk(5, 1).indices == y[:, None]).any(1).sum()
        preds.append(logits.argmax(1))
        targets.append(y)
        n_seen += len(y)
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)
    target = torch.cat(targets).cpu() if targets else torch.zeros(0, dtype=torch.long)
    n = max(n_seen, 1)
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes ** 2)
    return EvalResult(
        loss=float(loss_sum) / n,
        accuracy=(pred == target).double().mean().item() if len(target) else 0.0,
        top5=int(top5_hits) / n if num_classes > 5 else None,
        confusion=confusion.view(num_classes, num_classes),
        predictions=pred,
    )


def evaluate_loaded(model: nn.Module | Engine, *, data: str | None = None, data_dir: str | None = None,
                    device: str = "auto", batch_size: int | None = None, tta: bool | None = None, workers: int = 2,
                    test_subset: int = 0) -> tuple[EvalResult, list[str], object]:
    """Evaluate a model on a test split, its images prepared as in training (same channel
    statistics, image size and, unless told otherwise, test-time augmentation).

    ``model`` rebuilt by ``load``: evaluated exactly as its training run did (same precision,
    memory format and batch size too), so the same weights on the same images give the same
    number here as at the end of training. ``model`` an engine (``inference.open_model``): the
    same images and the same scoring through that engine, which is how the fast path and the
    ONNX files are measured. Returns (result, class names, the test loader)."""
    module = model if isinstance(model, nn.Module) else None
    if module is not None:
        dev = resolve_device(device)
        module = module.to(dev)
        info = torch_info(module)
    else:
        dev = torch.device("cpu") if model.backend == "onnx" else model.device
        info = model.info
    data = data or info.dataset
    if not data:
        raise UserError(f"{info.source} does not say which dataset it was trained on: pass --data")
    training = info.training
    loader, classes = build_eval_loader(
        data, data_dir or info.data_dir, mean=info.mean, std=info.std, device=dev,
        batch_size=batch_size or training.get("eval_batch_size", 1000), image_size=info.image_size,
        in_chans=info.in_chans, workers=workers, test_subset=test_subset)
    images = getattr(loader, "images", None)  # in-memory sets; folders are converted to in_chans as read
    if images is not None and images.shape[1] != info.in_chans:  # normalize() would broadcast 1 channel to 3
        raise UserError(f"{info.source} takes {info.in_chans}-channel images, {data}'s have {images.shape[1]}")
    if len(info.classes) != len(classes):
        raise UserError(f"{info.source} predicts {len(info.classes)} classes but {data} has {len(classes)}")
    tta = training.get("tta", False) if tta is None else tta
    shift = training.get("tta_shift", 0)  # as training's views, unless --no-tta turns them all off
    if module is None:
        return evaluate_model(model, loader, len(classes), tta=tta, tta_shift=shift), classes, loader
    fmt = torch.channels_last if training.get("channels_last") else torch.contiguous_format
    result = evaluate_model(module.to(memory_format=fmt), loader, len(classes),
                            precision=training.get("precision", "fp32"), tta=tta, tta_shift=shift, memory_format=fmt)
    return result, classes, loader


def cmd_eval(args: argparse.Namespace) -> None:
    # No --backend/--precision: the network exactly as training evaluated it (its numbers, to the
    # last digit); with either, the chosen engine. An .onnx file is always an engine.
    as_trained = (args.backend is None and args.precision is None and not args.compile
                  and Path(args.weights).suffix.lower() != ".onnx")
    if as_trained:
        model = load_network(args.weights, model_name=args.model_name,
                             model_kwargs={"num_classes": args.num_classes} if args.num_classes else None)
        path = "as trained"
    else:
        model = engine_from_args(args, args.weights, device=args.device)
        path = model.describe()
    result, classes, _ = evaluate_loaded(model, data=args.data, data_dir=args.data_dir, device=args.device,
                                         batch_size=args.batch_size, tta=args.tta, workers=args.workers)
    info = torch_info(model) if as_trained else model.info
    out = {
        "model": info.name, "source": info.source, "path": path, "dataset": args.data or info.dataset,
        "accuracy": result.accuracy, "error": result.error, "top5": result.top5, "loss": result.loss,
        "per_class_accuracy": dict(zip(classes, result.per_class())),
    }
    # Beside the model file by default; a shipped model lives inside the installed package,
    # which is no place to write: only where asked.
    shipped = args.weights in SHIPPED and not Path(args.weights).exists()
    cm_path = Path(args.confusion) if args.confusion else None if shipped else \
        Path(args.weights).with_name("confusion.png")
    if cm_path is not None:
        plot_confusion(result.confusion, classes, cm_path)
    out["confusion_png"] = str(cm_path) if cm_path else None
    if args.json:
        print(json.dumps(out))
        return
    print(f"model     {out['model']}  ({args.weights})")
    print(f"path      {path}")
    print(f"dataset   {out['dataset']} test split, {int(result.confusion.sum())} images")
    print(f"accuracy  {100 * result.accuracy:.2f}%   (error {100 * result.error:.2f}%)")
    if result.top5 is not None:
        print(f"top-5     {100 * result.top5:.2f}%")
    print("per class:")
    width = max(len(c) for c in classes)
    for c, acc in zip(classes, result.per_class()):
        print(f"  {c:<{width}}  {100 * acc:6.2f}%")
    if cm_path is not None:
        print(f"confusion matrix: {cm_path}")
    sys.stdout.flush()


def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model on a test set")
    p.add_argument("weights", metavar="MODEL",
                   help="model.safetensors written by `resnetkit train`, an .onnx from `resnetkit export`, "
                        f"a shipped model ({', '.join(SHIPPED)}), or a torchvision-format .pth with --model")
    p.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None, help="default: as in training")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with mirrored images (default: as in training)")
    p.add_argument("--confusion", default=None,
                   help="confusion matrix PNG (default: beside the model file; none for a shipped model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_args(p, default_help="default: the network exactly as its training run evaluated it (reproduces "
                                    "its numbers); torch: the PyTorch fast path; onnx: onnxruntime (an .onnx "
                                    "MODEL, or exported on the fly)")
    p.set_defaults(func=cmd_eval)
