"""The ResNet network and its registered builders.

One ``ResNet`` class covers every family: the ImageNet networks (7x7 stem + max-pool,
four stages of 64..512 channels) and the CIFAR networks of the paper's Sec. 4.2
(3x3 stem, three stages of 16/32/64 channels, 6n+2 layers) are two configurations
of the same pieces, as are the plain nets (``shortcut="none"``).

    >>> import resnetkit
    >>> m = resnetkit.create_model("resnet50", num_classes=10, in_chans=1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    SHORTCUTS,
    VERSIONS,
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
)
from .registry import register_model

STEMS = ("imagenet", "cifar", "whiten", "whiten-pool", "whiten16-pool")
GLOBAL_POOLS = ("avg", "max")
_BLOCKS = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


class ResNet(nn.Module):
    """A residual (or plain) network.

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50, (3, 3, 3) for ResNet-20.
        widths: base channels per stage (a bottleneck's output is 4x that).
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool), "cifar" (3x3/1 conv), "whiten" (a
            frozen 3x3/1 conv that whitens the training set's patches; see ``fit_whitening``),
            "whiten-pool" (the same, then a 2x2 max-pool) or "whiten16-pool" (16 whitening
            filters, the 2x2 max-pool, and BN and ReLU after the pool, at half the resolution).
        shortcut: "A", "B", "C" or "none" (see blocks.py).
        version: "1" (paper), "1.5" (torchvision: stride on the 3x3) or "2" (pre-activation).
        groups, width_per_group: ResNeXt cardinality and width (wide ResNets: 128 per group).
        zero_init_residual: start the last BN of every branch at zero, so each block starts
            as the identity (Goyal et al. 2017, "improves the model by 0.2~0.3%" per torchvision).
        drop_path_rate: stochastic depth, rising linearly to this rate in the last block.
        global_pool: "avg" (the paper's global average pooling before the classifier) or "max"
            (each channel's strongest response, as airbench's CIFAR-10 net).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        shortcut: str = "B",
        version: str = "1.5",
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {', '.join(GLOBAL_POOLS)}, got {global_pool!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if len(widths) != len(layers) or not layers:
            raise ValueError(f"need one width per stage: {len(layers)} stages of blocks {tuple(layers)}, "
                             f"{len(widths)} widths {tuple(widths)}")
        if min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"blocks and widths per stage must be positive, got {tuple(layers)} and {tuple(widths)}")
        norm_layer = norm_layer or nn.BatchNorm2d
        preact = version == "2"
        block_cls = _BLOCKS[(block, preact)]
        # Only the post-activation bottleneck has a choice of where to stride (v1 vs v1.5).
        block_opts = {"stride_in_1x1": version == "1"} if block_cls is Bottleneck else {}
        self.preact = preact
        self.num_classes = num_classes
        # Weighted layers as the paper counts them: the stem conv, the convs on every block's
        # main path (2 per basic block, 3 per bottleneck) and the classifier.
        self.depth = 1 + sum(layers) * (2 if block == "basic" else 3) + 1
        # What the family is meant to see; summary and diagrams use it when not told otherwise.
        self.default_input_size = (in_chans, 224, 224) if stem == "imagenet" else (in_chans, 32, 32)

        # Stem. Pre-activation nets leave the stem's BN-ReLU to the first block.
        self.stem = stem
        stem_width = widths[0]
        if stem.startswith("whiten"):  # whitening filters and their negatives: all 9C, or the widest widths[0] // 2
            directions = min(9 * in_chans, widths[0] // 2)
            # whiten16-pool keeps the 8 strongest: oneDNN's CPU kernels work in blocks of 16
            # channels, and the next conv's backward is faster with 16 than with 18.
            if stem == "whiten16-pool":
                directions = min(directions, 8)
            stem_width = 2 * directions
            if stem_width == 0:
                raise ValueError(f"the whiten stem needs a first width of 2 or more, got {widths[0]}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.Identity() if preact else norm_layer(stem_width)
        self.relu = nn.Identity() if preact else nn.ReLU(inplace=True)
        # The "-pool" stems halve the resolution once before the stages, so they run on 4x fewer
        # positions. whiten16-pool pools before its BN and ReLU (airbench's order), which then run
        # on a quarter of the positions: ReLU commutes with max-pooling, BN's statistics move.
        pools = {"imagenet": nn.MaxPool2d(3, stride=2, padding=1), "whiten-pool": nn.MaxPool2d(2),
                 "whiten16-pool": nn.MaxPool2d(2)}
        self.maxpool = pools.get(stem, nn.Identity())
        self.pool_first = stem == "whiten16-pool"

        # Stages: the first keeps the resolution, each later one halves it and doubles widths.
        total = sum(layers)
        inplanes, index = stem_width, 0
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                rate = drop_path_rate * index / max(total - 1, 1)
                blocks.append(block_cls(
                    inplanes, planes, stride=2 if (i > 0 and j == 0) else 1, shortcut=shortcut,
                    groups=groups, base_width=width_per_group, norm_layer=norm_layer, drop_path=rate,
                    **block_opts,
                ))
                inplanes, index = planes * block_cls.expansion, index + 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = inplanes
        # Pre-activation nets end with the BN-ReLU that no block applies after its last add.
        self.norm = norm_layer(inplanes) if preact else nn.Identity()
        self.final_relu = nn.ReLU() if preact else nn.Identity()
        # Named avgpool either way, as torchvision's (it holds no weights, so no key depends on it).
        self.avgpool = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()

        # Paper Sec. 3.4: weights initialised as in He et al. 2015 ("Delving deep").
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()
        if stem.startswith("whiten"):
            self.conv1.requires_grad_(False)  # fixed by fit_whitening, never trained

    @torch.no_grad()
    def fit_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the "whiten" stem from normalised training images (N, C, H, W): its filters are
        the eigenvectors of the 3x3 patches' second-moment matrix (those of the largest
        eigenvalues, if the first width has room for fewer than 9C), each scaled by 1/sqrt(its
        eigenvalue + eps), so the stem's outputs over those patches are decorrelated with unit
        variance; the second half of the filters is the first half negated, so the ReLU after
        the stem keeps both signs. The idea and the eps are from Keller Jordan's airbench
        (CIFAR-10 speedruns), after Coates & Ng's whitened patch features."""
        if not self.stem.startswith("whiten"):
            raise ValueError(f"fit_whitening needs a whitening stem, this net has {self.stem!r}")
        w = self.conv1.weight
        patches = F.unfold(images.to(w.device, torch.float64), 3).transpose(1, 2).reshape(-1, w.shape[1] * 9)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.flip(0)  # largest variance first
        filters = filters[:len(w) // 2].reshape(-1, *w.shape[1:])
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling: (N, num_features, H/32, W/32) for ImageNet nets."""
        if self.pool_first:
            x = self.relu(self.bn1(self.maxpool(self.conv1(x))))
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return self.final_relu(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling, then the classifier unless ``pre_logits``."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (0: no classifier)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if hasattr(self, "model_args"):
            self.model_args["num_classes"] = num_classes


# ---------------------------------------------------------------------------------------------
# Builders. Each is a thin keyword-only function; `create_model(name, **kwargs)` calls them.

# Every builder also takes ``blocks`` (blocks per stage) and ``widths`` (channels per stage) to
# override its own: ``create_model("resnet20", widths=(32, 64, 128), blocks=(1, 1, 1))`` is a
# CIFAR-style ResNet-8 at twice the width. The name then says which family and defaults it
# started from, and ``model.depth`` how many weighted layers it has.

def _imagenet(block: str, layers: Sequence[int], kwargs: dict, **defaults) -> ResNet:
    layers = kwargs.pop("blocks", None) or layers
    return ResNet(block, layers, **{"stem": "imagenet", "shortcut": "B", **defaults, **kwargs})


def _cifar(depth: int, kwargs: dict, **defaults) -> ResNet:
    """The paper's CIFAR nets: 6n+2 weighted layers, n basic blocks per stage."""
    n = (depth - 2) // 6
    layers = kwargs.pop("blocks", None) or (n, n, n)
    cfg = {"widths": (16, 32, 64), "stem": "cifar", "shortcut": "A", "num_classes": 10}
    return ResNet("basic", layers, **{**cfg, **defaults, **kwargs})


@register_model
def resnet18(**kwargs) -> ResNet:
    return _imagenet("basic", (2, 2, 2, 2), kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    return _imagenet("basic", (3, 4, 6, 3), kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 6, 3), kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 23, 3), kwargs)


@register_model
def resnet152(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 8, 36, 3), kwargs)


@register_model
def resnext50_32x4d(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 6, 3), kwargs, groups=32, width_per_group=4)


@register_model
def resnext101_32x8d(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 23, 3), kwargs, groups=32, width_per_group=8)


