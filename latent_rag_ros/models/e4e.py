"""E4E (encoder4editing) image -> W+ encoder: IR-SE backbone, FPN map2style heads, progressive deltas.

Same architecture and state-dict key names as omertov/encoder4editing ``Encoder4Editing`` (pSp family),
so official checkpoints (``{'state_dict': {'encoder.*', 'decoder.*'}, 'opts': {...}, 'latent_avg'}``)
load with ``weights_only=True``. Width, depth and input size are constructor arguments so that small
encoders can be trained for the demo and tests; the full-size default keeps the official layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.models.safe_load import ModelFileError, torch_load

IRSE50_BLOCKS = (3, 4, 14, 3)
IRSE_CHANNELS = (64, 128, 256, 512)
COARSE_IND, MIDDLE_IND = 3, 7  # W+ layers [0,3) read c3, [3,7) read p2, the rest read p1
E4E_EXPECTED = "E4E checkpoint (dict with 'state_dict' holding 'encoder.*' weights, 'opts', 'latent_avg')"


class SEModule(nn.Module):
    """Squeeze-and-excitation gate with bias-free 1x1 convs (pSp naming ``fc1``, ``fc2``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 1), 1, bias=False)
        self.fc2 = nn.Conv2d(max(channels // reduction, 1), channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-reweighted input."""
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class BottleneckIRSE(nn.Module):
    """ArcFace-style improved residual unit ``bottleneck_IR_SE`` (``se=False``: ``bottleneck_IR``).

    res: BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN [-> SE]; shortcut: 1x1 max-pool subsampling
    when the width is kept, else strided 1x1 conv + BN.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = True,
                 se_reduction: int = 16) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        mods: list[nn.Module] = [nn.BatchNorm2d(in_channel),
                                 nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
                                 nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(depth)]
        if se:
            mods.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus shortcut."""
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear layer (weight scaled by 1/sqrt(fan_in) at run time)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x (W * scale)^T + b * lr_mul."""
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """map2style head: ``num_pools`` stride-2 3x3 convs + LeakyReLU down to 1x1, then EqualLinear.

    Official heads assume a square 256 input (16/32/64 px maps -> 4/5/6 convs). For other input sizes the
    pool count is chosen so the longest side reaches 1 px; any leftover map is averaged (then a
    non-square input such as 256x128 still ends at exactly 1x1 with the official counts).
    """

    def __init__(self, in_c: int, out_c: int, num_pools: int, w_dim: int | None = None) -> None:
        super().__init__()
        self.out_c = out_c
        mods: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            mods += [nn.Conv2d(out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*mods)
        self.linear = EqualLinear(out_c, w_dim or out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> one style vector [B, w_dim]."""
        x = self.convs(x)
        x = x.flatten(1) if x.shape[-2:] == (1, 1) else x.mean(dim=(2, 3))
        return self.linear(x)


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear-upsample ``x`` to ``y``'s size (align_corners=True, as pSp) and add."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """E4E encoder body: returns W+ deltas around ``w0`` ([B, num_ws, w_dim]), without ``latent_avg``.

    ``blocks``/``channels`` give the IR-SE stages (official: (3,4,14,3) x (64,128,256,512)); c1, c2, c3
    are the outputs of stages 2, 3 and 4. ``style_width`` is the conv width of the map2style heads
    (official: 512 = w_dim). ``input_size`` only sets how many stride-2 convs each head has
    (``base_pools``, official 4 for coarse heads; middle and fine heads have one and two more).
    """

    def __init__(
        self,
        num_ws: int = 18,
        w_dim: int = 512,
        blocks: Sequence[int] = IRSE50_BLOCKS,
        channels: Sequence[int] = IRSE_CHANNELS,
        input_size: tuple[int, int] = (256, 256),
        style_width: int | None = None,
        se: bool = True,
        se_reduction: int = 16,
        stem_channels: int | None = None,
        base_pools: int | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(channels) != 4:
            raise ValueError("IR-SE needs 4 stages (blocks and channels of length 4)")
        stem = stem_channels or channels[0]
        self.num_ws, self.w_dim = int(num_ws), int(w_dim)
        self.blocks, self.channels = tuple(int(b) for b in blocks), tuple(int(c) for c in channels)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                         nn.PReLU(stem))
        units: list[nn.Module] = []
        cin = stem
        for n, depth in zip(self.blocks, self.channels, strict=True):
            for i in range(n):
                units.append(BottleneckIRSE(cin, depth, 2 if i == 0 else 1, se, se_reduction))
                cin = depth
        self.body = nn.Sequential(*units)
        ends = [sum(self.blocks[: i + 1]) - 1 for i in range(4)]
        self._c1, self._c2, self._c3 = ends[1], ends[2], ends[3]
        sw = style_width or w_dim
        if base_pools is None:  # official: 256 input -> 16 px c3 -> 4 convs (5 and 6 for p2 and p1)
            base_pools = max(1, math.ceil(math.log2(max(max(self.input_size) / 16.0, 1.0))))
        self.base_pools = int(base_pools)
        self.styles = nn.ModuleList()
        for i in range(self.num_ws):
            extra = 0 if i < COARSE_IND else (1 if i < MIDDLE_IND else 2)
            self.styles.append(GradualStyleBlock(self.channels[3], sw, base_pools + extra, w_dim))
        self.latlayer1 = nn.Conv2d(self.channels[2], self.channels[3], 1)
        self.latlayer2 = nn.Conv2d(self.channels[1], self.channels[3], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B,3,h,w] in [-1,1] -> W+ codes without the average latent."""
        x = self.input_layer(x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._c1:
                c1 = x
            elif i == self._c2:
                c2 = x
            elif i == self._c3:
                c3 = x
        w0 = self.styles[0](c3)
        deltas = [torch.zeros_like(w0)]
        features, p2 = c3, c3
        for i in range(1, self.num_ws):
            if i == COARSE_IND:
                p2 = upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_IND:
                features = upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](features))
        return w0.unsqueeze(1) + torch.stack(deltas, dim=1)


class LatentEncoder(nn.Module):
    """Image -> W+ interface: ``forward(images [B,3,H,W] in [0,1]) -> [B, num_ws, w_dim]``.

    Resizes to ``input_size`` (bilinear, differentiable) and maps to [-1, 1] as E4E's transforms do,
    then adds ``latent_avg`` when ``start_from_latent_avg`` (e4e's default). The IR-SE backbone is fully
    convolutional, so a person-shaped input such as (256, 128) works; official weights were trained on
    256x256 faces, so keep (256, 256) for them unless the encoder was trained on another size.
    """

    def __init__(self, encoder: Encoder4Editing, latent_avg: torch.Tensor | None = None,
                 start_from_latent_avg: bool = True, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_ws, self.w_dim = encoder.num_ws, encoder.w_dim
        self.input_size = tuple(input_size or encoder.input_size)
        avg = (torch.zeros(self.num_ws, self.w_dim) if latent_avg is None
               else _broadcast_avg(latent_avg, self.num_ws))
        self.register_buffer("latent_avg", avg.float())
        self.start_from_latent_avg = bool(start_from_latent_avg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode RGB images in [0,1] to W+ codes [B, num_ws, w_dim]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        x = images.float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        codes = self.encoder(x * 2.0 - 1.0)
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg.unsqueeze(0)
        return codes


def _broadcast_avg(avg: torch.Tensor, num_ws: int) -> torch.Tensor:
    """Bring a latent average of shape [w_dim], [1, w_dim] or [num_ws, w_dim] to [num_ws, w_dim]."""
    avg = avg.detach().float()
    if avg.ndim == 1:
        avg = avg.unsqueeze(0)
    if avg.ndim != 2 or avg.shape[0] not in (1, num_ws):
        raise ValueError(f"latent_avg of shape {tuple(avg.shape)} does not fit {num_ws} W+ layers")
    return avg.expand(num_ws, -1).clone()


def build_e4e(
    num_ws: int = 18,
    input_size: tuple[int, int] = (256, 256),
    width_mult: float = 1.0,
    num_layers: int | Sequence[int] = 50,
    w_dim: int = 512,
    style_width: int | None = None,
    latent_avg: torch.Tensor | None = None,
) -> LatentEncoder:
    """Build a (randomly initialised) E4E ``LatentEncoder``; ``num_layers`` 50/100/152 or 4 block counts.

    ``width_mult`` scales the IR-SE channels (64,128,256,512) for small demo/test encoders; the
    full-size default (50 layers, width 1) has exactly the official parameter names and shapes.
    """
    blocks = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}.get(num_layers) \
        if isinstance(num_layers, int) else tuple(num_layers)
    if blocks is None:
        raise ValueError("num_layers must be 50, 100, 152 or four block counts")
    channels = tuple(max(round(c * width_mult), 16) for c in IRSE_CHANNELS)
    enc = Encoder4Editing(num_ws, w_dim, blocks, channels, input_size, style_width)
    return LatentEncoder(enc, latent_avg, True, input_size)


def _infer_arch(state: dict[str, torch.Tensor], stages: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Recover IR-SE stage layout, widths, head count and w_dim from encoder state-dict shapes.

    Stages are where the unit width changes, unless ``stages`` = (blocks, channels) is given (this
    project's checkpoints record it, since narrow encoders may repeat a width across stages).
    """
    n_units = 0
    while f"body.{n_units}.res_layer.1.weight" in state:
        n_units += 1
    n_styles = 0
    while f"styles.{n_styles}.linear.weight" in state:
        n_styles += 1
    if n_units == 0 or n_styles == 0 or "input_layer.0.weight" not in state:
        raise KeyError("input_layer.0.weight / body.0.res_layer.1.weight / styles.0.linear.weight")
    depths = [int(state[f"body.{i}.res_layer.1.weight"].shape[0]) for i in range(n_units)]
    blocks: list[int] = []
    channels: list[int] = []
    if stages is not None:
        blocks, channels = [int(b) for b in stages[0]], [int(c) for c in stages[1]]
    for i, d in enumerate(depths if stages is None else []):
        # a new stage starts at unit 0 and wherever the width changes
        if i == 0 or d != depths[i - 1]:
            blocks.append(0)
            channels.append(d)
        blocks[-1] += 1
    if len(blocks) != 4:
        raise KeyError(f"expected 4 IR-SE stages, found widths {channels}")
    se = "body.0.res_layer.5.fc1.weight" in state
    red = channels[0] // int(state["body.0.res_layer.5.fc1.weight"].shape[0]) if se else 16
    lin = state["styles.0.linear.weight"]
    pools = 0
    while f"styles.0.convs.{2 * pools}.weight" in state:
        pools += 1
    return {"base_pools": pools, "num_ws": n_styles, "w_dim": int(lin.shape[0]), "blocks": tuple(blocks),
            "channels": tuple(channels), "style_width": int(lin.shape[1]), "se": se, "se_reduction": red,
            "stem_channels": int(state["input_layer.0.weight"].shape[0])}


def load_e4e(path: str | os.PathLike, num_ws: int | None = None, device: str | torch.device = "cpu",
             input_size: tuple[int, int] | None = None) -> LatentEncoder:
    """Load an official (or project-trained) E4E checkpoint safely; only ``encoder.*`` weights are used.

    The architecture (stages, widths, head count = W+ layers) is read from the weights' shapes.
    ``num_ws`` (the generator's) must equal the checkpoint's number of style heads when given;
    ``latent_avg`` is added when ``opts['start_from_latent_avg']`` (default True, as in e4e);
    ``input_size`` defaults to the checkpoint's ``opts['input_size']``, else 256x256 (official).
    """
    ckpt = torch_load(path, E4E_EXPECTED)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelFileError(path, E4E_EXPECTED, "no 'state_dict' entry in the checkpoint")
    state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items()
             if isinstance(k, str) and k.startswith("encoder.")}
    if not state:
        sample = ", ".join(list(ckpt["state_dict"])[:3])
        raise ModelFileError(path, E4E_EXPECTED, f"no 'encoder.*' weights in state_dict (keys like {sample})")
    opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), dict) else {}
    stages = (opts["blocks"], opts["channels"]) if "blocks" in opts and "channels" in opts else None
    try:
        arch = _infer_arch(state, stages)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, E4E_EXPECTED, f"encoder weights missing or malformed ({exc})") from None
    if num_ws is not None and int(num_ws) != arch["num_ws"]:
        raise ModelFileError(path, E4E_EXPECTED, f"checkpoint has {arch['num_ws']} style heads (W+ layers) "
                             f"but the generator needs num_ws={num_ws}")
    train_size = tuple(int(v) for v in opts.get("input_size", (256, 256)))
    enc = Encoder4Editing(input_size=train_size, **arch)
    try:
        missing, unexpected = enc.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ModelFileError(path, E4E_EXPECTED,
                             "encoder tensor shapes do not match: " + "; ".join(lines[:3])) from None
    if missing or unexpected:
        bad = [f"missing {k}" for k in missing[:5]] + [f"unexpected {k}" for k in unexpected[:5]]
        raise ModelFileError(path, E4E_EXPECTED, f"encoder state dict does not fit E4E: {', '.join(bad)}")
    avg = ckpt.get("latent_avg")
    start_avg = bool(opts.get("start_from_latent_avg", True))
    if start_avg and not isinstance(avg, torch.Tensor):
        raise ModelFileError(path, E4E_EXPECTED,
                             "opts.start_from_latent_avg is set but 'latent_avg' is missing")
    try:
        model = LatentEncoder(enc, avg if isinstance(avg, torch.Tensor) else None, start_avg,
                              input_size or train_size)
    except ValueError as exc:
        raise ModelFileError(path, E4E_EXPECTED, str(exc)) from None
    return model.to(device).eval().requires_grad_(False)


def save_e4e(model: LatentEncoder, path: str | os.PathLike, extra_opts: dict[str, Any] | None = None) -> None:
    """Write ``model`` in the official E4E checkpoint layout (tensors + plain opts only)."""
    enc = model.encoder
    opts: dict[str, Any] = {"encoder_type": "Encoder4Editing",
                            "start_from_latent_avg": model.start_from_latent_avg,
                            "input_size": list(enc.input_size), "blocks": list(enc.blocks),
                            "channels": list(enc.channels)}
    opts["n_styles"] = enc.num_ws
    opts.update(extra_opts or {})
    state = {f"encoder.{k}": v.detach().cpu() for k, v in enc.state_dict().items()}
    torch.save({"state_dict": state, "opts": opts, "latent_avg": model.latent_avg.detach().cpu()}, path)
