"""Model-step throughput of CIFAR-style ResNets of other widths and depths, on 28x28 inputs.

    .venv/bin/python benchmarks/width_throughput.py

bf16 autocast, channels_last, batch 256, one fixed batch (no data pipeline): how much a
wider or shallower net costs per image on this CPU compared with ResNet-20.
"""

import statistics
import time

import torch
import torch.nn.functional as F

from resnetkit.resnet import ResNet

SHAPES = [((3, 3, 3), (16, 32, 64)), ((3, 3, 3), (24, 48, 96)), ((3, 3, 3), (32, 64, 128)),
          ((2, 2, 2), (32, 64, 128)), ((1, 1, 1), (32, 64, 128)), ((1, 1, 1), (64, 128, 256)),
          ((2, 2, 2), (24, 48, 96))]


def rate(layers, widths, bs=256, steps=15, warmup=3):
    model = ResNet("basic", layers, widths=widths, stem="cifar", shortcut="A", num_classes=10, in_chans=1)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(bs, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    times = []
    for i in range(steps + warmup):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return bs / statistics.median(times), sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    print(f"{'blocks':<10} {'widths':<15} {'params':>10} {'img/s':>7} {'s/epoch':>8}")
    for layers, widths in SHAPES:
        r, n = rate(layers, widths)
        print(f"{str(layers):<10} {str(widths):<15} {n:>10,} {r:7.0f} {60000 / r:8.0f}")
