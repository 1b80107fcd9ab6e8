"""Model-step throughput of CIFAR-style ResNets of other widths and depths, on 28x28 inputs.

    .venv/bin/python benchmarks/width_throughput.py

The fixed-batch training step of train_throughput.py (the precision `--precision auto` picks on
this CPU, channels_last, batch 256, no data pipeline): how much a wider or shallower net costs per
image compared with ResNet-20.
"""

from train_throughput import AUTO, model_only

from resnetkit.resnet import ResNet
from resnetkit.summary import summary

# (blocks, widths, stem); "whiten-pool" runs the stages at 14x14, 7x7 and 4x4.
SHAPES = [((3, 3, 3), (16, 32, 64), "cifar"), ((3, 3, 3), (24, 48, 96), "cifar"),
          ((3, 3, 3), (32, 64, 128), "cifar"), ((2, 2, 2), (32, 64, 128), "cifar"),
          ((1, 1, 1), (32, 64, 128), "cifar"), ((1, 1, 1), (32, 64, 128), "whiten"),
          ((2, 2, 2), (32, 64, 128), "whiten"), ((1, 1, 1), (64, 128, 256), "cifar"),
          ((2, 2, 2), (24, 48, 96), "cifar"), ((3, 3, 3), (16, 48, 96), "cifar"), ((3, 3, 3), (16, 64, 128), "cifar"),
          ((1, 1, 1), (64, 128, 256), "whiten-pool"), ((2, 2, 2), (64, 128, 256), "whiten-pool"),
          ((1, 1, 1), (96, 192, 384), "whiten-pool"), ((2, 2, 2), (96, 192, 384), "whiten-pool"),
          ((3, 3, 3), (64, 128, 256), "whiten-pool")]

if __name__ == "__main__":
    print(f"precision {AUTO}, channels_last, batch 256")
    print(f"{'blocks':<10} {'widths':<16} {'stem':<12} {'params':>10} {'MACs/img':>9} {'img/s':>7} {'s/epoch':>8} "
          f"{'GMAC/s':>7}")
    for layers, widths, stem in SHAPES:
        model = ResNet("basic", layers, widths=widths, stem=stem, shortcut="A", num_classes=10, in_chans=1)
        macs = summary(model, (1, 1, 28, 28)).macs
        rate = model_only(model, steps=15, batch_size=256)
        params = sum(p.numel() for p in model.parameters())
        print(f"{str(layers):<10} {str(widths):<16} {stem:<12} {params:>10,} {macs / 1e6:8.1f}M {rate:7.0f} "
              f"{60000 / rate:8.0f} {rate * macs / 1e9:7.1f}", flush=True)
