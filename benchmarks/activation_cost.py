"""What GELU (airbench's activation) would cost the speedrun net's training step against ReLU.

    .venv/bin/python benchmarks/activation_cost.py [--rounds 4]

The recipe's net with every ReLU module swapped for ``nn.GELU`` (a copy, so the library's nets
keep the paper's ReLU), each timed by train_throughput.py's fixed-batch model step (bf16,
channels_last, batch 256, no data pipeline); every round measures both, so drift hits both alike.
"""

import argparse
import statistics

from torch import nn
from train_throughput import model_only

import resnetkit
from resnetkit.config import make_config


def with_gelu(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.GELU())
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=25, help="timed steps per net and round")
    args = p.parse_args()
    cfg = make_config({"recipe": "speedrun"})
    build = lambda: resnetkit.create_model(cfg.model, in_chans=1, **cfg.model_kwargs())  # noqa: E731
    nets = {"ReLU": build(), "GELU": with_gelu(build())}
    rates: dict[str, list[float]] = {label: [] for label in nets}
    for _ in range(args.rounds):
        for label, net in nets.items():
            rates[label].append(model_only(net, args.steps, cfg.batch_size, precision="bf16"))
    print(f"{cfg.model}, batch {cfg.batch_size}, bf16\n| activation | median img/s | per round |\n|---|---|---|")
    for label, r in rates.items():
        print(f"| {label} | {statistics.median(r):.0f} | {', '.join(f'{x:.0f}' for x in r)} |")
    print(f"\nGELU runs {statistics.median(rates['GELU']) / statistics.median(rates['ReLU']):.2f}x ReLU's img/s")


if __name__ == "__main__":
    main()
