"""Train a ResNet.

    resnetkit train --model resnet20 --data fashion-mnist --epochs 15 --out runs/r20
    resnetkit train --model resnet110 --data cifar10 --data-dir cifar-10-batches-py --recipe paper-cifar
    resnetkit train --model resnet20 --widths 32 64 128 --blocks 1 1 1   # a wider, shallower net

From Python: ``resnetkit.train.train(make_config({"model": "resnet20", "epochs": 2}))``.
Under torchrun it trains data-parallel (distributed.py, docs/distributed.md):

    torchrun --standalone --nproc-per-node=2 -m resnetkit train --model resnet20 --batch-size 256

``train`` is a short driver that reads top to bottom (data, model, state and resume, the
epochs, the end) over four parts: ``TrainState`` (model, EMA, optimiser, schedule, step and
training time, which saves and restores itself), ``run_epoch`` (the steps of one epoch, or up
to where the run stops), ``evaluate_model`` (evaluate.py) and ``RunDir`` (rundir.py: every file
the run writes, and only on rank 0, so the same code can run under torchrun).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed
from .checkpoint import load_checkpoint, load_state_dict_file
from .config import TrainConfig, add_arguments, make_config
from .data import build_loaders, first_images
from .errors import UserError
from .evaluate import EvalResult, evaluate_model
from .layerstats import LayerStats
from .muon import FilterMuon
from .registry import create_model
from .rundir import RunDir, progress_bar
from .runtime import autocast, rank_and_world, resolve_device, rng_state, seed_everything, set_rng_state

clock = time.perf_counter  # the one place the trainer reads the time (tests substitute a fake clock)

# --- the parts -------------------------------------------------------------------------------


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


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


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


# InfoBatch anneals: the last 1/8 of the schedule trains on every image again, unweighted.
PRUNE_UNTIL = 0.875


def pruned_order(scores: torch.Tensor, fraction: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """--prune (Qin et al., "InfoBatch", ICLR 2024): an epoch's order of image indices, and a
    loss weight per image. ``fraction`` of the images whose last loss (``scores``; NaN where
    never scored) is below the mean are skipped, drawn at random; the others that are below it
    weigh 1 / (1 - fraction), so the expected gradient stays the full set's. The epoch keeps its
    length: the kept images come round in fresh random orders until it is full, so hard images
    are seen more often in the same time. Weights are scaled to average 1 over the kept images,
    which keeps the gradient's size, and so the learning rate's meaning, as without pruning."""
    scores = scores.cpu()
    n = len(scores)
    easy = scores < scores.nanmean()  # NaN (never scored) compares false: kept, weight 1
    kept = (~(easy & (torch.rand(n, generator=g) < fraction))).nonzero().squeeze(1)
    weights = torch.where(easy, 1 / (1 - fraction), 1.0)
    weights /= weights[kept].mean()
    rounds = [kept[torch.randperm(len(kept), generator=g)] for _ in range(math.ceil(n / len(kept)))]
    return torch.cat(rounds)[:n], weights


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


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, device: torch.device,
                memory_format: torch.memory_format, world: int = 1) -> nn.Module:
    """The network to train, on its device: fresh, or started from ``--init`` weights."""
    model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans, **cfg.model_kwargs())
    if cfg.init:
        init_from(model, cfg.init)
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    if not cfg.bn_weight:
        for m in batch_norms(model):
            if m.weight is not None:
                m.weight.requires_grad_(False)  # at its initial 1
    if cfg.sync_bn and world > 1:
        distributed.convert_sync_batchnorm(model, device)
    return model.to(device).to(memory_format=memory_format)


class TrainState:
    """Everything a run changes as it goes: the model, its moving average (``--ema``), the
    optimiser and learning-rate schedule, the step and the seconds of training so far.
    ``state_dict()`` is what checkpoint.pt holds (with every RNG); ``load_state_dict`` resumes."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, horizon: int,
                 total_steps: int | None = None) -> None:
        self.cfg, self.model = cfg, model
        self.steps_per_epoch = steps_per_epoch
        self.horizon = horizon  # the step the schedule ends at (--epochs, or --max-steps alone)
        self.total_steps = total_steps or horizon  # where this run stops (--max-steps; --time-limit lowers it)
        self.step = 0
        self.train_time = 0.0  # seconds of training, evaluation and checkpoint writes excluded
        self.elapsed = 0.0  # the same, up to the current step (kept up to date under --time-limit)
        self.first_step = 0.0  # what the first step took: with --compile, mostly compiling
        # With --ema, a moving average of the weights is what gets evaluated and saved.
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema else None
        # --lookahead (Zhang et al. 2019): slow weights that move alpha of the way to the trained
        # ("fast") weights every k steps; the fast weights then restart from them.
        self.slow = [p.detach().clone() for p in model.parameters() if p.requires_grad] if cfg.lookahead else None
        # --optimizer muon: the filter banks step with Muon (muon.py), the rest with SGD as usual.
        self.muon = (FilterMuon(model, cfg.muon_lr, cfg.muon_momentum, cfg.muon_ns_steps)
                     if cfg.optimizer == "muon" else None)
        muoned = {id(p) for p in self.muon.filters} if self.muon else set()
        # --bn-bias-lr: the BN shifts in a group of their own (the schedule scales every group alike).
        shifts = {id(m.bias) for m in batch_norms(model) if m.bias is not None} if cfg.bn_bias_lr != 1 else set()
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in muoned]
        groups = [{"params": [p for p in params if id(p) not in shifts]},
                  {"params": [p for p in params if id(p) in shifts], "lr": cfg.lr * cfg.bn_bias_lr,
                   "weight_decay": cfg.weight_decay / cfg.bn_bias_lr}]
        self.optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.lr_scale(s))
        self.muon_scheduler = (torch.optim.lr_scheduler.LambdaLR(self.muon.optimizer, lambda s: self.lr_scale(s))
                               if self.muon else None)
        # --prune: each training image's last loss, and this epoch's (order, weights) if it prunes.
        self.scores: torch.Tensor | None = None
        self.plan: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def final_model(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    def schedule_step(self, step: int) -> float:
        """Where the schedules stand at ``step``. With --time-limit they run on whichever is further
        along, steps or the clock, so the learning rate still anneals to its end on time. The
        clock starts after the first step: under --compile that step takes tens of seconds,
        billed to the limit, and the warm-up would otherwise pass before the second step."""
        if not self.cfg.time_limit:
            return step
        left = max(self.cfg.time_limit - self.first_step, 1e-9)
        return max(step, self.horizon * (self.elapsed - self.first_step) / left)

    def lr_scale(self, step: int) -> float:
        return lr_factor(self.schedule_step(step), self.cfg, self.horizon)

    def image_size(self, full: int) -> int:
        """--progressive: the training image size now, rising linearly from the smallest to
        ``full`` over the first 3/4 of the schedule in steps of 4 pixels (few shapes, so oneDNN
        and torch.compile reuse their kernels); the last quarter trains, and BN settles, at full size."""
        if not self.cfg.progressive or self.cfg.progressive >= full:
            return full
        t = min(1.0, self.schedule_step(self.step) / (0.75 * self.horizon))
        return min(full, self.cfg.progressive + 4 * int(t * (full - self.cfg.progressive) / 4))

    def translating(self) -> bool:
        """--pad-from: whether the next training batch is translated yet."""
        return self.schedule_step(self.step) >= self.cfg.pad_from * self.horizon

    def plan_epoch(self, epoch: int, start: int, n: int, device: torch.device) -> tuple | None:
        """--prune: the (image order, loss weights) of an epoch that prunes, else None (epoch 0,
        the last 1/8 of the schedule, no --prune). Drawn as the epoch starts; an epoch resumed
        part-way keeps the plan it started with (checkpoint.pt)."""
        if not self.cfg.prune:
            return None
        if self.scores is None:
            self.scores = torch.full((n,), math.nan, device=device)
        if start == 0:
            g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch + 15_485_863)
            pruning = epoch > 0 and self.schedule_step(self.step) < PRUNE_UNTIL * self.horizon
            self.plan = pruned_order(self.scores, self.cfg.prune, g) if pruning else None
        return self.plan

    def optimizer_step(self) -> None:
        self.optimizer.step()
        if self.muon is not None:
            self.muon.step()

    def out_of_time(self) -> bool:
        return bool(self.cfg.time_limit) and self.elapsed >= self.cfg.time_limit

    def after_step(self, started: float) -> None:
        """Schedule, average and count one optimiser step; ``started`` is when the current
        timing interval began (perf_counter), for the clock of --time-limit."""
        if self.cfg.time_limit:
            # Under DDP every rank follows the slowest clock: the schedule and the stop stay in step.
            self.elapsed = distributed.all_max(self.train_time + clock() - started)
            if self.step == 0:
                self.first_step = self.elapsed
        self.scheduler.step()
        if self.muon_scheduler is not None:
            self.muon_scheduler.step()
        if self.slow is not None and (self.step + 1) % self.cfg.lookahead == 0:
            with torch.no_grad():
                fast = [p for p in self.model.parameters() if p.requires_grad]
                torch._foreach_lerp_(self.slow, fast, self.cfg.lookahead_alpha)
                torch._foreach_copy_(fast, self.slow)
        if self.ema is not None:
            update_ema(self.ema, self.model, self.cfg.ema, self.step)
        self.step += 1
        if self.out_of_time():
            self.total_steps = self.step  # this step was the last

    def state_dict(self) -> dict:
        cfg = self.cfg
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step,
                 "epoch": self.step // self.steps_per_epoch, "train_time": self.train_time,
                 "elapsed": self.elapsed, "first_step": self.first_step, "rng": rng_state(),
                 "model_name": cfg.model, "model_args": dict(self.model.model_args),
                 "config": dataclasses.asdict(cfg)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.slow is not None:
            state["lookahead"] = self.slow
        if self.muon is not None:
            state["muon"] = {"optimizer": self.muon.optimizer.state_dict(),
                             "scheduler": self.muon_scheduler.state_dict()}
        if self.scores is not None:
            state["prune"] = {"scores": self.scores, "plan": self.plan}
        return state

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        if state["model_name"] != self.cfg.model:
            raise UserError(f"{where} holds {state['model_name']}, not {self.cfg.model}")
        if ("muon" in state) != (self.muon is not None):  # the optimisers hold different weights
            saved = "with" if "muon" in state else "without"
            raise UserError(f"{where} was saved {saved} --optimizer muon; resume the same way or start afresh")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise UserError(f"{where} was saved without --ema; resume without it or start afresh")
            self.ema.load_state_dict(state["ema"])
        if self.slow is not None:
            if "lookahead" not in state:
                raise UserError(f"{where} was saved without --lookahead; resume without it or start afresh")
            torch._foreach_copy_(self.slow, state["lookahead"])
        if self.muon is not None:
            self.muon.optimizer.load_state_dict(state["muon"]["optimizer"])
            self.muon_scheduler.load_state_dict(state["muon"]["scheduler"])
        if self.cfg.prune and "prune" in state:  # without, the scores start afresh
            self.scores, self.plan = state["prune"]["scores"], state["prune"]["plan"]
        self.step, self.train_time = state["step"], state["train_time"]
        # The clock --time-limit decided on, which excludes the logging after that step.
        self.elapsed = state.get("elapsed", self.train_time)
        self.first_step = state.get("first_step", 0.0)
        if self.out_of_time():
            self.total_steps = self.step  # resumed a run that had used up its time
        set_rng_state(state["rng"])


