"""Person detectors for camera frames: OpenCV HOG (built in, no weights) and YOLO ONNX exports.

Every detector takes an OpenCV frame (``numpy uint8 HxWx3 BGR``) and returns
``(boxes float32 [N, 4] xyxy in frame pixels, scores float32 [N])``, sorted by score.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from latent_rag_ros.config import DETECTOR_KINDS, DetectorConfig
from latent_rag_ros.models.safe_load import ModelFileError, require_file

Detections = tuple[np.ndarray, np.ndarray]


@runtime_checkable
class PersonDetector(Protocol):
    """Anything that finds people in a BGR frame."""

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """Return ``(boxes [N,4] xyxy float32, scores [N] float32)`` in frame pixels."""
        ...


def _empty() -> Detections:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def _check_frame(frame_bgr: np.ndarray) -> np.ndarray:
    """Validate an OpenCV frame (uint8 HxWx3) and return it contiguous."""
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR frame of shape HxWx3, got {getattr(frame_bgr, 'shape', None)}")
    if frame_bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame_bgr.dtype}")
    return np.ascontiguousarray(frame_bgr)


def nms_xyxy(boxes: np.ndarray, scores: np.ndarray, iou: float, min_score: float = -np.inf) -> Detections:
    """Non-maximum suppression on xyxy boxes through ``cv2.dnn.NMSBoxes``; sorted by score."""
    if len(boxes) == 0:
        return _empty()
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    ok = scores >= min_score
    boxes, scores = boxes[ok], scores[ok]
    if len(boxes) == 0:
        return _empty()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # NMSBoxes needs non-negative scores (HOG margins may be negative): NMS only uses their order
    shifted = scores - min(float(scores.min()), 0.0)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), shifted.tolist(), 0.0, float(iou))
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    if keep.size == 0:
        return _empty()
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return boxes[keep].copy(), scores[keep].copy()


class HogDetector:
    """OpenCV's HOG + linear SVM people detector (Dalal-Triggs), tuned for small pedestrians.

    The default people model has a 64x128 window, so people shorter than ~100 px are missed;
    the frame is therefore upscaled by ``upscale`` before detection and boxes are mapped back.
    OpenCV groups overlapping windows (``group_threshold``), then NMS on the SVM margin (the score).
    Defaults measured on hand-annotated vtest.avi frames (test/fixtures/vtest_people.json): recall
    25/26 at IoU 0.3 (all 22 unoccluded people >= 60 px tall), 7 unmatched boxes over 5 frames.
    """

    def __init__(
        self,
        upscale: float = 1.5,
        win_stride: tuple[int, int] = (8, 8),
        padding: tuple[int, int] = (16, 16),
        scale: float = 1.05,
        hit_threshold: float = 0.0,
        group_threshold: int = 2,
        nms_iou: float = 0.3,
        min_score: float = 0.0,
        shrink: float = 0.1,
    ) -> None:
        if not hasattr(cv2, "HOGDescriptor") or not hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
            raise RuntimeError(
                f"this OpenCV ({cv2.__version__}) has no HOGDescriptor (removed in OpenCV 5): "
                "install opencv-python 4.x (see requirements.txt) or use the 'onnx' detector"
            )
        if upscale <= 0:
            raise ValueError("upscale must be > 0")
        self.upscale = float(upscale)
        self.win_stride = tuple(int(v) for v in win_stride)
        self.padding = tuple(int(v) for v in padding)
        self.scale = float(scale)
        self.hit_threshold = float(hit_threshold)
        self.group_threshold = int(group_threshold)
        self.nms_iou = float(nms_iou)
        self.min_score = float(min_score)
        self.shrink = float(shrink)
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """Detect people; boxes are the HOG windows shrunk by ``shrink`` per side (tighter fit)."""
        frame = _check_frame(frame_bgr)
        h, w = frame.shape[:2]
        img = frame
        if self.upscale != 1.0:
            img = cv2.resize(frame, (round(w * self.upscale), round(h * self.upscale)),
                             interpolation=cv2.INTER_LINEAR)
        # OpenCV's HOG aborts the whole process natively ("double free or corruption") on an image
        # smaller than its detection window (measured: 1x1, 8x8): no person fits there anyway.
        win_w, win_h = self._hog.winSize
        if img.shape[0] < win_h or img.shape[1] < win_w:
            return _empty()
        rects, weights = self._hog.detectMultiScale(
            img, hitThreshold=self.hit_threshold, winStride=self.win_stride, padding=self.padding,
            scale=self.scale, groupThreshold=self.group_threshold,
        )
        if len(rects) == 0:
            return _empty()
        rects = np.asarray(rects, np.float32).reshape(-1, 4) / self.upscale
        scores = np.asarray(weights, np.float32).reshape(-1)
        # The 64x128 window holds a person of ~40x96 px in its centre: trim the margin.
        dx, dy = rects[:, 2] * self.shrink, rects[:, 3] * self.shrink * 0.5
        boxes = np.stack([rects[:, 0] + dx, rects[:, 1] + dy,
                          rects[:, 0] + rects[:, 2] - dx, rects[:, 1] + rects[:, 3] - dy], axis=1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return nms_xyxy(boxes, scores, self.nms_iou, self.min_score)


def letterbox(frame_bgr: np.ndarray, size: tuple[int, int], pad_value: int = 114
              ) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad (centred) to ``size`` = (H, W), as YOLO exports expect.

    Returns the padded image, the scale factor and the (left, top) padding, so boxes can be mapped back.
    """
    h, w = frame_bgr.shape[:2]
    th, tw = size
    r = min(th / h, tw / w)
    nh, nw = round(h * r), round(w * r)
    img = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else frame_bgr
    left, top = (tw - nw) / 2.0, (th - nh) / 2.0
    l_px, t_px = round(left - 0.1), round(top - 0.1)
    out = cv2.copyMakeBorder(img, t_px, th - nh - t_px, l_px, tw - nw - l_px, cv2.BORDER_CONSTANT,
                             value=(pad_value, pad_value, pad_value))
    return out, r, (float(l_px), float(t_px))


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (not RuntimeError subclasses) plus the generic ones."""
    from onnxruntime.capi import onnxruntime_pybind11_state as st  # lazy: onnxruntime, only for ONNX detectors

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph",
             "RuntimeException", "NotImplemented", "ModelLoaded", "EngineError", "EPFail")
    own = tuple(getattr(st, n) for n in names if isinstance(getattr(st, n, None), type))
    return (*own, RuntimeError, OSError, ValueError)


class OnnxYoloDetector:
    """Person detector for YOLO-family ONNX exports run through onnxruntime.

    Output layouts (``layout``): ``"v8"`` = ``[1, 4+nc, N]`` rows ``cx,cy,w,h,cls...`` (YOLOv8/11,
    no objectness); ``"v5"`` = ``[1, N, 5+nc]`` rows ``cx,cy,w,h,obj,cls...`` (YOLOv5/7);
    ``"end2end"`` = ``[1, N, 6]`` rows ``x1,y1,x2,y2,score,class`` (exports with NMS built in);
    ``"auto"`` picks v8 when the box axis is the last one (``shape[1] < shape[2]``), else v5.
    Boxes are in the letterboxed input's pixels and are mapped back to the frame.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        input_size: int | tuple[int, int] = 640,
        conf: float = 0.25,
        iou: float = 0.45,
        person_class: int = 0,
        layout: str = "auto",
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort  # lazy: onnxruntime, only for ONNX detectors

        expected = "a YOLO ONNX model (.onnx)"
        p = require_file(path, expected)
        if layout not in ("auto", "v8", "v5", "end2end"):
            raise ValueError(f"unknown YOLO output layout {layout!r} (auto, v8, v5, end2end)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(p), sess_options=opts,
                                              providers=providers or ["CPUExecutionProvider"])
        except _ort_errors() as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(p, expected, f"onnxruntime cannot load it ({msg[:200]})") from None
        inputs = self._sess.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelFileError(p, expected, f"needs one NCHW image input, has {[i.shape for i in inputs]}")
        self._input_name = inputs[0].name
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        fixed = inputs[0].shape[2:]
        if all(isinstance(d, int) for d in fixed):
            size = (int(fixed[0]), int(fixed[1]))  # a static export only accepts its own size
        self.input_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.conf, self.iou = float(conf), float(iou)
        self.person_class, self.layout = int(person_class), layout
        self.path = str(p)

    def _decode(self, out: np.ndarray) -> Detections:
        """Turn the raw output tensor into person boxes (letterbox pixels) and scores."""
        if out.ndim == 3:
            out = out[0]
        if out.ndim != 2:
            raise ValueError(f"unexpected YOLO output shape {out.shape}")
        layout = self.layout
        if layout == "auto":
            layout = "v8" if out.shape[0] < out.shape[1] else "v5"
        if layout == "v8":
            rows = out.T
            if rows.shape[1] <= 4 + self.person_class:
                raise ValueError(f"YOLOv8 output: {rows.shape[1] - 4} classes, no class {self.person_class}")
            scores = rows[:, 4 + self.person_class]
        elif layout == "v5":
            rows = out
            if rows.shape[1] <= 5 + self.person_class:
                raise ValueError(f"YOLOv5 output: {rows.shape[1] - 5} classes, no class {self.person_class}")
            scores = rows[:, 4] * rows[:, 5 + self.person_class]
        else:  # end2end: x1,y1,x2,y2,score,class
            rows = out
            keep = (rows[:, 5].round().astype(np.int64) == self.person_class) & (rows[:, 4] >= self.conf)
            return rows[keep, :4].astype(np.float32), rows[keep, 4].astype(np.float32)
        keep = scores >= self.conf
        rows, scores = rows[keep], scores[keep]
        cx, cy, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        return boxes.astype(np.float32), scores.astype(np.float32)

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """Letterbox, run the network, decode person boxes, NMS, and map back to frame pixels."""
        frame = _check_frame(frame_bgr)
        h, w = frame.shape[:2]
        img, r, (left, top) = letterbox(frame, self.input_size)
        blob = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        out = self._sess.run(None, {self._input_name: blob})[0]
        boxes, scores = self._decode(np.asarray(out, np.float32))
        if len(boxes) == 0:
            return _empty()
        boxes, scores = nms_xyxy(boxes, scores, self.iou, self.conf)
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - left) / r).clip(0, w)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - top) / r).clip(0, h)
        return boxes, scores


