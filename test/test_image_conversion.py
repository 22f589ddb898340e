"""Camera message -> BGR conversion (nodes.images) on a real vtest.avi frame, for every encoding a camera sends.

Each encoding is produced from the real frame the way a camera driver lays it out (Bayer mosaics,
packed UYVY/YUYV, 16-bit, padded rows), converted back, and compared with the frame: exactly where
the encoding is lossless, within a demosaicing/chroma tolerance otherwise, and always closer than
the same data read with the channel order swapped (so a wrong pattern mapping fails).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes import images
from latent_rag_ros.nodes.common import bgr_to_image, camera_to_bgr, image_to_bgr
from latent_rag_ros.nodes.egress_node import egress_problem
from latent_rag_ros.nodes.images import FrameLimits, compressed_to_bgr

from rosutil import vtest_frames


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """A real 768x576 pedestrian frame cut to an even 320x240 region with people in it."""
    return np.ascontiguousarray(vtest_frames([300])[0][200:440, 200:520])


def _msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image message holding ``pixels`` (HxW or HxWxC array) with ``pad`` spare bytes per row."""
    h, w = pixels.shape[:2]
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">"))
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, -1)
    rows = np.pad(rows, ((0, 0), (0, pad)))
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


def _bayer(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """Mosaic a BGR frame with a 2x2 pattern such as "rggb" (top-left, top-right, bottom-left, bottom-right)."""
    idx = {"b": 0, "g": 1, "r": 2}
    out = np.empty(bgr.shape[:2], bgr.dtype)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = bgr[dy::2, dx::2, idx[pattern[k]]]
    return out


def _packed_yuv(bgr: np.ndarray, order: str) -> np.ndarray:
    """BGR -> packed 4:2:2 (``uyvy`` or ``yuyv``) as HxWx2 bytes (BT.601 video range, as cameras send)."""
    b, g, r = (bgr[:, :, i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u2 = (u[:, 0::2] + u[:, 1::2]) / 2
    v2 = (v[:, 0::2] + v[:, 1::2]) / 2
    out = np.empty((*bgr.shape[:2], 2), np.float32)
    chroma = np.empty(bgr.shape[:2], np.float32)
    chroma[:, 0::2], chroma[:, 1::2] = u2, v2
    out[:, :, 0 if order == "uyvy" else 1] = chroma
    out[:, :, 1 if order == "uyvy" else 0] = y
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "bgra8", "rgba8", "8UC3"])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_are_exact(frame: np.ndarray, encoding: str, pad: int) -> None:
    pix = {"bgr8": frame, "8UC3": frame, "rgb8": frame[:, :, ::-1],
           "bgra8": np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)]),
           "rgba8": np.dstack([frame[:, :, ::-1], np.full(frame.shape[:2], 7, np.uint8)])}[encoding]
    assert np.array_equal(image_to_bgr(_msg(pix, encoding, pad)), frame)


@pytest.mark.parametrize("encoding, bigendian", [("mono8", False), ("8UC1", False), ("mono16", False),
                                                 ("mono16", True), ("16UC1", False)])
def test_grey_encodings(frame: np.ndarray, encoding: str, bigendian: bool) -> None:
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    pix = grey.astype(np.uint16) * 257 if "16" in encoding else grey
    out = image_to_bgr(_msg(pix, encoding, pad=2, bigendian=bigendian))
    assert out.shape == (*grey.shape, 3)
    assert np.abs(out[:, :, 1].astype(int) - grey).max() <= 1
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


@pytest.mark.parametrize("encoding", ["rgb16", "bgra16"])
def test_sixteen_bit_colour(frame: np.ndarray, encoding: str) -> None:
    wide = frame.astype(np.uint16) * 257
    pix = wide[:, :, ::-1] if encoding == "rgb16" else np.dstack([wide, np.full(frame.shape[:2], 65535, np.uint16)])
    assert np.abs(image_to_bgr(_msg(pix, encoding)).astype(int) - frame).max() <= 1


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_encodings_demosaic_to_the_frame(frame: np.ndarray, pattern: str, bits: int) -> None:
    mosaic = _bayer(frame, pattern)
    if bits == 16:
        mosaic = mosaic.astype(np.uint16) * 257
    out = image_to_bgr(_msg(mosaic, f"bayer_{pattern}{bits}", pad=4))
    wrong = image_to_bgr(_msg(mosaic, f"bayer_{pattern[::-1]}{bits}", pad=4))  # the swapped pattern
    assert _err(out, frame) < 10, _err(out, frame)
    assert _err(out, frame) < _err(wrong, frame) / 2


@pytest.mark.parametrize("encoding, order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"),
                                             ("yuv422_yuy2", "yuyv")])
def test_packed_yuv422_to_the_frame(frame: np.ndarray, encoding: str, order: str) -> None:
    packed = _packed_yuv(frame, order)
    out = image_to_bgr(_msg(packed, encoding, pad=8))
    other = {"uyvy": "yuyv", "yuyv": "uyvy"}[order]
    assert _err(out, frame) < 6, _err(out, frame)
    assert _err(out, frame) < _err(image_to_bgr(_msg(packed, other)), frame) / 2


