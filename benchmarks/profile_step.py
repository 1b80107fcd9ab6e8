"""Where a training step (ResNet-20 unless told) spends its time, per operator and per stage.

    .venv/bin/python benchmarks/profile_step.py [--batch-size 256] [--rows 20]
    .venv/bin/python benchmarks/profile_step.py --model fashion_resnet8_pool   # the speedrun's net

The fixed-batch step of train_throughput.py (`--precision auto`'s choice, channels_last), 10
steps under torch.profiler after a warm-up. Then the same operators summed per stage, by the spatial size of
their first input (ResNet-20's 28x28: stem and stage 1, 14x14: stage 2, 7x7: stage 3), beside the
multiply-adds of the layers whose output has that size (from ``resnetkit.summary``).
"""

import argparse
from collections import defaultdict

from torch.profiler import ProfilerActivity, profile
from train_throughput import fixed_batch_step

import resnetkit
from resnetkit.summary import summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--model", default="resnet20")
    args = p.parse_args()
    model = resnetkit.create_model(args.model, num_classes=10, in_chans=1)
    macs: dict[str, int] = defaultdict(int)
    for row in summary(model, (1, 1, 28, 28)).rows:
        if len(row.output_shape) == 4:
            macs[f"{row.output_shape[2]}x{row.output_shape[3]}"] += row.macs
    step = fixed_batch_step(model, args.batch_size)
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(10):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=36,
                       max_shapes_column_width=60))
    per_stage: dict[str, float] = defaultdict(float)
    for e in events:
        shape = e.input_shapes[0] if e.input_shapes else []
        if e.key.startswith("aten::") and len(shape) == 4 and shape[0] == args.batch_size:
            per_stage[f"{shape[2]}x{shape[3]}"] += e.self_cpu_time_total / 10 / 1e3
    total = sum(e.self_cpu_time_total for e in events) / 10 / 1e3
    print(f"self CPU time per step: {total:.0f} ms (the profiler itself slows the step)")
    for size, ms in sorted(per_stage.items(), key=lambda kv: -kv[1]):
        if ms >= 1:
            print(f"  4-d operators on {size:>5} inputs: {ms:6.0f} ms ({100 * ms / total:2.0f}%); "
                  f"layers with {size} outputs: {macs[size] / 1e6:5.1f}M multiply-adds per image")


if __name__ == "__main__":
    main()
