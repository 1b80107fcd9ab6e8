"""Ensembles of speedrun models: does spending a budget on K nets of 1/K the budget each, their
logits averaged, beat one net trained for the whole budget?

    .venv/bin/python benchmarks/ensemble.py --members 2 RESULTS/row0-seed*

Each argument is a speedrun seed folder (model.safetensors and speedrun-run.json, which
`benchmarks/speedrun.py` writes); consecutive folders form the ensembles, in the order given.
Every model is evaluated as its run evaluated it (bf16, flip x 1-pixel-shift TTA: the member's
printed accuracy must equal its run's, a check that the weights are the ones measured); an
ensemble's logits are the mean of its members' TTA logits. The budget of an ensemble is the sum
of its members' normalised seconds of training (a normalised budget each, as speedrun.py sets).
"members disagree": the share of test images on which the members do not all predict the same
class; "all wrong": the share every member gets wrong.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import resnetkit
from resnetkit.data import build_eval_loader
from resnetkit.errors import UserError
from resnetkit.inference import module_logits, shifted_logits


def tta_logits(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """TTA logits of the whole test split, as the speedrun's final evaluation computes them."""
    model.eval().to(memory_format=torch.channels_last)
    logits, labels = [], []
    with torch.no_grad():
        for x, y in loader.epoch(0):
            logits.append(shifted_logits(lambda v, tta: module_logits(model, v, precision="bf16", tta=tta,
                                                                      memory_format=torch.channels_last),
                                         x, True, 1))
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="speedrun seed folders, grouped in order")
    p.add_argument("--members", type=int, default=2, help="models per ensemble")
    args = p.parse_args()
    if len(args.runs) % args.members:
        p.error(f"{len(args.runs)} runs do not split into ensembles of {args.members}")
    loader = None
    print("| ensemble | members % | members' normalised s | members disagree % | all wrong % | ensemble % | budget s |")
    print("|---|---|---|---|---|---|---|")
    members, ensembles = [], []
    for g in range(0, len(args.runs), args.members):
        accs, seconds, summed, preds = [], [], None, []
        for run in args.runs[g:g + args.members]:
            if not (run / "speedrun-run.json").is_file():
                raise UserError(f"{run}: no speedrun-run.json; give the seed folders that speedrun.py wrote")
            model = resnetkit.load(run / "model.safetensors")
            if loader is None:
                loader, _ = build_eval_loader("fashion-mnist", None, mean=model.metadata["mean"],
                                              std=model.metadata["std"], device=torch.device("cpu"), batch_size=1000)
            logits, labels = tta_logits(model, loader)
            preds.append(logits.argmax(1))
            accs.append((preds[-1] == labels).double().mean().item() * 100)
            record = json.loads((run / "speedrun-run.json").read_text())
            if abs(accs[-1] - record["accuracy"] * 100) > 1e-6:
                raise UserError(f"{run}: evaluates to {accs[-1]:.2f}%, its run measured {record['accuracy']:.2%}")
            seconds.append(record["normalised_time"])
            summed = logits if summed is None else summed + logits
        ensemble = (summed.argmax(1) == labels).double().mean().item() * 100
        disagree = (torch.stack(preds) != preds[0]).any(0).double().mean().item() * 100
        all_wrong = (torch.stack(preds) != labels).all(0).double().mean().item() * 100
        members += accs
        ensembles.append(ensemble)
        names = ", ".join(r.name for r in args.runs[g:g + args.members])
        print(f"| {names} | {', '.join(f'{a:.2f}' for a in accs)} | {', '.join(f'{s:.0f}' for s in seconds)} "
              f"| {disagree:.2f} | {all_wrong:.2f} | {ensemble:.2f} | {sum(seconds):.0f} |", flush=True)
    spread = f" ± {statistics.stdev(ensembles):.2f}" if len(ensembles) > 1 else ""
    print(f"\nmembers {statistics.mean(members):.2f}% (mean of {len(members)}), ensembles of {args.members} "
          f"{statistics.mean(ensembles):.2f}{spread}% (mean of {len(ensembles)})")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a missing or mismatched run: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
