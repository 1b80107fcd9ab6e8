import json
import os
from pathlib import Path

import pytest

# The project's reference files live beside the checkout in ../shared/reference (not copied here).
ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [os.environ.get("RESNETKIT_REFERENCE", ""), ROOT.parent / "shared" / "reference",
               ROOT / "shared" / "reference"]
REFERENCE = next((Path(p) for p in _CANDIDATES if p and (Path(p) / "anchors.json").exists()), None)
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run slow soak tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow soak test: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _reference(name: str) -> dict:
    if REFERENCE is None:
        pytest.skip("../shared/reference not found (set RESNETKIT_REFERENCE)")
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="session")
def torchvision_ref() -> dict:
    return _reference("torchvision_resnets.json")["models"]


@pytest.fixture(scope="session")
def anchors() -> dict:
    return _reference("anchors.json")
