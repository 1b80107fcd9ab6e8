"""A network's structure read off one real forward pass: stem, stages of blocks, head.

    >>> from resnetkit import create_model
    >>> from resnetkit.architecture import trace
    >>> arch = trace(create_model("resnet20"))
    >>> [len(s.blocks) for s in arch.stages], arch.stages[1].blocks[0].shortcut
    ([3, 3, 3], 'zeropad')

Nothing here knows an architecture by name. ``trace`` hooks every leaf module and every block,
runs the one forward pass that ``summary()`` makes anyway, and reads off what happened: the
layers in the order they ran, their output shapes, where each shortcut leaves the main path (a
pre-activation projection reads the block's normalised input, not the input itself) and which
layers run after the addition (they read a tensor that no traced layer produced: the sum).

The result is plain dataclasses (``Architecture`` > ``Stage`` > ``Block`` > ``Layer``) that
know nothing about drawing; ``draw.py`` lays them out as SVG. Works on the meta device, so a
ResNet-152 is traced without allocating its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .blocks import DropPath, ZeroPadShortcut
from .errors import UserError
from .summary import Summary, summary


@dataclass
class Layer:
    name: str  # module name, e.g. "layer1.0.conv1"
    kind: str  # conv, bn, relu, maxpool, avgpool, fc, droppath or other
    label: str  # what its box says, e.g. "3x3 conv, 64, /2"
    shape: tuple[int, ...]  # output shape without the batch dimension


@dataclass
class Block:
    name: str  # "layer1.0"
    type: str  # the block's class name
    shortcut: str  # "identity", "zeropad" (option A), "projection" or "none" (plain network)
    branch: list[Layer]  # the residual branch F(x), in the order it ran
    projection: list[Layer]  # the layers on a projection shortcut
    split: int  # the shortcut leaves the main path just before branch[split]
    after_add: list[Layer]  # what runs on the sum (the ReLU of post-activation blocks)
    shape: tuple[int, ...]
    in_shape: tuple[int, ...]


@dataclass
class Stage:
    name: str
    blocks: list[Block]


@dataclass
class Architecture:
    name: str
    input_size: tuple[int, ...]  # C, H, W
    stem: list[Layer]
    stages: list[Stage]
    head: list[Layer]
    totals: Summary


class _Event(NamedTuple):
    """One hook call during the traced forward pass, in the order the calls happened.

    Tensors are told apart by ``id()``: that is how a layer's input is matched to the layer that
    made it, which is what finds the shortcut's split point and the layers after the addition.
    """

    kind: str  # "layer": a leaf module ran; "enter" / "exit": a block began / ended
    module: nn.Module
    shape: tuple[int, ...]  # layer, exit: the output's shape; enter: the block input's (no batch dim)
    src: int | None = None  # layer: id() of the tensor it read; enter: of the block's input
    dst: int | None = None  # layer: id() of the tensor it made


def _describe(module: nn.Module) -> tuple[str, str]:
    """(kind, label) of one leaf module, in the paper's notation where it has one."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        label = f"{kh}x{kw} conv, {module.out_channels}"
        if module.stride[0] > 1:
            label += f", /{module.stride[0]}"
        if module.groups > 1:
            label += f", {module.groups} groups"
        return "conv", label
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn", "BN"
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return "bn", type(module).__name__
    if isinstance(module, nn.ReLU):
        return "relu", "ReLU"
    if isinstance(module, nn.MaxPool2d):
        k, s = module.kernel_size, module.stride
        k, s = (k if isinstance(k, int) else k[0]), (s if isinstance(s, int) else s[0])
        return "maxpool", f"{k}x{k} max pool" + (f", /{s}" if s > 1 else "")
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        op, size = ("avg" if isinstance(module, nn.AdaptiveAvgPool2d) else "max"), module.output_size
        return f"{op}pool", f"global {op} pool" if size in (1, (1, 1)) else f"adaptive {op} pool {size}"
    if isinstance(module, nn.Linear):
        return "fc", f"fc {module.out_features}"
    if isinstance(module, DropPath):
        return "droppath", f"drop path {module.p:g}"
    return "other", type(module).__name__


def _shortcut_kind(block: nn.Module) -> str:
    if not getattr(block, "has_shortcut", True):
        return "none"
    ds = getattr(block, "downsample", None)
    if ds is None:
        return "identity"
    return "zeropad" if isinstance(ds, ZeroPadShortcut) else "projection"


