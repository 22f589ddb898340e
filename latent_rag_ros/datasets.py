"""Readers that turn a re-ID dataset, a folder of crops, a video or a rosbag2 into person crops.

Every source yields :class:`Sample` objects (a BGR uint8 crop plus its labels when known), so the
store build tool, the evaluation runner and the bag tools share one way of reading data.

Supported layouts (``open_source`` detects them):

* **Market-1501** (and CUHK03-NP, DukeMTMC-style copies): ``bounding_box_train/``,
  ``bounding_box_test/`` and ``query/`` holding ``0002_c1s1_000451_03.jpg`` (pid ``0002``,
  camera 1). pid ``-1`` (junk) is skipped; pid ``0000`` (distractors) is kept in the gallery.
  The root may also be a folder holding such a layout under ``detected/`` (preferred),
  ``labeled/`` or as its only sub-folder.
* **MSMT17** (V1 ``train/`` + ``test/`` or V2 ``mask_train_v2/`` + ``mask_test_v2/``, with
  ``list_train.txt``, ``list_val.txt``, ``list_query.txt``, ``list_gallery.txt``): each list line
  is ``0000/0000_000_01_0303morning_0015_0.jpg 0``; the pid is the list's label and the camera is
  the third ``_`` field of the file name. Train and test identities are numbered separately in
  MSMT17, so train/val pids are given a ``t`` prefix (``t0000``) to keep them apart.
* **CUHK03** in the torchreid layout: ``images_detected/`` (or ``images_labeled/``) holding
  ``1_001_1_01.png`` = campus_pid_view_image. The query/gallery/train split comes from
  ``cuhk03_new_protocol_config_detected.mat`` (the new protocol of Zhong et al., read with
  ``scipy.io.loadmat``, which never runs code) or from torchreid's ``splits_new_detected.json``
  (first split). pid = ``campus_pid`` (e.g. ``1_001``), camid = ``2 * (campus - 1) + view``.
  Without a split file only ``split=None``/``"train"`` (all images) is available.
* **A plain folder of crops**: images directly inside (pid ``None``, unless the file names follow
  the Market-1501 pattern) or in per-identity sub-folders (pid = sub-folder name).
* **A video file** (``.avi``, ``.mp4``, ...): needs a detector
  (``detect(frame_bgr) -> (boxes [N,4] xyxy float32, scores [N])``); crops are named
  ``video.avi#f000123_b2`` (frame 123, box 2).
* **A rosbag2** (a folder with ``metadata.yaml`` or a ``.db3``/``.mcap`` file) with a
  ``sensor_msgs/msg/Image`` topic. When the bag carries the label topic written by
  :func:`latent_rag_ros.eval.bags.make_bag`, crops are cut at the labelled boxes (or, with a
  detector, detected boxes take the pid of the labelled box they overlap); otherwise detector
  crops or, with no detector, whole frames.

Why one module of ~530 lines: each reader is short, and they share the Sample type, the
crop/label matching and :func:`needs_detector` (the one source/detector rule); a split would
spread that one rule over several files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from scipy.io import loadmat

from latent_rag_ros.bagio import LABEL_TOPIC, read_images, read_labels
from latent_rag_ros.config import DetectorConfig
from latent_rag_ros.people import crop_people

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")
BAG_SUFFIXES = (".db3", ".mcap")
SPLITS = ("query", "gallery", "train")
_MARKET_DIRS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
_MARKET_RE = re.compile(r"^(-?\d+)_c(\d+)")
_CUHK03_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)$")


class DatasetError(ValueError):
    """A data source is missing, of an unknown layout, or holds an unreadable image."""


class Detector(Protocol):
    """What a person detector must offer to cut crops out of video frames."""

    def detect(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (boxes float32 [N,4] xyxy pixels, scores float32 [N])."""
        ...


@dataclass
class Sample:
    """One person crop (uint8 HxWx3 BGR) with a stable unique name and its labels when known."""

    image: np.ndarray
    name: str
    pid: str | None = None
    camid: int | None = None
    frame: int | None = None
    box: tuple[float, float, float, float] | None = field(default=None, repr=False)
    """Box of the crop in its source frame (xyxy pixels), for video/bag sources."""


@dataclass(frozen=True)
class Entry:
    """One image file of a labelled dataset, before it is read: path, unique name and labels."""

    path: Path
    name: str
    pid: str | None
    camid: int | None


