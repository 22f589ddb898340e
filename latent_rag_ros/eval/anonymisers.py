"""PrivacyReID and SecureReID as comparison methods: apply a trained anonymiser checkpoint to crops.

PrivacyReID: J. Zhang, M. Ye, Y. Yang, "Learnable privacy-preserving anonymization for pedestrian
images", ACM Multimedia 2022, pp. 7300-7308 (paper ref. [7]). SecureReID: M. Ye, W. Shen, J. Zhang,
Y. Yang, B. Du, "SecureReID: Privacy-preserving anonymization for person re-identification", IEEE
TIFS 19, 2024, pp. 2840-2853 (paper ref. [13]). Both learn a pix2pix anonymiser G jointly with a
recovery network G_R and the re-ID model; SecureReID adds identity-keyed encrypt/decrypt (ISED). The
algorithm, the losses and our CPU-sized deviations are written down in
:mod:`latent_rag_ros.training.anonymiser`; the networks and ISED in :mod:`latent_rag_ros.models.anonymiser`.

What the server sees here: G(crop) at the crop's size, published like every other method (uint8,
PNG round trip). As in the Latent-RAG paper, SecureReID's rows leave ISED out (it needs the identity's
key before matching); :func:`ised_recovery` measures ISED separately: G_R recovers the crop from
the encrypted image decrypted with the right key, and not with a wrong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ANONYMISERS = ("privacyreid", "securereid")
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


def default_checkpoint(name: str) -> Path:
    """The committed demo checkpoint of ``name`` (``data/demo/anonymiser_<name>.pt``)."""
    return CHECKPOINT_DIR / f"anonymiser_{name}.pt"


def _load(name: str, params: dict[str, Any] | None) -> Any:
    from latent_rag_ros.models.anonymiser import load_anonymiser

    if name not in ANONYMISERS:
        raise ValueError(f"unknown anonymiser {name!r}; expected one of {ANONYMISERS}")
    path = Path((params or {}).get("checkpoint") or default_checkpoint(name))
    anon = load_anonymiser(path)
    if anon.method != name:
        raise ValueError(f"{path}: a {anon.method} checkpoint, not {name}; pass the {name} checkpoint")
    return anon


def anonymiser_settings(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the report records for an anonymiser row: checkpoint path and its training settings."""
    path = Path((params or {}).get("checkpoint") or default_checkpoint(name))
    try:
        meta = _load(name, params).meta
    except ValueError as exc:
        meta = {"error": str(exc)}
    return {"checkpoint": str(path), "ised_in_table": False, **meta}


def apply_anonymiser(name: str, crops_bgr: Sequence[np.ndarray], params: dict[str, Any] | None = None,
                     batch_size: int = 64) -> list[np.ndarray]:
    """Protect uint8 BGR crops with the trained ``name`` anonymiser (``params["checkpoint"]`` or the demo's)."""
    for i, img in enumerate(crops_bgr):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise ValueError(f"crop {i}: expected uint8 HxWx3, got {getattr(img, 'shape', type(img))}")
    anon = _load(name, params)
    out: list[np.ndarray] = []
    for s in range(0, len(crops_bgr), batch_size):
        out += anon.protect(list(crops_bgr[s:s + batch_size]))
    return out


def ised_recovery(anon: Any, crops_bgr: Sequence[np.ndarray], keys: Sequence[str],
                  wrong_keys: Sequence[str]) -> dict[str, Any]:
    """SecureReID's ISED: PSNR of G_R's recovery after decrypting with the right key vs a wrong key.

    Each crop i is anonymised, encrypted with ``keys[i]`` (its identity), decrypted with ``keys[i]``
    or ``wrong_keys[i]`` and recovered by G_R; PSNR against the crop at the network's size.
    """
    import torch

    from latent_rag_ros.eval.metrics import psnr
    from latent_rag_ros.models.anonymiser import ised_decrypt, ised_encrypt, to_bgr, to_unit

    if anon.g_r is None:
        raise ValueError("the anonymiser checkpoint has no recovery network g_r")
    x = to_unit(list(crops_bgr))
    size = tuple(x.shape[-2:])
    right, wrong, encrypted_psnr = [], [], []
    with torch.no_grad():
        p = anon.g(x)
        for i in range(len(crops_bgr)):
            enc = ised_encrypt(p[i], keys[i])
            ref = to_bgr(x[i], size)
            for key, sink in ((keys[i], right), (wrong_keys[i], wrong)):
                sink.append(psnr(to_bgr(anon.g_r(ised_decrypt(enc, key)[None])[0], size), ref))
            encrypted_psnr.append(psnr(to_bgr(enc, size), ref))
    return {"psnr_right_key": float(np.mean(right)), "psnr_wrong_key": float(np.mean(wrong)),
            "psnr_encrypted": float(np.mean(encrypted_psnr)), "n": len(right)}
