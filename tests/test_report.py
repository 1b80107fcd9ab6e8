"""`resnetkit report`: pages made from a real tiny training run and a real tiny experiment.

What the page claims is checked against numbers found here independently: summary.json and
results.json as training wrote them, and the saved model's own predictions on the first test
images (load_arrays + the training normalisation + one forward pass in eval mode).
"""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from fakedata import write_mnist

import resnetkit
from resnetkit import cli, experiments, report
from resnetkit.config import make_config
from resnetkit.data import load_arrays, normalize
from resnetkit.errors import UserError
from resnetkit.train import train

sys.path.insert(0, str(Path(__file__).parent))
import browser  # noqa: E402  (tests/browser.py: headless Chromium through selenium)

ROOT = Path(__file__).resolve().parents[1]
GRID = 48


class Page(HTMLParser):
    """Every start tag with its attributes, and the text inside each <figure>."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.figures: list[tuple[dict, list[str]]] = []
        self._figure: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attrs))
        if tag == "figure":
            self._figure = []
            self.figures.append((attrs, self._figure))

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._figure is not None and data.strip():
            self._figure.append(data.strip())

    def having(self, *tokens: str, tag: str | None = None) -> list[dict]:
        return [a for t, a in self.tags
                if set(tokens) <= set(a.get("class", "").split()) and (tag is None or t == tag)]

    def images(self) -> list[dict]:
        return [a for t, a in self.tags if t == "img"]


def png_of(img: dict) -> bytes:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    return base64.b64decode(img["src"][len(prefix):], validate=True)


def assert_self_contained(page: str) -> None:
    """Nothing to fetch: no URL in any src or href, no stylesheet, script or font to load."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//|file:)""", page, re.I)
    assert not re.search(r"<link|<script|@import|url\(|<iframe|<object", page, re.I)
    for tag, attrs in Page(page).tags:
        for name in ("src", "href", "srcset"):
            if name in attrs:
                assert attrs[name].startswith(("data:image/png;base64,", "#")), (tag, name, attrs[name][:60])


def assert_pngs_decode(page: Page) -> None:
    from PIL import Image

    for img in page.images():
        with Image.open(io.BytesIO(png_of(img))) as im:
            im.verify()


# --------------------------------------------------------------------------------------------
# Fixtures: one real training run, one real experiment.


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("report-data") / "m", 256, 64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    run = tmp_path_factory.mktemp("report-run") / "run"
    cfg = make_config({"model": "resnet20", "data": "mnist", "data_dir": str(mnist_dir), "max_steps": 6,
                       "epochs": 1, "batch_size": 64, "precision": "fp32", "channels_last": False,
                       "tta": False, "log_every": 2, "out": str(run)})
    train(cfg, tensorboard=False, verbose=False)
    return run


@pytest.fixture(scope="module")
def run_page(run_dir) -> str:
    return report.build_report(run_dir)


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> Path:
    # A real `shortcuts` experiment (options A, B, C, none), kept to seconds: one epoch of 640 images.
    data = write_mnist(tmp_path_factory.mktemp("report-exp-data") / "m", 640, 64)
    out = tmp_path_factory.mktemp("report-exp") / "sc"
    experiments.shortcuts(out, depth=20, data="mnist", data_dir=str(data), quick=True, epochs=1, quiet=True,
                          command="resnetkit experiment shortcuts --quick --epochs 1")
    return out


def first_predictions(run: Path) -> tuple[list[int], list[int], list[str]]:
    """(true labels, predictions, class names) of the first GRID test images, computed here."""
    model = resnetkit.load(run / "model.safetensors").eval()
    meta = model.metadata
    test = load_arrays(meta["dataset"], meta["data_dir"], train=False)
    x = normalize(test.images[:GRID], meta["mean"], meta["std"])
    with torch.no_grad():
        pred = model(x).argmax(1)
    return test.labels[:GRID].tolist(), pred.tolist(), meta["classes"]


# --------------------------------------------------------------------------------------------
# The run page.


def test_run_page_is_self_contained_and_its_images_decode(run_page):
    assert run_page.startswith("<!DOCTYPE html>")
    assert_self_contained(run_page)
    assert_pngs_decode(Page(run_page))


