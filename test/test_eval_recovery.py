"""Recovery attack: a bounded CPU training run learns to undo Gaussian blur on real video patches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from latent_rag_ros.eval.baselines import apply_baseline
from latent_rag_ros.eval.metrics import image_similarity
from latent_rag_ros.eval.recovery import (
    RecoveryConfig,
    build_recovery_net,
    identity_result,
    recovery_attack,
    train_recovery,
)

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


@pytest.fixture(scope="module")
def patches() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Attacker's public images (early frames) and disjoint evaluation crops (later frames)."""
    cap = cv2.VideoCapture(VTEST)
    frames = []
    for i in range(160):
        ok, f = cap.read()
        assert ok, VTEST
        if i % 8 == 0:
            frames.append(f)
    cap.release()
    rng = np.random.default_rng(0)

    def cut(fs: list[np.ndarray], n: int) -> list[np.ndarray]:
        out = []
        for _ in range(n):
            f = fs[rng.integers(len(fs))]
            y, x = rng.integers(0, f.shape[0] - 128), rng.integers(0, f.shape[1] - 64)
            # 64x32 crops (the attack resolution of the test), like small Market-1501 crops
            out.append(cv2.resize(f[y:y + 128, x:x + 64], (32, 64), interpolation=cv2.INTER_AREA))
        return out

    return cut(frames[:14], 96), cut(frames[14:], 12)


def test_attack_beats_untrained_on_blur(patches) -> None:
    train, evals = patches
    cfg = RecoveryConfig(model="unet", steps=40, batch_size=8, height=64, width=32, channels=16, lr=2e-3)
    res = recovery_attack(apply_baseline("blur", train), train, apply_baseline("blur", evals), evals, cfg)
    assert (res.n_train, res.n_eval, res.steps, len(res.losses)) == (96, 12, 40, 40)
    # the untrained attacker returns its input (zero-initialised residual): its score is the blur's own
    blur_only = image_similarity(apply_baseline("blur", evals), evals)
    assert res.before_psnr_mean == pytest.approx(blur_only["psnr_mean"], abs=1e-6)
    assert res.psnr_mean > res.before_psnr_mean + 0.3, (res.before_psnr_mean, res.psnr_mean)
    assert res.ssim_mean > res.before_ssim_mean
    assert np.mean(res.losses[-10:]) < np.mean(res.losses[:5])
    assert [r.shape for r in res.recovered] == [e.shape for e in evals]


def test_training_is_deterministic_and_restormer_trains(patches) -> None:
    train, _ = patches
    blurred = apply_baseline("blur", train[:16])
    cfg = RecoveryConfig(model="unet", steps=4, batch_size=4, height=32, width=16, channels=8, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    _, a = train_recovery(blurred, train[:16], cfg)
    torch.manual_seed(456)
    _, b = train_recovery(blurred, train[:16], cfg)
    assert a == b
    rcfg = RecoveryConfig(model="restormer", steps=4, batch_size=4, height=32, width=16, channels=8, lr=2e-3)
    net, losses = train_recovery(blurred, train[:16], rcfg)
    assert len(losses) == 4 and all(np.isfinite(losses))
    x = torch.rand(2, 3, 30, 14)  # odd sizes are padded inside and cropped back
    assert net(x).shape == x.shape
    with pytest.raises(ValueError, match="unknown recovery model"):
        build_recovery_net("pix2pix")


def test_identity_row(patches) -> None:
    _, evals = patches
    r = identity_result(evals[:3])
    assert r.ssim_mean == 1.0 and r.psnr_mean == float("inf") and r.summary()["final_loss"] is None