# ----------------------------------------------------------------------------------------- helpers


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 HxWx3 BGR, raising DatasetError naming the file if it fails."""
    p = Path(path)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read image file ({exc})") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DatasetError(f"{p}: not a readable image (expected a JPEG/PNG/BMP person crop)")
    return img


def crop(frame: np.ndarray, box: Sequence[float] | np.ndarray, pad: float = 0.0) -> np.ndarray:
    """Cut ``box`` (xyxy pixels) out of ``frame``, growing it by ``pad`` x its size on each side.

    The box is clipped to the frame; the result is a contiguous copy. An empty box raises ValueError.
    """
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    bw, bh = x2 - x1, y2 - y1
    x1, x2 = x1 - pad * bw, x2 + pad * bw
    y1, y2 = y1 - pad * bh, y2 + pad * bh
    xa, ya = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    xb, yb = min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2)))
    if xb <= xa or yb <= ya:
        raise ValueError(f"empty crop box {tuple(box)} for a {w}x{h} frame")
    return np.ascontiguousarray(frame[ya:yb, xa:xb])


def parse_market_name(filename: str) -> tuple[str, int] | None:
    """Parse ``0002_c1s1_000451_03.jpg`` into (pid "0002", camid 1); None if it does not match."""
    m = _MARKET_RE.match(Path(filename).name)
    if m is None:
        return None
    pid = m.group(1)
    return (pid if pid.startswith("-") else pid.zfill(4)), int(m.group(2))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS} or None (all)")


# ------------------------------------------------------------------------------------------ Market


def find_market_root(root: str | Path) -> Path | None:
    """Return the folder holding a Market-1501-style layout at or just below ``root``, else None."""
    root = Path(root)
    candidates = [root, root / "detected", root / "labeled"]
    if root.is_dir():
        subdirs = [d for d in root.iterdir() if d.is_dir()]
        if len(subdirs) == 1:
            candidates.append(subdirs[0])
    for c in candidates:
        if c.is_dir() and ((c / "query").is_dir() or (c / "bounding_box_test").is_dir()):
            return c
    return None


def list_market(root: str | Path, split: str) -> list[Entry]:
    """List one split (query / gallery / train) of a Market-1501-style layout, junk (pid -1) removed."""
    _check_split(split)
    base = find_market_root(root)
    if base is None:
        raise DatasetError(f"{root}: no Market-1501 layout (expected query/ and bounding_box_test/)")
    folder = base / _MARKET_DIRS[split]
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing (split {split!r} of a Market-1501 layout)")
    out: list[Entry] = []
    for p in _images_in(folder):
        parsed = parse_market_name(p.name)
        if parsed is None:
            raise DatasetError(f"{p}: file name does not follow the Market-1501 pattern PPPP_cC...")
        pid, camid = parsed
        if pid.startswith("-"):
            continue  # junk images: not used by the standard protocol
        out.append(Entry(p, f"{folder.name}/{p.name}", pid, camid))
    return out


def market_query_gallery(root: str | Path) -> tuple[list[Entry], list[Entry]]:
    """Return (query, gallery) entries of a Market-1501-style layout for the standard protocol."""
    return list_market(root, "query"), list_market(root, "gallery")


# ------------------------------------------------------------------------------------------ MSMT17


def _msmt_dirs(root: Path) -> tuple[Path, Path] | None:
    for train, test in (("train", "test"), ("mask_train_v2", "mask_test_v2")):
        if (root / train).is_dir() and (root / test).is_dir():
            return root / train, root / test
    return None


def is_msmt17(root: str | Path) -> bool:
    """True when ``root`` holds an MSMT17 layout (list files plus train/test image folders)."""
    root = Path(root)
    return (root / "list_query.txt").is_file() and _msmt_dirs(root) is not None


def list_msmt17(root: str | Path, split: str) -> list[Entry]:
    """List one split of MSMT17 from its ``list_*.txt`` files (train = list_train + list_val)."""
    _check_split(split)
    root = Path(root)
    dirs = _msmt_dirs(root)
    if dirs is None:
        raise DatasetError(f"{root}: no MSMT17 layout (expected train/ and test/ or mask_*_v2/)")
    train_dir, test_dir = dirs
    lists = {"train": ["list_train.txt", "list_val.txt"], "query": ["list_query.txt"],
             "gallery": ["list_gallery.txt"]}[split]
    folder = train_dir if split == "train" else test_dir
    out: list[Entry] = []
    for list_name in lists:
        lp = root / list_name
        if not lp.is_file():
            if list_name == "list_val.txt":
                continue
            raise DatasetError(f"{lp}: missing (MSMT17 split list)")
        for ln, line in enumerate(lp.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            fields = Path(parts[0]).name.split("_")
            if len(parts) < 2 or len(fields) < 3 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(f"{lp}:{ln}: expected 'PID/NAME.jpg LABEL', got {line!r}")
            pid = f"{int(parts[1]):04d}"
            if split == "train":
                pid = "t" + pid
            out.append(Entry(folder / parts[0], f"{folder.name}/{parts[0]}", pid, int(fields[2])))
    return out


# ------------------------------------------------------------------------------------------ CUHK03


def _cuhk03_dir(root: Path) -> Path | None:
    for name in ("images_detected", "images_labeled"):
        if (root / name).is_dir():
            return root / name
    return None


def is_cuhk03(root: str | Path) -> bool:
    """True when ``root`` holds torchreid's CUHK03 layout (``images_detected/`` or ``images_labeled/``)."""
    return _cuhk03_dir(Path(root)) is not None


