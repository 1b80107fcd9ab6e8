"""Running a trained network: from a model (a file or a shipped name) and images to logits.

A model comes from one of four places, all opened by ``open_model``:

* a ``model.safetensors`` written by ``resnetkit train`` (``checkpoint.load``);
* a torchvision-format ``.pth`` state dict, with the registered name that builds it;
* an ``.onnx`` file written by ``resnetkit export`` (its metadata carries what the weights file did);
* a shipped name: weights inside the package (``SHIPPED``), e.g. ``fashion-resnet20``.

Whatever the source, what comes out is an *engine*: a callable that maps a batch of normalised
float images (N, C, H, W) to float32 logits (N, classes), with ``info`` (classes, channel
statistics, the image size the network saw). Evaluation and prediction only ever call engines, so
every path below is measured by the same code.

* ``TorchEngine(fast=False)``: the network exactly as training evaluated it (its precision,
  memory format and test-time augmentation), so ``resnetkit eval`` repeats training's numbers.
* ``TorchEngine(fast=True)``, the PyTorch fast path: (1) each BatchNorm folded into the
  convolution before it: at inference BN is the affine map y = g (x - m) / sqrt(v + eps) + b,
  so conv-then-BN is one conv with weights scaled by s = g / sqrt(v + eps) per output channel
  and bias b - m s, and a ResNet loses a third of its layers; (2) channels_last, the layout
  oneDNN's convolutions work in; (3) bf16 autocast, by default only where the model trained in
  it and bf16 beats fp32 on this CPU (``runtime.bf16_pays``: AMX, or AVX512-BF16 on AMD);
  (4) ``torch.compile`` if asked (the first batch compiles, tens of seconds); (5) inference_mode.
* ``OnnxEngine``: onnxruntime on an ONNX graph, fp32 or int8. Given a PyTorch model it exports
  one on the fly (and quantizes it, calibrated on the model's own training images), so
  ``--backend onnx`` works without a prior ``resnetkit export``.

Images are brought to what the network saw in training: converted to grey or RGB as its first
convolution expects, resized so the short side is ``info.resize`` and center-cropped to
``info.image_size``. For image-folder models that is exactly the evaluation transform of
``data.ImageFolder`` (short side size*256/224); for the in-memory datasets (28x28 MNIST-style,
32x32 CIFAR) the short side goes straight to the native size, so an image of that size passes
unchanged.
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from .checkpoint import UnsafeFile, load, load_state_dict_file
from .config import check_model
from .data import (
    DATASETS,
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_error,
    load_arrays,
    normalize,
    resize_and_crop,
)
from .errors import UserError
from .registry import create_model
from .runtime import BF16_FLAGS, autocast, bf16_pays, cpu_flags, native_bf16, resolve_device

if TYPE_CHECKING:  # annotations only: onnx is imported where an ONNX path runs (see OnnxEngine)
    import onnx

log = logging.getLogger("resnetkit")

# Weights that ship inside the package: name -> (file under resnetkit/weights/, what it is).
SHIPPED = {
    "fashion-resnet20": ("fashion-resnet20.safetensors",
                         "CIFAR-style ResNet-20 trained on Fashion-MNIST by the default `fast` recipe"),
}
BACKENDS = ("torch", "onnx")
PRECISIONS = ("fp32", "bf16", "int8")
# Image side of the in-memory datasets (their files hold no other size).
NATIVE_SIZE = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32}
# /proc/cpuinfo flags. VNNI (and AMX, and Arm's dot-product instructions) add four 8-bit
# products straight into 32 bits; without them int8 kernels go through 16-bit sums that saturate.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
CALIBRATION_IMAGES = 256  # default number of calibration images for int8


# --- what this CPU can do ----------------------------------------------------------------------

def int8_reduce_range(flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether int8 weights should keep to 7 bits on this CPU, and why (for the metadata)."""
    flags = cpu_flags() if flags is None else flags
    found = [f for f in INT8_DOT_FLAGS if f in flags]
    if found:
        return False, f"8-bit weights: this CPU has {', '.join(found)} (int8 dot products into 32 bits)"
    return True, (f"7-bit weights (reduce_range): no {'/'.join(INT8_DOT_FLAGS)} flag in /proc/cpuinfo, so "
                  "int8 kernels sum pairs of products in 16 bits, which 8-bit weights could saturate")


