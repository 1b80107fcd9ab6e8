"""Prediction, the shipped model and the inference paths, against independent computations.

The reference probabilities are computed here with Pillow and a plain eval-mode PyTorch forward
pass, not with resnetkit's engines; the shipped model is held to its recorded accuracy on the
real Fashion-MNIST test set.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FASHION_MNIST, NATIVE_BF16
from fakedata import write_image_folder, write_mnist
from onnx import TensorProto, helper
from PIL import Image

import resnetkit
from resnetkit import cli
from resnetkit.checkpoint import save_weights
from resnetkit.data import FASHION_MNIST_CLASSES, ImageFolder, load_arrays
from resnetkit.errors import UserError
from resnetkit.evaluate import evaluate_loaded
from resnetkit.inference import (
    ModelInfo,
    fold_conv_bn,
    int8_reduce_range,
    open_model,
    prepare_image,
    shipped_path,
)
from resnetkit.runtime import bf16_pays, compile_pays, cpu_info, native_bf16


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnetkit.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def shipped():
    return resnetkit.load(shipped_path("fashion-resnet20"))


def reference_probs(model, path: Path, size: int, mean, std, grey: bool, tta: bool, crop_ratio: float = 1.0):
    """What the model should say about one file, computed directly: Pillow decodes and resizes
    (short side to size / crop_ratio, bilinear), a center crop, the model in eval mode."""
    im = Image.open(path).convert("L" if grey else "RGB")
    short = round(size / crop_ratio)
    w, h = im.size
    im = im.resize((max(short, round(w * short / min(w, h))), max(short, round(h * short / min(w, h)))),
                   Image.BILINEAR)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    x = torch.from_numpy(arr[None, None] if grey else arr.transpose(2, 0, 1)[None].copy())
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        if tta:
            logits = (logits + model(x.flip(3))) / 2
    return logits.softmax(1)[0]


def write_odd_images(folder: Path) -> list[Path]:
    """Grey and colour PNG, JPEG and BMP files of awkward sizes, one with an alpha channel."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, shape, mode in (("grey28.png", (28, 28), "L"), ("colour.jpg", (41, 33, 3), "RGB"),
                              ("big.bmp", (90, 120), "L"), ("alpha.png", (17, 30, 4), "RGBA"),
                              ("nested/tall.jpeg", (70, 20, 3), "RGB")):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        arr[..., 5:12, :] = 230  # some structure, so the classes are not all alike
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(arr, mode).save(path)
        files.append(path)
    return files


def test_predictor_matches_a_direct_pytorch_forward_pass(shipped, tmp_path):
    files = write_odd_images(tmp_path / "imgs")
    meta = shipped.metadata
    assert meta["training"]["tta"] is True  # the shipped recipe evaluates with mirror images
    predictor = resnetkit.Predictor("fashion-resnet20", precision="fp32")
    probs = predictor.probabilities(files)
    for path, p in zip(files, probs):
        ref = reference_probs(shipped, path, 28, meta["mean"], meta["std"], grey=True, tta=True)
        torch.testing.assert_close(p, ref, atol=2e-5, rtol=1e-4)
    preds = predictor.predict(files, top_k=3)
    assert [p.image for p in preds] == [str(f) for f in files]
    for p, row in zip(preds, probs):
        assert [c for c, _ in p.top] == [FASHION_MNIST_CLASSES[i] for i in row.topk(3).indices]
        assert p.label == FASHION_MNIST_CLASSES[p.index] and p.probability == pytest.approx(float(row.max()))
    # A folder stands for its images (walked recursively, sorted), in-memory images work too.
    walked = predictor.predict(tmp_path / "imgs", top_k=1)
    assert sorted(p.image for p in walked) == sorted(str(f) for f in files)
    arr = np.asarray(Image.open(files[0]))
    assert predictor.predict(arr, top_k=1)[0].label == preds[0].label


def test_prepared_pixels_equal_the_folder_loaders_evaluation_images(tmp_path):
    # Image-folder models: the same resize and crop as training's evaluation loader, pixel for pixel.
    root = write_image_folder(tmp_path / "f", n_per_class=2, size=45)
    data = ImageFolder(root / "val", train=False, size=32)
    info = ModelInfo(name="r", source="x", classes=data.classes, mean=[0.5] * 3, std=[0.5] * 3, in_chans=3,
                     image_size=32, resize=round(32 * 256 / 224))
    for i, (path, _) in enumerate(data.samples):
        expected, _ = data[i]
        assert torch.equal(prepare_image(Image.open(path), info), expected)