def diverged(state: TrainState, run: RunDir, loss: float, step: int) -> None:
    kept = (f"the last good checkpoint ({run.checkpoint_path}) is kept"
            if run.checkpoint_path.exists() else "no checkpoint was written yet")
    raise UserError(f"training diverged: loss is {loss} at step {step}; {kept}. Try a lower --lr "
                    f"(now {state.cfg.lr:g}) or --max-grad-norm")


def run_epoch(state: TrainState, loader, epoch: int, run: RunDir, forward: nn.Module,
              criterion: nn.Module, epochs: int) -> None:
    """Train from ``state.step`` to the end of ``epoch`` or to ``state.total_steps``, whichever
    comes first: log every ``log_every`` steps, checkpoint every ``checkpoint_every``."""
    cfg, model = state.cfg, state.model
    steps_per_epoch = state.steps_per_epoch
    device = next(model.parameters()).device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    start_batch = state.step - epoch * steps_per_epoch
    model.train()
    if cfg.freeze_backbone:  # frozen BN layers keep their statistics too
        for m in batch_norms(model):
            m.eval()
    bar = progress_bar(steps_per_epoch, epoch, epochs, start_batch)
    stats = LayerStats(model) if cfg.layer_stats else None
    # A CPU reads the loss for free, so every step is checked; an accelerator is checked at
    # log and checkpoint time, where the loop syncs anyway.
    check_each_step = device.type == "cpu"
    # Sums stay on the device; reading them forces a sync, so it happens only at log time.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, t_log, spent = 0, clock(), 0.0  # spent: training seconds since the last log row
    loader.translate = state.translating()
    plan = state.plan_epoch(epoch, start_batch, len(loader.labels), device)
    if plan is None:
        batches, weights = loader.epoch(epoch, start_batch), None
    else:
        batches, weights = loader.epoch(epoch, start_batch, plan[0]), plan[1].to(device)
        skipped = 1 - len(plan[0].unique()) / len(plan[0])  # logged with each row of the epoch
    for x, y in batches:
        size = state.image_size(x.shape[-1])
        if size < x.shape[-1]:  # --progressive: smaller images early on, at a fraction of the cost
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.contiguous(memory_format=memory_format)
        with autocast(device, cfg.precision):
            logits = forward(x)
            losses = criterion(logits.float(), y)  # one per image
        if state.scores is not None:  # every rank keeps every rank's scores, so all plan alike
            index = loader.index.to(device)
            state.scores[distributed.all_gather(index)] = distributed.all_gather(losses.detach())
        loss = losses.mean() if weights is None else (losses * weights[index]).mean()
        if check_each_step and not math.isfinite(loss.item()):
            diverged(state, run, loss.item(), state.step + 1)
        model.zero_grad(set_to_none=True)
        loss.backward()
        record = stats is not None and state.step % cfg.layer_stats == 0
        if record:
            stats.before_step()
        if cfg.max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        state.optimizer_step()
        if record:
            run.log({"step": state.step, **stats.after_step()}, "layers.jsonl")
        state.after_step(t_log)
        loader.translate = state.translating()  # the loader draws the next batch lazily, after this
        loss_sum += losses.detach().sum()  # unweighted, as without --prune
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)

        step = state.step
        last_of_epoch = step % steps_per_epoch == 0 or step == state.total_steps
        if step % cfg.log_every == 0 or last_of_epoch:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = clock()
            state.train_time += now - t_log
            spent += now - t_log
            if distributed.active():  # what every rank saw, logged once by rank 0
                totals = distributed.all_sum(torch.stack([loss_sum.double(), correct.double(),
                                                          torch.tensor(seen, dtype=torch.float64, device=device)]))
                loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
            mean_loss, acc = loss_sum.item() / seen, correct.item() / seen
            ips = seen / spent
            if not math.isfinite(mean_loss):
                diverged(state, run, mean_loss, step)
            lr = state.scheduler.get_last_lr()[0]
            run.log({"epoch": step / steps_per_epoch, "step": step, "train_loss": mean_loss,
                     "train_error": 1 - acc, "lr": lr, "images_per_sec": ips, "images": seen,
                     **({"image_size": size} if cfg.progressive else {}),
                     **({"skipped": skipped} if weights is not None else {})})
            bar.update(step - epoch * steps_per_epoch - bar.n)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{100 * acc:.2f}%", img_s=f"{ips:.0f}")
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen, t_log, spent = 0, clock(), 0.0
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last_of_epoch:
            if not math.isfinite(loss_sum.item()):  # never save a diverged state over a good one
                diverged(state, run, loss_sum.item(), step)
            now = clock()  # bill the steps so far, but not the write, to the training time
            state.train_time += now - t_log
            spent += now - t_log
            run.checkpoint(state.state_dict())
            t_log = clock()
        if step >= state.total_steps:
            break
    bar.close()


