"""``resnetkit export``: a trained network as an ONNX file that onnxruntime runs, fp32 or int8.

    resnetkit export runs/r20/model.safetensors -o r20.onnx                 # batch 1
    resnetkit export fashion-resnet20 -o r20.onnx --dynamic-batch --opset 18
    resnetkit export fashion-resnet20 -o r20_int8.onnx --int8 --calibration-data fashion-mnist
    resnetkit export resnet18-torchvision.pth --model resnet18 -o r18_int8.onnx --int8 \\
        --calibration-data imagenet/val --calibration-images 512

Nothing is written until the graph has been run in onnxruntime and its logits compared with
PyTorch's on the same inputs: the largest difference is printed, and above the tolerance the
export fails. The file carries the model's class names, channel statistics and training details
in its metadata, so ``resnetkit predict`` and ``resnetkit eval`` need nothing else.

``--int8`` quantizes statically (onnxio.py): QDQ, per-channel int8 weights, uint8 activations
calibrated on real images of a named dataset's training split or of a folder; 7-bit weights on
CPUs without VNNI (``reduce_range``), recorded in the metadata with the reason.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .checkpoint import atomic_write
from .errors import UserError
from .inference import (
    CALIBRATION_IMAGES,
    SHIPPED,
    Calibration,
    build_onnx,
    load_network,
    torch_info,
)

log = logging.getLogger("resnetkit")
AGREEMENT_WARNING = 0.9  # int8 top-1 agreement with fp32 below this is worth a warning


def export(spec: str | Path, output: str | Path, *, int8: bool = False, dynamic_batch: bool = False,
           batch_size: int = 1, opset: int | None = None, calibration: Calibration | None = None,
           reduce_range: bool | None = None, tolerance: float = 1e-3, model_name: str | None = None,
           model_kwargs: dict | None = None) -> dict:
    """Write ``spec`` (a weights file or a shipped name) to ``output`` as ONNX; returns the
    file's metadata (with the ``export`` and, for int8, ``quantization`` records)."""
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"cannot write {output.name!r}: the output must end in .onnx")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if str(spec).lower().endswith(".onnx"):
        raise UserError(f"{spec} is already ONNX: export a model.safetensors, a .pth (with --model) or a shipped name")
    model = load_network(spec, model_name=model_name, model_kwargs=model_kwargs)
    info = torch_info(model)
    proto, meta = build_onnx(model, info, int8=int8, dynamic_batch=dynamic_batch, batch_size=batch_size, opset=opset,
                       calibration=calibration, reduce_range=reduce_range, tolerance=tolerance)
    atomic_write(output, proto.SerializeToString())
    return meta


def cmd_export(args: argparse.Namespace) -> None:
    kwargs = {"num_classes": args.num_classes} if args.num_classes else None
    meta = export(args.model, args.output, int8=args.int8, dynamic_batch=args.dynamic_batch,
                  batch_size=args.batch_size, opset=args.opset, reduce_range=args.reduce_range,
                  tolerance=args.tolerance, model_name=args.model_name, model_kwargs=kwargs,
                  calibration=Calibration(args.calibration_data, args.calibration_dir, args.calibration_images))
    ex = meta["export"]
    size = Path(args.output).stat().st_size / 2 ** 20
    batch = "any batch size" if ex["dynamic_batch"] else f"batch {ex['batch_size']}"
    shape = "x".join(map(str, ex["input_shape"]))
    print(f"wrote {args.output}: {meta.get('model_name')} from {args.model}, opset {ex['opset']}, "
          f"{batch} of {shape}, {size:.1f} MB")
    print(f"checked in onnxruntime: fp32 logits within {ex['max_abs_diff_vs_torch']:.2g} of PyTorch's "
          f"(tolerance {args.tolerance:g} x max(1, |logit|))")
    q = meta.get("quantization")
    if q:
        print(f"int8: {q['format']}; weights {q['weights']}; activations {q['activations']}, "
              f"calibrated by {q['calibration']}")
        print(f"      {q['reduce_range_reason']}")
        agree = q["top1_agreement_vs_torch"]
        print(f"      top-1 agrees with PyTorch fp32 on {100 * agree:.1f}% of {q['agreement_images']} "
              "calibration images (accuracy: `resnetkit eval` the file)")
        if agree < AGREEMENT_WARNING:
            log.warning("int8 top-1 agrees with fp32 on only %.1f%% of the calibration images: try more "
                        "--calibration-images, or --reduce-range", 100 * agree)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained model as ONNX (fp32, or int8 with --int8)",
                       description="Write a trained model as an ONNX file, checked in onnxruntime against PyTorch; "
                                   "--int8 quantizes it statically.",
                       epilog=__doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help=f"model.safetensors from `resnetkit train`, a shipped model ({', '.join(SHIPPED)}), "
                        "or a torchvision-format .pth with --model")
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: a fixed --batch-size)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size (default 1)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest accepted |ONNX - PyTorch| logit difference, times max(1, max |logit|)")
    p.add_argument("--model", dest="model_name", default=None,
                   help="registered name that builds a torchvision-format .pth MODEL (e.g. resnet18)")
    p.add_argument("--num-classes", type=int, default=None, help="with --model (default: read from the weights)")
    g = p.add_argument_group("int8")
    g.add_argument("--int8", action="store_true", help="static int8 quantization (QDQ, per-channel weights)")
    g.add_argument("--calibration-data", default=None,
                   help="a dataset name (fashion-mnist, mnist, cifar10, cifar100, folder) or a folder of images "
                        "(default: the dataset the model was trained on)")
    g.add_argument("--calibration-dir", default=None, help="the calibration dataset's files, as --data-dir")
    g.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                   help=f"number of calibration images (default {CALIBRATION_IMAGES})")
    g.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights (default: only on CPUs without VNNI/AMX int8 dot products)")
    p.set_defaults(func=cmd_export)