def test_run_page_shows_the_summary_and_the_settings(run_dir, run_page):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{100 * summary['test_accuracy']:.2f}%" in run_page
    assert f"{100 * summary['test_error']:.2f}%" in run_page
    assert f"{summary['params']:,}" in run_page
    assert "resnet20 on mnist" in run_page
    settings = dict(re.findall(r'<span class="k">([^<]+)</span><span class="v">([^<]*)</span>', run_page))
    assert settings["model"] == "resnet20" and settings["max_steps"] == "6"
    assert settings["batch_size"] == "64" and settings["precision"] == "fp32"
    # curves.png as training drew it, byte for byte.
    curves = [a for a in Page(run_page).images() if "curves" in a.get("alt", "")]
    assert len(curves) == 1 and png_of(curves[0]) == (run_dir / "curves.png").read_bytes()


def test_run_page_grid_marks_exactly_the_models_mistakes(run_dir, run_page):
    truth, pred, classes = first_predictions(run_dir)
    page = Page(run_page)
    samples = [(attrs, text) for attrs, text in page.figures if "sample" in attrs.get("class", "").split()]
    assert len(samples) == GRID
    for i, (attrs, text) in enumerate(samples):
        assert attrs["data-index"] == str(i)
        assert attrs["data-true"] == classes[truth[i]] and attrs["data-pred"] == classes[pred[i]]
        assert f"true: {classes[truth[i]]}" in text and f"pred: {classes[pred[i]]}" in text
        assert ("mistake" in attrs["class"].split()) == (truth[i] != pred[i])
    wrong = sum(t != p for t, p in zip(truth, pred))
    assert len(page.having("mistake")) == wrong
    # Every grid image is a real picture of the digit, enlarged 3x: 28 px -> 84 px.
    from PIL import Image

    imgs = [a for a in page.images() if a.get("alt", "").startswith("test image")]
    assert len(imgs) == GRID
    with Image.open(io.BytesIO(png_of(imgs[0]))) as im:
        assert im.size == (84, 84)


def test_run_page_confusion_matrix_matches_the_summary(run_dir, run_page):
    summary = json.loads((run_dir / "summary.json").read_text())
    page = Page(run_page)
    assert page.having("confusion", tag="table")
    counts = [int(a["data-count"]) for t, a in page.tags if t == "td" and "data-count" in a]
    k = 10
    assert len(counts) == k * k
    assert sum(counts) == 64  # the whole test split
    correct = sum(counts[i * k + i] for i in range(k))
    assert correct / 64 == pytest.approx(summary["test_accuracy"], abs=1e-9)


def test_run_page_has_the_compact_architecture_inline(run_page):
    svgs = re.findall(r"<svg\b.*?</svg>", run_page, re.S)
    assert len(svgs) == 1
    root = ET.fromstring(svgs[0])
    assert "compact" in root.get("class").split()
    blocks = [e for e in root.iter() if "block" in (e.get("class") or "").split()]
    assert len(blocks) == 9  # resnet20: 3 stages of 3 basic blocks
    assert "input 1x28x28" in ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_run_without_curves_or_weights_still_renders(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "curves.png").unlink()
    (copy / "model.safetensors").unlink()
    page = report.build_report(copy)
    assert_self_contained(page)
    parsed = Page(page)
    curves = [a for a in parsed.images() if "curves" in a.get("alt", "")]
    assert len(curves) == 1  # redrawn from metrics.jsonl
    assert_pngs_decode(parsed)
    assert not parsed.having("sample") and "<svg" not in page
    assert "no model.safetensors" in page


# --------------------------------------------------------------------------------------------
# The experiment page.


