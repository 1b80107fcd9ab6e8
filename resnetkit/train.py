"""Train a ResNet.

    resnetkit train --model resnet20 --data fashion-mnist --epochs 15 --out runs/r20
    resnetkit train --model resnet110 --data cifar10 --data-dir cifar-10-batches-py --recipe paper-cifar

From Python: ``resnetkit.train.train(make_config({"model": "resnet20", "epochs": 2}))``.

The loop reads top to bottom: data, model, optimiser, resume, the steps, the end.
Everything written to the output folder goes through ``RunDir``, whose methods do
nothing on ranks other than 0, so the same code can run under torchrun.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_state_dict_file,
    save_checkpoint,
    save_weights,
)
from .config import TrainConfig, make_config, to_yaml
from .data import (
    FolderLoader,
    ImageFolder,
    TensorLoader,
    channel_stats,
    env_rank,
    folder_stats,
    load_arrays,
)
from .errors import UserError
from .evaluate import EvalResult, autocast, evaluate_model
from .registry import create_model

# --- set-up helpers -------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def _test_folder(root: Path) -> Path | None:
    """The evaluation split of an image-folder dataset: ``val/`` or ``test/`` beside ``train/``."""
    return next((root / d for d in ("val", "test") if (root / d).is_dir()), None)


def build_loaders(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1):
    """(train loader, test loader, classes, in_chans, normalisation stats)."""
    if cfg.data == "folder":
        if not cfg.data_dir:
            raise UserError("--data folder needs --data-dir (with train/ and val/ sub-folders)")
        root = Path(cfg.data_dir)
        train_root = root / "train" if (root / "train").is_dir() else root
        test_root = _test_folder(root)
        if test_root is None:
            raise UserError(f"no val/ or test/ folder beside train/ in {root}")
        train_set = ImageFolder(train_root, True, cfg.image_size, cfg.seed)
        test_set = ImageFolder(test_root, False, cfg.image_size, cfg.seed)
        if train_set.classes != test_set.classes:
            raise UserError(f"class folders of {train_root} and {test_root} differ")
        mean, std = folder_stats(train_set)
        common = {"mean": mean, "std": std, "device": device, "flip": cfg.flip, "workers": cfg.workers,
                  "seed": cfg.seed}
        train = FolderLoader(train_set, cfg.batch_size, train=True, erase=cfg.erase, rank=rank, world_size=world,
                             **common)
        test = FolderLoader(test_set, cfg.eval_batch_size, train=False, **common)
        return train, test, train_set.classes, 3, (mean, std)

    train_set = load_arrays(cfg.data, cfg.data_dir, train=True)
    test_set = load_arrays(cfg.data, cfg.data_dir, train=False)
    if cfg.train_subset:
        train_set = dataclasses.replace(train_set, images=train_set.images[:cfg.train_subset],
                                        labels=train_set.labels[:cfg.train_subset])
    if cfg.test_subset:
        test_set = dataclasses.replace(test_set, images=test_set.images[:cfg.test_subset],
                                       labels=test_set.labels[:cfg.test_subset])
    mean, std = channel_stats(train_set.images)
    train = TensorLoader(train_set, cfg.batch_size, train=True, mean=mean, std=std, device=device,
                         pad=cfg.pad, flip=cfg.flip, erase=cfg.erase, seed=cfg.seed, rank=rank, world_size=world)
    test = TensorLoader(test_set, cfg.eval_batch_size, train=False, mean=mean, std=std, device=device)
    return train, test, train_set.classes, train_set.images.shape[1], (mean, std)


def build_eval_loader(data: str, data_dir: str | None, *, mean, std, device, batch_size: int,
                      image_size: int = 224, in_chans: int = 3, workers: int = 2):
    """The test split alone, normalised with the training statistics (``resnetkit eval``)."""
    if data == "folder":
        root = Path(data_dir or "")
        test_root = _test_folder(root) or root
        test_set = ImageFolder(test_root, False, image_size, in_chans=in_chans)
        if mean is None:
            mean, std = folder_stats(test_set)
        loader = FolderLoader(test_set, batch_size, train=False, mean=mean, std=std, device=device,
                              workers=workers)
        return loader, test_set.classes
    test_set = load_arrays(data, data_dir, train=False)
    if mean is None:
        mean, std = channel_stats(load_arrays(data, data_dir, train=True).images)
    return TensorLoader(test_set, batch_size, train=False, mean=mean, std=std, device=device), test_set.classes


def init_from(model: nn.Module, path: str) -> list[str]:
    """Start from weights in ``path`` (e.g. a torchvision .pth): the classifier is kept only
    if its shape matches, and an RGB stem is summed into a grayscale one. Returns the keys
    left at their fresh initialisation."""
    sd = load_state_dict_file(path)
    own = model.state_dict()
    w = sd.get("conv1.weight")
    if w is not None and w.shape[1] != own["conv1.weight"].shape[1] and own["conv1.weight"].shape[1] == 1:
        sd["conv1.weight"] = w.sum(1, keepdim=True)  # grey = R + G + B seen through the same filter
    dropped = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if any(not k.startswith("fc.") for k in dropped):
        raise UserError(f"weights in {path} do not fit {model.model_name}: shape mismatch at {dropped[0]}")
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise UserError(f"weights in {path} do not fit {model.model_name}: unexpected key {unexpected[0]}")
    sd = {k: v for k, v in sd.items() if k not in dropped}
    missing = [k for k in own if k not in sd]
    if any(not k.startswith("fc.") for k in missing):
        raise UserError(f"weights in {path} do not fit {model.model_name}: missing key {missing[0]}")
    model.load_state_dict(sd, strict=False)
    return missing


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """Learning rate at ``step`` as a multiple of ``cfg.lr``."""
    if cfg.schedule == "onecycle":
        # Linear warm-up from 0 to the peak, then linear decay to 0 (Smith & Topin 2017).
        peak = cfg.warmup or max(1, int(0.15 * total))
        return step / peak if step < peak else max(0.0, (total - step) / max(1, total - peak))
    if step < cfg.warmup:
        return 0.1 + 0.9 * step / cfg.warmup
    if cfg.schedule == "step":
        milestones = cfg.milestones or [int(0.5 * total), int(0.75 * total)]
        return 0.1 ** sum(step >= m for m in milestones)
    t = (step - cfg.warmup) / max(1, total - cfg.warmup)  # cosine
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * model, over weights and BN statistics alike. The decay
    ramps up as (1 + step) / (10 + step) so early averages do not drag in the random init."""
    d = min(decay, (1 + step) / (10 + step))
    pairs = list(zip(ema.state_dict().values(), model.state_dict().values()))
    floats = [(e, m) for e, m in pairs if e.is_floating_point()]
    torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1 - d)
    for e, m in pairs:
        if not e.is_floating_point():
            e.copy_(m)  # BN's num_batches_tracked


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Progress:
    """One line per epoch, redrawn in place: loss, accuracy, img/s, ETA. Silent unless stderr
    is a terminal (logs and CI stay clean)."""

    def __init__(self, total: int, epoch: int, epochs: int) -> None:
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.enabled = sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, loss: float, acc: float, ips: float) -> None:
        if not self.enabled:
            return
        frac = done / max(1, self.total)
        eta = (time.perf_counter() - self.start) * (1 - frac) / max(frac, 1e-9)
        bar = "#" * int(24 * frac)
        sys.stderr.write(f"\repoch {self.epoch + 1}/{self.epochs} [{bar:<24}] {done}/{self.total} "
                         f"loss {loss:.3f} acc {100 * acc:.2f}% {ips:.0f} img/s ETA {eta:4.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class RunDir:
    """The output folder. Every write goes through here; on ranks other than 0 nothing is written."""

    def __init__(self, out: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.path, self.enabled = Path(out), enabled
        self.tb = None
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path))

    def write_config(self, cfg: TrainConfig) -> None:
        if self.enabled:
            atomic_write_text(self.path / "config.yaml", to_yaml(cfg))

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path / "metrics.jsonl", "a") as f:  # append-only; a torn last line is skipped
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def truncate_log(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we restart from."""
        path = self.path / "metrics.jsonl"
        if self.enabled and path.exists():
            rows = read_metrics(path)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))

    def checkpoint(self, state: dict) -> None:
        if self.enabled:
            save_checkpoint(self.path / "checkpoint.pt", state)

    def finish(self, model: nn.Module, meta: dict, summary: dict, rows: list[dict]) -> None:
        if not self.enabled:
            return
        from .plots import plot_curves

        save_weights(self.path / "model.safetensors", model, meta)
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_curves(rows, self.path / "curves.png", title=f"{summary['model']} on {summary['dataset']}")
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-append
    return rows


# --- the training loop ----------------------------------------------------------------------


def train(cfg: TrainConfig, *, tensorboard: bool = True, verbose: bool = True) -> dict:
    """Train as ``cfg`` says; returns the final summary (also written to summary.json)."""
    cfg.validate()
    rank, world = env_rank()
    if world > 1:
        raise UserError("distributed training (WORLD_SIZE > 1) is not supported yet; run one process")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # Data
    train_loader, test_loader, classes, in_chans, (mean, std) = build_loaders(cfg, device, rank, world)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UserError(f"batch size {cfg.batch_size} is larger than the training set")
    horizon = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.max_steps
    total_steps = min(horizon, cfg.max_steps) if cfg.max_steps else horizon
    epochs = math.ceil(total_steps / steps_per_epoch)

    # Model
    model = create_model(cfg.model, num_classes=len(classes), in_chans=in_chans, **cfg.model_kwargs())
    if cfg.init:
        init_from(model, cfg.init)
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    forward = torch.compile(model) if cfg.compile else model
    # With --ema, a moving average of the weights is what gets evaluated and saved.
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema else None
    final_model = ema if ema is not None else model

    # Optimiser and schedule
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    # With --time-limit the schedule runs on whichever is further along, steps or the clock,
    # so the learning rate still anneals to its end when the time runs out first.
    elapsed = 0.0  # training seconds so far, updated every step when there is a time limit

    def schedule(s: int) -> float:
        clock = horizon * elapsed / cfg.time_limit if cfg.time_limit else 0.0
        return lr_factor(max(s, clock), cfg, horizon)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # Output folder, and resume
    run = RunDir(cfg.out, rank == 0, tensorboard)
    step, train_time = 0, 0.0
    ckpt_path = Path(cfg.out) / "checkpoint.pt"
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, device)
        if state["model_name"] != cfg.model:
            raise UserError(f"{ckpt_path} holds {state['model_name']}, not {cfg.model}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if "ema" not in state:
                raise UserError(f"{ckpt_path} was saved without --ema; resume without it or start afresh")
            ema.load_state_dict(state["ema"])
        step, train_time = state["step"], state["train_time"]
        set_rng_state(state["rng"])
        if verbose:
            print(f"resuming from step {step} of {total_steps} ({ckpt_path})", flush=True)
    elif cfg.resume and verbose:
        print(f"no checkpoint at {ckpt_path}: starting afresh", flush=True)
    if cfg.time_limit and train_time >= cfg.time_limit:
        total_steps = step  # resumed a run that had used up its time
    run.truncate_log(step)  # a fresh run starts an empty log
    run.write_config(cfg)
    if verbose:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{cfg.model}: {n_params:,} parameters | {cfg.data}: {len(train_loader.labels):,} train / "
              f"{len(test_loader.labels):,} test images | {total_steps} steps on {device} ({cfg.precision})",
              flush=True)

    def state_dict() -> dict:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                 "train_time": train_time, "rng": rng_state(), "model_name": cfg.model,
                 "model_args": dict(model.model_args), "config": dataclasses.asdict(cfg)}
        if ema is not None:
            state["ema"] = ema.state_dict()
        return state

    def evaluate(final: bool) -> EvalResult:
        # Test-time flips double the cost of an evaluation: only the final one uses them.
        return evaluate_model(final_model, test_loader, len(classes), precision=cfg.precision,
                              tta=cfg.tta and final, memory_format=memory_format)

    # The steps
    last: EvalResult | None = None
    while step < total_steps:
        epoch, start_batch = divmod(step, steps_per_epoch)
        model.train()
        if cfg.freeze_backbone:  # frozen BN layers keep their statistics too
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        progress = Progress(steps_per_epoch, epoch, epochs)
        # Sums stay on the device; reading them forces a sync, so it happens only at log time.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen, t_log = 0, time.perf_counter()
        for x, y in train_loader.epoch(epoch, start_batch):
            x = x.contiguous(memory_format=memory_format)
            with autocast(device, cfg.precision):
                logits = forward(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.time_limit:
                elapsed = train_time + time.perf_counter() - t_log
            scheduler.step()
            if ema is not None:
                update_ema(ema, model, cfg.ema, step)
            step += 1
            if cfg.time_limit and elapsed >= cfg.time_limit:
                total_steps = step  # out of time: this step was the last
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)

            last_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if step % cfg.log_every == 0 or last_of_epoch:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                train_time += now - t_log
                mean_loss, acc = loss_sum.item() / seen, correct.item() / seen
                ips = seen / (now - t_log)
                if not math.isfinite(mean_loss):
                    raise UserError(f"training diverged at step {step} (loss {mean_loss}); lower --lr")
                run.log({"epoch": step / steps_per_epoch, "step": step, "train_loss": mean_loss,
                         "train_error": 1 - acc, "lr": scheduler.get_last_lr()[0], "images_per_sec": ips})
                progress.update(step - epoch * steps_per_epoch, mean_loss, acc, ips)
                loss_sum.zero_()
                correct.zero_()
                seen, t_log = 0, time.perf_counter()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last_of_epoch:
                run.checkpoint(state_dict())
                t_log = time.perf_counter()  # do not bill the write to the training rate
            if step >= total_steps:
                break
        progress.close()

        # End of epoch (or of a truncated run): test, log, checkpoint.
        last = evaluate(final=step >= total_steps)
        row = {"epoch": step / steps_per_epoch, "step": step, "test_loss": last.loss,
               "test_error": last.error, "lr": scheduler.get_last_lr()[0], "train_time": train_time}
        if last.top5 is not None:
            row["test_top5"] = last.top5
        run.log(row)
        run.checkpoint(state_dict())
        if verbose:
            print(f"epoch {step / steps_per_epoch:5.2f}  step {step:6d}  test acc {100 * last.accuracy:.2f}%"
                  f"  test loss {last.loss:.4f}  train time {train_time:6.1f}s", flush=True)

    if last is None:  # resumed a finished run
        last = evaluate(final=True)
    # The end
    rows = read_metrics(Path(cfg.out) / "metrics.jsonl") if rank == 0 else []
    step_rows = [r for r in rows if "train_error" in r]
    ips = [r["images_per_sec"] for r in step_rows]
    summary = {
        "model": cfg.model, "dataset": cfg.data, "params": sum(p.numel() for p in model.parameters()),
        "steps": step, "epochs": step / steps_per_epoch,
        "test_accuracy": last.accuracy, "test_error": last.error, "test_top5": last.top5,
        "test_loss": last.loss, "final_train_error": step_rows[-1]["train_error"] if step_rows else None,
        "train_time_sec": train_time,
        "images_per_sec": sorted(ips)[len(ips) // 2] if ips else None,  # median over log intervals
        "device": str(device), "precision": cfg.precision, "torch": torch.__version__,
    }
    meta = {"dataset": cfg.data, "data_dir": cfg.data_dir, "classes": classes, "mean": mean, "std": std,
            "training": {"precision": cfg.precision, "tta": cfg.tta, "image_size": cfg.image_size,
                         "test_accuracy": last.accuracy}}
    run.finish(final_model, meta, summary, rows)
    return summary


# --- command line ---------------------------------------------------------------------------


def add_cli(sub) -> None:
    """`resnetkit train`: every flag defaults to None so that only what was typed overrides the
    recipe and the config file."""
    p = sub.add_parser("train", help="train a model", description=__doc__.split("\n\n")[1])
    S = argparse.SUPPRESS
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S)
    g.add_argument("--shortcut", choices=["A", "B", "C", "none"], default=S)
    g.add_argument("--version", choices=["1", "1.5", "2"], default=S)
    g.add_argument("--zero-init-residual", action="store_true", default=S)
    g.add_argument("--drop-path-rate", type=float, default=S)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, help="fashion-mnist (default), mnist, cifar10, cifar100, folder")
    g.add_argument("--data-dir", default=S)
    g.add_argument("--image-size", type=int, default=S)
    g.add_argument("--pad", type=int, default=S, help="random-crop padding (pixels)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--erase", type=float, default=S, help="random-erasing probability per image")
    g.add_argument("--train-subset", type=int, default=S)
    g.add_argument("--test-subset", type=int, default=S)
    g.add_argument("--workers", type=int, default=S)
    g = p.add_argument_group("optimisation")
    g.add_argument("--recipe", default=S, help="fast (default), paper-cifar, paper-imagenet")
    g.add_argument("--epochs", type=int, default=S)
    g.add_argument("--max-steps", type=int, default=S)
    g.add_argument("--time-limit", type=float, default=S,
                   help="seconds of training; the schedule is compressed to end on time")
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--schedule", default=S, help="step, cosine, onecycle")
    g.add_argument("--milestones", type=int, nargs="+", default=S, help="step schedule: steps")
    g.add_argument("--warmup", type=int, default=S, help="warm-up steps")
    g.add_argument("--label-smoothing", type=float, default=S)
    g.add_argument("--ema", type=float, default=S, help="weight-average decay per step, e.g. 0.999")
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--device", default=S, help="auto, cpu, cuda")
    g.add_argument("--precision", default=S, help="fp32, bf16")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--eval-batch-size", type=int, default=S)
    g.add_argument("--log-every", type=int, default=S)
    g.add_argument("--checkpoint-every", type=int, default=S, help="steps")
    g = p.add_argument_group("files")
    g.add_argument("--out", default=S)
    g.add_argument("--resume", action="store_true", default=S)
    g.add_argument("--init", default=S, help="weights to start from (.safetensors, .pth, checkpoint.pt)")
    g.add_argument("--freeze-backbone", action="store_true", default=S)
    g.add_argument("--config", dest="config_file", default=None, help="YAML file of settings")
    p.add_argument("--no-tensorboard", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    flags = {k: v for k, v in vars(args).items()
             if k not in ("func", "command", "debug", "config_file", "no_tensorboard", "argv")}
    cfg = make_config(flags, args.config_file)
    summary = train(cfg, tensorboard=not args.no_tensorboard)
    top5 = f", top-5 {100 * summary['test_top5']:.2f}%" if summary["test_top5"] is not None else ""
    print(f"done: test accuracy {100 * summary['test_accuracy']:.2f}%{top5} in "
          f"{summary['train_time_sec']:.0f}s of training; outputs in {cfg.out}")
