"""One typed training configuration, the recipes that preset it, and YAML/flag merging.

Precedence, lowest first: the dataclass defaults, the recipe, ``--config FILE.yaml``,
then the command-line flags the user actually typed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError


@dataclass
class TrainConfig:
    # model
    model: str = "resnet20"
    shortcut: str | None = None  # None: the model family's default (A for CIFAR nets, B for ImageNet)
    version: str | None = None
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    # data
    data: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int = 224  # image folders only: training crop / evaluation crop
    pad: int = 2  # random-crop padding in pixels (in-memory datasets)
    flip: bool = True  # random horizontal flips
    erase: float = 0.0  # random-erasing probability per training image (0: off)
    train_subset: int = 0  # use only the first N training images (0: all)
    test_subset: int = 0  # evaluate on the first N test images (0: all)
    # optimisation
    epochs: int = 10  # 0: train for max_steps
    max_steps: int = 0  # stop after this many steps (0: no limit)
    time_limit: float = 0.0  # stop after this many seconds of training, the schedule compressed to fit (0: none)
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  # step | cosine | onecycle
    milestones: list[int] = field(default_factory=list)  # step schedule, in steps (default 50%, 75%)
    warmup: int = 0  # steps of linear warm-up from lr/10 (onecycle: from 0; default 15% of steps)
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights, per step (0: off)
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False
    compile: bool = False
    workers: int = 2  # DataLoader workers, image folders only
    eval_batch_size: int = 1000
    tta: bool = False  # evaluate on the image and its mirror, average the logits
    log_every: int = 50  # steps between metrics.jsonl rows
    checkpoint_every: int = 0  # steps between checkpoints (0: at the end of each epoch only)
    # files and starting points
    out: str = "runs/train"
    resume: bool = False
    init: str | None = None  # weights to start from (.safetensors, .pth state dict, checkpoint.pt)
    freeze_backbone: bool = False
    recipe: str = "fast"

    def model_kwargs(self) -> dict:
        opts = {"shortcut": self.shortcut, "version": self.version,
                "zero_init_residual": self.zero_init_residual or None,
                "drop_path_rate": self.drop_path_rate or None}
        return {k: v for k, v in opts.items() if v is not None}

    def validate(self) -> None:
        from . import resnet  # noqa: F401  (registers the builders)
        from .registry import create_model, list_models

        if self.model not in list_models():
            create_model(self.model)  # raises, naming the closest registered names
        positive = ["lr", "batch_size", "eval_batch_size", "log_every"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ["epochs", "max_steps", "time_limit", "weight_decay", "momentum", "warmup", "pad",
                     "label_smoothing", "train_subset", "test_subset", "checkpoint_every", "workers"]:
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.epochs == 0 and self.max_steps == 0:
            raise UserError("set --epochs or --max-steps")
        for name in ["label_smoothing", "ema"]:
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.erase <= 1:
            raise UserError(f"--erase must be a probability in [0, 1], got {self.erase}")
        choices = {"schedule": ("step", "cosine", "onecycle"), "device": ("auto", "cpu", "cuda"),
                   "precision": ("fp32", "bf16"), "recipe": tuple(RECIPES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


# Recipes: overrides of the defaults. Units are in the comments.
RECIPES: dict[str, dict] = {
    # Tuned for Fashion-MNIST / MNIST on a 2-core CPU (benchmarks/fashion_mnist.py):
    # bf16 autocast and channels_last make oneDNN's fast kernels available.
    "fast": {
        "epochs": 7, "batch_size": 256, "lr": 0.2, "nesterov": True, "weight_decay": 5e-4,
        "schedule": "onecycle", "label_smoothing": 0.1, "pad": 2, "flip": True,
        "precision": "bf16", "channels_last": True, "tta": True,
    },
    # He et al. 2016, Sec. 4.2: SGD 0.9, wd 1e-4, batch 128, lr 0.1 /10 at 32k and 48k
    # iterations, 64k in all; 4-pixel padding, 32x32 crops, flips. The paper warms ResNet-110
    # up at 0.01 for ~400 iterations: `paper_cifar_recipe` adds that for 110+ layers.
    "paper-cifar": {
        "epochs": 0, "max_steps": 64_000, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
        "nesterov": False, "weight_decay": 1e-4, "schedule": "step", "milestones": [32_000, 48_000],
        "warmup": 0, "label_smoothing": 0.0, "pad": 4, "flip": True, "tta": False,
    },
    # He et al. 2016, Sec. 3.4, with torchvision's reference schedule (lr /10 every 30 epochs).
    "paper-imagenet": {
        "epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "nesterov": False,
        "weight_decay": 1e-4, "schedule": "step", "label_smoothing": 0.0, "flip": True,
        "image_size": 224, "tta": False,
    },
}


def recipe_overrides(name: str, model: str) -> dict:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    over = dict(RECIPES[name])
    if name == "paper-cifar":
        depth = "".join(c for c in model if c.isdigit())
        if depth and int(depth) >= 110:
            over["warmup"] = 400  # paper: 0.01 until training error < 80%, about 400 iterations
    return over


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"invalid YAML in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file must hold a mapping of settings: {path}")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} in {path}")
    return values


def make_config(flags: dict | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < recipe < YAML file < flags. ``flags`` holds only what the user set."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_file = read_yaml(config_file) if config_file else {}
    unknown = sorted(set(flags) - FIELDS)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    recipe = flags.get("recipe") or from_file.get("recipe") or TrainConfig.recipe
    model = flags.get("model") or from_file.get("model") or TrainConfig.model
    values = {**recipe_overrides(recipe, model), **from_file, **flags}
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:
        raise UserError(f"bad settings: {e}") from None
    cfg.validate()
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
