"""Architecture diagrams, checked against facts about the networks, not against the drawing code.

The counts come from the paper (He et al. 2016): ResNet-50 has 49 convs + 1 fc on its main path
("50-layer") in 3, 4, 6, 3 bottleneck blocks, with a projection (option B) exactly where shapes
change, i.e. in the first block of each of the 4 stages; the CIFAR ResNet-20 has 6n+2 = 20
weighted layers in 3 stages of n = 3 basic blocks and option A shortcuts that zero-pad at the
two places where the width doubles (16 -> 32 -> 64); plain nets have no shortcuts at all;
ResNet-152 has 3, 8, 36, 3 blocks. Totals are torchvision's published ResNet-50 numbers.
"""

import functools
import io
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import safetensors.torch
import torch

import resnetkit
from resnetkit import checkpoint, cli, draw
from resnetkit.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
import browser  # noqa: E402  (tests/browser.py: headless Chromium through selenium)

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"


@functools.cache
def meta(name: str, **kw) -> torch.nn.Module:
    """Built on the meta device: structure and shapes, no weights. Drawing leaves it unchanged."""
    with torch.device("meta"):
        return resnetkit.create_model(name, **kw)


@functools.cache
def svg(name: str, style: str = "detailed", direction: str = "vertical", **kw) -> ET.Element:
    text = draw.draw_svg(meta(name, **kw), style=style, direction=direction)
    return ET.fromstring(text)  # well-formed, or this raises


def has(el: ET.Element, *tokens: str) -> bool:
    return set(tokens) <= set(el.get("class", "").split())


def every(root: ET.Element, *tokens: str) -> list[ET.Element]:
    return [e for e in root.iter() if has(e, *tokens)]


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(SVG + "text")]


def box(el: ET.Element) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of the first rect inside ``el``."""
    r = el.find(SVG + "rect")
    x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
    return x, y, x + w, y + h


def overlapping(boxes: list[tuple]) -> list[tuple]:
    boxes = sorted(boxes)
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if b[0] >= a[2]:
                break
            if a[1] < b[3] and b[1] < a[3]:
                bad.append((a, b))
    return bad


# --------------------------------------------------------------------------------------------
# Detailed style


def test_resnet50_detailed_has_the_papers_layers_blocks_and_projections():
    root = svg("resnet50")
    convs = every(root, "layer", "conv")
    projections = [c for c in convs if has(c, "shortcut")]
    assert len(convs) == 53
    assert len(projections) == 4
    assert len(convs) - len(projections) + len(every(root, "layer", "fc")) == 50
    assert len(every(root, "block")) == 16
    assert [len(every(s, "block")) for s in every(root, "stage")] == [3, 4, 6, 3]
    fcs = every(root, "layer", "fc")
    assert len(fcs) == 1 and texts(fcs[0]) == ["fc 1000"]
    assert len(every(root, "layer", "maxpool")) == len(every(root, "layer", "avgpool")) == 1
    assert len(every(root, "add")) == 16
    arrows = every(root, "shortcut-arrow")
    assert len(arrows) == 16
    assert len([a for a in arrows if has(a, "projection")]) == 4
    assert len([a for a in arrows if has(a, "identity")]) == 12
    # Each projection is drawn inside the first block of a stage, 3 convs on each branch.
    for stage in every(root, "stage"):
        for j, block in enumerate(every(stage, "block")):
            inside = every(block, "layer", "conv")
            assert len([c for c in inside if not has(c, "shortcut")]) == 3
            assert len([c for c in inside if has(c, "shortcut")]) == (1 if j == 0 else 0)
    # Labels in the paper's notation (Table 1) are real, searchable text.
    words = texts(root)
    assert "7x7 conv, 64, /2" in words and "3x3 max pool, /2" in words
    assert words.count("1x1 conv, 2048") == 3  # conv5_x ends in 1x1, 2048, three times


def test_resnet20_option_a_draws_identity_shortcuts_only():
    root = svg("resnet20")
    convs = every(root, "layer", "conv")
    assert len(every(root, "block")) == 9
    assert len(convs) == 19  # 6n+2 = 20 weighted layers, one of them the fc
    assert not [c for c in convs if has(c, "shortcut")]
    arrows = every(root, "shortcut-arrow")
    assert len(arrows) == 9 and all(has(a, "identity") for a in arrows)
    assert not every(root, "shortcut-arrow", "projection")
    padded = [a for a in arrows if has(a, "zeropad")]
    assert [a.get("data-block") for a in padded] == ["layer2.0", "layer3.0"]
    assert {"zero-pad +16 ch, /2", "zero-pad +32 ch, /2"} <= set(texts(root))


@pytest.mark.parametrize("name, convs", [("plain34", 33), ("plain20", 19)])
def test_plain_nets_have_no_shortcuts_and_no_additions(name, convs):
    root = svg(name)
    assert not every(root, "shortcut-arrow")
    assert not every(root, "add")
    assert len(every(root, "layer", "conv")) == convs


def test_shortcut_c_projects_every_block():
    root = svg("resnet20", shortcut="C")
    arrows = every(root, "shortcut-arrow")
    assert len(arrows) == 9 and all(has(a, "projection") for a in arrows)
    assert len(every(root, "layer", "conv", "shortcut")) == 9
    assert len(every(root, "layer", "bn", "shortcut")) == 9


def _main_path(block: ET.Element) -> tuple[list[str], float]:
    """A vertical block's main-path layer kinds from top to bottom, and the y of its add node."""
    layers = [e for e in every(block, "layer") if not has(e, "shortcut")]
    layers.sort(key=lambda e: box(e)[1])
    kinds = [e.get("class").split()[-1] for e in layers]
    add = every(block, "add")
    circle_y = float(add[0].find(SVG + "circle").get("cy")) if add else float("inf")
    return [k + ("+" if box(e)[1] > circle_y else "") for k, e in zip(kinds, layers)], circle_y