# --- the driver ------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, tensorboard: bool = True, verbose: bool = True) -> dict:
    """Train as ``cfg`` says; returns the final summary (also written to summary.json)."""
    cfg.validate()
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch: it must divide by the {world} processes")
    device = resolve_device(cfg.device, distributed.local_rank())
    if world > 1:
        distributed.start(device)
    seed_everything(cfg.seed)

    # Data
    data = build_loaders(cfg, device, rank, world)
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise UserError(f"batch size {cfg.batch_size} is larger than the training set")
    horizon = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.max_steps
    total_steps = min(horizon, cfg.max_steps) if cfg.max_steps else horizon
    epochs = math.ceil(total_steps / steps_per_epoch)

    # Model, and the state that changes as it trains
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg, len(data.classes), data.in_chans, device, memory_format, world)
    if getattr(model, "stem", "").startswith("whiten") and not cfg.init:  # a resume then loads the same filters
        model.fit_whitening(first_images(data.train, 5000))
    forward = distributed.wrap(model, device) if world > 1 else model
    forward = torch.compile(forward) if cfg.compile else forward
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="none")
    state = TrainState(cfg, model, steps_per_epoch, horizon, total_steps)

    # Output folder, and resume
    verbose = verbose and rank == 0
    # Every rank resumes from the one checkpoint rank 0 writes; after torchrun restarts a failed
    # group (--max-restarts), the run resumes on its own.
    resume = cfg.resume or distributed.restart_count() > 0
    run = RunDir(cfg.out, rank == 0, tensorboard, keep=resume, overwrite=cfg.overwrite)
    try:  # the folder stays locked until the run ends, however it ends
        if resume and run.checkpoint_path.exists():
            state.load_state_dict(load_checkpoint(run.checkpoint_path, device), str(run.checkpoint_path))
            if verbose:
                print(f"resuming from step {state.step} of {total_steps} ({run.checkpoint_path})", flush=True)
        elif resume and verbose:
            print(f"no checkpoint at {run.checkpoint_path}: starting afresh", flush=True)
        run.truncate_log(state.step)  # a fresh run starts an empty log
        run.write_config(cfg)
        if verbose:
            n_params = sum(p.numel() for p in model.parameters())
            ranks = f" x {world} processes" if world > 1 else ""
            print(f"{cfg.model}: {n_params:,} parameters | {cfg.data}: {len(data.train.labels):,} train / "
                  f"{len(data.test.labels):,} test images | {state.total_steps} steps on {device}{ranks} "
                  f"({cfg.precision})", flush=True)

        def evaluate(final: bool) -> EvalResult:
            # Test-time flips double the cost of an evaluation: only the final one uses them.
            result = evaluate_model(state.final_model, data.test, len(data.classes), precision=cfg.precision,
                                    tta=cfg.tta and final, tta_shift=cfg.tta_shift, memory_format=memory_format)
            return gather(result) if world > 1 else result

        # The epochs, each ending with a test, a log row and a checkpoint
        last: EvalResult | None = None
        while state.step < state.total_steps:
            run_epoch(state, data.train, state.step // steps_per_epoch, run, forward, criterion, epochs)
            distributed.average_buffers(state.model, state.ema)  # one set of BN statistics (no-op in one process)
            last = evaluate(final=state.step >= state.total_steps)
            epoch = state.step / steps_per_epoch
            row = {"epoch": epoch, "step": state.step, "test_loss": last.loss, "test_error": last.error,
                   "lr": state.scheduler.get_last_lr()[0], "train_time": state.train_time}
            if last.top5 is not None:
                row["test_top5"] = last.top5
            run.log(row)
            run.checkpoint(state.state_dict())
            if verbose:
                print(f"epoch {epoch:5.2f}  step {state.step:6d}  test acc {100 * last.accuracy:.2f}%"
                      f"  test loss {last.loss:.4f}  train time {state.train_time:6.1f}s", flush=True)
        if last is None:  # resumed a finished run
            last = evaluate(final=True)

        # The end: summary.json, and model.safetensors with what rebuilds and evaluates it
        rows = run.metrics()
        step_rows = [r for r in rows if "train_error" in r]
        ips = [r["images_per_sec"] for r in step_rows]
        summary = {
            "model": cfg.model, "dataset": cfg.data, "params": sum(p.numel() for p in model.parameters()),
            "steps": state.step, "epochs": state.step / steps_per_epoch,
            "test_accuracy": last.accuracy, "test_error": last.error, "test_top5": last.top5,
            "test_loss": last.loss, "final_train_error": step_rows[-1]["train_error"] if step_rows else None,
            "train_time_sec": state.train_time,
            "first_step_sec": state.first_step if cfg.time_limit else None,  # --compile's compile time, mostly
            "images_per_sec": sorted(ips)[len(ips) // 2] if ips else None,  # median over log intervals
            "device": str(device), "precision": cfg.precision, "torch": torch.__version__,
            "evaluated_on": f"holdout: the last {cfg.holdout} training images" if cfg.holdout else "test split",
        }
        meta = {"dataset": cfg.data, "data_dir": cfg.data_dir, "classes": data.classes, "mean": data.mean,
                "std": data.std, "normalize": cfg.normalize,
                # How the final evaluation ran, so `resnetkit eval` repeats it exactly.
                "training": {"precision": cfg.precision, "tta": cfg.tta, "tta_shift": cfg.tta_shift,
                             "image_size": cfg.image_size,
                             "channels_last": cfg.channels_last, "eval_batch_size": cfg.eval_batch_size,
                             "test_accuracy": last.accuracy}}
        if world > 1:
            summary["world_size"] = world
            summary["replicas_identical"] = distributed.replicas_agree(state.final_model)
        run.finish(state.final_model, meta, summary, rows)
        distributed.stop()
        return summary
    finally:
        run.close()


def gather(result: EvalResult) -> EvalResult:
    """One evaluation from every rank's share of the test set: counts and sums are added over
    the ranks (each test image sits on exactly one), predictions stay this rank's own."""
    n = result.confusion.sum().double()
    top5 = result.top5 if result.top5 is not None else 0.0
    sums = distributed.all_sum(torch.stack([result.loss * n, top5 * n, n]).to(torch.float64))
    confusion = distributed.all_sum(result.confusion.clone())
    total = max(sums[2].item(), 1.0)
    return EvalResult(loss=sums[0].item() / total, accuracy=confusion.diag().sum().item() / total,
                      top5=sums[1].item() / total if result.top5 is not None else None,
                      confusion=confusion, predictions=result.predictions)


# --- command line ----------------------------------------------------------------------------


def add_cli(sub) -> None:
    """`resnetkit train`: one flag per TrainConfig field (config.py). Each defaults to nothing,
    so that only what was typed overrides the recipe and the config file."""
    p = sub.add_parser("train", help="train a model", description=__doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--config", dest="config_file", default=None, help="YAML file of settings")
    p.add_argument("--no-tensorboard", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    flags = {k: v for k, v in vars(args).items()
             if k not in ("func", "command", "debug", "config_file", "no_tensorboard", "argv")}
    cfg = make_config(flags, args.config_file)
    summary = train(cfg, tensorboard=not args.no_tensorboard)
    if rank_and_world()[0] != 0:
        return
    top5 = f", top-5 {100 * summary['test_top5']:.2f}%" if summary["test_top5"] is not None else ""
    print(f"done: test accuracy {100 * summary['test_accuracy']:.2f}%{top5} in "
          f"{summary['train_time_sec']:.0f}s of training; outputs in {cfg.out}")