# --- what a model needs its images to be -------------------------------------------------------

@dataclass
class ModelInfo:
    """What preparing images for a model and naming its outputs needs, from any source."""

    name: str  # registered model name
    source: str  # file path or shipped name
    classes: list[str]
    mean: list[float] | None  # None only in weights files older than recorded statistics
    std: list[float] | None
    in_chans: int
    image_size: int  # side of the square the network sees
    resize: int  # short side an image is resized to before the center crop
    dataset: str | None = None
    data_dir: str | None = None
    training: dict = field(default_factory=dict)  # how training evaluated (precision, tta, ...)
    metadata: dict = field(default_factory=dict)  # everything the file holds

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.in_chans, self.image_size, self.image_size


def info_from_metadata(meta: dict, source: str, in_chans: int, num_classes: int) -> ModelInfo:
    """``ModelInfo`` from the metadata ``resnetkit train`` writes."""
    dataset, training = meta.get("dataset"), meta.get("training") or {}
    if dataset in NATIVE_SIZE:
        size = resize = NATIVE_SIZE[dataset]
    else:  # image folders: data.ImageFolder's evaluation crop
        size = int(training.get("image_size", 224))
        resize = round(size * 256 / 224)
    classes = list(meta.get("classes") or [str(i) for i in range(num_classes)])
    if len(classes) != num_classes:
        raise UserError(f"{source} names {len(classes)} classes but its network has {num_classes} outputs")
    return ModelInfo(name=str(meta.get("model_name", "")), source=source, classes=classes,
                     mean=meta.get("mean"), std=meta.get("std"), in_chans=in_chans, image_size=size,
                     resize=resize, dataset=dataset, data_dir=meta.get("data_dir"), training=training,
                     metadata=meta)


# --- images ------------------------------------------------------------------------------------

def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), by extension."""
    folder = Path(folder)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise UserError(f"no images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) in folder {folder}")
    return found


def read_image(path: str | Path) -> Image.Image:
    """A decoded image, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return im
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {image_error(e, path)}") from None


def prepare_image(im: Image.Image | np.ndarray, info: ModelInfo) -> torch.Tensor:
    """uint8 (C, H, W) as the network saw its evaluation images: grey or RGB, short side resized
    to ``info.resize`` (bilinear), center crop of ``info.image_size``. Same steps, in the same
    order, as ``data.ImageFolder``'s evaluation transform, so the pixels are identical."""
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    im = resize_and_crop(im.convert("L" if info.in_chans == 1 else "RGB"), info.resize, info.image_size)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def normalized(images: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) to the float input the network takes."""
    if info.mean is None or info.std is None:
        raise UserError(f"{info.source} records no channel statistics (mean, std): use the "
                        "model.safetensors written by `resnetkit train`, or evaluate it on its dataset")
    return normalize(images, info.mean, info.std)


# --- the PyTorch paths -------------------------------------------------------------------------

def module_logits(model: nn.Module, x: torch.Tensor, *, precision: str = "fp32",
                  memory_format: torch.memory_format = torch.contiguous_format, tta: bool = False) -> torch.Tensor:
    """Logits of one batch through a PyTorch module. With ``tta`` the logits of each image and
    its mirror image are averaged, inside autocast as training's evaluation did (so bf16
    results match it to the bit)."""
    x = x.contiguous(memory_format=memory_format)
    with autocast(x.device, precision):
        logits = model(x)
        if tta:
            logits = (logits + model(x.flip(3))) / 2
    return logits.float()


def shifted_logits(logits_of, x: torch.Tensor, tta: bool, shift: int) -> torch.Tensor:
    """``logits_of(x, tta=tta)`` averaged over x and its copies moved ``shift`` pixels up, down,
    left and right, the edge pixels repeated into the gap (``shift`` 0: x alone). With ``tta``
    each copy's mirror image counts too: 10 views for shift 1, as airbench evaluates CIFAR-10."""
    if not (tta and shift):
        return logits_of(x, tta=tta)
    h, w = x.shape[2:]
    s = shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    views = [x] + [padded[:, :, s + dy:s + dy + h, s + dx:s + dx + w] for dy, dx in ((-s, 0), (s, 0), (0, -s), (0, s))]
    return sum(logits_of(v, tta=tta) for v in views) / len(views)


