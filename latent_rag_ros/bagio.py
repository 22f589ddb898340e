"""rosbag2 files without ROS: typestore, messages, recorder and readers (no dataset code: bottom layer).

Built on the ``rosbags`` library (sqlite3 and mcap storage, CDR serialisation, a typestore with
this package's own messages registered from their ``.msg`` text). ``rosbags``' reader needs a
bag folder with ``metadata.yaml``; a bare ``.mcap`` or ``.db3`` file (what a crashed recorder
leaves) is read here with the ``mcap`` library or Python's ``sqlite3`` and then decoded with the
same typestore, which is why a small raw-message iterator is written by hand below.

Labels travel with frames on ``LABEL_TOPIC`` as ``std_msgs/msg/String`` holding JSON
``{"stamp": <header stamp ns>, "boxes": [[x1,y1,x2,y2], ...], "pids": [...], "camid": int|null}``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mcap.exceptions import McapError
from mcap.reader import make_reader
from rosbags.image import ImageError, message_to_cvimage
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from latent_rag_ros.config import BAG_CAMERA_TOPIC, EGRESS_TOPIC, LABEL_TOPIC
from latent_rag_ros.interface_defs import PACKAGE, definition_text, message_names

IMAGE_TOPIC = BAG_CAMERA_TOPIC
PROTECTED_TOPIC = EGRESS_TOPIC
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
PROTECTED_TYPE = f"{PACKAGE}/msg/ProtectedCrop"
STORAGES = ("sqlite3", "mcap")


class BagError(RuntimeError):
    """A bag is missing, unreadable, or lacks the topic asked for."""


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The newest ROS 2 typestore of ``rosbags`` with this package's messages registered."""
    store_id = getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST
    store = get_typestore(store_id)
    types: dict[str, Any] = {}
    for name in message_names() or ["PersonCrop", "PersonCrops", "ProtectedCrop"]:
        types.update(get_types_from_msg(definition_text(name), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    ts = typestore().types
    t = ts["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    return ts["std_msgs/msg/Header"](stamp=t, frame_id=frame_id)


def image_message(bgr: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "bgr8") -> Any:
    """Build a ``sensor_msgs/msg/Image`` (bgr8 or rgb8) from a uint8 HxWx3 BGR array."""
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 BGR, got {bgr.dtype} {bgr.shape}")
    if encoding not in ("bgr8", "rgb8"):
        raise ValueError(f"encoding must be bgr8 or rgb8, not {encoding!r}")
    pix = bgr if encoding == "bgr8" else bgr[:, :, ::-1]
    h, w = pix.shape[:2]
    return typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=w * 3, data=np.ascontiguousarray(pix).reshape(-1))


def message_to_bgr(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs`` Image or CompressedImage into uint8 HxWx3 BGR (via rosbags-image)."""
    try:
        img = message_to_cvimage(msg, "bgr8")
    except (AssertionError, ImageError, cv2.error, TypeError) as exc:  # rosbags asserts on undecodable data
        kind = getattr(msg, "format", "") or msg.encoding
        raise ValueError(f"undecodable {kind} image: {type(exc).__name__}") from None
    if img is None:
        raise ValueError("undecodable compressed image")
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------------------- writing


class BagRecorder:
    """Raw rosbag2 writer: add topics, then write already-serialised CDR bytes (e.g. rclpy's).

    ``storage`` is ``sqlite3`` or ``mcap``; the bag folder must not exist yet.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3") -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; expected one of {STORAGES}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path}: exists already; a bag is never overwritten")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self.storage = storage

    def add_topic(self, topic: str, msgtype: str) -> Any:
        """Register ``topic`` with ROS 2 type ``msgtype`` (e.g. ``sensor_msgs/msg/Image``); returns a connection."""
        if topic in self._conns:
            return self._conns[topic]
        if msgtype not in typestore().types:
            raise BagError(f"message type {msgtype!r} is unknown to the typestore")
        conn = self._writer.add_connection(topic, msgtype, typestore=typestore())
        self._conns[topic] = conn
        return conn

    def write(self, conn: Any, t_ns: int, cdr_bytes: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Write one serialised message at bag time ``t_ns`` (nanoseconds)."""
        data = cdr_bytes.tobytes() if isinstance(cdr_bytes, np.ndarray) else bytes(cdr_bytes)
        self._writer.write(conn, int(t_ns), data)

    def write_message(self, conn: Any, t_ns: int, msg: Any) -> None:
        """Serialise a rosbags message object to CDR and write it."""
        self.write(conn, t_ns, typestore().serialize_cdr(msg, conn.msgtype))

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None  # type: ignore[assignment]

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------- reading


def _bag_folder(path: Path) -> Path | None:
    if path.is_dir() and (path / "metadata.yaml").is_file():
        return path
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        text = (path.parent / "metadata.yaml").read_text(encoding="utf-8", errors="replace")
        if path.name in text:
            return path.parent
    return None


def bag_topics(path: str | Path) -> dict[str, str]:
    """Map each topic of a bag (folder, ``.db3`` or ``.mcap``) to its message type."""
    return {t: m for t, m, _, _ in _iter_raw(Path(path), None, meta_only=True)}


def _iter_raw(path: Path, topics: set[str] | None, meta_only: bool = False
              ) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield (topic, msgtype, bag time ns, CDR bytes) in time order; meta_only yields each topic once."""
    if not path.exists():
        raise BagError(f"{path}: bag not found")
    folder = _bag_folder(path)
    if folder is not None:
        try:
            with Reader(folder) as reader:
                conns = [c for c in reader.connections if topics is None or c.topic in topics]
                if meta_only:
                    for c in conns:
                        yield c.topic, c.msgtype, 0, b""
                    return
                for conn, t, raw in reader.messages(connections=conns):
                    yield conn.topic, conn.msgtype, int(t), bytes(raw)
        except (OSError, KeyError, ValueError) as exc:
            raise BagError(f"{folder}: unreadable rosbag2 ({exc})") from None
        except Exception as exc:  # rosbags' ReaderError and friends
            if type(exc).__module__.startswith("rosbags"):
                raise BagError(f"{folder}: unreadable rosbag2 ({exc})") from None
            raise
        return
    if path.suffix == ".mcap":
        yield from _iter_mcap(path, topics, meta_only)
    elif path.suffix == ".db3":
        yield from _iter_db3(path, topics, meta_only)
    else:
        raise BagError(f"{path}: not a rosbag2 (expected a folder with metadata.yaml, a .db3 or a .mcap)")


def _iter_mcap(path: Path, topics: set[str] | None, meta_only: bool) -> Iterator[tuple[str, str, int, bytes]]:
    try:
        with path.open("rb") as fh:
            reader = make_reader(fh)
            if meta_only:
                summary = reader.get_summary()
                if summary is not None:
                    for ch in summary.channels.values():
                        if topics is None or ch.topic in topics:
                            yield ch.topic, summary.schemas[ch.schema_id].name, 0, b""
                    return
            seen: set[str] = set()
            for schema, channel, message in reader.iter_messages(topics=None if topics is None else list(topics),
                                                                 log_time_order=True):
                if meta_only:
                    if channel.topic not in seen:
                        seen.add(channel.topic)
                        yield channel.topic, schema.name if schema else "", 0, b""
                    continue
                yield channel.topic, schema.name if schema else "", int(message.log_time), bytes(message.data)
    except (McapError, OSError, ValueError) as exc:
        raise BagError(f"{path}: unreadable mcap file ({exc})") from None


def _iter_db3(path: Path, topics: set[str] | None, meta_only: bool) -> Iterator[tuple[str, str, int, bytes]]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BagError(f"{path}: unreadable sqlite3 bag ({exc})") from None
    try:
        rows = con.execute("SELECT id, name, type FROM topics").fetchall()
        tmap = {i: (n, t) for i, n, t in rows if topics is None or n in topics}
        if meta_only:
            for n, t in tmap.values():
                yield n, t, 0, b""
            return
        for tid, ts, data in con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp, id"):
            if tid in tmap:
                yield tmap[tid][0], tmap[tid][1], int(ts), bytes(data)
    except sqlite3.Error as exc:
        raise BagError(f"{path}: unreadable sqlite3 bag ({exc})") from None
    finally:
        con.close()


def _deserialize(data: bytes, msgtype: str, where: Path) -> Any:
    try:
        return typestore().deserialize_cdr(data, msgtype)
    except KeyError:
        raise BagError(f"{where}: message type {msgtype!r} is unknown to the typestore") from None


def image_topics(path: str | Path) -> list[str]:
    """Topics of ``sensor_msgs/msg/Image`` or ``CompressedImage`` in the bag, in bag order."""
    return [t for t, m in bag_topics(path).items() if m in (IMAGE_TYPE, COMPRESSED_TYPE)]


def read_images(bag: str | Path, topic: str | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (bag time ns, header stamp ns, BGR uint8 frame) from an Image topic (default: the first)."""
    path = Path(bag)
    types = bag_topics(path)
    if topic is None:
        cands = image_topics(path)
        if not cands:
            raise BagError(f"{path}: no sensor_msgs/msg/Image topic (topics: {sorted(types)})")
        topic = cands[0]
    elif topic not in types:
        raise BagError(f"{path}: no topic {topic!r} (topics: {sorted(types)})")
    for _t, msgtype, t_ns, raw in _iter_raw(path, {topic}):
        msg = _deserialize(raw, msgtype, path)
        yield t_ns, _stamp_ns(msg.header), message_to_bgr(msg)


def read_labels(bag: str | Path, topic: str = LABEL_TOPIC) -> dict[int, dict[str, Any]]:
    """Read the label topic written by :func:`make_bag`: header stamp ns -> label dict ({} if none)."""
    path = Path(bag)
    if topic not in bag_topics(path):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for _t, msgtype, _ns, raw in _iter_raw(path, {topic}):
        try:
            lab = json.loads(_deserialize(raw, msgtype, path).data)
            out[int(lab["stamp"])] = lab
        except (ValueError, KeyError, TypeError) as exc:
            raise BagError(f"{path}: malformed label message on {topic} ({exc})") from None
    return out


def read_protected(bag: str | Path, topic: str = PROTECTED_TOPIC) -> list[dict[str, Any]]:
    """Decode every ``latent_rag_ros/msg/ProtectedCrop`` on ``topic`` into a plain dict.

    Keys: ``t_ns``, ``stamp_ns``, ``frame_id``, ``image`` (BGR uint8), ``embedding`` (float32),
    ``embedding_model``, ``box`` (x, y, w, h), ``track_id``, ``label``, ``store_version``, ``m``,
    ``steps``, ``timings_ms`` (stage -> ms).
    """
    path = Path(bag)
    types = bag_topics(path)
    if topic not in types:
        raise BagError(f"{path}: no topic {topic!r} (topics: {sorted(types)})")
    if types[topic] != PROTECTED_TYPE:
        raise BagError(f"{path}: topic {topic} carries {types[topic]}, expected {PROTECTED_TYPE}")
    out = []
    for _t, msgtype, t_ns, raw in _iter_raw(path, {topic}):
        msg = _deserialize(raw, msgtype, path)
        roi = msg.box
        out.append({
            "t_ns": t_ns,
            "stamp_ns": _stamp_ns(msg.header),
            "frame_id": msg.header.frame_id,
            "image": message_to_bgr(msg.image),
            "embedding": np.asarray(msg.embedding, dtype=np.float32).copy(),
            "embedding_model": msg.embedding_model,
            "box": (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
            "track_id": int(msg.track_id),
            "label": msg.label,
            "store_version": msg.store_version,
            "m": int(msg.m),
            "steps": int(msg.steps),
            "timings_ms": {str(k): float(v) for k, v in zip(msg.stage_names, msg.stage_ms, strict=False)},
        })
    return out


def protected_message(image_bgr: np.ndarray, embedding: np.ndarray, stamp_ns: int, **fields: Any) -> Any:
    """Build a ``ProtectedCrop`` rosbags message (rgb8 image) — used by tests and offline tools."""
    ts = typestore().types
    box = fields.get("box", (0, 0, image_bgr.shape[1], image_bgr.shape[0]))
    timings = fields.get("timings_ms", {})
    return ts[PROTECTED_TYPE](
        header=_header(stamp_ns, fields.get("frame_id", "camera")),
        image=image_message(image_bgr, stamp_ns, fields.get("frame_id", "camera"), encoding="rgb8"),
        embedding=np.asarray(embedding, dtype=np.float32).reshape(-1),
        embedding_model=str(fields.get("embedding_model", "")),
        box=ts["sensor_msgs/msg/RegionOfInterest"](x_offset=int(box[0]), y_offset=int(box[1]),
                                                   height=int(box[3]), width=int(box[2]), do_rectify=False),
        track_id=int(fields.get("track_id", -1)),
        label=str(fields.get("label", "")),
        store_version=str(fields.get("store_version", "")),
        m=int(fields.get("m", 0)),
        steps=int(fields.get("steps", 0)),
        stage_names=[str(k) for k in timings],
        stage_ms=np.asarray(list(timings.values()), dtype=np.float32),
        tag=np.zeros(0, dtype=np.uint8),   # egress strips the protector's integrity tag
    )