def test_fold_conv_bn_removes_every_foldable_bn_and_keeps_the_outputs():
    torch.manual_seed(0)
    cases = [("resnet20", {}, 32, 0), ("resnet50", {"blocks": [1, 1, 1, 1]}, 64, 0),
             # Pre-activation: BN-ReLU-conv cannot fold; only the BN right after each block's first
             # conv does. 8 blocks keep bn1, plus the final norm: 9 remain.
             ("resnet18", {"version": "2"}, 64, 9)]
    for name, kwargs, size, remaining in cases:
        model = resnetkit.create_model(name, **kwargs)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)
        model.eval()
        folded = fold_conv_bn(model)
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == remaining, name
        x = torch.randn(3, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_cpu_flags_decide_int8_range_and_bf16():
    assert int8_reduce_range(frozenset({"avx2", "fma"}))[0] is True
    assert int8_reduce_range(frozenset({"avx2", "avx512_vnni"}))[0] is False
    assert int8_reduce_range(frozenset({"avx2", "avx_vnni"}))[0] is False
    assert int8_reduce_range(frozenset({"amx_int8"}))[0] is False
    assert native_bf16(frozenset({"avx512f"})) is False and native_bf16(frozenset({"amx_bf16"})) is True
    assert native_bf16(frozenset({"avx512_bf16"})) is True
    # --precision auto: bf16 only where it beats fp32 (docs/benchmarks.md, "Precision"): AMX on
    # any vendor, AVX-512 BF16 on AMD Zen 4/5; not on an Intel CPU whose AMX is hidden or absent.
    intel, amd = "GenuineIntel", "AuthenticAMD"
    assert bf16_pays("cpu", (intel, frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))) is True
    assert bf16_pays("cpu", (intel, frozenset({"avx512f", "avx512_bf16"}))) is False
    assert bf16_pays("cpu", (amd, frozenset({"avx512f", "avx512_bf16"}))) is True
    assert bf16_pays("cpu", (amd, frozenset({"avx2", "fma"}))) is False
    # --recipe speedrun compiles only where that paid for the compile time: with AMX, not on Zen 4.
    assert compile_pays("cpu", (intel, frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))) is True
    assert compile_pays("cpu", (amd, frozenset({"avx512f", "avx512_bf16"}))) is False


def test_cpu_info_reads_vendor_and_flags_of_this_machine():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vendor, flags = cpu_info()
    assert vendor in text and set(flags) <= set(text.split())
    if "flags" in text:  # x86: the vendor line and a flag every x86-64 CPU has
        assert vendor in ("GenuineIntel", "AuthenticAMD") and "sse2" in flags


