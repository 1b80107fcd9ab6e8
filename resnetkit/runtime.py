"""Where and how a run executes: the device and what its CPU can do, autocast, the process's
rank, and the RNG state.

torchrun announces a distributed launch through RANK / WORLD_SIZE / LOCAL_RANK; without them
this is process 0 of 1. The RNG helpers capture and restore every generator the trainer draws
from (torch, CUDA, Python's ``random``), which is what makes a resumed run continue bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from pathlib import Path

import torch

from .errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when there is one; asking for CUDA without one is an error. Each
    process of a node takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(vendor, feature flags) of this CPU from /proc/cpuinfo (x86 ``vendor_id`` and ``flags``,
    Arm ``Features``); ("", empty) where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("vendor_id", ""), frozenset((fields.get("flags") or fields.get("Features", "")).split())


def cpu_flags() -> frozenset[str]:
    return cpu_info()[1]


BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Does this CPU have bf16 instructions at all? Without them (AVX2 only) bf16 is emulated,
    many times slower than fp32."""
    return bool(set(BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def bf16_pays(device: str, cpu: tuple[str, frozenset[str]] | None = None) -> bool:
    """Is bf16 autocast faster than fp32 on ``device`` (auto, cpu, cuda)? What ``--precision auto``
    asks. On CUDA: where the GPU supports bf16. On a CPU, having bf16 instructions is not enough
    (benchmarks/precision.py, docs/benchmarks.md): AMX tiles make a ResNet-20 step 2.3x faster,
    and AMD Zen 4's AVX-512 BF16 1.35-1.5x; an Intel Xeon whose AMX the hypervisor hid, left with
    AVX-512 BF16, ran it at 0.81x of fp32."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    vendor, flags = cpu or cpu_info()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")


def compile_pays(device: str, cpu: tuple[str, frozenset[str]] | None = None) -> bool:
    """Does torch.compile pay for its compile time in a clocked run (``--recipe speedrun``)? On
    2 cores the cold compile takes 23-33 s, billed to the clock. With AMX the compiled
    ``fashion_resnet8_pool`` then trained 1.27x faster; on AMD Zen 4 (AVX-512 BF16, no AMX)
    0-5% faster, with SGD or Muon, which a 15-minute run barely earns back and a shorter one
    does not (docs/benchmarks.md). GPUs were not measured: compiled, as the recipe always was."""
    if device != "cpu" and torch.cuda.is_available():
        return True
    return "amx_bf16" in (cpu or cpu_info())[1]


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision="bf16"``, nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from the environment torchrun sets; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    random.seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]  # a checkpoint stores the tuple as lists
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
