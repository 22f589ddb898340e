"""Fuzzing (hypothesis) of every message handler and service, called in-process on real nodes.

The nodes are the real DetectorNode, EgressNode and StoreNode on a real rclpy context with a real
FAISS store on disk; the handlers are called directly (no DDS round trip) so thousands of inputs
run in seconds. Properties: no handler raises, every rejection is counted (what /diagnostics
carries) with its reason, egress forwards nothing that fails its checks, a refused store request
changes nothing and an accepted add is served afterwards. The protector's crop validation is fuzzed
as the function the node calls (``crop_to_bgr``); its node is covered over DDS in test_fuzz_dds.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rclpy
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from latent_rag_ros.msg import PersonCrop, ProtectedCrop
from latent_rag_ros.nodes.common import bgr_to_image, camera_to_bgr, image_to_bgr
from latent_rag_ros.nodes.images import SUPPORTED_ENCODINGS, FrameLimits
from latent_rag_ros.nodes.protector_node import MAX_LABEL_CHARS, crop_to_bgr
from latent_rag_ros.srv import AddIdentities, RetrieveLatents
from latent_rag_ros.store import open_store

from rosutil import write_params

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LIMITS = FrameLimits(max_pixels=4096, max_bytes=64 * 1024)
DIM, L, C = 8, 3, 4
ENCODINGS = st.one_of(st.sampled_from((*SUPPORTED_ENCODINGS, "nv12", "32FC1", "8SC3", "64FC4", "")),
                      st.text(max_size=12))
# ROS strings are UTF-8 on the wire: lone surrogates cannot arrive, every other code point can
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _bytes_per_pixel(encoding: str) -> int:
    from rosbags.image.image import ENCODINGMAP

    from latent_rag_ros.nodes.images import _GENERIC

    bits, _f, _d, ch = ENCODINGMAP.get(_GENERIC.get(encoding, encoding), (8, 0, "", 3))
    return ch * bits // 8


@st.composite
def images(draw: st.DrawFn) -> Image:
    """Image messages, consistent about half the time, otherwise with one or more fields broken."""
    h, w = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    enc = draw(st.one_of(st.sampled_from(SUPPORTED_ENCODINGS), ENCODINGS))
    step = w * _bytes_per_pixel(enc) + draw(st.sampled_from([0, 0, 0, 1, 5]))
    size = step * h
    broken = draw(st.sets(st.sampled_from(["step", "size", "height"]), max_size=3)) if draw(st.booleans()) else set()
    if "step" in broken:
        step = draw(st.integers(0, 400))
    if "size" in broken:
        size = draw(st.integers(0, 2000))
    height = draw(st.integers(0, 2**32 - 1)) if "height" in broken else h
    msg = Image(height=height, width=w, encoding=enc, is_bigendian=draw(st.integers(0, 1)), step=step)
    msg.data = draw(st.binary(min_size=min(size, 20000), max_size=min(size, 20000)))
    return msg


@given(images())
@SETTINGS
def test_fuzz_image_conversion_returns_a_frame_or_one_value_error(msg: Image) -> None:
    try:
        out = image_to_bgr(msg, LIMITS)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        event("rejected")
        return
    event(f"converted {msg.encoding}")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[1] * out.shape[0] <= LIMITS.max_pixels


def _real_compressed() -> list[bytes]:
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)
    return [cv2.imencode(".png", img)[1].tobytes(), cv2.imencode(".jpg", img)[1].tobytes()]


REAL = _real_compressed()


@st.composite
def compressed(draw: st.DrawFn) -> CompressedImage:
    """Garbage bytes, or a real JPEG/PNG truncated, bit-flipped or with bytes spliced in."""
    msg = CompressedImage(format=draw(st.sampled_from(["jpeg", "png", "bgr8; jpeg compressed bgr8", "", "x"])))
    if draw(st.booleans()):
        msg.data = draw(st.binary(max_size=600))
        return msg
    data = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 3]))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    msg.data = bytes(data[:cut]) + draw(st.one_of(st.just(b""), st.binary(max_size=40)))
    return msg


@given(compressed())
@SETTINGS
def test_fuzz_compressed_images(msg: CompressedImage) -> None:
    try:
        out = camera_to_bgr(msg, LIMITS)
    except ValueError as exc:
        assert str(exc)
        event("rejected")
        return
    event("decoded")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@st.composite
def person_crops(draw: st.DrawFn) -> PersonCrop:
    """Crops whose box lies anywhere (outside any frame, wrong size) with unicode/oversized labels."""
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    crop = PersonCrop(image=bgr_to_image(np.zeros((h, w, 3), np.uint8)), score=draw(FLOATS),
                      track_id=draw(st.integers(-(2**31), 2**31 - 1)), label=draw(TEXT))
    crop.box = RegionOfInterest(x_offset=draw(st.integers(0, 2**32 - 1)), y_offset=draw(st.integers(0, 2**32 - 1)),
                                width=draw(st.one_of(st.just(w), st.integers(0, 2**32 - 1))),
                                height=draw(st.one_of(st.just(h), st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        crop.image = draw(images())
    return crop


@given(person_crops())
@SETTINGS
def test_fuzz_protector_crop_validation(crop: PersonCrop) -> None:
    try:
        out = crop_to_bgr(crop, LIMITS)
    except ValueError as exc:
        assert str(exc)
        return
    assert out.shape[:2] == (crop.box.height, crop.box.width)
    assert crop.box.x_offset + crop.box.width <= 2**31 and len(crop.label) <= MAX_LABEL_CHARS


# ------------------------------------------------------------------------------------ real nodes


@pytest.fixture(scope="module")
def ros(tmp_path_factory: pytest.TempPathFactory):
    """One rclpy context whose global parameters point every node at a small real FAISS store."""
    tmp = tmp_path_factory.mktemp("fuzz")
    store = open_store(tmp / "store", create=True, dim=DIM, num_ws=L, w_dim=C)
    rng = np.random.default_rng(0)
    store.add(rng.normal(size=(6, DIM)).astype(np.float32), rng.normal(size=(6, L, C)).astype(np.float32),
              [f"p{i}" for i in range(6)])
    store.close()
    from latent_rag_ros.security import new_key

    new_key(tmp / "keys", "robot", "robot")
    new_key(tmp / "keys", "admin", "admin")
    params = write_params(tmp / "p.yaml", {"store": {"path": str(tmp / "store"), "max_m": 4, "max_add": 8},
                                           "link": {"keys_dir": str(tmp / "keys")},
                                           "ros": {"max_frame_pixels": LIMITS.max_pixels,
                                                   "max_frame_bytes": LIMITS.max_bytes}})
    if rclpy.ok():
        rclpy.shutdown()
    rclpy.init(args=["--ros-args", "-p", f"config_file:={params}"])
    yield tmp
    rclpy.shutdown()


@pytest.fixture(scope="module")
def detector(ros: Path):
    from latent_rag_ros.nodes.detector_node import DetectorNode

    node = DetectorNode()
    assert node.start_up() == ""   # configure + activate (lifecycle node), as autostart does
    yield node
    node.destroy_node()


@given(st.one_of(images(), compressed()))
@SETTINGS
def test_fuzz_detector_handler_counts_every_rejection(detector, msg) -> None:
    before = dict(detector.status.counters)
    detector.process(msg)
    after = detector.status.counters
    assert after["frames_invalid"] + after["frames_processed"] == \
        before.get("frames_invalid", 0) + before.get("frames_processed", 0) + 1
    if after["frames_invalid"] > before.get("frames_invalid", 0):
        assert detector.status.flags["last_rejection"].startswith("frames_invalid: ")


@st.composite
def protected_crops(draw: st.DrawFn) -> ProtectedCrop:
    """ProtectedCrops with broken images, NaN/inf/empty embeddings, m = T = 0 and odd labels."""
    msg = ProtectedCrop(m=draw(st.integers(0, 2**32 - 1)), steps=draw(st.integers(0, 3)), label=draw(TEXT),
                        embedding_model=draw(TEXT), store_version=draw(st.text(max_size=20)))
    msg.image = draw(st.one_of(images(), st.builds(lambda h, w: bgr_to_image(np.zeros((h, w, 3), np.uint8), None,
                                                                            "rgb8"), st.integers(1, 8),
                                                   st.integers(1, 8))))
    msg.embedding = draw(st.lists(FLOATS, max_size=16))
    return msg


@pytest.fixture(scope="module")
def egress(ros: Path):
    from latent_rag_ros.nodes.egress_node import EgressNode

    node = EgressNode()
    assert node.start_up() == ""
    sent: list[ProtectedCrop] = []
    real_publish = node.pub.publish
    node.pub.publish = lambda m: (sent.append(m), real_publish(m))  # record what really goes out
    yield node, sent
    node.destroy_node()


@given(protected_crops())
@SETTINGS
def test_fuzz_egress_forwards_only_complete_protected_crops(egress, msg: ProtectedCrop) -> None:
    from latent_rag_ros.nodes.egress_node import sign_protected

    node, sent = egress
    n = len(sent)
    node.on_protected(msg)                      # untagged: never forwarded, whatever it holds
    assert len(sent) == n and node.status.flags["last_rejection"].startswith("dropped_bad_tag: ")
    sign_protected(node.tagger, msg)            # tagged as the protector does: the content checks decide
    node.on_protected(msg)
    event("forwarded" if len(sent) > n else "dropped")
    if len(sent) > n:
        out = sent[-1].image
        assert out.encoding in ("rgb8", "bgr8") and out.height > 0 and out.width > 0
        assert len(out.data) == out.step * out.height and out.step >= out.width * 3
        assert sent[-1].embedding and all(math.isfinite(v) for v in sent[-1].embedding)
    else:
        assert node.status.flags["last_rejection"].startswith("dropped_invalid: ")
    c = node.status.counters
    assert c["frames_in"] == c["frames_out"] + c["dropped_invalid"] + c["dropped_bad_tag"]


@pytest.fixture(scope="module")
def store_node(ros: Path):
    from latent_rag_ros.nodes.store_node import StoreNode
    from latent_rag_ros.security import ClientSealer, load_key

    node = StoreNode()
    assert node.start_up() == "" and node.store is not None, node.open_error
    node.robot = ClientSealer(load_key(ros / "keys" / "robot.key"))
    node.admin = ClientSealer(load_key(ros / "keys" / "admin.key"))
    yield node
    node.destroy_node()


def _sealed(node, handler, srv, sealer, operation: str, meta: dict, arrays: dict):
    """Seal a request with ``sealer``, call the real handler in-process, open the reply."""
    from latent_rag_ros.nodes import link

    env = sealer.seal(operation, meta, arrays)
    res = handler(link.to_request(operation, env), srv.Response())
    return res, link.open_reply(sealer, operation, env, res)


@given(identity=st.one_of(st.lists(FLOATS, max_size=12), st.lists(st.floats(-1, 1, width=32), min_size=DIM,
                                                                   max_size=DIM)),
       m=st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), exclude_id=st.integers(-(2**63), 2**63 - 1),
       exclude_label=TEXT, model=st.sampled_from(["", "x#00", "random"]))
@SETTINGS
def test_fuzz_store_retrieve(store_node, identity, m, exclude_id, exclude_label, model) -> None:
    """Authenticated (sealed) retrievals with any content: served correctly or refused with a sealed reason."""
    meta = {"m": m, "exclude_id": exclude_id, "exclude_label": exclude_label, "generator": model, "reid": ""}
    before = store_node.status.counters["errors"]
    _, reply = _sealed(store_node, store_node.on_retrieve, RetrieveLatents, store_node.robot, "retrieve", meta,
                       {"identity": np.asarray(identity, np.float32)})
    event("served" if reply.ok else "refused")
    if reply.ok:
        assert 1 <= m <= 4 and len(identity) == DIM and all(math.isfinite(v) for v in identity)
        assert reply.arrays["latents"].shape == (m, L, C) and len(reply.arrays["ids"]) == m
        assert exclude_id not in reply.arrays["ids"].tolist()
    else:
        assert reply.message and store_node.status.counters["errors"] == before + 1
        assert "latents" not in reply.arrays


@given(protocol=st.sampled_from([0, 1, 2, 3, 2**32 - 1]), key_id=st.one_of(st.sampled_from(["robot", "admin", ""]),
                                                                         TEXT),
       stamp=st.integers(-(2**63), 2**63 - 1), nonce=st.binary(max_size=16), sealed=st.binary(max_size=64),
       operation=st.sampled_from(["retrieve", "add"]))
@SETTINGS
def test_fuzz_store_envelopes_without_the_key(store_node, protocol, key_id, stamp, nonce, sealed, operation) -> None:
    """Any envelope not sealed with a provisioned key: ok=false, a fixed reason, nothing else, counted."""
    srv = RetrieveLatents if operation == "retrieve" else AddIdentities
    handler = store_node.on_retrieve if operation == "retrieve" else store_node.on_add
    size, before = len(store_node.store), store_node.status.counters["refused"]
    res = handler(srv.Request(protocol=protocol, key_id=key_id, stamp_ns=stamp, nonce=nonce, sealed=sealed),
                  srv.Response())
    assert not res.ok and len(res.sealed) == 0 and len(res.nonce) == 0 and res.message
    assert res.message.startswith(("not authenticated", "protocol version"))
    assert store_node.status.counters["refused"] == before + 1 and len(store_node.store) == size


@given(count=st.one_of(st.none(), st.none(), st.integers(0, 3), st.integers(0, 2**32 - 1)),
       rows=st.integers(0, 3), vec_extra=st.sampled_from([0, 0, 0, -1, 1]), lat_extra=st.sampled_from([0, 0, 0, -1, 1]),
       values=FLOATS, labels=st.lists(TEXT, max_size=4), oversized=st.booleans())
@settings(SETTINGS, max_examples=80)   # each acknowledged add is fsync'ed
# found by a full run: the largest float32 values must be stored as unit vectors (the store normalises in float64)
@example(count=None, rows=1, vec_extra=0, lat_extra=0, values=3.4e38, labels=[], oversized=False)
@example(count=None, rows=1, vec_extra=0, lat_extra=0, values=1.8446744073709552e19, labels=[], oversized=False)
def test_fuzz_store_add(store_node, count, rows, vec_extra, lat_extra, values, labels, oversized) -> None:
    """AddIdentities (admin key) with inconsistent lengths, NaN/inf values and unicode or oversized labels."""
    count = rows if count is None else count   # None: consistent with the data sent
    n_vec = max(0, rows * DIM + vec_extra)
    rng = np.random.default_rng(count % 1000)
    vec = rng.normal(size=n_vec).astype(np.float32)
    if n_vec:
        vec[0] = values   # NaN, inf, huge, tiny or ordinary
    if oversized:
        labels = [*labels, "\u00e9" * 5000]
    lat = np.full(max(0, rows * L * C + lat_extra), 0.5, np.float32)
    size = len(store_node.store)
    _, reply = _sealed(store_node, store_node.on_add, AddIdentities, store_node.admin, "add",
                       {"count": count, "labels": labels}, {"identities": vec, "latents": lat})
    event("acknowledged" if reply.ok else "refused")
    if reply.ok:
        ids = reply.arrays["ids"]
        assert count == rows >= 1 and vec_extra == 0 and lat_extra == 0 and np.isfinite(vec).all()
        assert len(store_node.store) == size + count == reply.meta["size"] and len(ids) == count
        # (the service itself leaves out exact duplicates of the query: ask the store directly)
        stored = store_node.store.get_vectors(np.asarray(ids, np.int64))
        # reference in float64: a huge float32 value (1.8e19) squares past float32's range
        ref = vec.reshape(count, DIM).astype(np.float64)
        assert np.allclose(stored, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
        scores, _ = store_node.store.search(vec[:DIM].reshape(1, DIM), 1)
        assert scores[0, 0] > 0.999, "an acknowledged add must be searchable"
    else:
        assert reply.message and len(store_node.store) == size, "a refused add must change nothing"


def test_fuzz_store_m_huge_is_refused_not_allocated(store_node) -> None:
    _, reply = _sealed(store_node, store_node.on_retrieve, RetrieveLatents, store_node.robot, "retrieve",
                       {"m": 2**32 - 1, "exclude_id": -1}, {"identity": np.ones(DIM, np.float32)})
    assert not reply.ok and "out of range" in reply.message
