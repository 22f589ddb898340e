"""Camera messages -> uint8 BGR frames: sensor_msgs/Image (any common encoding) and CompressedImage.

Conversion uses ROS 2's ``cv_bridge`` where it is importable (apt installs of ROS) and
``rosbags-image`` otherwise (the PyPI venv: ROS 2's cv_bridge is not on PyPI). Either way the
checks here run first, so a malformed or oversized message is refused with one clear line
(``ValueError``) before anything large is allocated or any native code sees it: the header must
agree with the data (height, width, step >= width x bytes per pixel, data = step x height), the frame
must fit ``ros.max_frame_pixels`` / ``ros.max_frame_bytes``, and the encoding must be one of
:data:`SUPPORTED_ENCODINGS`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, compressed_image_to_cvimage, image_to_cvimage
from rosbags.image.image import ENCODINGMAP

try:  # ROS 2 cv_bridge (apt); the PyPI ``cv-bridge`` wheel is ROS 1 and needs numpy < 2.3
    from cv_bridge import CvBridge as _CvBridge

    _BRIDGE: Any = _CvBridge()
except Exception:  # noqa: BLE001 - any import failure means: use rosbags-image
    _BRIDGE = None

BACKEND = "cv_bridge" if _BRIDGE is not None else "rosbags-image"

# generic OpenCV names a driver may send, mapped onto the named encoding with the same layout
_GENERIC = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8", "16UC1": "mono16"}
# nv12/nv21 are left out: their data is 1.5 x height rows, which the header's height does not describe
SUPPORTED_ENCODINGS = tuple(sorted(e for e in ENCODINGMAP if e not in ("nv12", "nv21"))) + tuple(sorted(_GENERIC))
COMPRESSED_FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True)
class FrameLimits:
    """Largest frame a node converts (``ros.max_frame_pixels``, ``ros.max_frame_bytes``)."""

    max_pixels: int = 16_777_216
    max_bytes: int = 67_108_864


DEFAULT_LIMITS = FrameLimits()


def _layout(encoding: str) -> tuple[str, int, int]:
    """(named encoding, channels, bytes per channel) of ``encoding``; ValueError if unsupported."""
    name = _GENERIC.get(encoding, encoding)
    if name not in ENCODINGMAP or name in ("nv12", "nv21"):
        raise ValueError(f"unsupported image encoding {encoding[:40]!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    bits, _fmt, _dtype, channels = ENCODINGMAP[name]
    return name, channels, bits // 8


def _check_size(width: int, height: int, nbytes: int, limits: FrameLimits, what: str) -> None:
    if width * height > limits.max_pixels:
        raise ValueError(f"{what} {width}x{height} has {width * height} pixels, above ros.max_frame_pixels="
                         f"{limits.max_pixels}")
    if nbytes > limits.max_bytes:
        raise ValueError(f"{what} has {nbytes} bytes, above ros.max_frame_bytes={limits.max_bytes}")


def image_to_bgr(msg: Any, limits: FrameLimits = DEFAULT_LIMITS) -> np.ndarray:
    """sensor_msgs/Image -> uint8 BGR HxWx3; ValueError for a malformed, oversized or unsupported image."""
    name, ch, bpc = _layout(str(msg.encoding))
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"empty image {w}x{h}")
    nbytes = len(msg.data)
    _check_size(w, h, nbytes, limits, "image")
    row = w * ch * bpc
    if step < row:
        raise ValueError(f"step {step} < width*bytes per pixel {row} ({msg.encoding})")
    if nbytes != step * h:
        raise ValueError(f"data has {nbytes} bytes, expected step*height = {step * h}")
    if name in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2") and w % 2:
        raise ValueError(f"{msg.encoding} needs an even width, got {w}")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, :row]
    packed = SimpleNamespace(encoding=name, height=h, width=w, step=row, is_bigendian=int(msg.is_bigendian),
                             data=np.ascontiguousarray(rows).reshape(-1), header=getattr(msg, "header", None))
    try:
        bgr = _convert_bridge(packed) if _BRIDGE is not None else _convert_rosbags(packed)
    except (ImageError, cv2.error, TypeError) as exc:
        raise ValueError(f"cannot convert {msg.encoding} image: {str(exc).strip().splitlines()[-1][:200]}") from None
    return _as_bgr8(bgr)


def _convert_rosbags(packed: Any) -> np.ndarray:
    """Conversion with rosbags-image (the PyPI path)."""
    return np.asarray(image_to_cvimage(packed, "bgr8"))


def _convert_bridge(packed: Any) -> np.ndarray:
    """Conversion with ROS 2 cv_bridge (apt installs); same input as :func:`_convert_rosbags`."""
    from sensor_msgs.msg import Image

    msg = Image(height=packed.height, width=packed.width, encoding=packed.encoding,
                is_bigendian=packed.is_bigendian, step=packed.step)
    msg.data = packed.data.tobytes()
    return np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="bgr8"))


def _as_bgr8(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"conversion gave {img.dtype} {img.shape}, expected uint8 HxWx3")
    return np.ascontiguousarray(img)


def compressed_to_bgr(msg: Any, limits: FrameLimits = DEFAULT_LIMITS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> uint8 BGR HxWx3; ValueError for garbage or oversize.

    The image size is read from the file header (Pillow, lazily) and checked against the limits
    before anything is decoded, so a small file that would expand to a huge frame is refused.
    """
    from PIL import Image as PilImage

    data = bytes(msg.data)
    if not data:
        raise ValueError("empty compressed image")
    if len(data) > limits.max_bytes:
        raise ValueError(f"compressed image has {len(data)} bytes, above ros.max_frame_bytes={limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PilImage.open(io.BytesIO(data)) as peek:
                fmt, (w, h) = peek.format, peek.size
    except Exception as exc:  # noqa: BLE001 - Pillow raises several kinds for garbage
        raise ValueError(f"compressed image ({str(msg.format)[:40]!r}) is not a readable JPEG or PNG: "
                         f"{type(exc).__name__}") from None
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"compressed image is {fmt}, expected one of {COMPRESSED_FORMATS}")
    if w <= 0 or h <= 0:
        raise ValueError(f"empty compressed image {w}x{h}")
    _check_size(w, h, w * h * 3, limits, f"{fmt} image")
    try:
        img = compressed_image_to_cvimage(SimpleNamespace(format=msg.format, data=np.frombuffer(data, np.uint8)))
    except (AssertionError, ImageError, cv2.error) as exc:
        raise ValueError(f"cannot decode {fmt} image: {type(exc).__name__}") from None
    if img is None:
        raise ValueError(f"cannot decode {fmt} image")
    img = np.asarray(img)
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return _as_bgr8(img)


def camera_to_bgr(msg: Any, limits: FrameLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Image or CompressedImage (told apart by the ``format`` field) -> uint8 BGR HxWx3."""
    if hasattr(msg, "format"):
        return compressed_to_bgr(msg, limits)
    return image_to_bgr(msg, limits)


def bgr_to_image_fields(bgr: np.ndarray, encoding: str = "bgr8") -> dict[str, Any]:
    """Fields of a sensor_msgs/Image (``bgr8`` or ``rgb8``) holding uint8 BGR HxWx3 ``bgr``."""
    if encoding not in ("bgr8", "rgb8"):
        raise ValueError("encoding must be bgr8 or rgb8")
    arr = bgr if encoding == "bgr8" else bgr[:, :, ::-1]
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return {"height": int(arr.shape[0]), "width": int(arr.shape[1]), "encoding": encoding, "is_bigendian": 0,
            "step": int(arr.shape[1] * 3), "data": arr.tobytes()}
