"""Inference on this CPU: every path side by side, against the machine's own measured peaks.

    python benchmarks/inference.py                    # the full run (not yet timed; minutes, not hours)
    python benchmarks/inference.py --quick            # a smoke run (about 2.5 min): few iterations, 1,000 test images
    python benchmarks/inference.py --skip-compile     # without the torch.compile rows (they compile for minutes)

What it measures, in one process, one section after another:

1. Peaks: a large fp32 and bf16 matmul (torch.mm) and a large int8 GEMM, both torch._int_mm
   (int8 x int8 -> int32) and onnxruntime's MatMulInteger (uint8 x int8 -> int32, the kernel
   family its int8 convolutions use); the faster int8 one is "the int8 limit".
2. Throughput, ResNet-50 at batch 16, 224x224, the same (random, seeded) weights on every path:
   eager fp32 NCHW (the baseline), channels_last, the fast path (BN folded, channels_last,
   inference_mode) in fp32 and bf16, the same compiled, onnxruntime fp32 and int8 (QDQ). Rounds
   are interleaved (path A, B, ... then again) and each path's median batch time is kept, so a
   slow minute on a shared machine hits every path alike. Each row: images/s, ratio to the
   baseline, and the arithmetic rate (2 x multiply-adds per second, from resnetkit.summary) as a
   fraction of the peak of that precision.
3. Batch-1 latency, median and p99, for ResNet-18 and ResNet-50 (224x224) and the CIFAR
   ResNet-20 (32x32), on the main paths.
4. Accuracy of every path on the shipped Fashion-MNIST ResNet-20 (``fashion-resnet20``), through
   ``evaluate.evaluate_loaded``, the code ``resnetkit eval`` runs: accuracy, its change against
   PyTorch fp32, and the fraction of test images whose top-1 class agrees with fp32's.
5. A profile of the int8 ResNet-50 graph (onnxruntime's own profiler): time per operator type,
   and the convolutions' arithmetic rate against the int8 limit: where the remaining time goes.
6. With a CUDA device: ResNet-50 batch 16 fp16/bf16 throughput (skipped on this machine).

The int8 graph is calibrated on random-normal images for the speed rows (the weights are random
too: speed does not depend on either) and on 256 real Fashion-MNIST training images for the
accuracy rows. Results go to ``--out`` (JSON) and to stdout as Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

import resnetkit
from resnetkit import onnxio
from resnetkit.checkpoint import atomic_write_text
from resnetkit.evaluate import evaluate_loaded
from resnetkit.inference import (
    BF16_FLAGS,
    INT8_DOT_FLAGS,
    Calibration,
    ModelInfo,
    TorchEngine,
    build_onnx,
    cpu_flags,
    int8_reduce_range,
    open_model,
    shipped_path,
)

ROOT = Path(__file__).resolve().parents[1]


# --- timing -------------------------------------------------------------------------------------

def time_calls(fn, iters: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``iters`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


# --- 1. peaks -----------------------------------------------------------------------------------

def matmul_peaks(n: int, iters: int) -> dict:
    """Operations per second (2 per multiply-add) of large square matrix products."""
    out = {}
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    for name, a, b in (("fp32", a32, b32), ("bf16", a32.bfloat16(), b32.bfloat16())):
        t = min(time_calls(lambda a=a, b=b: torch.mm(a, b), iters, 2))
        out[name] = 2 * n ** 3 / t
    a8 = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    b8 = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    try:
        t = min(time_calls(lambda: torch._int_mm(a8, b8), iters, 2))
        out["int8_torch_int_mm"] = 2 * n ** 3 / t
    except RuntimeError as e:  # not every build has a CPU kernel
        out["int8_torch_int_mm"] = None
        out["int8_torch_int_mm_error"] = str(e).splitlines()[0]
    # onnxruntime's own fp32 GEMM (MLAS): the fp32 peak is the faster of the two libraries'.
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "sgemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor("B", TensorProto.FLOAT, [n, n], rng.standard_normal((n, n), np.float32).tobytes(),
                            raw=True)])
    sess = onnxio.session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    a = rng.standard_normal((n, n), np.float32)
    out["fp32_torch_mm"] = out["fp32"]
    out["fp32_ort_matmul"] = 2 * n ** 3 / min(time_calls(lambda: sess.run(None, {"A": a}), iters, 2))
    out["fp32"] = max(out["fp32_torch_mm"], out["fp32_ort_matmul"])
    # onnxruntime MatMulInteger: uint8 activations x int8 weights, as its int8 convolutions.
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])], [helper.make_tensor_value_info(
            "Y", TensorProto.INT32, [n, n])],
        [helper.make_tensor("B", TensorProto.INT8, [n, n], np.random.default_rng(0).integers(
            -128, 128, (n, n), dtype=np.int8).tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = onnxio.session(model)
    a = np.random.default_rng(1).integers(0, 256, (n, n), dtype=np.uint8)
    t = min(time_calls(lambda: sess.run(None, {"A": a}), iters, 2))
    out["int8_ort_matmulinteger"] = 2 * n ** 3 / t
    out["int8"] = max(v for k, v in out.items() if k.startswith("int8_") and isinstance(v, float))
    return out


# --- the paths ----------------------------------------------------------------------------------

def info_for(name: str, model: torch.nn.Module, size: int) -> ModelInfo:
    return ModelInfo(name=name, source=f"{name} (random weights, seed 0)", classes=[str(i) for i in range(
        model.num_classes)], mean=[0.5] * 3, std=[0.25] * 3, in_chans=3, image_size=size, resize=size,
        metadata={"model_name": name})


_GRAPHS: dict[str, dict] = {}  # exports take a minute for ResNet-50: once per network


def onnx_models(model, info, calib_images: int) -> dict:
    """fp32 and int8 ONNX graphs (any batch size) of ``model``."""
    if info.name in _GRAPHS:
        return _GRAPHS[info.name]
    fp32, _ = build_onnx(model, info, dynamic_batch=True)
    g = torch.Generator().manual_seed(0)
    step = 8
    batches = [torch.randn(step, *info.input_shape, generator=g).numpy() for _ in range(max(1, calib_images // step))]
    reduce_range, _ = int8_reduce_range()
    int8 = onnxio.quantize_int8(fp32, batches, reduce_range=reduce_range)
    _GRAPHS[info.name] = {"fp32": fp32, "int8": int8}
    return _GRAPHS[info.name]


def build_paths(name: str, size: int, batch: int, *, compile: bool, calib_images: int) -> tuple[dict, int, dict]:
    """{path: (a zero-argument callable running one batch, precision of its peak)}, the network's
    multiply-adds per image, and its ONNX graphs."""
    torch.manual_seed(0)
    model = resnetkit.create_model(name).eval()
    macs = resnetkit.summary(model, (1, 3, size, size)).macs
    info = info_for(name, model, size)
    x = torch.randn(batch, 3, size, size)
    x_np = x.numpy()
    paths = {}

    def eager(m, inp):
        def run():
            with torch.no_grad():
                m(inp)
        return run

    paths["eager fp32 NCHW (baseline)"] = (eager(model, x), "fp32")
    cl = resnetkit.create_model(name).eval()
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    paths["eager fp32 channels_last"] = (eager(cl, x.contiguous(memory_format=torch.channels_last)), "fp32")
    for precision in ("fp32", "bf16"):
        engine = TorchEngine(model, info, precision=precision, fast=True)
        paths[f"fast path {precision} (BN folded, channels_last)"] = (lambda e=engine: e(x), precision)
    if compile:
        for precision in ("fp32", "bf16"):
            engine = TorchEngine(model, info, precision=precision, fast=True, compile=True)
            paths[f"fast path {precision} + torch.compile"] = (lambda e=engine: e(x), precision)
    graphs = onnx_models(model, info, calib_images)
    for precision, proto in graphs.items():
        sess = onnxio.session(proto)
        paths[f"onnxruntime {precision}" + (" (QDQ)" if precision == "int8" else "")] = (
            lambda s=sess: s.run(None, {onnxio.INPUT: x_np}), precision)
    return paths, macs, graphs


def throughput(args, peaks: dict) -> dict:
    batch, size = 16, 224
    print(f"\n## ResNet-50, batch {batch}, {size}x{size}: building the paths ...", flush=True)
    t0 = time.perf_counter()
    paths, macs, graphs = build_paths("resnet50", size, batch, compile=not args.skip_compile,
                                      calib_images=args.calibration_images)
    print(f"   built in {time.perf_counter() - t0:.0f} s; warming up (torch.compile compiles here) ...", flush=True)
    for fn, _ in paths.values():
        time_calls(fn, 0, args.warmup)
    times = {name: [] for name in paths}
    for r in range(args.rounds):
        for name, (fn, _) in paths.items():
            times[name] += time_calls(fn, args.iters, 1 if r else 0)
    base = batch / statistics.median(times["eager fp32 NCHW (baseline)"])
    ort_fp32 = batch / statistics.median(times["onnxruntime fp32"])
    rows = []
    for name, (_, precision) in paths.items():
        ips = batch / statistics.median(times[name])
        rate = ips * 2 * macs
        rows.append({"path": name, "precision": precision, "images_per_sec": ips, "vs_baseline": ips / base,
                     "vs_onnxruntime_fp32": ips / ort_fp32, "ops_per_sec": rate,
                     "fraction_of_peak": rate / peaks[precision], "batch_seconds": times[name]})
    best = max(rows, key=lambda r: r["images_per_sec"])
    int8_row = next(r for r in rows if r["precision"] == "int8")
    goals = {
        "fastest path": best["path"],
        "fastest >= 8x eager fp32": [best["vs_baseline"], best["vs_baseline"] >= 8],
        "fastest >= 3x onnxruntime fp32": [best["vs_onnxruntime_fp32"], best["vs_onnxruntime_fp32"] >= 3],
        "int8 >= 85% of the int8 limit": [int8_row["fraction_of_peak"], int8_row["fraction_of_peak"] >= 0.85],
    }
    return {"model": "resnet50", "batch": batch, "image_size": size, "macs_per_image": macs, "rows": rows,
            "goals": goals, "_int8_graph": graphs["int8"]}


def latency(args) -> list[dict]:
    out = []
    for name, size in (("resnet18", 224), ("resnet50", 224), ("resnet20", 32)):
        print(f"\n## batch-1 latency: {name} at {size}x{size} ...", flush=True)
        paths, _, _ = build_paths(name, size, 1, compile=False, calib_images=min(32, args.calibration_images))
        keep = ("eager fp32 NCHW (baseline)", "fast path fp32 (BN folded, channels_last)",
                "fast path bf16 (BN folded, channels_last)", "onnxruntime fp32", "onnxruntime int8 (QDQ)")
        for path in keep:
            fn, _ = paths[path]
            ts = time_calls(fn, args.latency_iters, args.warmup)
            out.append({"model": name, "image_size": size, "path": path, "median_ms": 1e3 * statistics.median(ts),
                        "p99_ms": 1e3 * percentile(ts, 99), "calls": len(ts)})
    return out


def accuracy(args) -> list[dict]:
    """Every path on the shipped model, scored by the code `resnetkit eval` runs."""
    print("\n## accuracy of every path on fashion-resnet20 ...", flush=True)
    subset = 1000 if args.quick else 0
    cal = Calibration(count=args.calibration_images)
    paths = [("as trained (bf16 autocast, unfolded)", None)]
    paths += [(f"torch {p} fast path", {"backend": "torch", "precision": p}) for p in ("fp32", "bf16")]
    if not args.skip_compile:
        paths.append(("torch fp32 fast path + torch.compile",
                      {"backend": "torch", "precision": "fp32", "compile": True}))
    paths += [("onnxruntime fp32", {"backend": "onnx", "precision": "fp32"}),
              ("onnxruntime int8 (QDQ)", {"backend": "onnx", "precision": "int8", "calibration": cal})]
    results = {}
    for name, kw in paths:
        if kw is None:  # the module itself: evaluate_loaded repeats training's own evaluation
            target = resnetkit.load(shipped_path("fashion-resnet20"))
        else:
            target = open_model("fashion-resnet20", **kw)
        result, _, _ = evaluate_loaded(target, device="cpu", workers=0, test_subset=subset)
        results[name] = result
    ref = results["torch fp32 fast path"]
    rows = []
    for name, r in results.items():
        rows.append({"path": name, "accuracy": r.accuracy, "delta_vs_fp32_points": 100 * (r.accuracy - ref.accuracy),
                     "top1_agreement_with_fp32": float((r.predictions == ref.predictions).double().mean()),
                     "images": len(r.predictions)})
    return rows


def profile_int8(proto, args, macs: int, peaks: dict) -> dict:
    """onnxruntime's profiler on the int8 ResNet-50: kernel time per operator type."""
    print("\n## profile of the int8 ResNet-50 graph ...", flush=True)
    x = torch.randn(16, 3, 224, 224).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        sess = onnxio.session(proto, profile_prefix=str(Path(tmp) / "int8"))
        for _ in range(args.warmup + args.iters):
            sess.run(None, {onnxio.INPUT: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op, total, runs = {}, 0.0, 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
            total += e["dur"]
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
    rows = sorted(({"op": k, "ms_per_batch": v / 1e3 / max(runs, 1), "share": v / total} for k, v in by_op.items()),
                  key=lambda r: -r["share"])
    # The op names are the kernels onnxruntime ran after fusing the QDQ groups (QLinearConv, ...).
    # Nearly all multiply-adds are in the convolutions (the classifier has 2 M of 4.09 G), so
    # their time against the int8 limit says how far the integer kernels are from the GEMM peak.
    conv_s = sum(v for k, v in by_op.items() if "Conv" in k) / 1e6 / max(runs, 1)
    conv_rate = 16 * 2 * macs / conv_s if conv_s else None
    return {"runs": runs, "kernel_ms_per_batch": total / 1e3 / max(runs, 1), "by_op": rows,
            "conv_ops_per_sec": conv_rate,
            "conv_fraction_of_int8_limit": conv_rate / peaks["int8"] if conv_rate else None}


def cuda_rows(args) -> list[dict]:
    if not torch.cuda.is_available():
        return []
    model = resnetkit.create_model("resnet50").eval().cuda().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        def run(dtype=dtype):
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                model(x)
            torch.cuda.synchronize()
        ts = time_calls(run, args.iters * args.rounds, args.warmup)
        rows.append({"device": torch.cuda.get_device_name(), "dtype": str(dtype),
                     "images_per_sec": 16 / statistics.median(ts)})
    return rows


# --- report -------------------------------------------------------------------------------------

def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "flags": sorted(set(INT8_DOT_FLAGS + BF16_FLAGS + ("avx2", "avx512f")) & cpu_flags()),
            "torch": torch.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "python": sys.version.split()[0], "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def markdown(res: dict) -> str:
    m, p = res["machine"], res["peaks"]
    g = lambda v: f"{v / 1e9:,.0f}" if v else "n/a"  # noqa: E731
    out = [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, onnxruntime "
           f"{m['onnxruntime']}; flags: {', '.join(m['flags']) or 'none of note'}", "",
           "| peak (measured) | GOP/s |", "|---|---|",
           f"| fp32 matmul {res['peak_n']}^3, torch.mm | {g(p['fp32_torch_mm'])} |",
           f"| fp32 matmul, onnxruntime MatMul | {g(p['fp32_ort_matmul'])} |",
           f"| bf16 matmul, torch.mm | {g(p['bf16'])} |",
           f"| int8 torch._int_mm | {g(p.get('int8_torch_int_mm'))} |",
           f"| int8 onnxruntime MatMulInteger (u8 x s8) | {g(p['int8_ort_matmulinteger'])} |", ""]
    t = res["throughput"]
    out += [f"ResNet-50, batch {t['batch']}, {t['image_size']}x{t['image_size']} "
            f"({t['macs_per_image'] / 1e9:.2f} GMACs/image):", "",
            "| path | img/s | vs eager fp32 | vs onnxruntime fp32 | GOP/s | of its precision's peak |",
            "|---|---|---|---|---|---|"]
    for r in t["rows"]:
        out.append(f"| {r['path']} | {r['images_per_sec']:.1f} | {r['vs_baseline']:.2f}x | "
                   f"{r['vs_onnxruntime_fp32']:.2f}x | {r['ops_per_sec'] / 1e9:,.0f} | "
                   f"{100 * r['fraction_of_peak']:.0f}% ({r['precision']}) |")
    out += ["", "| goal | measured | met? |", "|---|---|---|"]
    for k, v in t["goals"].items():
        if isinstance(v, list):
            val = f"{100 * v[0]:.0f}%" if "%" in k else f"{v[0]:.2f}x"
            out.append(f"| {k} | {val} | {'yes' if v[1] else 'no'} |")
        else:
            out.append(f"| {k} | {v} | |")
    out += ["", "Batch-1 latency:", "", "| model | path | median ms | p99 ms |", "|---|---|---|---|"]
    for r in res["latency"]:
        out.append(f"| {r['model']} | {r['path']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} |")
    out += ["", f"Accuracy on fashion-resnet20 (Fashion-MNIST test split, {res['accuracy'][0]['images']:,} "
            "images, TTA as trained):", "",
            "| path | accuracy | vs torch fp32 (points) | top-1 agrees with fp32 |", "|---|---|---|---|"]
    for r in res["accuracy"]:
        out.append(f"| {r['path']} | {100 * r['accuracy']:.2f}% | {r['delta_vs_fp32_points']:+.2f} | "
                   f"{100 * r['top1_agreement_with_fp32']:.2f}% |")
    pr = res["int8_profile"]
    out += ["", f"int8 ResNet-50 profile (onnxruntime, {pr['kernel_ms_per_batch']:.1f} ms of kernels per batch of 16):",
            "", "| operator | ms/batch | share |", "|---|---|---|"]
    for r in pr["by_op"][:8]:
        out.append(f"| {r['op']} | {r['ms_per_batch']:.2f} | {100 * r['share']:.1f}% |")
    if pr["conv_ops_per_sec"]:
        out += ["", f"The int8 convolutions alone run at {pr['conv_ops_per_sec'] / 1e9:,.0f} GOP/s, "
                f"{100 * pr['conv_fraction_of_int8_limit']:.0f}% of the int8 limit."]
    if res["cuda"]:
        out += ["", "| CUDA | dtype | img/s |", "|---|---|---|"]
        out += [f"| {r['device']} | {r['dtype']} | {r['images_per_sec']:.0f} |" for r in res["cuda"]]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: few iterations, 1,000 test images")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of throughput timing (default 3)")
    p.add_argument("--iters", type=int, default=None, help="timed batches per path per round (default 10)")
    p.add_argument("--latency-iters", type=int, default=None, help="timed batch-1 calls per path (default 200)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3)")
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference.json")
    args = p.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.iters = args.iters or (2 if q else 10)
    args.latency_iters = args.latency_iters or (5 if q else 200)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    if q:
        args.calibration_images = min(args.calibration_images, 64)
    t0 = time.perf_counter()
    res = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    res["peak_n"] = 1024 if q else 4096
    print("## peaks ...", flush=True)
    res["peaks"] = matmul_peaks(res["peak_n"], 2 if q else 5)
    res["throughput"] = throughput(args, res["peaks"])
    int8_graph = res["throughput"].pop("_int8_graph")
    res["int8_profile"] = profile_int8(int8_graph, args, res["throughput"]["macs_per_image"], res["peaks"])
    res["latency"] = latency(args)
    res["accuracy"] = accuracy(args)
    res["cuda"] = cuda_rows(args)
    res["wall_seconds"] = time.perf_counter() - t0
    atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    print("\n" + markdown(res))
    print(f"\nwrote {args.out} ({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
