"""One typed training configuration, the recipes that preset it, and YAML/flag merging.

Every setting is one ``TrainConfig`` field whose metadata carries its help text, its group and,
where the values are few, its choices; ``resnetkit train``'s flags are generated from those fields
(``add_arguments``), so a new setting is added here and nowhere else.

Precedence, lowest first: the dataclass defaults, the recipe, ``--config FILE.yaml``,
then the command-line flags the user actually typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .blocks import SHORTCUTS, VERSIONS
from .data import DATASETS, NORMALIZATIONS
from .errors import UserError
from .registry import create_model, list_models
from .resnet import GLOBAL_POOLS, STEMS
from .runtime import bf16_pays, compile_pays

# Recipes: overrides of the defaults. Units are in the comments.
RECIPES: dict[str, dict] = {
    # Tuned for Fashion-MNIST / MNIST on a 2-core CPU (docs/benchmarks.md):
    # bf16 autocast (where the CPU has it natively) and channels_last make oneDNN's fast kernels available.
    "fast": {
        "epochs": 7, "batch_size": 256, "lr": 0.2, "nesterov": True, "weight_decay": 5e-4,
        "schedule": "onecycle", "label_smoothing": 0.1, "pad": 2, "flip": True,
        "precision": "auto", "channels_last": True, "tta": True,
    },
    # The 15-minute Fashion-MNIST speedrun (docs/benchmarks.md): fast, plus the levers the
    # ablation kept, trained on the clock (seconds of this machine; epochs is only a cap), on the
    # net that learned the most in that time, its filters trained with Muon (3 Newton-Schulz
    # steps, as airbench) at lr 0.02; shorter runs want more. Batch 256: at 15 minutes its twice
    # as many steps did a little better than batch 512's 1.1x the images a second (94.95 ± 0.11%
    # over 6 seeds against 94.88 ± 0.08 over 5); at 5 minutes only batch 512 (lr 0.4, Muon lr
    # 0.06) was measured, and `make demo` passes it.
    # Random translation of up to 1 pixel, not 2: +0.35 points at 5 minutes, +0.31 at 15. None at
    # all is better again at 5 minutes (+0.19, --pad 0) but overfits at 15 (-0.39).
    # The net: option-B projections on the shortcuts and a max-pooled head; 3% more multiply-adds
    # than the option-A, average-pooled fashion_resnet8_pool16, and more learned per epoch (+0.12
    # against that net's line through seconds and accuracy, 5 seeds).
    # InfoBatch pruning (--prune 0.5): each epoch skips, at random, half the images whose last
    # loss was below the mean, so the clock goes on the others; +0.19 over the same net
    # without it at 15 minutes (95.11 ± 0.07% over 5 seeds, the first mean above 95%).
    # Compiled where that pays for the compile time billed to the clock (``make_config``).
    "speedrun": {
        "model": "fashion_resnet8_pool16_proj", "epochs": 60, "time_limit": 900, "batch_size": 256, "lr": 0.2,
        "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.2, "pad": 1,
        "flip": True, "alternate_flip": True, "precision": "auto", "channels_last": True, "tta": True,
        "tta_shift": 1, "ema": 0.998, "optimizer": "muon", "muon_lr": 0.02, "muon_momentum": 0.85,
        "muon_ns_steps": 3, "prune": 0.5,
    },
    # He et al. 2016, Sec. 4.2: SGD 0.9, wd 1e-4, batch 128, lr 0.1 /10 at 32k and 48k
    # iterations, 64k in all; 4-pixel padding, 32x32 crops, flips. The paper warms ResNet-110
    # up at 0.01 for ~400 iterations: `make_config` adds that for nets of 110+ layers.
    "paper-cifar": {
        "epochs": 0, "max_steps": 64_000, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
        "nesterov": False, "weight_decay": 1e-4, "schedule": "step", "milestones": [32_000, 48_000],
        "warmup": 0, "label_smoothing": 0.0, "pad": 4, "flip": True, "tta": False,
    },
    # He et al. 2016, Sec. 3.4, with torchvision's reference schedule (lr /10 every 30 epochs)
    # and the customary ImageNet channel statistics.
    "paper-imagenet": {
        "epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "nesterov": False,
        "weight_decay": 1e-4, "schedule": "step", "label_smoothing": 0.0, "flip": True,
        "image_size": 224, "normalize": "imagenet", "tta": False,
    },
}
PAPER_WARMUP = 400  # steps at lr/10 for 110+ layers: "until the training error is below 80%" (Sec. 4.2)
SCHEDULES = ("step", "cosine", "onecycle")


def setting(default, help: str, *, group: str, choices: tuple | None = None):
    """A config field with what its command-line flag needs: help, group, choices."""
    meta = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    model: str = setting("resnet20", "registered model name (`resnetkit list`)", group="model")
    shortcut: str | None = setting(None, "shortcut option (default: the family's, A for CIFAR nets, B for ImageNet)",
                                   group="model", choices=SHORTCUTS)
    version: str | None = setting(None, "1: stride on the first 1x1 (paper); 1.5: on the 3x3; 2: pre-activation",
                                  group="model", choices=VERSIONS)
    stem: str | None = setting(None, "cifar: 3x3 conv; whiten: a frozen 3x3 conv that whitens the training "
                               "set's patches; whiten-pool: that and a 2x2 max-pool; whiten16-pool: 16 such filters, "
                               "the max-pool before the stem's BN and ReLU; imagenet: 7x7/2 conv + max-pool "
                               "(default: the model's own)",
                               group="model", choices=STEMS)
    widths: list[int] = setting([], "channels per stage, e.g. 32 64 128 (default: the model's own)", group="model")
    blocks: list[int] = setting([], "blocks per stage, e.g. 1 1 1 (default: the model's own)", group="model")
    zero_init_residual: bool = setting(False, "start each residual branch's last BN at zero", group="model")
    drop_path_rate: float = setting(0.0, "stochastic depth rate of the last block", group="model")
    global_pool: str | None = setting(None, "pooling before the classifier: avg (the paper's) or max "
                                      "(default: the model's own)", group="model", choices=GLOBAL_POOLS)

    data: str = setting("fashion-mnist", "dataset", group="data", choices=DATASETS)
    data_dir: str | None = setting(None, "dataset folder or archive (default for fashion-mnist: Debian's)",
                                   group="data")
    image_size: int = setting(224, "image folders only: training crop / evaluation crop (pixels)", group="data")
    pad: int = setting(2, "random-crop padding in pixels (in-memory datasets)", group="data")
    pad_from: float = setting(0.0, "translate (--pad) only from this fraction of the schedule on (its steps, "
                              "or the clock under --time-limit); before it the images come as stored", group="data")
    flip: bool = setting(True, "random horizontal flips", group="data")
    alternate_flip: bool = setting(False, "with --flip: flip each image on every other epoch instead of at "
                                   "random (airbench's alternating flip)", group="data")
    progressive: int = setting(0, "progressive resizing: train from this image size up to the full size, in "
                               "steps of 4 pixels, reached at 3/4 of the schedule (0: off)", group="data")
    erase: float = setting(0.0, "random-erasing probability per training image (0: off)", group="data")
    normalize: str = setting("dataset", "channel statistics: computed from the training set, or ImageNet's",
                             group="data", choices=NORMALIZATIONS)
    train_subset: int = setting(0, "use only the first N training images (0: all)", group="data")
    test_subset: int = setting(0, "evaluate on the first N test images (0: all)", group="data")
    holdout: int = setting(0, "train on all but the last N training images and evaluate on those N instead "
                           "of the test split, to tune without it (0: off)", group="data")
    workers: int = setting(2, "DataLoader workers, image folders only", group="data")

    recipe: str = setting("fast", "preset of the settings below", group="optimisation", choices=tuple(RECIPES))
    epochs: int = setting(10, "epochs (0: train for --max-steps)", group="optimisation")
    max_steps: int = setting(0, "stop after this many steps (0: no limit)", group="optimisation")
    time_limit: float = setting(0.0, "seconds of training; the schedule is compressed to end on time (0: none)",
                                group="optimisation")
    batch_size: int = setting(128, "images per step", group="optimisation")
    lr: float = setting(0.1, "peak learning rate", group="optimisation")
    momentum: float = setting(0.9, "SGD momentum", group="optimisation")
    nesterov: bool = setting(False, "Nesterov momentum", group="optimisation")
    weight_decay: float = setting(1e-4, "L2 weight decay", group="optimisation")
    schedule: str = setting("onecycle", "learning-rate schedule", group="optimisation", choices=SCHEDULES)
    milestones: list[int] = setting([], "step schedule: steps where lr drops /10 (default 50%%, 75%%)",
                                    group="optimisation")
    warmup: int = setting(0, "steps of linear warm-up from lr/10 (onecycle: from 0; default 15%% of steps)",
                          group="optimisation")
    label_smoothing: float = setting(0.0, "label smoothing", group="optimisation")
    ema: float = setting(0.0, "decay per step of a moving average of the weights, e.g. 0.999 (0: off)",
                         group="optimisation")
    prune: float = setting(0.0, "InfoBatch: each epoch skip this fraction, at random, of the images whose last "
                           "loss was below the mean, weighting up the rest of them (the last 1/8 of training "
                           "sees every image; 0: off)", group="optimisation")
    max_grad_norm: float = setting(0.0, "clip the gradients' global L2 norm to this (0: off)", group="optimisation")
    lookahead: int = setting(0, "Lookahead: every this many steps the weights restart from slow weights moved "
                             "--lookahead-alpha of the way to them (0: off)", group="optimisation")
    lookahead_alpha: float = setting(0.5, "Lookahead: how far the slow weights move at each sync", group="optimisation")
    optimizer: str = setting("sgd", "sgd: SGD for every weight; muon: Muon (torch.optim.Muon) for the convolution "
                             "filters, each rescaled to a fixed norm, SGD for the rest (airbench's split)",
                             group="optimisation", choices=("sgd", "muon"))
    # airbench's 0.24 and 0.6 are for batch 2,000; at batch 256 they were far too noisy (docs/benchmarks.md).
    muon_lr: float = setting(0.04, "with --optimizer muon: the filters' peak learning rate (a step's size relative "
                             "to the weights)", group="optimisation")
    muon_momentum: float = setting(0.85, "with --optimizer muon: the filters' Nesterov momentum", group="optimisation")
    muon_ns_steps: int = setting(5, "with --optimizer muon: Newton-Schulz iterations that orthogonalise each step "
                                 "(torch's default 5; airbench uses 3)", group="optimisation")
    # airbench's batch-norm levers: with the scale fixed, a BN layer is a learned shift, which
    # tolerates (and profits from) a far higher learning rate than the convolutions.
    bn_weight: bool = setting(True, "learn BN scales (--no-bn-weight freezes them at 1)", group="optimisation")
    bn_bias_lr: float = setting(1.0, "BN shifts train at this multiple of --lr, with --weight-decay divided by it",
                                group="optimisation")

    seed: int = setting(0, "seed of every random draw", group="runtime")
    device: str = setting("auto", "where to train", group="runtime", choices=("auto", "cpu", "cuda"))
    precision: str = setting("fp32", "fp32, bf16 autocast, or auto: bf16 where it beats fp32 (CPUs with AMX, AMD "
                             "CPUs with AVX-512 BF16, Ampere+ GPUs), else fp32; config.yaml records the choice",
                             group="runtime", choices=("fp32", "bf16", "auto"))
    channels_last: bool = setting(False, "NHWC memory format", group="runtime")
    compile: bool = setting(False, "torch.compile the model", group="runtime")
    sync_bn: bool = setting(False, "under torchrun: batch statistics over the global batch (SyncBatchNorm)",
                            group="runtime")
    eval_batch_size: int = setting(1000, "images per evaluation batch", group="runtime")
    tta: bool = setting(False, "test-time augmentation: average the logits of each image and its mirror",
                        group="runtime")
    tta_shift: int = setting(0, "with --tta, also average over copies shifted this many pixels up, down, left "
                             "and right (10 views in all; 0: off)", group="runtime")
    log_every: int = setting(50, "steps between metrics.jsonl rows", group="runtime")
    checkpoint_every: int = setting(0, "steps between checkpoints (0: at the end of each epoch only)",
                                    group="runtime")
    layer_stats: int = setting(0, "steps between per-layer gradient and update statistics in layers.jsonl "
                                  "(0: off)", group="runtime")

    out: str = setting("runs/train", "output folder", group="files")
    resume: bool = setting(False, "continue from OUT/checkpoint.pt", group="files")
    overwrite: bool = setting(False, "replace the run already in OUT (otherwise refused)", group="files")
    init: str | None = setting(None, "weights to start from (.safetensors, .pth state dict, checkpoint.pt)",
                               group="files")
    freeze_backbone: bool = setting(False, "train only the classifier", group="files")

    def model_kwargs(self) -> dict:
        return model_kwargs(dataclasses.asdict(self))

    def validate(self) -> None:
        for f in FIELDS.values():
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value is not None and value not in choices:
                raise UserError(f"{flag(f.name)} must be one of {', '.join(choices)}, got {value!r}")
        for name in ["lr", "batch_size", "eval_batch_size", "log_every", "bn_bias_lr", "muon_lr", "muon_ns_steps"]:
            if getattr(self, name) <= 0:
                raise UserError(f"{flag(name)} must be positive, got {getattr(self, name)}")
        for name in ["epochs", "max_steps", "time_limit", "weight_decay", "momentum", "warmup", "pad",
                     "label_smoothing", "train_subset", "test_subset", "holdout", "checkpoint_every", "workers",
                     "max_grad_norm", "layer_stats", "tta_shift", "progressive", "lookahead"]:
            if getattr(self, name) < 0:
                raise UserError(f"{flag(name)} must not be negative, got {getattr(self, name)}")
        if self.epochs == 0 and self.max_steps == 0:
            raise UserError("set --epochs or --max-steps")
        for name in ["label_smoothing", "ema", "muon_momentum", "prune"]:
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.lookahead_alpha <= 1:
            raise UserError(f"--lookahead-alpha must be in (0, 1], got {self.lookahead_alpha}")
        if self.nesterov and self.momentum <= 0:
            raise UserError("--nesterov needs --momentum above 0 (the fast recipe sets --nesterov; add --no-nesterov)")
        if self.alternate_flip and not self.flip:
            raise UserError("--alternate-flip needs --flip")
        if self.tta_shift and not self.tta:
            raise UserError("--tta-shift needs --tta")
        if self.zero_init_residual and not self.bn_weight:
            raise UserError("--zero-init-residual needs --bn-weight: a BN scale frozen at zero silences its branch")
        if not 0 <= self.pad_from < 1:
            raise UserError(f"--pad-from must be a fraction in [0, 1), got {self.pad_from}")
        if not 0 <= self.erase <= 1:
            raise UserError(f"--erase must be a probability in [0, 1], got {self.erase}")
        check_model(self.model, self.model_kwargs())


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)
MODEL_FIELDS = [n for n, f in FIELDS.items() if f.metadata["group"] == "model" and n != "model"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def model_kwargs(values: Mapping) -> dict:
    """``create_model`` keywords from settings: only those set (the builder's defaults stand otherwise)."""
    kwargs = {k: values.get(k) for k in ("num_classes", "in_chans", *MODEL_FIELDS)}
    return {k: v for k, v in kwargs.items() if v not in (None, False, 0.0, [])}


def model_kwargs_for_input(args: argparse.Namespace) -> dict:
    """``model_kwargs`` of a command with ``--input-size C H W``: the stem takes C channels."""
    kwargs = model_kwargs(vars(args))
    if args.input_size:
        if args.in_chans is not None and args.in_chans != args.input_size[0]:
            raise UserError(f"--input-size has {args.input_size[0]} channels but --in-chans is {args.in_chans}")
        kwargs["in_chans"] = args.input_size[0]
    return kwargs


def check_model(name: str, kwargs: dict) -> torch.nn.Module:
    """Build the model on the meta device (no memory, no time), so that an unknown name or
    impossible arguments are a clear error before anything starts. Returns the model."""
    if name not in list_models():
        create_model(name)  # raises, naming the closest registered names
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"cannot build {name} with {kwargs}: {e}") from None


