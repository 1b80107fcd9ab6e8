"""Residual blocks and their shortcuts.

A residual block computes ``relu(F(x) + shortcut(x))``: the layers learn the
residual F(x) = H(x) - x rather than the whole mapping H(x) (He et al. 2016,
Sec. 3.1). Two block shapes exist:

* ``BasicBlock``: two 3x3 convs (ResNet-18/34 and the CIFAR nets), ``expansion = 1``;
* ``Bottleneck``: 1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152), ``expansion = 4``.

and each exists in the original post-activation form (``version`` "1"/"1.5": conv-BN-ReLU,
addition, then ReLU) and the pre-activation form (``version`` "2", He et al. ECCV 2016:
BN-ReLU-conv, addition with nothing after it).

The shortcut is chosen by ``shortcut`` (paper Sec. 3.3 and Table 3):
"A" identity, with zero-padded channels and subsampling where shapes change (no parameters);
"B" identity, with a 1x1 projection + BN only where shapes change;
"C" a projection on every block; "none" no shortcut at all (the plain network).
The projection is stored as ``downsample`` (a Sequential of conv, BN) so that
state_dict keys match torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]

SHORTCUTS = ("A", "B", "C", "none")
VERSIONS = ("1", "1.5", "2")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1; no bias because a BN follows (or precedes) it."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity that subsamples by ``stride`` and appends zero channels.

    The paper's CIFAR networks use it so that ResNets have exactly as many
    parameters as their plain twins.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes
        if self.extra < 0:
            raise ValueError("option A cannot reduce channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            # The same values as x[:, :, ::s, ::s], but a strided slice's backward scatters into a
            # new NCHW tensor: its gradient then meets channels_last ones, and each ReLU backward
            # and residual sum after it runs several times slower on the mixed layouts.
            # avg_pool2d's backward keeps the input's layout.
            x = F.avg_pool2d(x, 1, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_shortcut(
    shortcut: str, in_planes: int, out_planes: int, stride: int, norm_layer: NormLayer,
    preact: bool = False,
) -> nn.Module | None:
    """The shortcut path of one block, or None for the identity / no shortcut.

    ``preact`` drops the BN after the projection: in the pre-activation design the
    projection reads the already normalised input.
    """
    changes = stride != 1 or in_planes != out_planes
    if shortcut == "none" or (shortcut in ("A", "B") and not changes):
        return None
    if shortcut == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    if preact:
        return nn.Sequential(conv1x1(in_planes, out_planes, stride))
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))


def _basic_only(cls: type, groups: int, base_width: int) -> None:
    """Grouped and widened 3x3 convs are a bottleneck idea (ResNeXt, wide ResNet)."""
    if groups != 1 or base_width != 64:
        raise ValueError(f"{cls.__name__} only supports groups=1 and base_width=64")


class _Residual(nn.Module):
    """What every block shares: the shortcut, the add, and stochastic depth."""

    expansion = 1
    downsample: nn.Module | None

    def _init_shortcut(
        self, shortcut: str, inplanes: int, planes: int, stride: int, norm_layer: NormLayer,
        drop_path: float, preact: bool,
    ) -> None:
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        self.has_shortcut = shortcut != "none"
        self.downsample = make_shortcut(
            shortcut, inplanes, planes * self.expansion, stride, norm_layer, preact
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _merge(self, out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(out)
        if not self.has_shortcut:
            return out
        if self.downsample is not None:
            identity = self.downsample(identity)
        return out + identity

    def _shortcut_input(self, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """Pre-activation blocks feed a projection the normalised input, an identity x itself."""
        return pre if isinstance(self.downsample, nn.Sequential) else x


class BasicBlock(_Residual):
    """Two 3x3 convs. ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
        groups: int = 1, base_width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _basic_only(type(self), groups, base_width)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self._init_shortcut(shortcut, inplanes, planes, stride, norm_layer, drop_path, False)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self._merge(out, x))


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (the "bottleneck"), 1x1 expand by ``expansion`` = 4.

    By default the 3x3 conv strides (ResNet "v1.5", torchvision's default); ``stride_in_1x1``
    strides the first 1x1 as the paper does (ResNet "v1"), which costs less (3.86 vs 4.09
    GMACs for ResNet-50) but reads only a quarter of the input pixels in downsampling blocks.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
        groups: int = 1, base_width: int = 64, stride_in_1x1: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups  # ResNeXt / wide ResNet width
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, s3, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self._init_shortcut(shortcut, inplanes, planes, stride, norm_layer, drop_path, False)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self._merge(out, x))


class PreActBasicBlock(_Residual):
    """Pre-activation basic block: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``.

    Nothing follows the addition, so the identity path is clean from block to block
    (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016).
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
        groups: int = 1, base_width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _basic_only(type(self), groups, base_width)
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU()
        self._init_shortcut(shortcut, inplanes, planes, stride, norm_layer, drop_path, True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)  # the branch ends in a conv, not a BN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return self._merge(out, self._shortcut_input(x, pre))


class PreActBottleneck(_Residual):
    """Pre-activation bottleneck, stride on the 3x3 conv."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
        groups: int = 1, base_width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv1x1(inplanes, width)
        self.bn2 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU()
        self._init_shortcut(shortcut, inplanes, planes, stride, norm_layer, drop_path, True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return self._merge(out, self._shortcut_input(x, pre))
