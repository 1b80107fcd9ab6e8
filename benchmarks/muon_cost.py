"""What `--optimizer muon` adds to a training step: its Newton-Schulz arithmetic, timed against
the step's own and against the cores' bf16 matmul peak.

    .venv/bin/python benchmarks/muon_cost.py                      # the speedrun recipe's net
    .venv/bin/python benchmarks/muon_cost.py --model resnet20

One row per filter bank (each of the recipe's quintic Newton-Schulz iterations, 3 since
2026-12-06's fourth session, on X, out x in kh kw, is 4 A^2 B + 2 A^3 flops for A = min,
B = max of the two sides; ``--ns-steps`` to change), then the whole
``FilterMuon.step()`` of that net, timed, beside the training step's 6 x MACs x batch.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz
from train_throughput import matmul_peak

import resnetkit
from resnetkit.config import make_config
from resnetkit.muon import FilterMuon
from resnetkit.summary import summary


def ms(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registered model (default: the speedrun recipe's net)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--ns-steps", type=int, default=None, help="Newton-Schulz iterations (default: the recipe's)")
    args = p.parse_args()
    cfg = make_config({"recipe": "speedrun", **({"model": args.model} if args.model else {}),
                       **({"muon_ns_steps": args.ns_steps} if args.ns_steps else {})})
    steps = cfg.muon_ns_steps
    model = resnetkit.create_model(cfg.model, in_chans=1, **cfg.model_kwargs()).to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()  # gradients for every bank
    muon = FilterMuon(model, cfg.muon_lr, cfg.muon_momentum, steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cfg.model}, {steps} Newton-Schulz steps")
    print("| bank (out x in kh kw) | GFLOP | ms | GFLOP/s |\n|---|---|---|---|")
    total = 0.0
    for m in muon.matrices:
        a, b = sorted(m.shape)
        gflop = steps * (4 * a * a * b + 2 * a ** 3) / 1e9
        total += gflop
        t = ms(lambda m=m: orthogonalise(m, steps), args.reps)
        print(f"| {m.shape[0]} x {m.shape[1]} | {gflop:.2f} | {t:.2f} | {gflop / t * 1e3:.0f} |")
    step = ms(muon.step, args.reps)
    train = 6 * summary(model, (1, 1, 28, 28)).macs * args.batch_size / 1e9
    peak = matmul_peak(torch.bfloat16)
    print(f"\nFilterMuon.step(): {total:.2f} GFLOP in {step:.1f} ms = {total / step * 1e3:.0f} GFLOP/s "
          f"(bf16 2048² matmul: {peak:.0f} GFLOP/s); a training step at batch {args.batch_size}: "
          f"{train:.1f} GFLOP, so Muon adds {total / train:.1%} of its arithmetic")


def orthogonalise(m: torch.Tensor, steps: int) -> None:
    """torch.optim.Muon's Newton-Schulz on one bank's matrix, as its step runs it (a private function:
    this benchmark only times it)."""
    _zeropower_via_newtonschulz(m.detach(), (DEFAULT_A, DEFAULT_B, DEFAULT_C), steps, 1e-7)


if __name__ == "__main__":
    main()
