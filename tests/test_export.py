"""ONNX export and int8 quantization, checked in onnxruntime against PyTorch.

The round trips run every family and shortcut option with randomised BatchNorm statistics, so
that the exporter's BN folding has something to get wrong; the int8 test trains a small network
first, because only a trained network shows whether quantization keeps accuracy.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fakedata import write_mnist
from onnx import numpy_helper

import resnetkit
from resnetkit.checkpoint import save_weights
from resnetkit.config import make_config
from resnetkit.errors import UserError
from resnetkit.evaluate import evaluate_loaded
from resnetkit.export import export
from resnetkit.inference import Calibration, open_model
from resnetkit.train import train


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BN layers that are not the identity at inference, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def save(path: Path, model, *, dataset="folder", image_size=32, in_chans=3, classes=None) -> Path:
    n = model.num_classes
    save_weights(path, model, {
        "dataset": dataset, "data_dir": None, "classes": classes or [f"c{i}" for i in range(n)],
        "mean": [0.5] * in_chans, "std": [0.25] * in_chans, "normalize": "dataset",
        "training": {"precision": "fp32", "tta": False, "image_size": image_size, "channels_last": False,
                     "eval_batch_size": 64}})
    return path


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# One model of each family (CIFAR, ImageNet basic, ImageNet bottleneck, plain, pre-activation)
# and each shortcut option (A, B, C, none). ImageNet nets get one block per stage and 64x64
# inputs: the graph has every kind of node, at a fraction of the export time.
ROUND_TRIPS = [
    ("resnet20", {"in_chans": 1}, 28, "A"),
    ("resnet20", {"shortcut": "C", "blocks": [1, 1, 1]}, 32, "C"),
    ("plain20", {"blocks": [1, 1, 1]}, 32, "none"),
    ("resnet18", {"num_classes": 7, "blocks": [1, 1, 1, 1]}, 64, "B"),
    ("resnet50", {"num_classes": 7, "blocks": [1, 1, 1, 1]}, 64, "B"),
    ("resnet18", {"num_classes": 7, "version": "2", "blocks": [1, 1, 1, 1]}, 64, "B, pre-activation"),
]


@pytest.mark.parametrize("name,kwargs,size,what", ROUND_TRIPS, ids=[f"{n}-{w}" for n, _, _, w in ROUND_TRIPS])
def test_onnx_round_trip_matches_pytorch_at_batch_1_and_7(tmp_path, name, kwargs, size, what):
    torch.manual_seed(0)
    model = randomize_bn(resnetkit.create_model(name, **kwargs))
    in_chans = kwargs.get("in_chans", 3)
    weights = save(tmp_path / "m.safetensors", model, dataset="folder" if size != 28 else "mnist",
                   image_size=size, in_chans=in_chans)
    meta = export(weights, tmp_path / "m.onnx", dynamic_batch=True)
    assert meta["export"]["dynamic_batch"] and meta["export"]["max_abs_diff_vs_torch"] < 1e-3
    for batch in (1, 7):
        x = torch.randn(batch, in_chans, size, size)
        with torch.no_grad():
            ref = model(x).numpy()
        out = ort_logits(tmp_path / "m.onnx", x.numpy())
        assert out.shape == (batch, model.num_classes)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))
    # Class names and normalisation travel in the file, readable by any ONNX tool.
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["classes"] == [f"c{i}" for i in range(model.num_classes)]
    assert props["mean"] == [0.5] * in_chans and props["std"] == [0.25] * in_chans
    assert props["model_name"] == name


def test_fixed_batch_opset_and_nothing_written_when_the_check_fails(tmp_path):
    model = randomize_bn(resnetkit.create_model("resnet20", blocks=[1, 1, 1]))
    weights = save(tmp_path / "m.safetensors", model)
    meta = export(weights, tmp_path / "b4.onnx", batch_size=4, opset=18)
    proto = onnx.load(str(tmp_path / "b4.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 32, 32] and meta["export"]["batch_size"] == 4
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    # A fixed-batch file still evaluates any number of images: the engine pads the last chunk.
    engine = open_model(tmp_path / "b4.onnx")
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="differ from PyTorch's"):
        export(weights, tmp_path / "never.onnx", tolerance=1e-12)
    assert not (tmp_path / "never.onnx").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CIFAR-style ResNet trained on an MNIST-format set written here (bars at class-dependent
    rows), with held-out test images: a model whose accuracy means something."""
    root = tmp_path_factory.mktemp("int8")
    data = write_mnist(root / "mnist", 1024, 512)
    cfg = make_config({"model": "resnet20", "blocks": [1, 1, 1], "data": "mnist", "data_dir": str(data),
                       "epochs": 3, "batch_size": 32, "lr": 0.05, "schedule": "cosine", "precision": "fp32",
                       "channels_last": False, "tta": False, "log_every": 100, "out": str(root / "run"),
                       "pad": 0})  # no random crops: the bars of neighbouring classes are 2-3 rows apart
    train(cfg, tensorboard=False, verbose=False)
    return root / "run" / "model.safetensors"


def test_int8_export_keeps_accuracy_on_held_out_images(trained, tmp_path):
    # int8, calibrated on 128 training images, evaluated on the 512 unseen test images by the
    # same code as fp32. Bound: at most 1 point of accuracy lost, top-1 agreement >= 98%.
    meta = export(trained, tmp_path / "q.onnx", int8=True, dynamic_batch=True,
                  calibration=Calibration(count=128))
    fp32, _, _ = evaluate_loaded(open_model(trained, backend="onnx", precision="fp32"))
    int8, _, _ = evaluate_loaded(open_model(tmp_path / "q.onnx"))
    assert len(int8.predictions) == 512
    assert fp32.accuracy > 0.9  # the model learned the task, so the comparison means something
    assert int8.accuracy >= fp32.accuracy - 0.01
    assert (int8.predictions == fp32.predictions).double().mean() >= 0.98

    q = meta["quantization"]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    has_dot = any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))
    assert q["reduce_range"] is (not has_dot) and q["format"] == "QDQ"
    assert "128 images of the mnist training split" in q["calibration"]

    # The graph really is QDQ with int8 per-channel weights: every conv weight is dequantized
    # from int8 with one scale per output channel.
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in proto.graph.node for o in n.output}
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        w, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],)


def test_reduce_range_keeps_weights_to_7_bits(trained, tmp_path):
    seven = export(trained, tmp_path / "r.onnx", int8=True, reduce_range=True, calibration=Calibration(count=64))
    eight = export(trained, tmp_path / "e.onnx", int8=True, reduce_range=False, calibration=Calibration(count=64))
    assert seven["quantization"]["reduce_range"] is True and eight["quantization"]["reduce_range"] is False

    def weight_range(path):
        proto = onnx.load(str(path))
        ws = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        return min(int(w.min()) for w in ws), max(int(w.max()) for w in ws)

    lo, hi = weight_range(tmp_path / "r.onnx")
    assert -64 <= lo and hi <= 64  # 7 bits, symmetric
    lo, hi = weight_range(tmp_path / "e.onnx")
    assert hi > 64 or lo < -64  # the full 8 bits in use


def test_export_command_prints_the_check_and_nothing_else(trained, tmp_path):
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "export", str(trained), "-o",
                          str(tmp_path / "m.onnx"), "--dynamic-batch"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # The exporter's progress lines, FutureWarnings and log records stay hidden.
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"wrote {tmp_path / 'm.onnx'}: resnet20")
    assert "any batch size of 1x28x28" in lines[0] and "logits within" in lines[1]
