"""Two levers on the ResNet-20 training step that looked promising and are not: batch size and
torch.compile.

    .venv/bin/python benchmarks/batch_and_compile.py [--rounds 4]

Uses the fixed-batch model step of train_throughput.py (`--precision auto`'s choice,
channels_last, no data pipeline). Every round measures every setting, so machine drift hits all
of them alike; the table gives each round's img/s and the median.
"""

import argparse
import statistics

from train_throughput import model_only

SETTINGS = [("batch 64, eager", 64, False), ("batch 128, eager", 128, False),
            ("batch 256, eager", 256, False), ("batch 512, eager", 512, False),
            ("batch 256, torch.compile", 256, True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--images", type=int, default=5120, help="timed images per setting and round")
    args = p.parse_args()
    rates: dict[str, list[float]] = {label: [] for label, _, _ in SETTINGS}
    for _ in range(args.rounds):
        for label, batch, compiled in SETTINGS:
            rates[label].append(model_only("resnet20", args.images // batch, batch, compile=compiled))
    width = max(map(len, rates))
    print(f"{'setting':<{width}}  {'median img/s':>12}  per round")
    for label, r in rates.items():
        print(f"{label:<{width}}  {statistics.median(r):12.0f}  {' '.join(f'{x:.0f}' for x in r)}")


if __name__ == "__main__":
    main()
