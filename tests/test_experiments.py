"""The built-in experiments: quick variants end to end, and the published results' consistency."""

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FASHION_MNIST, ROOT
from fakedata import write_mnist

from resnetkit import experiments

RESULTS = ROOT / "results"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def png_is_not_blank(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        colors = im.convert("RGB").getcolors(1 << 20)
    return colors is not None and len(colors) > 50


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("exp") / "mnist", 2048, 512)


def check_schema(result: dict, out: Path, names: list[str]) -> None:
    assert (out / "results.json").exists() and (out / "README.md").exists()
    assert json.loads((out / "results.json").read_text()) == result
    assert [m["model"] for m in result["models"]] == names
    for m in result["models"]:
        assert 0 <= m["train_error"] <= 1 and 0 <= m["test_error"] <= 1 and m["params"] > 0
        assert m["train_time_sec"] > 0
    assert result["conclusion"] and result["recipe"]["recipe"] == "paper-cifar"
    w, h = png_size(out / "figure.png")
    assert w > 600 and h > 300 and png_is_not_blank(out / "figure.png")


def test_quick_degradation_makes_every_file(tmp_path, mnist_dir):
    out = tmp_path / "deg"
    result = experiments.degradation(out, depths=[20, 32], data="mnist", data_dir=str(mnist_dir), quick=True,
                                     quiet=True, command="resnetkit experiment degradation --quick")
    check_schema(result, out, ["plain20", "plain32", "resnet20", "resnet32"])
    by = {m["model"]: m for m in result["models"]}
    assert by["plain32"]["params"] == by["resnet32"]["params"] == 464_154 - 2 * 16 * 9  # 1 input channel
    assert by["resnet20"]["depth"] == 20 and by["plain20"]["family"] == "plain"
    assert all("one seed" in c for c in result["conclusion"][:5])  # no claims without a spread
    # --resume keeps the finished runs: same numbers, no retraining.
    again = experiments.degradation(out, depths=[20, 32], data="mnist", data_dir=str(mnist_dir), quick=True,
                                    quiet=True, resume=True)
    assert [m["test_error"] for m in again["models"]] == [m["test_error"] for m in result["models"]]


def test_quick_shortcuts_with_seeds_reports_spread(tmp_path, mnist_dir):
    out = tmp_path / "sc"
    result = experiments.shortcuts(out, depth=20, data="mnist", data_dir=str(mnist_dir), quick=True, seeds=2,
                                   epochs=1, quiet=True, options=("A", "C", "none"))
    check_schema(result, out, ["resnet20-A", "resnet20-C", "resnet20-none"])
    by = {m["option"]: m for m in result["models"]}
    # A and none: the anchors' ResNet-20 count less the stem's two missing input channels; C adds projections.
    assert by["A"]["params"] == by["none"]["params"] == 269_722 - 2 * 16 * 9 < by["C"]["params"]
    assert all(m["seeds"] == 2 and m["test_error_std"] is not None for m in result["models"])
    assert len(result["runs"]) == 6
    assert all(("spread" in c) for c in result["conclusion"][:3])


def test_compare_calls_out_differences_within_the_spread():
    a = {"model": "a", "e": 0.10, "e_std": 0.02}
    b = {"model": "b", "e": 0.11, "e_std": 0.02}
    assert "not a real difference" in experiments.compare(a, b, "e", "error")
    c = {"model": "c", "e": 0.30, "e_std": 0.01}
    assert "beyond the spread" in experiments.compare(c, b, "e", "error")


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_cli_quick_on_fashion_mnist(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "experiment", "shortcuts", "--quick",
                          "--epochs", "1", "--options", "C", "--out", str(out)], capture_output=True, text=True,
                         check=True)
    assert "resnet20-C" in run.stdout and "resnet20-B" not in run.stdout
    result = json.loads((out / "results.json").read_text())
    assert result["command"].startswith("resnetkit experiment shortcuts --quick")
    assert result["data"] == "fashion-mnist"


def _published(name: str) -> tuple[dict, str]:
    folder = RESULTS / name
    if not (folder / "results.json").exists():
        pytest.skip(f"results/{name} not published yet")
    return json.loads((folder / "results.json").read_text()), (folder / "README.md").read_text()


@pytest.mark.parametrize("name", ["degradation", "shortcuts"])
def test_published_results_are_consistent(name):
    result, readme = _published(name)
    assert not result["quick"], "published results must be the full-scale run"
    assert result["command"] in readme
    for m in result["models"]:
        # Every model's numbers in the README table are the JSON's.
        row = next(line for line in readme.splitlines() if line.startswith(f"| {m['model']} "))
        assert f"{100 * m['train_error']:.2f}" in row and f"{100 * m['test_error']:.2f}" in row
        assert f"{m['params']:,}" in row
        mine = [r for r in result["runs"] if r["name"] == m["model"]]
        assert len(mine) == m["seeds"] == result["seeds"]
        mean_test = sum(r["final_test_error"] for r in mine) / len(mine)
        assert abs(mean_test - m["test_error"]) < 1e-12
        for r in mine:  # each seed's run folder holds the number the table averages
            summary = json.loads((RESULTS / name / r["run_dir"] / "summary.json").read_text())
            assert summary["test_error"] == r["final_test_error"]
    for line in result["conclusion"]:
        assert line in readme
    total = re.findall(r"Training time, all runs: ([\d.]+) min", readme)
    assert total and float(total[0]) == pytest.approx(result["train_time_total_sec"] / 60, abs=0.05)
    assert result["train_time_total_sec"] == pytest.approx(sum(r["train_time_sec"] for r in result["runs"]))
    wall = re.findall(r"Wall time of the command that wrote this file: ([\d.]+) min", readme)
    assert wall and float(wall[0]) == pytest.approx(result["wall_time_sec"] / 60, abs=0.05)
    assert png_is_not_blank(RESULTS / name / "figure.png")


def test_settings_name_the_models_a_value_applies_to():
    # The paper warms up 110-layer nets only (Sec. 4.2): the README must not call the recipe identical.
    from resnetkit import experiments
    shown = experiments.settings({**experiments.recipe(False, 5, "fp32"), "data": "fashion-mnist"},
                                 ["resnet20", "resnet110"])
    assert shown["warmup"] == "0 (resnet20); 400 (resnet110)"
    assert shown["lr"] == 0.1 and shown["epochs"] == 5