def _cuhk03_labels(filename: str) -> tuple[str, int]:
    m = _CUHK03_RE.match(Path(filename).stem)
    if m is None:
        raise DatasetError(f"{filename}: not a CUHK03 name campus_pid_view_image (e.g. 1_001_1_01.png)")
    campus, pid, view = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return f"{campus}_{pid:03d}", 2 * (campus - 1) + view


def list_cuhk03(root: str | Path, split: str | None) -> list[Entry]:
    """List a CUHK03 split from the new-protocol .mat or torchreid's split json (see module doc)."""
    _check_split(split)
    root = Path(root)
    img_dir = _cuhk03_dir(root)
    if img_dir is None:
        raise DatasetError(f"{root}: no CUHK03 layout (expected images_detected/ or images_labeled/)")
    kind = img_dir.name.split("_", 1)[1]
    files = _images_in(img_dir)
    names: list[str] | None = None
    mat = root / f"cuhk03_new_protocol_config_{kind}.mat"
    js = root / f"splits_new_{kind}.json"
    if split is not None and mat.is_file():
        try:
            cfg = loadmat(str(mat))
            filelist = [str(np.asarray(f).ravel()[0]) for f in cfg["filelist"].ravel()]
            idx = cfg[{"train": "train_idx", "query": "query_idx", "gallery": "gallery_idx"}[split]]
        except (KeyError, ValueError, OSError) as exc:
            raise DatasetError(f"{mat}: not a CUHK03 new-protocol config ({exc})") from None
        names = [filelist[int(i) - 1] for i in np.asarray(idx).ravel()]
    elif split is not None and js.is_file():
        try:
            splits = json.loads(js.read_text(encoding="utf-8"))
            names = [Path(str(item[0])).name for item in splits[0][split]]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DatasetError(f"{js}: not a torchreid CUHK03 split file ({exc})") from None
    elif split in ("query", "gallery"):
        raise DatasetError(f"{root}: CUHK03 query/gallery need {mat.name} or {js.name} beside {img_dir.name}/")
    paths = files if names is None else [img_dir / n for n in names]
    out = []
    for p in paths:
        pid, camid = _cuhk03_labels(p.name)
        out.append(Entry(p, f"{img_dir.name}/{p.name}", pid, camid))
    return out


# ------------------------------------------------------------------------------------------ folders


def list_folder(root: str | Path) -> list[Entry]:
    """List a plain folder of crops: pid from per-identity sub-folders, or from Market-style names."""
    root = Path(root)
    out: list[Entry] = []
    for p in _images_in(root):
        parsed = parse_market_name(p.name)
        pid, camid = parsed if parsed and not parsed[0].startswith("-") else (None, None)
        out.append(Entry(p, p.name, pid, camid))
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        for p in _images_in(sub):
            out.append(Entry(p, f"{sub.name}/{p.name}", sub.name, None))
    return out