def add_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...] | None = None, *,
                  skip: tuple[str, ...] = (), default=argparse.SUPPRESS) -> dict[str, argparse._ArgumentGroup]:
    """One flag per ``TrainConfig`` field (of ``groups``, all by default). With the default
    ``SUPPRESS``, only the flags a user typed appear in the parsed namespace."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for name, f in FIELDS.items():
        group = f.metadata["group"]
        if (groups and group not in groups) or name in skip:
            continue
        if group not in sections:
            sections[group] = parser.add_argument_group(group)
        kind, choices = _TYPES[name], f.metadata["choices"]
        # Choices are checked by TrainConfig.validate, with the one-line error of every bad input.
        metavar = "{" + ",".join(choices) + "}" if choices else name.upper()
        if kind is bool:
            opts = {"action": argparse.BooleanOptionalAction}
        elif typing.get_origin(kind) is list:
            opts = {"type": int, "nargs": "+", "metavar": "N"}
        else:
            scalar = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
            opts = {"type": scalar[0], "metavar": metavar}
        sections[group].add_argument(flag(name), default=default, help=f.metadata["help"], **opts)
    return sections


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model flags of commands that build a model without training it (summary, draw)."""
    g = add_arguments(parser, ("model",), skip=("model",), default=None)["model"]
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    g.add_argument("--in-chans", type=int, default=None, help="input channels (default: 3)")