@register_model
def resnext101_64x4d(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 23, 3), kwargs, groups=64, width_per_group=4)


@register_model
def wide_resnet50_2(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 6, 3), kwargs, width_per_group=128)


@register_model
def wide_resnet101_2(**kwargs) -> ResNet:
    return _imagenet("bottleneck", (3, 4, 23, 3), kwargs, width_per_group=128)


@register_model
def plain18(**kwargs) -> ResNet:
    return _imagenet("basic", (2, 2, 2, 2), kwargs, shortcut="none")


@register_model
def plain34(**kwargs) -> ResNet:
    return _imagenet("basic", (3, 4, 6, 3), kwargs, shortcut="none")


def _register_cifar(depth: int) -> None:
    def resnet(**kwargs) -> ResNet:
        return _cifar(depth, kwargs)

    def plain(**kwargs) -> ResNet:
        return _cifar(depth, kwargs, shortcut="none")

    resnet.__name__ = resnet.__qualname__ = f"resnet{depth}"
    resnet.__doc__ = f"CIFAR ResNet-{depth} (paper Sec. 4.2): 3 stages of {(depth - 2) // 6} basic blocks."
    plain.__name__ = plain.__qualname__ = f"plain{depth}"
    plain.__doc__ = f"Plain-{depth}: ResNet-{depth} without shortcuts (paper Fig. 6)."
    register_model(resnet)
    if depth <= 110:
        register_model(plain)


