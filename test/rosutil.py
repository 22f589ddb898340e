"""Helpers for tests that run real nodes over real DDS (private domain, localhost discovery)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from conftest import VTEST


def vtest_frames(indices: list[int]) -> list[np.ndarray]:
    """Frames of the real pedestrian video (opencv-doc's vtest.avi)."""
    if not Path(VTEST).is_file():
        raise FileNotFoundError(f"{VTEST} missing: install Debian package opencv-doc (make setup does)")
    cap = cv2.VideoCapture(VTEST)
    out, i, want = [], 0, set(indices)
    while len(out) < len(want):
        ok, frame = cap.read()
        if not ok:
            break
        if i in want:
            out.append(frame)
        i += 1
    cap.release()
    return out


def write_params(path: Path, params: dict[str, Any]) -> Path:
    """Write a ROS 2 parameter file (``/**: ros__parameters``) with nested keys."""
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


class Probe:
    """An rclpy node spinning in a background thread, for publishing and collecting in tests."""

    def __init__(self, name: str = "test_probe") -> None:
        if not rclpy.ok():
            rclpy.init()
        self.node = Node(name)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.lock = threading.Lock()

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> list[Any]:
        """Subscribe and return the (live) list every received message is appended to."""
        box: list[Any] = []

        def cb(msg: Any) -> None:
            with self.lock:
                box.append(msg)

        self.node.create_subscription(msg_type, topic, cb, qos)
        return box

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``cond`` until true or fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def call(client: Any, request: Any, what: str, timeout: float = 120.0, resend_after: float = 10.0) -> Any:
    """Call an idempotent service (get_state, get/set_parameters) and return its response.

    A request whose reply does not come within ``resend_after`` seconds is sent again: rmw_fastrtps drops a
    reply when the server has not yet discovered this client's reply reader (ros2/ros2#1253); the package's
    Fast DDS profiles widen that window to 2 s, but a loaded CI machine can exceed it.
    """
    wait_for(client.service_is_ready, timeout, f"{what} service")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        fut = client.call_async(request)
        stop = min(end, time.monotonic() + resend_after)
        while not fut.done() and time.monotonic() < stop:
            time.sleep(0.05)
        if fut.done():
            return fut.result()
        client.remove_pending_request(fut)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for the reply of {what}")


def node_status(diags: list, node: str) -> dict[str, str]:
    """The newest /diagnostics values of ``node`` (``diags``: collected DiagnosticArray messages), plus its
    message and level under ``_message`` / ``_level``; empty until the node has reported."""
    out: dict[str, str] = {}
    for arr in list(diags):
        for st in arr.status:
            if st.name.endswith(node):
                out = {kv.key: kv.value for kv in st.values}
                out["_message"], out["_level"] = st.message, str(st.level)
    return out
