"""Where and how a run executes: the device, autocast, the process's rank, and the RNG state.

torchrun announces a distributed launch through RANK / WORLD_SIZE / LOCAL_RANK; without them
this is process 0 of 1. The RNG helpers capture and restore every generator the trainer draws
from (torch, CUDA, Python's ``random``), which is what makes a resumed run continue bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import random

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


def native_bf16(device: str) -> bool:
    """Does ``device`` (auto, cpu, cuda) compute bf16 natively? On CPUs with AVX-512 BF16 or AMX
    bf16 autocast is the fast path; CPUs with AVX2 only emulate it, many times slower than fp32."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


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