def test_roundtrip_bgr_and_rgb() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for enc in ("bgr8", "rgb8"):
        assert np.array_equal(image_to_bgr(bgr_to_image(img, encoding=enc)), img)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"height": 2, "width": 2, "encoding": "bgr8", "step": 6, "data": bytes(5)}, "expected step"),
        ({"height": 2, "width": 2, "encoding": "32FC1", "step": 8, "data": bytes(16)}, "unsupported"),
        ({"height": 2, "width": 2, "encoding": "nv12", "step": 2, "data": bytes(6)}, "unsupported"),
        ({"height": 0, "width": 2, "encoding": "bgr8", "step": 6, "data": b""}, "empty"),
        ({"height": 2, "width": 2, "encoding": "bgr8", "step": 3, "data": bytes(6)}, "step"),
        ({"height": 2, "width": 2, "encoding": "mono16", "step": 3, "data": bytes(6)}, "step"),
        ({"height": 2, "width": 3, "encoding": "yuv422", "step": 6, "data": bytes(12)}, "even width"),
        ({"height": 100000, "width": 100000, "encoding": "bgr8", "step": 300000, "data": bytes(10)},
         "max_frame_pixels"),
    ],
)
def test_malformed_images_raise(kwargs: dict, needle: str) -> None:
    msg = Image(**{k: v for k, v in kwargs.items() if k != "data"})
    msg.data = kwargs["data"]
    with pytest.raises(ValueError, match=needle):
        image_to_bgr(msg)


def test_byte_limit_applies_before_conversion(frame: np.ndarray) -> None:
    msg = _msg(frame, "bgr8")
    with pytest.raises(ValueError, match="max_frame_bytes"):
        image_to_bgr(msg, FrameLimits(max_pixels=10**9, max_bytes=len(msg.data) - 1))
    with pytest.raises(ValueError, match="max_frame_pixels"):
        image_to_bgr(msg, FrameLimits(max_pixels=frame.shape[0] * frame.shape[1] - 1))
    assert image_to_bgr(msg, FrameLimits(frame.shape[0] * frame.shape[1], len(msg.data))).shape == frame.shape


def _compressed(fmt: str, img: np.ndarray, params: list[int] | None = None) -> CompressedImage:
    ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else fmt), img, params or [])
    assert ok
    msg = CompressedImage(format=fmt)
    msg.data = buf.tobytes()
    return msg


def test_compressed_png_is_exact_and_jpeg_close(frame: np.ndarray) -> None:
    assert np.array_equal(camera_to_bgr(_compressed("png", frame)), frame)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(compressed_to_bgr(_compressed("png", grey))[:, :, 2], grey)
    out = camera_to_bgr(_compressed("jpeg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert out.shape == frame.shape and _err(out, frame) < 4
    ros_style = _compressed("jpeg", frame)
    ros_style.format = "bgr8; jpeg compressed bgr8"   # image_transport's format string
    assert camera_to_bgr(ros_style).shape == frame.shape


def test_compressed_garbage_and_bombs_are_refused(frame: np.ndarray) -> None:
    garbage = CompressedImage(format="jpeg")
    garbage.data = b"\xff\xd8\xff" + bytes(range(256)) * 4
    with pytest.raises(ValueError, match="not a readable JPEG or PNG"):
        compressed_to_bgr(garbage)
    with pytest.raises(ValueError, match="empty"):
        compressed_to_bgr(CompressedImage(format="png"))
    truncated = _compressed("png", frame)
    truncated.data = bytes(truncated.data)[: len(truncated.data) // 2]
    with pytest.raises(ValueError):
        compressed_to_bgr(truncated)
    bmp = _compressed("bmp", frame)
    with pytest.raises(ValueError, match="expected one of"):
        compressed_to_bgr(bmp)
    # a small PNG that decodes to 4000x4000: refused from its header, before decoding
    bomb = _compressed("png", np.zeros((4000, 4000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert len(bomb.data) < 100_000
    with pytest.raises(ValueError, match="max_frame_pixels"):
        compressed_to_bgr(bomb, FrameLimits(max_pixels=1_000_000))


def test_cv_bridge_agrees_with_rosbags_image(frame: np.ndarray) -> None:
    """Runs where ROS 2's cv_bridge is importable (apt installs of ROS 2)."""
    if images._BRIDGE is None:
        pytest.skip("ROS 2 cv_bridge is not importable here (not on PyPI; the PyPI cv-bridge wheel needs numpy<2.3): "
                    "conversion uses rosbags-image")
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    for pix, enc in [(frame, "bgr8"), (frame[:, :, ::-1], "rgb8"), (grey, "mono8"), (_bayer(frame, "rggb"),
                     "bayer_rggb8"), (_packed_yuv(frame, "uyvy"), "yuv422")]:
        msg = _msg(pix, enc)
        via_bridge = image_to_bgr(msg)
        from types import SimpleNamespace
        packed = SimpleNamespace(encoding=enc, height=msg.height, width=msg.width, step=msg.step,
                                 is_bigendian=0, data=np.frombuffer(msg.data, np.uint8))
        assert _err(via_bridge, images._as_bgr8(images._convert_rosbags(packed))) < 3, enc


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
    mono = ProtectedCrop(m=10, steps=10, image=Image(height=4, width=2, encoding="mono8", step=2, data=bytes(8)))
    mono.embedding = [0.1]
    assert "rgb8" in egress_problem(mono)