def list_split(root: str | Path, split: str | None) -> list[Entry]:
    """List a labelled image dataset (Market / MSMT17 / CUHK03 / plain folder) for ``split``.

    ``split=None`` lists every split of a benchmark (names stay unique: they include the folder).
    A plain folder has no split: asking it for query/gallery/train raises DatasetError.
    """
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    splits = [split] if split else ["train", "gallery", "query"]
    base = find_market_root(root)
    if base is not None:
        if split is None:  # all splits present (a copy without bounding_box_train/ is fine)
            splits = [s for s in splits if (base / _MARKET_DIRS[s]).is_dir()]
        return [e for s in splits for e in list_market(root, s)]
    if is_msmt17(root):
        return [e for s in splits for e in list_msmt17(root, s)]
    if is_cuhk03(root):
        return list_cuhk03(root, split)
    if split is not None:
        raise DatasetError(f"{root}: a plain folder of crops has no {split!r} split "
                           "(expected a Market-1501, MSMT17 or CUHK03 layout)")
    entries = list_folder(root)
    if not entries:
        raise DatasetError(f"{root}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return entries


def load_entries(entries: Iterable[Entry]) -> Iterator[Sample]:
    """Read each entry's image and yield it as a Sample."""
    for e in entries:
        yield Sample(read_image(e.path), e.name, e.pid, e.camid, None)


# ------------------------------------------------------------------------------------------ video


def _require_detector(detector: Detector | None, what: str) -> Detector:
    if detector is None or not hasattr(detector, "detect"):
        raise DatasetError(f"{what}: a person detector is needed to cut crops out of frames "
                           "(pass detector=... with detect(frame_bgr) -> (boxes, scores))")
    return detector


def _detect_crops(frame: np.ndarray, detector: Detector, stem: str, index: int, pad: float,
                  min_score: float, labels: dict[str, Any] | None = None, min_height: float = 0.0,
                  max_crops: int = 1 << 30) -> Iterator[Sample]:
    """Crops of the people ``detector`` finds, filtered and padded like the nodes do (people.crop_people)."""
    rules = DetectorConfig(min_score=min_score, min_height=min_height, max_crops=max_crops, pad=pad)  # type: ignore[arg-type]
    for b, person in enumerate(crop_people(detector, frame, rules)):
        box = np.asarray(person.box, dtype=np.float64)
        pid, camid = _match_label(box, labels) if labels else (None, None)
        yield Sample(person.crop, f"{stem}#f{index:06d}_b{b}", pid, camid, index, tuple(float(v) for v in box))


def read_video(path: str | Path, detector: Detector, pad: float = 0.0, min_score: float = 0.0,
               frame_step: int = 1, max_frames: int | None = None, min_height: float = 0.0,
               max_crops: int = 1 << 30) -> Iterator[Sample]:
    """Yield detector crops from a video file, one Sample per detected person (name ``v.avi#f..._b..``).

    Boxes are filtered (``min_score``, ``min_height``, ``max_crops`` best first) and padded by
    ``pad`` x their size per side, exactly as the detector node does.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: video file not found")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise DatasetError(f"{p}: cannot be opened as a video (expected {', '.join(VIDEO_SUFFIXES)})")
    try:
        index = 0
        while max_frames is None or index < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if index % max(1, frame_step) == 0:
                yield from _detect_crops(frame, detector, p.name, index, pad, min_score, None, min_height, max_crops)
            index += 1
    finally:
        cap.release()


def read_video_frames(path: str | Path, max_frames: int | None = None,
                      frame_step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, BGR frame) from a video file."""
    p = Path(path)
    cap = cv2.VideoCapture(str(p))
    if not p.is_file() or not cap.isOpened():
        raise DatasetError(f"{p}: cannot be opened as a video")
    try:
        index = 0
        while max_frames is None or index < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if index % max(1, frame_step) == 0:
                yield index, frame
            index += 1
    finally:
        cap.release()


# ------------------------------------------------------------------------------------------ bags


def is_bag(path: str | Path) -> bool:
    """True for a rosbag2 folder (``metadata.yaml``) or a bare ``.db3`` / ``.mcap`` file."""
    p = Path(path)
    return (p.is_dir() and (p / "metadata.yaml").is_file()) or (p.is_file() and p.suffix in BAG_SUFFIXES)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _match_label(box: np.ndarray, labels: dict[str, Any], min_iou: float = 0.5) -> tuple[str | None, int | None]:
    best, best_iou = None, min_iou
    for lb, pid in zip(labels.get("boxes", []), labels.get("pids", []), strict=False):
        iou = _iou(np.asarray(box, dtype=np.float64), np.asarray(lb, dtype=np.float64))
        if iou >= best_iou:
            best, best_iou = pid, iou
    camid = labels.get("camid")
    return (None if best is None else str(best)), (None if camid is None else int(camid))


def read_bag(path: str | Path, detector: Detector | None = None, topic: str | None = None,
             pad: float = 0.0, min_score: float = 0.0, max_frames: int | None = None,
             min_height: float = 0.0, max_crops: int = 1 << 30) -> Iterator[Sample]:
    """Yield crops from a rosbag2's Image topic, using the bag's label topic when it has one.

    With a detector, detected boxes take the pid of the labelled box they overlap (IoU >= 0.5).
    """
    p = Path(path)
    labels = read_labels(p, LABEL_TOPIC)
    stem = p.name
    for index, (_t, stamp, frame) in enumerate(read_images(p, topic)):
        if max_frames is not None and index >= max_frames:
            break
        lab = labels.get(stamp)
        if detector is not None:
            yield from _detect_crops(frame, detector, stem, index, pad, min_score, lab, min_height, max_crops)
        elif lab is not None and lab.get("boxes"):
            camid = lab.get("camid")
            pids = lab.get("pids") or [None] * len(lab["boxes"])
            for b, (box, pid) in enumerate(zip(lab["boxes"], pids, strict=False)):
                try:
                    img = crop(frame, box, pad)
                except ValueError:
                    continue
                yield Sample(img, f"{stem}#f{index:06d}_b{b}", None if pid is None else str(pid),
                             None if camid is None else int(camid), index, tuple(float(v) for v in box))
        else:
            yield Sample(frame, f"{stem}#f{index:06d}", None, None, index, None)


# ------------------------------------------------------------------------------------------ entry


def source_kind(path: str | Path) -> str:
    """Name the layout of ``path``: market, msmt17, cuhk03, folder, video or bag."""
    p = Path(path)
    if is_bag(p):
        return "bag"
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if p.is_dir():
        if find_market_root(p) is not None:
            return "market"
        if is_msmt17(p):
            return "msmt17"
        if is_cuhk03(p):
            return "cuhk03"
        return "folder"
    if not p.exists():
        raise DatasetError(f"{p}: not found")
    raise DatasetError(f"{p}: unknown source (expected a dataset folder, a video {VIDEO_SUFFIXES} "
                       f"or a rosbag2)")


DETECTED_KINDS = ("video", "bag")


def needs_detector(path: str | Path) -> bool:
    """The one source/detector rule: videos and bags hold whole frames, so people are cut out of them
    with the configured person detector; crop folders and data set layouts are crops already.

    (A labelled bag without a detector falls back to its labelled boxes, but every command gives
    bags the detector so that protecting, storing and evaluating a bag see the same crops.)
    """
    return source_kind(path) in DETECTED_KINDS


def open_source(path: str | Path, detector: Detector | None = None, split: str | None = None,
                topic: str | None = None, **options: Any) -> Iterable[Sample]:
    """Open any supported source (see module doc) and yield its person crops as Samples.

    ``split`` (query / gallery / train / None) applies to benchmark layouts; ``topic`` to bags.
    Extra options for video/bag sources: ``pad``, ``min_score``, ``min_height``, ``max_crops``,
    ``max_frames``, ``frame_step`` (video). Unknown options raise TypeError.
    """
    unknown = set(options) - {"pad", "min_score", "min_height", "max_crops", "max_frames", "frame_step"}
    if unknown:
        raise TypeError(f"open_source: unknown options {sorted(unknown)}")
    kind = source_kind(path)
    pad = float(options.get("pad", 0.0))
    min_score = float(options.get("min_score", 0.0))
    min_height = float(options.get("min_height", 0.0))
    max_crops = int(options.get("max_crops", 1 << 30))
    max_frames = options.get("max_frames")
    if kind == "video":
        det = _require_detector(detector, str(path))
        return read_video(path, det, pad, min_score, int(options.get("frame_step", 1)), max_frames,
                          min_height, max_crops)
    if kind == "bag":
        return read_bag(path, detector, topic, pad, min_score, max_frames, min_height, max_crops)
    return load_entries(list_split(path, split))
