"""``resnetkit predict`` and ``resnetkit.Predictor``: class names and probabilities for images.

    resnetkit predict fashion-resnet20 shoe.png                    # the shipped model
    resnetkit predict runs/r20/model.safetensors photos/ --top-k 3 --json
    resnetkit predict r20_int8.onnx shoe.png coat.jpg
    resnetkit predict resnet18.pth --model resnet18 cat.jpg        # torchvision-format weights

    >>> import resnetkit
    >>> p = resnetkit.Predictor("fashion-resnet20")
    >>> p.predict(["shoe.png"])[0].label
    'Ankle boot'

Any PNG/JPEG/BMP/... in grey or colour and of any size is converted and resized as the model's
evaluation images were (``inference.prepare_image``); folders are walked for image files and fed
in batches. A file named on the command line that cannot be read is an error; an unreadable file
met while walking a folder is skipped with one warning, as training's folder loader does.

Probabilities are the softmax of the logits; with test-time augmentation (on by default for
models whose training evaluated with it) the logits of each image and its mirror image are
averaged first, as in ``resnetkit eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import UserError
from .inference import (
    SHIPPED,
    Engine,
    ModelInfo,
    OnnxEngine,
    TorchEngine,
    add_engine_args,
    engine_from_args,
    find_images,
    normalized,
    open_model,
    prepare_image,
    read_image,
    shifted_logits,
)

log = logging.getLogger("resnetkit")
ImageLike = str | Path | Image.Image | np.ndarray


@dataclass
class Prediction:
    image: str  # the file, or "<image i>" for an in-memory image
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    index: int  # class index of the most likely class

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]

    def to_dict(self) -> dict:
        return {"image": self.image, "label": self.label, "index": self.index,
                "top": [{"class": c, "probability": p} for c, p in self.top]}


class Predictor:
    """Predict classes with a trained model.

    ``model``: a shipped name (``fashion-resnet20``), a ``model.safetensors``, an exported
    ``.onnx``, a torchvision-format ``.pth`` (with ``model_name``), or a module from
    ``resnetkit.load``. ``backend``/``precision``/``compile``: the inference path
    (``inference.open_model``; default the PyTorch fast path in fp32, or bf16 where the model was
    trained in it and the CPU has it). ``tta``: average with mirror images (default: as the model's
    training evaluated). An engine already opened (``inference.open_model``) is used as it is.
    """

    def __init__(self, model: str | Path | nn.Module | Engine, *, backend: str | None = None,
                 precision: str | None = None, compile: bool = False, tta: bool | None = None, batch_size: int = 64,
                 model_name: str | None = None, device: str = "cpu") -> None:
        if batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        if isinstance(model, (TorchEngine, OnnxEngine)):
            self.engine = model
        else:
            self.engine = open_model(model, backend=backend, precision=precision, compile=compile,
                                     model_name=model_name, device=device)
        self.tta = self.info.training.get("tta", False) if tta is None else tta
        self.batch_size = batch_size

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def prepare(self, images: ImageLike | Iterable[ImageLike]) -> torch.Tensor:
        """uint8 (N, C, H, W): each image as the model's evaluation images were made."""
        out = [prepare_image(im if isinstance(im, (Image.Image, np.ndarray)) else read_image(im), self.info)
               for im, _ in _expand(_as_list(images))]
        return torch.stack(out) if out else torch.zeros(0, *self.info.input_shape, dtype=torch.uint8)

    def probabilities(self, images: ImageLike | Iterable[ImageLike] | torch.Tensor) -> torch.Tensor:
        """(N, classes) probabilities; ``images`` may be uint8 (N, C, H, W) already prepared."""
        x = images if isinstance(images, torch.Tensor) else self.prepare(images)
        probs = []
        for i in range(0, len(x), self.batch_size):
            logits = shifted_logits(self.engine, normalized(x[i:i + self.batch_size], self.info), self.tta,
                                    self.info.training.get("tta_shift", 0))
            probs.append(logits.float().softmax(1).cpu())
        return torch.cat(probs) if probs else torch.zeros(0, len(self.classes))

    def predict(self, images: ImageLike | Iterable[ImageLike], top_k: int = 5) -> list[Prediction]:
        """Top-``top_k`` classes for each image. A path to a folder stands for its images."""
        return [p for batch in self.iter_predict(images, top_k) for p in batch]

    def iter_predict(self, images: ImageLike | Iterable[ImageLike], top_k: int = 5) -> Iterator[list[Prediction]]:
        """``predict`` one batch at a time, for long lists of files."""
        if top_k < 1:
            raise UserError("--top-k must be at least 1")
        k = min(top_k, len(self.classes))
        items = list(_expand(_as_list(images)))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            names, pics = [], []
            for i, (item, walked) in enumerate(chunk, start):
                if isinstance(item, (Image.Image, np.ndarray)):
                    names.append(f"<image {i}>")
                    pics.append(item)
                    continue
                try:
                    pics.append(read_image(item))
                except UserError as e:
                    if not walked:
                        raise
                    log.warning("skipped 1 unreadable image: %s", str(e).removeprefix("cannot read image "))
                    continue
                names.append(str(item))
            if not pics:
                continue
            probs = self.probabilities(pics)
            top = probs.topk(k, 1)
            yield [Prediction(name, [(self.classes[j], float(p)) for p, j in zip(ps.tolist(), js.tolist())],
                              int(js[0])) for name, ps, js in zip(names, top.values, top.indices)]


def _as_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    single = isinstance(images, (str, Path, Image.Image, np.ndarray))
    return [images] if single else list(images)


def _expand(items: Iterable[ImageLike]) -> Iterator[tuple[ImageLike, bool]]:
    """(image, found by walking a folder?) for each image; folders become their image files."""
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            for path in find_images(item):
                yield path, True
        else:
            yield item, False


# --- command line ------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> None:
    engine = engine_from_args(args, args.model, device=args.device)
    predictor = Predictor(engine, tta=args.tta, batch_size=args.batch_size)
    results = []
    if not args.json:
        print(f"# {predictor.info.name} from {args.model}: {engine.describe()}"
              f"{', mirror-image TTA' if predictor.tta else ''}")
    for batch in predictor.iter_predict(args.images, args.top_k):
        if args.json:
            results.extend(p.to_dict() for p in batch)
            continue
        for p in batch:
            print(p.image)
            for name, prob in p.top:
                print(f"  {100 * prob:6.2f}%  {name}")
        sys.stdout.flush()
    if args.json:
        print(json.dumps({"model": predictor.info.name, "source": args.model, "path": engine.describe(),
                          "tta": predictor.tta, "predictions": results}))


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="class names and probabilities for images",
                       description="Class names and probabilities for images, from a trained or shipped model.",
                       epilog=__doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help=f"a shipped model ({', '.join(SHIPPED)}), model.safetensors from `resnetkit train`, "
                        "an .onnx from `resnetkit export`, or a torchvision-format .pth with --model")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with mirrored images (default: as the model's training evaluated)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    add_engine_args(p, default_help="torch: the PyTorch fast path (default; onnx for .onnx files and int8); "
                                    "onnx: onnxruntime (exported on the fly unless MODEL is .onnx)")
    p.set_defaults(func=cmd_predict)
