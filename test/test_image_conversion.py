"""sensor_msgs/Image <-> numpy conversion used by the nodes (no DDS needed)."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image

from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.common import bgr_to_image, image_to_bgr
from latent_rag_ros.nodes.egress_node import egress_problem


def test_roundtrip_bgr_and_rgb() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for enc in ("bgr8", "rgb8"):
        assert np.array_equal(image_to_bgr(bgr_to_image(img, encoding=enc)), img)


def test_padded_rows_and_mono() -> None:
    img = np.arange(4 * 3, dtype=np.uint8).reshape(4, 3)
    msg = Image(height=4, width=3, encoding="mono8", step=4)
    msg.data = np.pad(img, ((0, 0), (0, 1))).tobytes()
    out = image_to_bgr(msg)
    assert out.shape == (4, 3, 3) and np.array_equal(out[:, :, 1], img)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"height": 2, "width": 2, "encoding": "bgr8", "step": 6, "data": bytes(5)}, "expected step"),
        ({"height": 2, "width": 2, "encoding": "yuv422", "step": 4, "data": bytes(8)}, "unsupported"),
        ({"height": 0, "width": 2, "encoding": "bgr8", "step": 6, "data": b""}, "empty"),
        ({"height": 2, "width": 2, "encoding": "bgr8", "step": 3, "data": bytes(6)}, "step"),
    ],
)
def test_malformed_images_raise(kwargs: dict, needle: str) -> None:
    msg = Image(**{k: v for k, v in kwargs.items() if k != "data"})
    msg.data = kwargs["data"]
    with pytest.raises(ValueError, match=needle):
        image_to_bgr(msg)


def test_egress_rejects_malformed_protected_crops() -> None:
    ok = ProtectedCrop(m=10, steps=10)
    ok.image = bgr_to_image(np.zeros((4, 2, 3), np.uint8), encoding="rgb8")
    ok.embedding = [0.1, 0.2]
    assert egress_problem(ok) == ""
    bad = ProtectedCrop(m=10, steps=10)
    bad.embedding = [0.1]
    assert "empty" in egress_problem(bad)
    nan = ProtectedCrop(m=10, steps=10, image=ok.image)
    nan.embedding = [float("nan")]
    assert "NaN" in egress_problem(nan)
