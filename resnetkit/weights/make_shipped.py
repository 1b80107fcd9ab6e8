"""How ``fashion-resnet20.safetensors`` was made: train with the default recipe, then package.

    git rev-parse HEAD                       # the commit the training ran at
    resnetkit train --model resnet20 --data fashion-mnist --out /tmp/ship-r20 --no-tensorboard
    python resnetkit/weights/make_shipped.py /tmp/ship-r20 --commit <that commit>

The training run's own ``model.safetensors`` already holds the weights, the model's constructor
arguments, the classes, the channel statistics and how its final evaluation ran; this adds the
command, the commit, the resolved recipe (``config.yaml``) and the run's summary, so that the
shipped file says how it was made. The weights are copied unchanged (fp32, about 1 MB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from safetensors.torch import load_file, save

from resnetkit.checkpoint import atomic_write, read_metadata

COMMAND = "resnetkit train --model resnet20 --data fashion-mnist --out /tmp/ship-r20 --no-tensorboard"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the training run's --out folder")
    p.add_argument("--commit", required=True, help="git commit the training ran at")
    p.add_argument("--command", default=COMMAND, help="the training command")
    p.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("fashion-resnet20.safetensors"))
    args = p.parse_args()
    meta = read_metadata(args.run / "model.safetensors")
    summary = json.loads((args.run / "summary.json").read_text())
    recipe = yaml.safe_load((args.run / "config.yaml").read_text())
    recipe.pop("out", None)  # where it ran, not how
    meta.update({
        "shipped_name": "fashion-resnet20", "command": args.command, "git_commit": args.commit, "recipe": recipe,
        "summary": {k: summary[k] for k in ("test_accuracy", "test_top5", "test_loss", "steps", "epochs",
                                            "train_time_sec", "images_per_sec", "device", "precision", "torch")},
    })
    tensors = load_file(str(args.run / "model.safetensors"))
    # The same encoding as checkpoint.save_weights: model_name as is, everything else JSON.
    encoded = {k: v if k == "model_name" else json.dumps(v) for k, v in meta.items()}
    atomic_write(args.output, save(tensors, metadata=encoded))
    print(f"wrote {args.output}: test accuracy {100 * summary['test_accuracy']:.2f}%")


if __name__ == "__main__":
    main()
