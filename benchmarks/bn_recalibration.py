"""Recomputing a trained model's batch-norm statistics on the training images, measured on the
test set: does it beat the statistics the EMA averaged along with the weights?

    .venv/bin/python benchmarks/bn_recalibration.py RUN/model.safetensors [RUN2/model.safetensors ...]

With ``--ema`` the saved model's BN statistics are a moving average of the running statistics
of weights that kept changing, not the statistics of the averaged weights themselves (the
reason SWA recomputes them). Each model is evaluated as its run did (bf16, flip x 1-pixel-shift
TTA) as saved, and after one pass over the 60,000 training images in train mode (cumulative
averages), plain and with every other image mirrored as training saw them; the pass's seconds
are what it would add to a run's clock.
"""

import copy
import statistics
import sys
import time

import torch

import resnetkit
from resnetkit.data import build_eval_loader, load_arrays, normalize
from resnetkit.evaluate import evaluate_model


def recalibrated(model: torch.nn.Module, images: torch.Tensor, mirror: bool) -> tuple[torch.nn.Module, float]:
    m = copy.deepcopy(model).train()
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the whole pass
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(images), 500):
            x = images[i:i + 500]
            if mirror:
                x = torch.where((torch.arange(len(x)) % 2 == 0).view(-1, 1, 1, 1), x.flip(3), x)
            m(x.contiguous(memory_format=torch.channels_last))
    return m.eval(), time.perf_counter() - t


def main(paths: list[str]) -> None:
    print("| model | as saved % | recalibrated % | mirrored half % | pass s |\n|---|---|---|---|---|")
    gains = []
    train = load_arrays("fashion-mnist", None, train=True).images
    for path in paths:
        model = resnetkit.load(path).eval().to(memory_format=torch.channels_last)
        mean, std = model.metadata["mean"], model.metadata["std"]
        test, _ = build_eval_loader("fashion-mnist", None, mean=mean, std=std, device=torch.device("cpu"),
                                    batch_size=1000)
        images = normalize(train, mean, std)
        plain, seconds = recalibrated(model, images, False)
        row = [evaluate_model(m, test, 10, precision="bf16", tta=True, tta_shift=1,
                              memory_format=torch.channels_last).accuracy * 100
               for m in (model, plain, recalibrated(model, images, True)[0])]
        gains.append((row[1] - row[0], row[2] - row[0]))
        print(f"| {path} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f} | {seconds:.1f} |", flush=True)
    print(f"\nmean change: recalibrated {statistics.mean(g[0] for g in gains):+.3f}, "
          f"mirrored half {statistics.mean(g[1] for g in gains):+.3f} points over {len(gains)} models")


if __name__ == "__main__":
    main(sys.argv[1:])
