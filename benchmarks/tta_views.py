"""Test-time augmentation with flips and 1-pixel shifts on a trained Fashion-MNIST model.

    .venv/bin/python benchmarks/tta_views.py RUN/model.safetensors

Prints test accuracy with no TTA, with flips (what `--tta` does), and with flips at
5 and 9 shifted positions (background-filled), to see what more views would add.
"""

import sys

import torch
import torch.nn.functional as F

import resnetkit
from resnetkit.data import load_arrays, normalize

SHIFTS4 = [(-1, 0), (1, 0), (0, -1), (0, 1)]
DIAG4 = [(-1, -1), (1, 1), (-1, 1), (1, -1)]


def main(path: str) -> None:
    model = resnetkit.load(path).eval().to(memory_format=torch.channels_last)
    mean, std = model.metadata["mean"], model.metadata["std"]
    test = load_arrays("fashion-mnist", None, train=False)
    x, y = normalize(test.images, mean, std), test.labels
    background = (0 - mean[0]) / std[0]

    @torch.no_grad()
    def logits(images):
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.cat([model(images[i:i + 1000]).float() for i in range(0, len(images), 1000)])

    def both_flips(dy, dx):
        h, w = x.shape[2:]
        s = F.pad(x, (1, 1, 1, 1), value=background)[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        return logits(s) + logits(s.flip(3))

    def acc(scores):
        return 100 * (scores.argmax(1) == y).float().mean().item()

    plain = logits(x)
    flips = plain + logits(x.flip(3))
    five = flips + sum(both_flips(*d) for d in SHIFTS4)
    nine = five + sum(both_flips(*d) for d in DIAG4)
    print(f"no TTA {acc(plain):.2f}%  flip {acc(flips):.2f}%  flip x 5 shifts {acc(five):.2f}%  "
          f"flip x 9 shifts {acc(nine):.2f}%")


if __name__ == "__main__":
    main(sys.argv[1])
