"""Per-layer probes of a network: how large each layer's gradient and update are, and how
large its responses are.

Two claims about why shortcuts help are measured with these:

* "shortcut connections propagate larger gradient to the first layers and allow them to
  learn as fast as the last layers": ``LayerStats`` records, on the optimiser steps it is
  asked to, each weighted layer's gradient norm, weight norm and relative update
  |Δw|/|w|; ``init_gradients`` gives the gradient norms of a freshly initialised model.
* He et al. 2016, Fig. 7: "the responses" (each 3x3 layer's output after BN, before the
  addition and the ReLU) have a smaller std in ResNets than in plain nets, and a smaller one
  in deeper ResNets: ``layer_responses``.

A row of ``layers.jsonl`` (what ``LayerStats.after_step`` returns; the trainer adds "step",
the number of steps taken before this one, so step 0 is the first step, from the initial
weights)::

    {"step": 0, "layers": ["conv1", "layer1.0.conv1", ..., "fc"],
     "grad_norm": [...], "weight_norm": [...], "update_ratio": [...]}

Lists run in network order, one entry per ``nn.Conv2d`` and ``nn.Linear`` (module
registration order: the stem, each block's convs in the order they are applied, a block's
projection shortcut after its main path, the classifier last). For step s, taken from the
weights w_s to w_{s+1}:

* ``grad_norm``: L2 norm of the weight's gradient as backward left it (before any clipping;
  0.0 for a layer without one, e.g. a frozen backbone);
* ``weight_norm``: L2 norm of w_s;
* ``update_ratio``: |w_{s+1} - w_s| / |w_s|, the change the optimiser really made (momentum,
  weight decay and clipping included); null where |w_s| = 0.

Biases and BN parameters are left out: the claims are about the weighted layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .registry import create_model


def weighted_layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every conv and linear layer, in network order (see the module doc)."""
    return [(name, m.weight) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _norms(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """L2 norms as one float32 tensor; ``None`` counts as 0. Stacked so that reading them is one
    device sync, not one per layer (ResNet-110 has 111 layers)."""
    device = next((t.device for t in tensors if t is not None), torch.device("cpu"))
    return torch.stack([torch.linalg.vector_norm(t.float()) if t is not None else torch.zeros((), device=device)
                        for t in tensors])


class LayerStats:
    """Gradient norm, weight norm and relative update of every weighted layer of ``model``, on
    the steps where the trainer calls ``before_step`` (after backward, before the optimiser)
    and then ``after_step`` (after the optimiser). Other steps cost nothing."""

    def __init__(self, model: nn.Module) -> None:
        layers = weighted_layers(model)
        self.names = [name for name, _ in layers]
        self.weights = [w for _, w in layers]
        self._grad: torch.Tensor | None = None
        self._before: list[torch.Tensor] | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        self._grad = _norms([w.grad for w in self.weights])
        # A copy of every weight, kept until after_step: |Δw| needs the weights before the step.
        self._before = [w.detach().clone() for w in self.weights]

    @torch.no_grad()
    def after_step(self) -> dict:
        if self._before is None:
            raise RuntimeError("LayerStats.after_step() without before_step()")
        before = _norms(self._before)
        delta = _norms([w.detach() - b for w, b in zip(self.weights, self._before)])
        grad, weight, delta = torch.stack([self._grad.to(before.device), before, delta]).cpu().tolist()
        self._before = self._grad = None
        return {"layers": list(self.names), "grad_norm": grad, "weight_norm": weight,
                "update_ratio": [d / w if w > 0 else None for d, w in zip(delta, weight)]}


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One forward and backward pass of the batch (``x``, ``y``) in training mode (BN uses the
    batch's statistics, as in training), cross-entropy loss: {"layers", "grad_norm",
    "weight_norm", "loss"} in the layout of a ``layers.jsonl`` row. Leaves the gradients in
    the model."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    layers = weighted_layers(model)
    with torch.no_grad():
        grad, weight = torch.stack([_norms([w.grad for _, w in layers]), _norms([w for _, w in layers])]).tolist()
    return {"layers": [n for n, _ in layers], "grad_norm": grad, "weight_norm": weight, "loss": loss.item()}


def init_gradients(name: str, x: torch.Tensor, y: torch.Tensor, seed: int = 0, **model_kwargs) -> dict:
    """``gradient_norms`` of the registered model ``name`` at its initialisation under ``seed``."""
    torch.manual_seed(seed)
    model = create_model(name, **model_kwargs)
    return gradient_norms(model, x, y)


# --- responses (paper Fig. 7) ----------------------------------------------------------------

# Per block type: the modules whose outputs are "the responses of the 3x3 layers". In the
# post-activation blocks, the BN right after each 3x3 conv (its output goes on to the addition
# or a ReLU); in the pre-activation blocks, the BN after the first 3x3 conv where there is one,
# else the 3x3 conv itself, whose output goes straight to the addition.
_RESPONSES = {
    BasicBlock: ("bn1", "bn2"),
    Bottleneck: ("bn2",),
    PreActBasicBlock: ("bn2", "conv2"),
    PreActBottleneck: ("bn3",),
}


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) whose outputs are the responses, first to last: the stem's BN when the
    stem is a 3x3 conv followed by BN (the CIFAR nets: paper Fig. 7 counts it), then each
    block's, as ``_RESPONSES`` says."""
    names = {m: n for n, m in model.named_modules()}
    found = []
    stem = getattr(model, "conv1", None)
    if isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and isinstance(
            getattr(model, "bn1", None), nn.modules.batchnorm._BatchNorm):
        found.append(("bn1", model.bn1))
    for block in model.modules():
        for attr in _RESPONSES.get(type(block), ()):
            m = getattr(block, attr)
            found.append((names[m], m))
    if not found:
        raise ValueError(f"{type(model).__name__} has no residual blocks whose responses this measures")
    return found


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et
    al.'s parallel update) in float64, so 10,000 images sum without cancellation."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.float().transpose(0, 1).reshape(x.shape[1], -1)  # (channels, N*H*W)
        n = x.shape[1]
        var, mean = torch.var_mean(x, dim=1, correction=0)
        mean, m2 = mean.double().cpu(), var.double().cpu() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        d = mean - self.mean
        self.mean = self.mean + d * n / total
        self.m2 = self.m2 + m2 + d * d * self.n * n / total
        self.n = total

    def std(self) -> torch.Tensor:
        return (self.m2 / self.n).sqrt()


@torch.no_grad()
def layer_responses(model: nn.Module, batches) -> dict:
    """The std of every response (``response_layers``) of ``model`` in eval mode over
    ``batches``, an iterable of (images, labels) already normalised as the model expects.

    The std of a layer: its std per channel over every image and position, then the mean over
    channels. Per channel because BN normalises per channel; the std of all the layer's
    numbers together would also count the spread of the channels' means (BN's shifts).

    Returns {"layers", "std", "images", "error"}; the error (top-1 on the labels) checks that
    the network measured is the trained one.
    """
    layers = response_layers(model)
    moments = [_Moments() for _ in layers]
    hooks = [m.register_forward_hook(lambda _m, _in, out, acc=acc: acc.add(out))
             for (_, m), acc in zip(layers, moments)]
    was_training = model.training
    model.eval()
    wrong = seen = 0
    try:
        for x, y in batches:
            wrong += (model(x).argmax(1) != y).sum().item()
            seen += len(y)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no images to measure the responses on")
    return {"layers": [n for n, _ in layers], "std": [acc.std().mean().item() for acc in moments],
            "images": seen, "error": wrong / seen}
