"""Issue 16 item 4: PixelFade and AVIH on hand-checkable cases.

The re-ID model here is a tiny real module whose feature is the per-channel mean colour of the
image (after the same area resize the evaluation uses), so what each solver must achieve can be
worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


class MeanColour(torch.nn.Module):
    """Feature = per-channel mean of the [0,1] RGB image: 3-d, not normalised (hand-checkable)."""

    input_size = (8, 4)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _crop(h: int = 16, w: int = 8, colour: tuple[int, int, int] = (40, 120, 200)) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colour
    img[h // 2:, :, 0] = 90   # a two-tone "person" so the image has structure
    return img


def test_replacement_masks_partition_the_pixels() -> None:
    from latent_rag_ros.eval.comparisons import replacement_masks

    masks = replacement_masks((1, 3, 6, 5), 5, torch.Generator().manual_seed(0))
    stacked = torch.stack(masks).int()
    assert stacked.sum(0).eq(1).all()                       # every element in exactly one part
    assert [int(m.sum()) for m in masks] == [18] * 5        # 90 elements / 5 parts


def test_variance_consistency_by_hand() -> None:
    from latent_rag_ros.eval.comparisons import variance_consistency

    x = torch.zeros(1, 3, 5, 5)
    assert float(variance_consistency(x)) == 0.0            # flat image: no structure
    x[0, 0, 0, 0] = 1.0
    # channel 0: 2x2 positions of 4x4 box sums = [1, 0, 0, 0], mean 0.25; unbiased variance
    # = (0.75^2 + 3 * 0.25^2) / 3 = 0.25; channels 1 and 2 add 0
    assert float(variance_consistency(x)) == pytest.approx(0.25)


def test_pixelfade_without_constraint_steps_is_the_noise_image() -> None:
    """beta = 0: after the warm-up every pixel has been replaced by eta, so the result IS the noise image."""
    from latent_rag_ros.eval.comparisons import apply_comparison

    net, img = MeanColour(), _crop()
    out = apply_comparison("pixelfade", net, [img], {"iters": 5, "fade_parts": 5, "warmup": 5,
                                                     "beta": 0.0, "beta_far": 0.0, "seed": 7})[0]
    gen = torch.Generator().manual_seed(7)                 # crop 0 draws eta first with seed + 0
    eta = torch.randn((1, 3, 16, 8), generator=gen)
    expect = (eta * net.std + net.mean).clamp(0, 1)[0].permute(1, 2, 0).numpy()[:, :, ::-1]
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(float) - np.round(expect * 255)).max() <= 1


def test_pixelfade_and_avih_pull_the_feature_back_to_the_original() -> None:
    """From noise, the constraint steps bring the mean colour near the crop's; the image stays noise-like."""
    from latent_rag_ros.eval.comparisons import apply_comparison
    from latent_rag_ros.eval.metrics import ssim

    net, img = MeanColour(), _crop()
    target = img[:, :, ::-1].reshape(-1, 3).mean(0) / 255.0
    # eps 1e-4 on this 3-d feature: each channel's mean within about 0.01 of the original's
    for name, params, still in (("pixelfade", {"iters": 60, "eps": 1e-4}, {"iters": 5, "beta": 0.0, "beta_far": 0.0}),
                                ("avih", {"iters": 60, "vc_weight": 0.0}, {"iters": 0})):
        noise_only = apply_comparison(name, net, [img], {**params, **still})[0]   # the solver's starting noise
        out = apply_comparison(name, net, [img], params)[0]
        err = np.abs(out[:, :, ::-1].reshape(-1, 3).mean(0) / 255.0 - target).max()
        err0 = np.abs(noise_only[:, :, ::-1].reshape(-1, 3).mean(0) / 255.0 - target).max()
        assert err < 0.03 < err0, (name, err, err0)
        assert ssim(out, img) < 0.5, name                  # not the original picture


def test_comparison_batching_does_not_change_results_and_bad_input_is_refused() -> None:
    from latent_rag_ros.eval.comparisons import apply_comparison

    net = MeanColour()
    crops = [_crop(), _crop(20, 10, (200, 30, 60)), _crop(12, 6)]
    one = apply_comparison("avih", net, crops, {"iters": 4}, batch_size=1)
    many = apply_comparison("avih", net, crops, {"iters": 4}, batch_size=3)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))
    with pytest.raises(ValueError, match="unknown comparison"):
        apply_comparison("nope", net, crops)
    with pytest.raises(ValueError, match="bad parameter"):
        apply_comparison("pixelfade", net, crops, {"nope": 1})
    with pytest.raises(ValueError, match="crop 0"):
        apply_comparison("pixelfade", net, [crops[0].astype(np.float32)])
