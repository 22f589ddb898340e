"""The anonymisation networks of PrivacyReID and SecureReID (comparison baselines, issue 16 item 4).

Both papers (Zhang, Ye, Yang, ACM MM 2022; Ye, Shen, Zhang, Yang, Du, IEEE TIFS 19, 2024) use a
pix2pix U-Net ``G`` (raw crop -> anonymised crop, tanh output in [-1, 1]) and a second U-Net ``G_R``
(anonymised -> recovered raw crop). This module holds the network, its safe loader and SecureReID's
identity-specific encrypt/decrypt (ISED) step; training is ``training.anonymiser``, use in the
evaluation ``eval.anonymisers``. Sizes here are CPU-sized (``ngf`` 8, 128x64), not the papers' 64.

ISED as released: the anonymised image is shifted by a per-identity "deviation", a uniform [-1, 1]
field drawn from a generator seeded by the identity; decryption subtracts it. It is the papers'
obfuscation step, reproduced for the comparison only: it is NOT encryption and protects nothing in
this package (the egress path uses AEAD from ``cryptography``).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ANONYMISER_SIZE = (128, 64)
METHODS = ("privacyreid", "securereid")


class _Block(nn.Module):
    """One U-Net level: down (conv 4x4 s2), the inner level, up (transposed conv 4x4 s2); skip by concat."""

    def __init__(self, outer: int, inner: int, sub: nn.Module | None, in_ch: int | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2)]
        down.append(nn.Conv2d(in_ch or outer, inner, 4, 2, 1, bias=sub is None or outermost))
        if sub is not None and not outermost:
            down.append(nn.BatchNorm2d(inner))
        up_in = inner if sub is None else inner * 2
        up: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(up_in, outer, 4, 2, 1)]
        up.append(nn.Tanh() if outermost else nn.BatchNorm2d(outer))
        self.model = nn.Sequential(*down, *([sub] if sub is not None else []), *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], 1)


class AnonymiserNet(nn.Module):
    """pix2pix U-Net generator: [B,3,H,W] in [-1,1] -> [B,3,H,W] in [-1,1] (H, W divisible by 2**depth)."""

    def __init__(self, ngf: int = 8, depth: int = 5) -> None:
        super().__init__()
        self.ngf, self.depth = int(ngf), int(depth)
        widths = [ngf * min(2 ** i, 8) for i in range(depth)]
        block: nn.Module | None = None
        for i in range(depth - 1, 0, -1):
            block = _Block(widths[i - 1], widths[i], block)
        self.model = _Block(3, widths[0], block, in_ch=3, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def to_unit(images_bgr: list[np.ndarray], size: tuple[int, int] = ANONYMISER_SIZE) -> torch.Tensor:
    """uint8 BGR crops -> RGB [N,3,H,W] in [-1, 1] at the network's size (area resize)."""
    import cv2

    h, w = size
    arr = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)[:, :, ::-1] for im in images_bgr])
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_bgr(x: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """One RGB [3,H,W] image in [-1, 1] -> uint8 BGR at ``size_hw`` (bilinear up-sampling to the crop size)."""
    import cv2

    arr = ((x.detach().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).numpy()[:, :, ::-1]
    h, w = size_hw
    if arr.shape[:2] != (h, w):
        arr = cv2.resize(np.ascontiguousarray(arr), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(arr)


def ised_deviation(identity_key: bytes | str, shape: tuple[int, ...]) -> torch.Tensor:
    """SecureReID's per-identity deviation: uniform [-1, 1] of ``shape``, seeded by SHA-256 of the key."""
    raw = identity_key.encode() if isinstance(identity_key, str) else bytes(identity_key)
    seed = int.from_bytes(hashlib.sha256(raw).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-1.0, 1.0, size=shape).astype(np.float32))


def ised_encrypt(anonymised: torch.Tensor, identity_key: bytes | str) -> torch.Tensor:
    """ISED encryption of one anonymised image [3,H,W] (in [-1,1]): add the identity's deviation."""
    return anonymised + ised_deviation(identity_key, tuple(anonymised.shape))


def ised_decrypt(encrypted: torch.Tensor, identity_key: bytes | str) -> torch.Tensor:
    """ISED decryption: subtract the identity's deviation (exact inverse of :func:`ised_encrypt` for the right key)."""
    return encrypted - ised_deviation(identity_key, tuple(encrypted.shape))


class Anonymiser:
    """A trained anonymiser checkpoint: ``G`` (protect), ``G_R`` (the owner's recovery), method and settings."""

    def __init__(self, method: str, g: AnonymiserNet, g_r: AnonymiserNet | None, meta: dict[str, Any]) -> None:
        self.method, self.g, self.g_r, self.meta = method, g.eval(), (g_r.eval() if g_r is not None else None), meta

    @torch.no_grad()
    def protect(self, crops_bgr: list[np.ndarray]) -> list[np.ndarray]:
        """Anonymise uint8 BGR crops (each back at its own size)."""
        if not crops_bgr:
            return []
        out = self.g(to_unit(list(crops_bgr)))
        return [to_bgr(o, im.shape[:2]) for o, im in zip(out, crops_bgr, strict=True)]


def save_anonymiser(path: str | Path, method: str, g: AnonymiserNet, g_r: AnonymiserNet | None,
                    meta: dict[str, Any]) -> None:
    """Write a checkpoint (float16 tensors + plain settings) that :func:`load_anonymiser` reads."""
    def half(net: nn.Module) -> dict[str, torch.Tensor]:
        return {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}

    state: dict[str, Any] = {"method": method, "ngf": g.ngf, "depth": g.depth, "g": half(g),
                             "meta": {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}}
    if g_r is not None:
        state["g_r"] = half(g_r)
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_anonymiser(path: str | Path) -> Anonymiser:
    """Read a checkpoint with ``torch.load(weights_only=True)``; a bad file raises ValueError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: anonymiser checkpoint not found; train one with `latent-rag train anonymiser`")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        method = str(state["method"])
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not one of {METHODS}")
        nets = []
        for key in ("g", "g_r"):
            if key not in state:
                nets.append(None)
                continue
            net = AnonymiserNet(int(state["ngf"]), int(state["depth"]))
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state[key].items()})
            nets.append(net)
    except (KeyError, RuntimeError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{p}: not a usable anonymiser checkpoint ({exc}); retrain it with "
                         "`latent-rag train anonymiser`") from None
    if nets[0] is None:
        raise ValueError(f"{p}: the checkpoint has no anonymiser network 'g'; retrain it")
    return Anonymiser(method, nets[0], nets[1], dict(state.get("meta", {})))