def test_post_and_pre_activation_blocks_in_order():
    # Post-activation (version 1.5): conv-BN-ReLU ..., the ReLU after the addition (marked +).
    kinds, _ = _main_path(every(svg("resnet50"), "block")[1])
    assert kinds == ["conv", "bn", "relu", "conv", "bn", "relu", "conv", "bn", "relu+"]
    # Pre-activation (version 2, He et al. ECCV 2016): BN-ReLU before each conv, nothing after.
    for name in ("resnet20", "resnet50"):
        root = svg(name, version="2")
        assert len(every(root, "block")) == (9 if name == "resnet20" else 16)
        for block in every(root, "block"):
            kinds, _ = _main_path(block)
            assert kinds[:3] == ["bn", "relu", "conv"]
            assert not [k for k in kinds if k.endswith("+")]
            assert kinds.count("conv") == (2 if name == "resnet20" else 3)


def _path_start_y(arrow: ET.Element) -> float:
    return float(re.match(r"M\s*[-\d.]+,([-\d.]+)", arrow.get("d")).group(1))


def test_preact_projection_reads_the_normalised_input():
    # v2: the projection reads relu(bn1(x)), so its arrow leaves after the first BN-ReLU;
    # v1.5: it reads x, so it leaves before the first conv.
    for version, after_relu in (("2", True), ("1.5", False)):
        block = every(svg("resnet50", version=version), "block")[3]  # layer2.0
        arrow = every(block, "shortcut-arrow", "projection")[0]
        first_relu = min((e for e in every(block, "layer", "relu") if not has(e, "shortcut")),
                         key=lambda e: box(e)[1])
        assert (_path_start_y(arrow) > box(first_relu)[3]) == after_relu


def test_resnet152_detailed_is_large_and_readable_not_shrunk():
    root = svg("resnet152")
    assert len(every(root, "block")) == 3 + 8 + 36 + 3
    assert len(every(root, "layer", "conv")) == 151 + 4
    sizes = [float(t.get("font-size")) for t in root.iter(SVG + "text")]
    assert sizes and min(sizes) >= 11
    width, height = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"  # 1 unit = 1 px
    assert not [e for e in root.iter() if "scale" in (e.get("transform") or "")]
    convs = every(root, "layer", "conv")
    assert min(box(c)[3] - box(c)[1] for c in convs) >= 20
    assert min(box(c)[2] - box(c)[0] for c in convs) >= 100
    assert height >= 151 * 26 and width >= 400


@pytest.mark.parametrize("name", ["resnet50", "resnet20", "plain20"])
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
@pytest.mark.parametrize("style", ["detailed", "compact"])
def test_nothing_overlaps(name, direction, style):
    root = svg(name, style, direction)
    if style == "detailed":
        assert not overlapping([box(e) for e in every(root, "layer")])
    assert not overlapping([box(e) for e in every(root, "block")])
    assert not overlapping([box(e) for e in every(root, "stage")])


def test_horizontal_runs_left_to_right_with_the_same_content():
    root, vertical = svg("resnet50", "detailed", "horizontal"), svg("resnet50")
    for tokens in [("layer", "conv"), ("layer", "conv", "shortcut"), ("block",), ("add",),
                   ("shortcut-arrow",), ("layer", "fc")]:
        assert len(every(root, *tokens)) == len(every(vertical, *tokens)), tokens
    block = every(root, "block")[0]
    main = [box(e) for e in every(block, "layer") if not has(e, "shortcut")]
    assert [b[0] for b in main] == sorted(b[0] for b in main)  # x grows along the branch
    assert len({round((b[1] + b[3]) / 2) for b in main}) == 1  # on one line


# --------------------------------------------------------------------------------------------
# Compact style