def did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(str(key).replace("-", "_"), FIELDS, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_bytes()) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise UserError(f"invalid YAML in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file must hold a mapping of settings: {path}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r} in {path}{did_you_mean(unknown[0])}")
    for name, value in values.items():
        if not fits(value, _TYPES[name]):
            # reprlib: a YAML alias bomb expands to billions of elements, all of them in a plain repr
            raise UserError(f"setting {name!r} in {path} must be {type_name(_TYPES[name])}, "
                            f"got {reprlib.repr(value)}")
    return values


def fits(value, kind) -> bool:
    """Does a YAML value have a field's type? (An int is a float; a bool is not a number.)"""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    for t in options:
        if t is type(None) and value is None:
            return True
        if typing.get_origin(t) is list:
            if isinstance(value, list) and all(fits(v, typing.get_args(t)[0]) for v in value):
                return True
        elif t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        elif t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        elif t in (bool, str) and isinstance(value, t):
            return True
    return False


def type_name(kind) -> str:
    return str(kind).replace("typing.", "").replace("<class '", "").replace("'>", "")


def make_config(flags: dict | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < recipe < YAML file < flags. ``flags`` holds only what the user set."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_file = read_yaml(config_file) if config_file else {}
    unknown = sorted(set(flags) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}{did_you_mean(unknown[0])}")
    recipe = flags.get("recipe") or from_file.get("recipe") or TrainConfig.recipe
    if recipe not in RECIPES:
        where = "" if "recipe" in flags else f" in {config_file}"
        raise UserError(f"unknown recipe {recipe!r}{where}; choose from {', '.join(RECIPES)}")
    chosen = {**from_file, **flags}
    cfg = TrainConfig(**{**RECIPES[recipe], **chosen})
    try:
        cfg.validate()
    except UserError as e:
        # Name the file when its settings are wrong on their own, not only with the flags.
        if from_file and not _valid(TrainConfig(**{**RECIPES[recipe], **from_file})):
            raise UserError(f"{e} (in {config_file})") from None
        raise
    if cfg.precision == "auto":
        cfg.precision = "bf16" if bf16_pays(cfg.device) else "fp32"
    if recipe == "speedrun" and "compile" not in chosen:
        cfg.compile = compile_pays(cfg.device)
    if recipe == "paper-cifar" and "warmup" not in chosen:
        # Decided by the network's real depth, not its name: resnext50_32x4d is 50 layers deep.
        if check_model(cfg.model, cfg.model_kwargs()).depth >= 110:
            cfg.warmup = PAPER_WARMUP
    return cfg


def _valid(cfg: TrainConfig) -> bool:
    try:
        cfg.validate()
    except UserError:
        return False
    return True


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