def test_experiment_page_shows_every_model_and_the_figure(experiment_dir):
    result = json.loads((experiment_dir / "results.json").read_text())
    page = report.build_report(experiment_dir)
    assert_self_contained(page)
    parsed = Page(page)
    assert_pngs_decode(parsed)
    figure = [a for a in parsed.images() if a.get("alt") == "comparison figure"]
    assert len(figure) == 1 and png_of(figure[0]) == (experiment_dir / "figure.png").read_bytes()
    body = page.split('<table class="models">')[1].split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r"<tr>.*?</tr>", body, re.S)
    assert len(rows) == len(result["models"]) == 4
    for m, row in zip(result["models"], rows):
        assert m["model"] in row
        assert experiments.fmt_pct(m["test_error"], m["test_error_std"]) in row
        assert experiments.fmt_pct(m["train_error"], m["train_error_std"]) in row
        assert f"{m['params']:,}" in row
    for line in result["conclusion"]:
        assert html.escape(line) in page
    assert result["command"] in page
    # One card per run with its own curves; every model name links to a card that exists.
    cards = parsed.having("run")
    assert len(cards) == len(result["runs"])
    links = [a["href"][1:] for t, a in parsed.tags if t == "a" and a.get("href", "").startswith("#")]
    assert len(links) == len(result["models"]) and set(links) <= {c["id"] for c in cards}
    for run in result["runs"]:
        curves = (experiment_dir / run["run_dir"] / "curves.png").read_bytes()
        assert any(png_of(a) == curves for a in parsed.images())


# --------------------------------------------------------------------------------------------
# Bad input, files, command line.


def test_bad_folders_raise_a_user_error_naming_them(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "missing"))):
        report.build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a training run"):
        report.build_report(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        report.build_report(tmp_path / "file.txt")


def test_write_report_and_cli(run_dir, tmp_path):
    out = report.write_report(run_dir, tmp_path / "sub" / "r.html")
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.html"]  # no temporary file left

    ok = subprocess.run([sys.executable, "-m", "resnetkit.cli", "report", str(run_dir), "-o",
                         str(tmp_path / "x.html")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and (tmp_path / "x.html").read_text().count('class="sample') == GRID

    bad = subprocess.run([sys.executable, "-m", "resnetkit.cli", "report", "/nonexistent", "-o",
                          str(tmp_path / "y.html")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "/nonexistent" in bad.stderr and not (tmp_path / "y.html").exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "z.html")]) == 2
    assert not (tmp_path / "z.html").exists()


# --------------------------------------------------------------------------------------------
# A real browser: every image loads from the file alone, and the page is drawn.


def _assert_drawn(png: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    assert w >= 600 and h >= 400
    colors = img.getcolors(maxcolors=w * h)
    assert len(colors) > 50  # text, figures and fills, not a flat or blank page


def _check_in_browser(driver, path: Path, expected_images: int) -> bytes:
    """Open ``path`` in ``driver`` (a selenium WebDriver from ``browser.chromium``): every image
    loaded, nothing wider than the window; returns the screenshot."""
    driver.get(path.resolve().as_uri())
    sizes = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) == expected_images
    assert all(done and width > 0 for done, width in sizes)
    # Laid out for the window: nothing forces a horizontal scroll bar.
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    png = driver.get_screenshot_as_png()
    _assert_drawn(png)
    return png


@pytest.mark.xdist_group("browser")
@pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
def test_reports_in_headless_chromium(run_dir, run_page, experiment_dir, tmp_path):
    run_html = tmp_path / "run.html"
    run_html.write_text(run_page)
    exp_html = report.write_report(experiment_dir, tmp_path / "experiment.html")
    n_runs = len(json.loads((experiment_dir / "results.json").read_text())["runs"])
    with browser.chromium(width=1280, height=1000) as driver:
        run_top = _check_in_browser(driver, run_html, 1 + GRID)  # curves + the grid
        assert driver.execute_script("return document.querySelectorAll('figure.mistake').length") == \
            run_page.count('class="sample mistake"')
        driver.execute_script("document.getElementById('samples').scrollIntoView()")
        run_grid = driver.get_screenshot_as_png()
        _assert_drawn(run_grid)
        exp_top = _check_in_browser(driver, exp_html, 1 + n_runs)  # figure + one curve per run
    if os.environ.get("RESNETKIT_SAVE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        (ROOT / "docs" / "img" / "report-run.png").write_bytes(run_top)
        (ROOT / "docs" / "img" / "report-run-grid.png").write_bytes(run_grid)
        (ROOT / "docs" / "img" / "report-experiment.png").write_bytes(exp_top)