def test_compact_resnet50_blocks_by_stage_and_totals():
    root = svg("resnet50", "compact")
    blocks = every(root, "block")
    assert len(blocks) == 16
    assert [len(every(s, "block")) for s in every(root, "stage")] == [3, 4, 6, 3]
    assert [b.get("data-shortcut") for b in blocks].count("projection") == 4
    words = texts(root)
    assert words.count("Bottleneck 256x56x56") == 3  # conv2_x: 56x56, 64x4 channels
    assert words.count("Bottleneck 2048x7x7") == 3  # conv5_x: 7x7, 512x4 channels
    totals = " ".join(texts(every(root, "totals")[0]))
    assert "25,557,032" in totals  # torchvision's resnet50 parameter count
    assert re.search(r"\b50\b", totals)
    assert not every(root, "layer", "conv")  # one box per block, no layers


# --------------------------------------------------------------------------------------------
# HTML, saving, command line


def test_html_is_one_self_contained_page_with_both_styles():
    page = draw.draw_html(meta("resnet20"))
    for ident in ("show-compact", "show-detailed", "diagram-compact", "diagram-detailed"):
        assert page.count(f'id="{ident}"') == 1
    assert re.search(r'id="diagram-detailed"[^>]*style="display:none"', page)
    assert not re.search(r'id="diagram-compact"[^>]*display:none', page)
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2
    styles = [ET.fromstring(s).get("class").split()[1] for s in svgs]
    assert styles == ["compact", "detailed"]
    no_ns = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?:|src=|href=|url\(|@import|<link", no_ns)


def test_save_is_atomic_and_checks_the_extension(tmp_path):
    model = meta("resnet20")
    out = draw.save(model, tmp_path / "sub" / "r20.svg")
    assert ET.parse(out).getroot().tag == SVG + "svg"
    html = draw.save(model, tmp_path / "r20.html", direction="horizontal")
    assert "<!DOCTYPE html>" in html.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(UserError, match=r"\.svg or \.html"):
        draw.save(model, tmp_path / "r20.png")
    with pytest.raises(UserError, match="style"):
        draw.draw_svg(model, style="tiny")
    with pytest.raises(UserError, match="direction"):
        draw.draw_svg(model, direction="diagonal")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r20.html", "r20.svg", "sub"]


def test_draws_a_real_model_and_a_custom_input_size():
    model = resnetkit.create_model("resnet20", in_chans=1, num_classes=7)
    root = ET.fromstring(draw.draw_svg(model, input_size=(1, 28, 28)))
    words = texts(root)
    assert "input 1x28x28" in words and "fc 7" in words
    assert any(w.endswith("64x7x7") for w in words)  # 28 -> 14 -> 7 in stages 2 and 3
    with pytest.raises(UserError, match="input size"):
        draw.draw_svg(model, input_size=(1, 28))


def test_cli_draw(tmp_path):
    out = tmp_path / "x.svg"
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "draw", "resnet50", "--style", "compact",
                          "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(every(ET.parse(out).getroot(), "block")) == 16

    bad = subprocess.run([sys.executable, "-m", "resnetkit.cli", "draw", "resnet50",
                          "-o", str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert ".png" in bad.stderr and not (tmp_path / "x.png").exists()

    # Model options go through to create_model (in-process: no second interpreter start-up).
    assert cli.main(["draw", "resnet20", "--shortcut", "C", "--direction", "horizontal",
                     "-o", str(tmp_path / "c.svg")]) == 0
    assert len(every(ET.parse(tmp_path / "c.svg").getroot(), "shortcut-arrow", "projection")) == 9
    assert cli.main(["draw", "resnet20", "-o", str(tmp_path / "c.html"), "--input-size", "3", "16", "16"]) == 0
    assert "input 3x16x16" in (tmp_path / "c.html").read_text()


def _assert_wide_resnet8(root: ET.Element) -> None:
    """resnet20 with widths 32, 64, 128 and one basic block per stage: 6n+2 = 8 weighted layers
    for n = 1, the stem conv at 32 channels, and option A padding where the width doubles."""
    assert root.get("data-model") == "resnet20"
    assert [len(every(s, "block")) for s in every(root, "stage")] == [1, 1, 1]
    blocks = every(root, "block")
    assert [b.get("data-shape") for b in blocks] == ["32x32x32", "64x16x16", "128x8x8"]
    convs = every(root, "layer", "conv")
    assert len(convs) == 7 and len(convs) + len(every(root, "layer", "fc")) == 8
    for block in blocks:
        assert len(every(block, "layer", "conv")) == 2
    words = texts(root)
    assert words.count("3x3 conv, 32") == 3  # the stem and both convs of the first block
    assert words.count("3x3 conv, 64, /2") == words.count("3x3 conv, 128, /2") == 1
    assert words.count("3x3 conv, 64") == words.count("3x3 conv, 128") == 1
    assert {"zero-pad +32 ch, /2", "zero-pad +64 ch, /2"} <= set(words)
    with torch.device("meta"):
        model = resnetkit.create_model("resnet20", widths=[32, 64, 128], blocks=[1, 1, 1])
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in texts(every(root, "totals")[0])


def test_cli_draw_custom_widths_and_blocks(tmp_path, capsys):
    out = tmp_path / "w.svg"
    assert cli.main(["draw", "resnet20", "--widths", "32", "64", "128", "--blocks", "1", "1", "1",
                     "-o", str(out)]) == 0
    _assert_wide_resnet8(ET.parse(out).getroot())
    # Impossible settings are bad input: one line, no traceback, no file.
    capsys.readouterr()
    assert cli.main(["draw", "resnet20", "--widths", "32", "64", "-o", str(tmp_path / "bad.svg")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "width" in err
    assert not (tmp_path / "bad.svg").exists()


def test_cli_draws_the_network_a_weights_file_rebuilds(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "model.safetensors"
    checkpoint.save_weights(weights, resnetkit.create_model("resnet20", widths=[32, 64, 128], blocks=[1, 1, 1]))

    # Built from the metadata on the meta device: the weights themselves are never read.
    def no_weights(*args, **kwargs):
        raise AssertionError("draw read the weights")

    for module in (safetensors.torch, checkpoint):  # checkpoint.py holds its own reference
        monkeypatch.setattr(module, "load_file", no_weights)
    monkeypatch.setattr(torch, "load", no_weights)
    out = tmp_path / "from-file.svg"
    assert cli.main(["draw", str(weights), "-o", str(out)]) == 0
    _assert_wide_resnet8(ET.parse(out).getroot())
    html = tmp_path / "from-file.html"
    assert cli.main(["draw", str(weights), "-o", str(html)]) == 0
    svgs = [ET.fromstring(x) for x in re.findall(r"<svg.*?</svg>", html.read_text(), re.S)]
    assert [len(every(x, "block")) for x in svgs] == [3, 3]  # compact and detailed: 3 blocks each
    # A missing file, or flags that would draw another network, are one-line errors.
    capsys.readouterr()
    for argv, words in [([str(tmp_path / "missing.safetensors")], "not found"),
                        ([str(weights), "--blocks", "2", "2", "2"], "--blocks")]:
        assert cli.main(["draw", *argv, "-o", str(tmp_path / "bad.svg")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "bad.svg").exists()


# --------------------------------------------------------------------------------------------
# A real browser: the page loads offline, the toggle works, something is drawn.


def _assert_drawn(png: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    assert w >= 600 and h >= 400
    colors = img.getcolors(maxcolors=w * h)
    assert len(colors) > 50  # text antialiasing and several fills, not a flat page
    white = sum(n for n, c in colors if min(c) >= 245)
    assert 0.02 < 1 - white / (w * h) < 0.9


@pytest.mark.xdist_group("browser")
@pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
def test_html_toggle_in_headless_chromium(tmp_path):
    page = draw.save(meta("resnet50"), tmp_path / "resnet50.html")
    shown = ("return ['compact', 'detailed'].map("
             "n => getComputedStyle(document.getElementById('diagram-' + n)).display)")
    from selenium.webdriver.common.by import By

    with browser.chromium(width=1280, height=900) as driver:
        driver.get(page.as_uri())
        assert driver.execute_script(shown) == ["block", "none"]
        compact = driver.get_screenshot_as_png()
        driver.find_element(By.CSS_SELECTOR, "#show-detailed").click()
        assert driver.execute_script(shown) == ["none", "block"]
        assert driver.execute_script(
            "return document.getElementById('show-detailed').getAttribute('aria-pressed')") == "true"
        assert driver.execute_script(
            "return document.querySelectorAll('#diagram-detailed .layer.conv').length") == 53
        # Drawn at full size, not fitted to the window: the page scrolls.
        height = driver.execute_script(
            "return document.querySelector('#diagram-detailed svg').getBoundingClientRect().height")
        assert height > 5000
        assert driver.execute_script("return document.querySelector('#diagram-detailed svg').textContent"
                                     ".includes('7x7 conv, 64, /2')")
        detailed = driver.get_screenshot_as_png()
        driver.find_element(By.CSS_SELECTOR, "#show-compact").click()
        assert driver.execute_script(shown) == ["block", "none"]
    _assert_drawn(compact)
    _assert_drawn(detailed)
    assert compact != detailed
    if os.environ.get("RESNETKIT_SAVE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        (ROOT / "docs" / "img" / "resnet50-html-compact.png").write_bytes(compact)
        (ROOT / "docs" / "img" / "resnet50-html-detailed.png").write_bytes(detailed)
