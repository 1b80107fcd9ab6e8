"""Model-step throughput of CIFAR-style ResNets of other widths and depths, on 28x28 inputs.

    .venv/bin/python benchmarks/width_throughput.py

The fixed-batch training step of train_throughput.py (bf16 autocast, channels_last, batch 256,
no data pipeline): how much a wider or shallower net costs per image compared with ResNet-20.
"""

from train_throughput import model_only

from resnetkit.resnet import ResNet

SHAPES = [((3, 3, 3), (16, 32, 64)), ((3, 3, 3), (24, 48, 96)), ((3, 3, 3), (32, 64, 128)),
          ((2, 2, 2), (32, 64, 128)), ((1, 1, 1), (32, 64, 128)), ((1, 1, 1), (64, 128, 256)),
          ((2, 2, 2), (24, 48, 96)), ((3, 3, 3), (16, 48, 96)), ((3, 3, 3), (16, 64, 128))]

if __name__ == "__main__":
    print(f"{'blocks':<10} {'widths':<15} {'params':>10} {'img/s':>7} {'s/epoch':>8}")
    for layers, widths in SHAPES:
        model = ResNet("basic", layers, widths=widths, stem="cifar", shortcut="A", num_classes=10, in_chans=1)
        rate = model_only(model, steps=15, batch_size=256)
        params = sum(p.numel() for p in model.parameters())
        print(f"{str(layers):<10} {str(widths):<15} {params:>10,} {rate:7.0f} {60000 / rate:8.0f}")
