import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Independent facts the models are checked against (torchvision's state_dict keys, shapes and
# counts; the paper's tables). A copy lives here so every clone runs the same tests; the
# originals beside the checkout (../shared/reference) are compared with it when present.
REFERENCE = Path(__file__).resolve().parent / "reference"
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"
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


@pytest.fixture(scope="session")
def torchvision_ref() -> dict:
    return json.loads((REFERENCE / "torchvision_resnets.json").read_text())["models"]


@pytest.fixture(scope="session")
def anchors() -> dict:
    return json.loads((REFERENCE / "anchors.json").read_text())

# Does this CPU compute bf16 natively (AVX-512 BF16 or AMX)? Read from the kernel's flags,
# independently of PyTorch's own detection. Without it bf16 is emulated, several times slower.
_CPU_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
NATIVE_BF16 = " avx512_bf16" in _CPU_FLAGS or " amx_bf16" in _CPU_FLAGS
# Is bf16 also faster than fp32 there (what --precision auto picks)? With AMX, or AVX-512 BF16 on
# AMD; an Intel CPU with AVX-512 BF16 but no AMX measured bf16 slower (docs/benchmarks.md).
BF16_PAYS = " amx_bf16" in _CPU_FLAGS or (" avx512_bf16" in _CPU_FLAGS and "AuthenticAMD" in _CPU_FLAGS)
# Does torch.compile pay for its compile time in a clocked run? Measured only with AMX.
COMPILE_PAYS = " amx_bf16" in _CPU_FLAGS