def fold_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``model`` with every BatchNorm2d that directly follows a Conv2d
    folded into that conv (see the module docstring). Found on the traced graph (torch.fx), so a
    BN is folded only where the conv's output feeds nothing else: the pre-activation blocks'
    BN-ReLU-conv order is left as it is."""
    model = copy.deepcopy(model).eval()
    graph = torch.fx.symbolic_trace(model)
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if not (isinstance(prev, torch.fx.Node) and prev.op == "call_module"
                and isinstance(modules.get(prev.target), nn.Conv2d) and len(prev.users) == 1):
            continue
        conv, bn = modules[prev.target], modules[node.target]
        if bn.running_var is None:  # a BN without running statistics normalises each batch: not affine
            continue
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
        with torch.no_grad():
            folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())
        _set_submodule(graph, prev.target, folded)
        node.replace_all_uses_with(prev)
        graph.graph.erase_node(node)
    graph.graph.lint()
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class TorchEngine:
    """A PyTorch module as an engine. ``fast=False``: the module as given (no copy), evaluated
    as training did. ``fast=True``: a folded, channels_last, optionally compiled copy run under
    inference_mode."""

    backend = "torch"

    def __init__(self, model: nn.Module, info: ModelInfo, *, precision: str = "fp32", fast: bool = True,
                 channels_last: bool = True, compile: bool = False, device: str | torch.device = "cpu") -> None:
        if precision not in ("fp32", "bf16"):
            raise UserError(f"the PyTorch backend runs fp32 or bf16, not {precision}: "
                            "int8 runs in onnxruntime (--backend onnx)")
        self.info, self.precision, self.fast, self.compiled = info, precision, fast, compile
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(self.device).eval()
        if fast:
            model = fold_conv_bn(model)
        self.model = model.to(memory_format=self.memory_format)
        if compile:
            self.model = torch.compile(self.model)

    def __call__(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        grad_off = torch.inference_mode() if self.fast else torch.no_grad()
        with grad_off:
            return module_logits(self.model, x.to(self.device), precision=self.precision,
                                 memory_format=self.memory_format, tta=tta)

    def describe(self) -> str:
        parts = ["BN folded", "inference_mode"] if self.fast else ["as trained"]
        if self.memory_format == torch.channels_last:
            parts.append("channels_last")
        if self.compiled:
            parts.append("torch.compile")
        return f"torch {self.precision} ({', '.join(parts)})"


# --- the onnxruntime path ----------------------------------------------------------------------

class OnnxEngine:
    """An ONNX graph in onnxruntime (CPU). A graph with a fixed batch size gets the images in
    chunks of that size, the last one padded."""

    backend = "onnx"

    def __init__(self, proto: onnx.ModelProto, info: ModelInfo, *, threads: int | None = None) -> None:
        # onnx and onnxruntime take ~0.6 s to import; training and the PyTorch paths never need them.
        from . import onnxio

        self.info = info
        self.precision = "int8" if onnxio.is_quantized(proto) else "fp32"
        shape = onnxio.input_shape(proto)
        if len(shape) != 4:
            raise UserError(f"{info.source} takes input of shape {_dims(shape)}, not an image batch (N, C, H, W)")
        self.batch = shape[0]  # None: any batch size
        self.shape = tuple(shape[1:])
        self.session = onnxio.session(proto, threads=threads)
        self._run = onnxio.run

    def check(self, shape: Sequence[int]) -> None:
        """A one-line error when images of ``shape`` (C, H, W) cannot go in."""
        if len(shape) != 3 or any(w is not None and w != s for w, s in zip(self.shape, shape)):
            raise UserError(f"{self.info.source} takes images of shape {_dims(self.shape)}, "
                            f"these are {_dims(tuple(shape))}")

    def __call__(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        self.check(tuple(x.shape[1:]))
        logits = self._logits(x)
        if tta:
            logits = (logits + self._logits(x.flip(3))) / 2
        return logits.to(x.device)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self.batch is None:
            return torch.from_numpy(self._run(self.session, arr))
        outs = []
        for i in range(0, len(arr), self.batch):
            chunk = arr[i:i + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), np.float32)])
            outs.append(self._run(self.session, chunk)[:n])
        return torch.from_numpy(np.concatenate(outs))

    def describe(self) -> str:
        batch = "any batch" if self.batch is None else f"batch {self.batch}"
        q = self.info.metadata.get("quantization") or {}
        extra = f", {'7-bit' if q.get('reduce_range') else '8-bit'} weights" if q else ""
        return f"onnxruntime {self.precision} ({batch}{extra})"


Engine = TorchEngine | OnnxEngine  # what evaluation and prediction call: (x, tta=False) -> logits


def _dims(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


# --- opening a model ---------------------------------------------------------------------------

def shipped_path(name: str) -> Path:
    """The file of a shipped model, inside the installed package."""
    return Path(str(resources.files("resnetkit") / "weights" / SHIPPED[name][0]))


def _pth_model(path: Path, model_name: str, kwargs: dict) -> nn.Module:
    """A torchvision-format state dict in the network ``model_name`` builds. Classes and input
    channels are read from the weights' shapes unless given; ImageNet's statistics and
    224x224 crops, as torchvision's models expect."""
    state = load_state_dict_file(path)
    kwargs = dict(kwargs)
    if "fc.weight" in state:
        kwargs.setdefault("num_classes", state["fc.weight"].shape[0])
    if "conv1.weight" in state:
        kwargs.setdefault("in_chans", state["conv1.weight"].shape[1])
    check_model(model_name, kwargs)  # a one-line error for an unknown name or bad options
    model = create_model(model_name, **kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{path} does not fit {model_name} with {kwargs or 'its defaults'}: {what} ...")
    in_chans = model.conv1.in_channels
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ([0.5] * in_chans, [0.5] * in_chans)
    size = model.default_input_size[1]
    model.metadata = {"model_name": model_name, "model_args": kwargs, "mean": mean, "std": std,
                      "classes": [str(i) for i in range(model.num_classes)], "dataset": None,
                      "training": {"image_size": size}}
    model.source = str(path)
    return model


def load_network(spec: str | Path, *, model_name: str | None = None, model_kwargs: dict | None = None) -> nn.Module:
    """The PyTorch network behind ``spec`` (shipped name, .safetensors, .pth/.pt), with
    ``metadata`` and ``source`` set as ``checkpoint.load`` sets them."""
    spec = str(spec)
    kwargs = model_kwargs or {}
    if spec in SHIPPED and not Path(spec).exists():
        model = load(shipped_path(spec))
        model.source = spec
        return model
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        raise UserError(f"{path} is an ONNX graph: it runs in onnxruntime only (--backend onnx)")
    if not path.exists():
        raise UserError(f"no such model file or shipped model: {spec} (shipped: {', '.join(SHIPPED)})")
    if suffix in (".pth", ".pt") and model_name:
        return _pth_model(path, model_name, kwargs)
    if model_name or kwargs:
        raise UserError(f"--model and model options are for torchvision-format .pth files; {path.name} "
                        "says how its network was built")
    if suffix in (".pth", ".pt"):
        try:
            model = load(path)  # a resnetkit checkpoint.pt: the network, without statistics or classes
        except UnsafeFile:
            raise
        except UserError as e:
            raise UserError(f"{e}; for a torchvision-format state dict pass --model NAME") from None
        model.metadata, model.source = getattr(model, "metadata", {}), str(path)
        return model
    if suffix != ".safetensors":
        raise UserError(f"not a model file: {path} (expected .safetensors, .pth, .onnx or a shipped name)")
    return load(path)


def torch_info(model: nn.Module) -> ModelInfo:
    return info_from_metadata(getattr(model, "metadata", {}), getattr(model, "source", "the model"),
                              model.conv1.in_channels, model.num_classes)


def onnx_info(proto: onnx.ModelProto, source: str) -> ModelInfo:
    from . import onnxio  # see OnnxEngine

    meta = onnxio.read_metadata(proto)
    if "mean" not in meta or "classes" not in meta:
        raise UserError(f"{source} carries no resnetkit metadata (classes, mean, std): "
                        "write it with `resnetkit export`")
    shape = onnxio.input_shape(proto)
    if len(shape) != 4 or shape[1] is None:
        raise UserError(f"{source} takes input of shape {_dims(shape)}, not an image batch (N, C, H, W)")
    info = info_from_metadata(meta, source, shape[1], len(meta["classes"]))
    if shape[2] is not None and shape[2] != info.image_size:  # the graph's own size wins
        info.image_size = shape[2]
        info.resize = shape[2] if info.dataset in NATIVE_SIZE else round(shape[2] * 256 / 224)
    return info


@dataclass
class Calibration:
    """Where int8 calibration images come from: ``data`` a dataset name (None: the model's own)
    or a folder of images; ``count`` images."""

    data: str | None = None
    data_dir: str | None = None
    count: int = CALIBRATION_IMAGES
    seed: int = 0


def calibration_images(info: ModelInfo, cal: Calibration) -> tuple[torch.Tensor, str]:
    """``cal.count`` real images, normalised for the model, and a description for the metadata.
    In-memory datasets give their training split (the test split stays unseen); a folder gives
    its ``train/`` sub-folder if it has one. A seeded random choice, so exports are repeatable."""
    if cal.count < 1:
        raise UserError("--calibration-images must be at least 1")
    data = cal.data or info.dataset
    data_dir = cal.data_dir or (info.data_dir if data == info.dataset else None)
    g = torch.Generator().manual_seed(cal.seed)
    if data is None:
        raise UserError(f"{info.source} does not say what it was trained on: pass --calibration-data "
                        "(a dataset name or a folder of images)")
    if data in DATASETS and data != "folder":
        arrays = load_arrays(data, data_dir, train=True)
        pick = torch.randperm(len(arrays), generator=g)[:cal.count]
        images = arrays.images[pick]
        if tuple(images.shape[1:]) != info.input_shape:
            raise UserError(f"{data} images are {_dims(tuple(images.shape[1:]))} but {info.source} takes "
                            f"{_dims(info.input_shape)}: calibrate on images like its training data")
        where = f"the {data} training split"
    else:
        if data == "folder" and not data_dir:
            raise UserError("--calibration-data folder needs --calibration-dir (a folder of images)")
        root = Path(data_dir if data == "folder" else data)
        if not root.is_dir():
            raise UserError(f"calibration data {data!r} is neither a dataset ({', '.join(DATASETS)}) "
                            "nor a folder of images")
        root = root / "train" if (root / "train").is_dir() else root
        files = find_images(root)
        pick = torch.randperm(len(files), generator=g)[:cal.count].tolist()
        images = torch.stack([prepare_image(read_image(files[i]), info) for i in pick])
        where = str(root)
    return normalized(images, info), f"{len(images)} images of {where}"


def _default_precision(backend: str, info: ModelInfo) -> str:
    """The fast path's precision when none is asked for: bf16 where the model was trained in it
    and bf16 is faster than fp32 on this CPU (``runtime.bf16_pays``), else fp32."""
    trained = info.training.get("precision", "fp32")
    return "bf16" if backend == "torch" and trained == "bf16" and bf16_pays("cpu") else "fp32"


def open_model(spec: str | Path | nn.Module, *, backend: str | None = None, precision: str | None = None,
               model_name: str | None = None, model_kwargs: dict | None = None, device: str = "cpu",
               compile: bool = False, calibration: Calibration | None = None, threads: int | None = None) -> Engine:
    """An engine for ``spec``: a file path, a shipped name, or a module from ``resnetkit.load``.

    ``backend``: "torch" (the fast path) or "onnx"; None picks onnx for .onnx files and int8,
    torch otherwise. ``precision``: fp32, bf16 (PyTorch) or int8 (onnxruntime); None: bf16 where
    the model was trained in bf16 and this CPU has it natively, else fp32; an .onnx file runs in
    the precision it was written in. ``calibration``: where int8 calibration images come from
    when a PyTorch model is quantized on the fly.
    """
    if backend not in (None, *BACKENDS):
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if precision not in (None, *PRECISIONS):
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    is_onnx = isinstance(spec, (str, Path)) and Path(spec).suffix.lower() == ".onnx"
    if is_onnx:
        from . import onnxio  # see OnnxEngine

        if backend == "torch" or compile:
            raise UserError(f"{spec} is an ONNX graph: it runs in onnxruntime only (no --backend torch, --compile)")
        if model_name or model_kwargs:
            raise UserError(f"--model and model options do not apply to an ONNX file ({Path(spec).name})")
        proto = onnxio.load(spec)
        engine = OnnxEngine(proto, onnx_info(proto, str(spec)), threads=threads)
        if precision and precision != engine.precision:
            raise UserError(f"{spec} is an {engine.precision} model; to run it in {precision}, export it again"
                            + (" with --int8" if precision == "int8" else " without --int8"))
        return engine

    backend = backend or ("onnx" if precision == "int8" else "torch")
    if backend == "onnx" and compile:
        raise UserError("--compile applies to the PyTorch backend, not onnxruntime")
    if backend == "onnx" and precision == "bf16":
        raise UserError("onnxruntime runs fp32 or int8 here; bf16 is a PyTorch path (--backend torch)")
    if backend == "torch" and precision == "int8":
        raise UserError("int8 runs in onnxruntime: use --backend onnx --precision int8 (or `resnetkit export --int8`)")
    model = spec if isinstance(spec, nn.Module) else load_network(spec, model_name=model_name,
                                                                   model_kwargs=model_kwargs)
    info = torch_info(model)
    precision = precision or _default_precision(backend, info)
    if backend == "torch":
        if precision == "bf16" and not native_bf16():
            log.warning("this CPU has no native bf16 (no %s flag): bf16 runs emulated, slower than fp32",
                        "/".join(BF16_FLAGS))
        return TorchEngine(model, info, precision=precision, compile=compile, device=resolve_device(device))
    proto, info.metadata = build_onnx(model, info, int8=precision == "int8", calibration=calibration)
    return OnnxEngine(proto, info, threads=threads)


def build_onnx(model: nn.Module, info: ModelInfo, *, int8: bool = False, dynamic_batch: bool = True,
                           batch_size: int = 1, opset: int | None = None, calibration: Calibration | None = None,
                           reduce_range: bool | None = None, tolerance: float = 1e-3) -> tuple[onnx.ModelProto, dict]:
    """The ONNX graph of ``model`` with its metadata, checked against PyTorch on random inputs
    (fp32: max |logit difference| <= tolerance x max(1, max |logit|), else a one-line error), and
    with ``int8``, quantized on calibration images. Returns (ModelProto, its metadata), whose
    ``export`` and ``quantization`` records say what was done and measured."""
    from . import onnxio  # see OnnxEngine

    model = copy.deepcopy(model).float().cpu().eval()
    proto = onnxio.to_onnx(model, info.input_shape, batch_size=batch_size, dynamic_batch=dynamic_batch, opset=opset)
    g = torch.Generator().manual_seed(0)
    check = torch.randn(3 if dynamic_batch else batch_size, *info.input_shape, generator=g)
    diff, scale = _max_diff(model, proto, check)
    if diff > tolerance * scale:
        raise UserError(f"the ONNX graph's logits differ from PyTorch's by {diff:.3g} (tolerance "
                        f"{tolerance:g} x {scale:.3g}): not written; try another --opset")
    meta = {k: v for k, v in info.metadata.items() if k not in ("export", "quantization")}
    meta["export"] = {"opset": onnxio.opset_of(proto), "dynamic_batch": dynamic_batch,
                      "batch_size": None if dynamic_batch else batch_size, "input_shape": list(info.input_shape),
                      "max_abs_diff_vs_torch": diff, "torch": torch.__version__, "source": info.source}
    if int8:
        if reduce_range is None:
            reduce_range, why = int8_reduce_range()
        else:
            why = f"{'7' if reduce_range else '8'}-bit weights: chosen explicitly"
        images, where = calibration_images(info, calibration or Calibration())
        step = max(1, min(64, 2 ** 19 // int(np.prod(info.input_shape))))  # about 2 MB of floats a batch
        if not dynamic_batch:
            step = batch_size
        batches = [images[i:i + step].numpy() for i in range(0, len(images) - step + 1, step)] or [images.numpy()]
        fp32 = proto if dynamic_batch else onnxio.to_onnx(model, info.input_shape, dynamic_batch=True, opset=opset)
        proto = onnxio.quantize_int8(fp32, batches, reduce_range=reduce_range)
        if not dynamic_batch:  # calibration needed any batch size; the file keeps the one asked for
            _fix_batch(proto, batch_size)
        agree, n = _agreement(model, proto, images[:256], batch_size if not dynamic_batch else None)
        meta["quantization"] = {
            "format": "QDQ", "weights": "int8, symmetric, per output channel", "activations": "uint8, per tensor",
            "calibration": f"min/max over {where}",  # "256 images of the fashion-mnist training split"
            "reduce_range": reduce_range, "reduce_range_reason": why,
            "cpu_flags": sorted(set(INT8_DOT_FLAGS + BF16_FLAGS) & cpu_flags()),
            "top1_agreement_vs_torch": agree, "agreement_images": n}
    onnxio.set_metadata(proto, meta)
    return proto, meta


def _fix_batch(proto: onnx.ModelProto, batch_size: int) -> None:
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch_size


def _max_diff(model: nn.Module, proto: onnx.ModelProto, x: torch.Tensor) -> tuple[float, float]:
    """(max |ONNX - PyTorch| over the logits of ``x``, max(1, max |PyTorch logit|))."""
    from . import onnxio  # see OnnxEngine

    with torch.no_grad():
        ref = model(x)
    out = torch.from_numpy(onnxio.run(onnxio.session(proto), x.numpy()))
    return float((out - ref).abs().max()), max(1.0, float(ref.abs().max()))


def _agreement(model: nn.Module, proto: onnx.ModelProto, images: torch.Tensor,
               batch: int | None) -> tuple[float, int]:
    """Fraction of ``images`` on which the int8 graph's top-1 class equals PyTorch fp32's."""
    from . import onnxio  # see OnnxEngine

    sess, x = onnxio.session(proto), images.numpy()
    step = batch or len(x)
    n = len(x) - len(x) % step
    if n == 0:
        return float("nan"), 0
    with torch.no_grad():
        ref = model(images[:n]).argmax(1)
    out = np.concatenate([onnxio.run(sess, x[i:i + step]) for i in range(0, n, step)])
    return float((torch.from_numpy(out).argmax(1) == ref).double().mean()), n


# --- command-line options shared by predict and eval ------------------------------------------

def add_engine_args(p: argparse.ArgumentParser, *, default_help: str) -> None:
    """--backend, --precision, --compile, --model and the int8 calibration options."""
    g = p.add_argument_group("inference path")
    g.add_argument("--backend", choices=BACKENDS, default=None, help=default_help)
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 or bf16 (PyTorch), fp32 or int8 (onnxruntime); default: bf16 where the model was "
                        "trained in bf16 and bf16 beats fp32 on this CPU, else fp32; an .onnx file's own")
    g.add_argument("--compile", action="store_true", help="torch.compile the PyTorch fast path (slow first batch)")
    g.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: one per core)")
    g.add_argument("--model", dest="model_name", default=None,
                   help="registered name that builds a torchvision-format .pth MODEL (e.g. resnet18)")
    g.add_argument("--num-classes", type=int, default=None, help="with --model: classifier outputs "
                                                                 "(default: read from the weights)")
    g.add_argument("--calibration-data", default=None,
                   help="int8 on the fly: a dataset name or a folder of images (default: the model's own dataset)")
    g.add_argument("--calibration-dir", default=None, help="the calibration dataset's files, as --data-dir")
    g.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                   help=f"number of calibration images (default {CALIBRATION_IMAGES})")


def engine_from_args(args: argparse.Namespace, spec: str, *, device: str = "cpu") -> Engine:
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    return open_model(spec, backend=args.backend, precision=args.precision, model_name=args.model_name,
                      model_kwargs=kwargs, device=device, compile=args.compile, threads=args.threads,
                      calibration=Calibration(args.calibration_data, args.calibration_dir, args.calibration_images))