@dataclass(frozen=True)
class DetectorKind:
    """A registry entry: how to build the detector, whether it needs a model file, its config options."""

    build: Callable[..., PersonDetector]
    needs_file: bool
    options: Callable[[DetectorConfig], dict[str, Any]]


# The detector registry (torchreid ``init_model`` style): name -> entry. Its names are the schema's
# DETECTOR_KINDS (config.py validates ``detector.kind``); a kind added here must be added there.
DETECTOR_FACTORIES: dict[str, DetectorKind] = {
    "hog": DetectorKind(HogDetector, False, lambda d: {"upscale": d.upscale, "min_score": d.min_score}),
    "onnx": DetectorKind(OnnxYoloDetector, True, lambda d: {"conf": d.min_score}),
}
_ALIASES = {"yolo": "onnx", "onnx_yolo": "onnx"}
if tuple(DETECTOR_FACTORIES) != DETECTOR_KINDS:
    raise RuntimeError(f"detector registry {tuple(DETECTOR_FACTORIES)} differs from config.DETECTOR_KINDS")


def load_detector(kind: str, path: str | os.PathLike | None = None, **params: Any) -> PersonDetector:
    """Build a person detector by registry name: ``"hog"`` (no file) or ``"onnx"``/``"yolo"`` (needs ``path``)."""
    k = _ALIASES.get(kind.lower(), kind.lower())
    entry = DETECTOR_FACTORIES.get(k)
    if entry is None:
        raise ValueError(f"unknown detector kind {kind!r} ({', '.join(DETECTOR_FACTORIES)})")
    if entry.needs_file and path is None:
        raise ValueError(f"detector {kind!r} needs a model path (a YOLO .onnx export)")
    if not entry.needs_file and path is not None:
        raise ValueError(f"the {k} detector is built into OpenCV and takes no model file")
    return entry.build(path, **params) if entry.needs_file else entry.build(**params)


def detector_from_config(d: DetectorConfig, path: str | os.PathLike | None) -> PersonDetector:
    """The detector of a ``detector:`` config section (``path`` already resolved; ignored without a file)."""
    entry = DETECTOR_FACTORIES[d.kind]
    return load_detector(d.kind, path if entry.needs_file else None, **entry.options(d))