def test_cli_predict_text_and_json(tmp_path):
    files = write_odd_images(tmp_path / "imgs")
    text = run_cli("predict", "fashion-resnet20", files[0], tmp_path / "imgs" / "nested", "--top-k", "2")
    assert text.returncode == 0 and text.stderr == "", text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("# resnet20 from fashion-resnet20: torch")
    assert lines[1] == str(files[0]) and lines[4] == str(files[-1]) and len(lines) == 7
    for line in lines[2:4] + lines[5:7]:
        pct, name = line.split("%  ")
        assert name in FASHION_MNIST_CLASSES and 0 <= float(pct) <= 100
    out = run_cli("predict", "fashion-resnet20", tmp_path / "imgs", "--json", "--top-k", "10", "--batch-size", "2")
    assert out.returncode == 0 and out.stderr == ""
    doc = json.loads(out.stdout)
    assert doc["model"] == "resnet20" and len(doc["predictions"]) == len(files)
    for p in doc["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert {t["class"] for t in p["top"]} == set(FASHION_MNIST_CLASSES) and p["label"] == p["top"][0]["class"]


def test_torchvision_pth_with_model_name(tmp_path):
    torch.manual_seed(1)
    model = resnetkit.create_model("resnet18", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    img = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(img)
    # Classes and input channels come from the weights; ImageNet's statistics and 224 crops.
    predictor = resnetkit.Predictor(tmp_path / "r18.pth", model_name="resnet18", precision="fp32")
    assert predictor.classes == ["0", "1", "2"]
    ref = reference_probs(model, img, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], grey=False,
                          tta=False, crop_ratio=224 / 256)
    torch.testing.assert_close(predictor.probabilities([img])[0], ref, atol=2e-5, rtol=1e-4)
    with pytest.raises(UserError, match="does not fit resnet34"):  # weights of another network
        resnetkit.Predictor(tmp_path / "r18.pth", model_name="resnet34")


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_shipped_model_scores_at_least_93_percent_on_the_real_test_set():
    # As trained (bf16 autocast, flip TTA) where the CPU has native bf16; where it only emulates
    # bf16 (minutes for 20,000 forward passes) in fp32, which docs/deploy.md measured 0.01 points away.
    run = run_cli("eval", "fashion-resnet20", "--json", *([] if NATIVE_BF16 else ["--precision", "fp32"]))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["accuracy"] >= 0.93 and result["dataset"] == "fashion-mnist"
    meta = resnetkit.load(shipped_path("fashion-resnet20")).metadata
    # Evaluated as trained, the shipped weights give the accuracy their training recorded: to the
    # image on the CPU they were trained on; bf16 kernels of another CPU may round a few differently.
    assert result["accuracy"] == pytest.approx(meta["training"]["test_accuracy"], abs=0.001 if NATIVE_BF16 else 0.002)
    assert result["confusion_png"] is None  # nothing written into the installed package
    assert meta["classes"] == FASHION_MNIST_CLASSES and "git_commit" in meta and "command" in meta


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_predict_on_real_test_images_agrees_with_eval(shipped, tmp_path):
    test = load_arrays("fashion-mnist", None, train=False)
    n = 64
    for i in range(n):
        Image.fromarray(test.images[i, 0].numpy()).save(tmp_path / f"{i:03d}.png")
    engine = open_model("fashion-resnet20", precision="fp32")
    preds = resnetkit.Predictor(engine).predict(tmp_path, top_k=1)
    result, _, _ = evaluate_loaded(engine, test_subset=n)
    assert [p.index for p in preds] == result.predictions.tolist()
    hits = sum(p.index == int(y) for p, y in zip(preds, test.labels[:n]))
    assert hits >= 0.85 * n


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    good = write_odd_images(tmp_path / "imgs")[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])  # a PNG cut short
    text_png = tmp_path / "notes.png"
    text_png.write_text("not an image at all")
    wrong_kind = tmp_path / "model.safetensors"
    wrong_kind.write_text("hello")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(good.read_bytes())
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    pth = tmp_path / "r.pth"
    torch.save(resnetkit.create_model("resnet20").state_dict(), pth)
    cases = [
        (["predict", "fashion-resnet20", corrupt], "cannot read image"),
        (["predict", "fashion-resnet20", text_png], "notes.png"),
        (["predict", wrong_kind, good], "not a safetensors file"),
        (["predict", not_onnx, good], "not an ONNX model"),
        (["eval", not_onnx], "not an ONNX model"),
        (["predict", "fashion-resnet20", empty], "no images"),
        (["predict", "fashion-resnet21", good], "no such model file or shipped model"),
        (["predict", pth, good], "--model NAME"),
        (["predict", "fashion-resnet20", good, "--backend", "torch", "--precision", "int8"], "onnxruntime"),
        (["export", "fashion-resnet20", "-o", tmp_path / "x.txt"], "must end in .onnx"),
    ]
    for args, expected in cases:
        assert cli.main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("resnetkit: error: ") and expected in err, (args, err)


def test_onnx_file_whose_input_does_not_fit(tmp_path, capsys):
    # A network for 3x32x32 images, evaluated on 1x28x28 Fashion-MNIST-format files.
    mnist = write_mnist(tmp_path / "mnist", 16, 16)
    model = resnetkit.create_model("resnet20", blocks=[1, 1, 1])
    save_weights(tmp_path / "c.safetensors", model, {
        "dataset": "cifar10", "classes": [str(i) for i in range(10)], "mean": [0.5] * 3, "std": [0.2] * 3,
        "training": {"precision": "fp32", "tta": False}})
    assert cli.main(["export", str(tmp_path / "c.safetensors"), "-o", str(tmp_path / "c.onnx")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "c.onnx"), "--data", "mnist", "--data-dir", str(mnist)]) == 2
    err = capsys.readouterr().err
    assert err == f"resnetkit: error: {tmp_path / 'c.onnx'} takes 3-channel images, mnist's have 1\n"
    # Right channels, wrong size: the graph's fixed 32x32 input cannot take 28x28 images.
    gray = tmp_path / "g.safetensors"
    save_weights(gray, resnetkit.create_model("resnet20", blocks=[1, 1, 1], in_chans=1), {
        "dataset": "cifar10", "classes": [str(i) for i in range(10)], "mean": [0.5], "std": [0.2],
        "training": {"precision": "fp32", "tta": False}})
    assert cli.main(["export", str(gray), "-o", str(tmp_path / "g.onnx")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "g.onnx"), "--data", "mnist", "--data-dir", str(mnist)]) == 2
    err = capsys.readouterr().err
    assert err == f"resnetkit: error: {tmp_path / 'g.onnx'} takes images of shape (1, 32, 32), these are (1, 28, 28)\n"
    # And a graph that does not take images at all: one line too, no traceback.
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])])
    flat = helper.make_model(graph)
    for key, value in (("classes", [str(i) for i in range(10)]), ("mean", [0.5]), ("std", [0.5])):
        flat.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(flat, str(tmp_path / "flat.onnx"))
    image = write_odd_images(tmp_path / "imgs")[0]
    assert cli.main(["predict", str(tmp_path / "flat.onnx"), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an image batch (N, C, H, W)" in err
