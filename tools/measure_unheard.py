"""How soon after a subscriber's SIGKILL does detector_node count ``frames_unheard``? (issue 13, docs/NOTES.md)

Run from the repository root in the venv: ``python tools/measure_unheard.py``. A detector_node streams
vtest frames (4/s) to a stand-in protector process (a bare subscriber), which is then SIGKILLed; prints
when the first lost frame was counted and how many were published before that. Uses the test helpers
(private ROS domain, localhost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.nodes.common import bgr_to_image
from latent_rag_ros.nodes.graph import Graph

import conftest  # noqa: F401 - private domain and Fast DDS profile (before rclpy.init)
from rosutil import Probe, vtest_frames, wait_for, write_params

SUBSCRIBER = ("import rclpy\nfrom latent_rag_ros.msg import PersonCrops\nrclpy.init()\n"
              "n = rclpy.create_node('fake_protector')\n"
              "n.create_subscription(PersonCrops, '/latent_rag/crops', lambda m: None, 10)\nrclpy.spin(n)\n")


def main() -> None:
    """Start, stream, kill the subscriber, report."""
    cfg = write_params(Path(tempfile.mkdtemp()) / "p.yaml", {"ros": {"status_period_s": 0.2},
                                                             "detector": {"max_crops": 1}})
    graph, probe = Graph(), Probe("measure_unheard")
    diags = probe.collect(DiagnosticArray, "/diagnostics")
    cam = probe.node.create_publisher(Image, "/latent_rag/image_raw",
                                      QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    def status() -> dict[str, int]:
        out: dict[str, int] = {}
        for arr in list(diags):
            for st in arr.status:
                if st.name.endswith("detector_node"):
                    out = {kv.key: int(kv.value) for kv in st.values if kv.value.isdigit()}
        return out

    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER])
    try:
        graph.start(["detector_node"], str(cfg))
        wait_for(lambda: cam.get_subscription_count() == 1 and probe.node.count_subscribers("/latent_rag/crops") >= 1,
                 120, "detector and subscriber")
        frames, k = vtest_frames([400, 440, 480]), 0
        end = time.monotonic() + 8
        while time.monotonic() < end:
            cam.publish(bgr_to_image(frames[k % 3]))
            k += 1
            time.sleep(0.25)
        before = status()
        os.kill(sub.pid, signal.SIGKILL)
        killed, first, out_before_first = time.monotonic(), None, None
        while time.monotonic() - killed < 40:
            cam.publish(bgr_to_image(frames[k % 3]))
            k += 1
            time.sleep(0.25)
            now = status()
            if first is None and now.get("frames_unheard", 0) > before.get("frames_unheard", 0):
                first = time.monotonic() - killed
                out_before_first = now.get("frames_out", 0) - before.get("frames_out", 0) - 1
        now = status()
        print(f"first unheard frame counted {first if first is None else round(first, 1)} s after SIGKILL; "
              f"published before that (lost, uncounted): {out_before_first}; since the kill: "
              f"frames_out {now.get('frames_out', 0) - before.get('frames_out', 0)}, "
              f"frames_unheard {now.get('frames_unheard', 0) - before.get('frames_unheard', 0)}")
    finally:
        sub.kill()
        graph.stop()
        probe.close()


if __name__ == "__main__":
    main()