for _depth in (20, 32, 44, 56, 110, 1202):
    _register_cifar(_depth)


# Nets for the Fashion-MNIST speedrun (docs/benchmarks.md): CIFAR-style ResNets with a frozen
# patch-whitening stem and twice ResNet-20's widths, so more of the work runs on the 14x14 and 7x7
# maps, where a 2-core CPU does more multiply-adds per second than on the 28x28 ones.

@register_model
def fashion_resnet8(**kwargs) -> ResNet:
    """Whitening stem, one basic block per stage at 32/64/128 channels: 8 weighted layers."""
    return _cifar(8, kwargs, widths=(32, 64, 128), stem="whiten")


@register_model
def fashion_resnet14(**kwargs) -> ResNet:
    """Whitening stem, two basic blocks per stage at 32/64/128 channels: 14 weighted layers."""
    return _cifar(14, kwargs, widths=(32, 64, 128), stem="whiten")


@register_model
def fashion_resnet8_pool(**kwargs) -> ResNet:
    """Whitening stem and a 2x2 max-pool, then one basic block per stage at 64/128/256 channels on
    14x14, 7x7 and 4x4 maps: 8 weighted layers, and the fastest learner in the speedrun."""
    return _cifar(8, kwargs, widths=(64, 128, 256), stem="whiten-pool")


@register_model
def fashion_resnet8_pool16(**kwargs) -> ResNet:
    """``fashion_resnet8_pool`` with the whiten16-pool stem: 16 whitening filters, the max-pool
    before the stem's BN and ReLU: nearly the same net on a cheaper step (CPU kernels work in
    blocks of 16 channels; BN and ReLU run on a quarter of the positions)."""
    return _cifar(8, kwargs, widths=(64, 128, 256), stem="whiten16-pool")


@register_model
def fashion_resnet8_pool16_proj(**kwargs) -> ResNet:
    """``fashion_resnet8_pool16`` with a learned 1x1 projection on every block's shortcut (option B;
    each of the three blocks changes its width) and global max pooling before the classifier:
    more learned per epoch for 3% more multiply-adds (the speedrun's net since 2026-12-07)."""
    return _cifar(8, kwargs, widths=(64, 128, 256), stem="whiten16-pool", shortcut="B", global_pool="max")