def _build_block(name: str, module: nn.Module, entered: _Event, layers: list[_Event], exited: _Event,
                 names: dict[nn.Module, str]) -> Block:
    """One block from the layer events between its ``entered`` and ``exited`` events."""
    kind = _shortcut_kind(module)
    ds = getattr(module, "downsample", None)
    on_shortcut = set(ds.modules()) if ds is not None else set()
    made = {entered.src: 0}  # tensor id -> how many branch layers had run when it appeared
    branch: list[Layer] = []
    projection: list[Layer] = []
    after: list[Layer] = []
    split, seen_shortcut = 0, False
    for event in layers:
        layer = Layer(names[event.module], *_describe(event.module), event.shape)
        if event.module in on_shortcut:
            if not seen_shortcut:  # where the shortcut reads from
                split, seen_shortcut = made.get(event.src, 0), True
            if kind == "projection":
                projection.append(layer)
        elif after or event.src not in made:  # reads a tensor no traced layer made: the sum
            after.append(layer)
        else:
            branch.append(layer)
            made[event.dst] = len(branch)
    return Block(name, type(module).__name__, kind, branch, projection, split, after, exited.shape,
                 entered.shape)


def trace(model: nn.Module, input_size: Sequence[int] | None = None) -> Architecture:
    """Run one forward pass (the one ``summary()`` makes) with hooks and read the structure.

    ``input_size`` is (C, H, W); default ``model.default_input_size``. Works on the meta device.
    """
    if not callable(getattr(model, "stages", None)):
        raise UserError(f"can only draw resnetkit ResNets, not {type(model).__name__}")
    size = tuple(int(s) for s in (input_size or model.default_input_size))
    if len(size) != 3 or min(size) < 1:
        raise UserError(f"input size must be three positive numbers C H W, got {size}")
    names = {m: n for n, m in model.named_modules()}
    stages = [(names[s], list(s)) for s in model.stages()]
    block_names = {b: names[b] for _, blocks in stages for b in blocks}

    events: list[_Event] = []
    live: list[torch.Tensor] = []  # keeps one block's tensors alive so their id()s stay unique

    def on_layer(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            live.append(output)
            src = id(inputs[0]) if inputs else None
            events.append(_Event("layer", module, tuple(output.shape[1:]), src=src, dst=id(output)))

    def on_enter(module: nn.Module, inputs: tuple) -> None:
        live.clear()
        live.append(inputs[0])
        events.append(_Event("enter", module, tuple(inputs[0].shape[1:]), src=id(inputs[0])))

    def on_exit(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        events.append(_Event("exit", module, tuple(output.shape[1:])))

    handles = []
    for m in names:
        if m in block_names:
            handles.append(m.register_forward_pre_hook(on_enter))
            handles.append(m.register_forward_hook(on_exit))
        elif next(m.children(), None) is None and not isinstance(m, nn.Identity):
            handles.append(m.register_forward_hook(on_layer))
    try:
        totals = summary(model, (1, *size))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"forward pass failed for input {'x'.join(map(str, size))}: {first}") from e
    finally:
        for h in handles:
            h.remove()
        live.clear()

    # Replay the events: layers outside any block are the stem (before the first block) or the
    # head (after it); the layers between a block's enter and exit are that block's.
    stem: list[Layer] = []
    head: list[Layer] = []
    built: dict[nn.Module, Block] = {}
    inside: list[_Event] | None = None
    entered: _Event | None = None
    for event in events:
        if event.kind == "enter":
            inside, entered = [], event
        elif event.kind == "exit":
            assert entered is not None and inside is not None  # blocks do not nest: exit follows enter
            built[event.module] = _build_block(block_names[event.module], event.module, entered, inside,
                                               event, names)
            inside = None
        elif inside is not None:
            inside.append(event)
        else:
            layer = Layer(names[event.module], *_describe(event.module), event.shape)
            (head if built else stem).append(layer)
    return Architecture(
        name=getattr(model, "model_name", type(model).__name__),
        input_size=size,
        stem=stem,
        stages=[Stage(n, [built[b] for b in blocks]) for n, blocks in stages],
        head=head,
        totals=totals,
    )
