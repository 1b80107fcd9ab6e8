"""Per-layer summary of a model: output shapes, parameters and multiply-accumulates.

MACs count what dominates the cost and what torchvision and the paper count:
convolutions and fully connected layers (BN, ReLU, pooling and additions are
memory-bound and left out). For a conv, MACs = output elements x (in_channels / groups)
x kernel area; for a linear layer, output elements x in_features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    main_path: bool  # False for modules on a shortcut (projection)


@dataclass
class Summary:
    """What ``summary()`` returns; ``str()`` gives the table."""

    rows: list[LayerRow] = field(default_factory=list)
    params: int = 0  # trainable parameters
    total_params: int = 0  # all parameters, frozen ones included
    macs: int = 0
    weighted_layers: int = 0  # convs and fc on the main path: "ResNet-50" counts 50
    input_size: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {
            "params": self.params, "total_params": self.total_params, "macs": self.macs,
            "weighted_layers": self.weighted_layers, "input_size": list(self.input_size),
            "output_shape": list(self.output_shape),
        }

    def __str__(self) -> str:
        head = ("Layer", "Type", "Output shape", "Params", "MACs")
        body = [
            (r.name if r.main_path else r.name + " *", r.type, "x".join(map(str, r.output_shape)),
             f"{r.params:,}", f"{r.macs:,}")
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(5)]
        align = ["<", "<", ">", ">", ">"]

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths))

        rule = "-" * len(fmt(head))
        lines = [fmt(head), rule, *map(fmt, body), rule]
        lines += [
            f"Input size:       {'x'.join(map(str, self.input_size))}",
            f"Output shape:     {'x'.join(map(str, self.output_shape))}",
            f"Weighted layers:  {self.weighted_layers} (convs + fc on the main path; "
            "* marks shortcut layers, not counted)",
            f"Parameters:       {self.params:,} trainable ({self.total_params:,} total)",
            f"MACs:             {self.macs:,} ({self.macs / 1e9:.3f} G)",
        ]
        return "\n".join(lines)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _on_shortcut(name: str) -> bool:
    return ".downsample" in name or name.startswith("downsample")


@torch.no_grad()
def summary(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> Summary:
    """Run one forward pass on zeros of ``input_size`` and tabulate every leaf module.

    The model is put in eval mode for the pass and restored afterwards.
    """
    rows: list[LayerRow] = []
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, _inp, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(name, type(module).__name__, tuple(output.shape), params,
                                 _macs(module, output), not _on_shortcut(name)))
        return fn

    for name, module in model.named_modules():
        is_leaf = next(module.children(), None) is None
        if is_leaf and name and not isinstance(module, nn.Identity):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(input_size, device=p.device if p is not None else "cpu")
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    weighted = sum(1 for r in rows if r.main_path and r.type in ("Conv2d", "Linear"))
    return Summary(
        rows=rows,
        params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
        macs=sum(r.macs for r in rows),
        weighted_layers=weighted,
        input_size=tuple(input_size),
        output_shape=tuple(out.shape),
    )
