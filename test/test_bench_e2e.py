"""``latent-rag bench e2e`` (issue 17 item 3): the real graph at a fixed frame rate, crops matched to frames.

A cheap run (random-weight generator and encoder: no pretrained ones exist offline; T=1, 2 Hz, 3 s) of
the real bench over real DDS, with store, detector, protector and egress as processes and real vtest.avi
frames. No timing is asserted: the numbers must be finite and consistent, and the crops the bench
counts must be the crops that arrived (a second, independent subscriber counts them too).
"""

from __future__ import annotations

import json
import math

import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy

from latent_rag_ros.config import EGRESS_TOPIC
from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.bench_e2e import Record, summarize
from latent_rag_ros.nodes.graph import _ros_value

from rosutil import Probe

pytestmark = pytest.mark.ros


def test_summarize_matches_crops_to_frames_by_stamp() -> None:
    rec = Record(sent={1_000_000_000: 0, 2_000_000_000: 1, 3_000_000_000: 0},
                 detected={1_000_000_000: (2, 0), 2_000_000_000: (2, 0), 9: (5, 0)},
                 first_publish_ns=1_000_000_000, last_publish_ns=3_000_000_000)
    box = (0, 0, 8, 16)
    rec.protected = [(1_000_000_000, 1_100_000_000, box, {}), (1_000_000_000, 1_300_000_000, box, {}),
                     (2_000_000_000, 2_200_000_000, box, {"generate": 5.0}), (7, 8, box, {})]
    s = summarize(rec)
    assert (s["frames_sent"], s["frames_detected"], s["frames_protected"], s["frames_dropped"]) == (3, 2, 2, 1)
    assert (s["crops_detected"], s["crops_received"], s["crops_unmatched"], s["crops_lost_after_detection"]) \
        == (4, 3, 1, 1)
    assert s["latency_ms_min"] == 100.0 and s["latency_ms_max"] == 300.0 and s["latency_ms_p50"] == 200.0
    assert s["span_s"] == 1.2 and s["crops_per_s"] == 2.5   # 3 crops from the first publish (1 s) to the last (2.2 s)
    assert s["stage_ms_median"] == {"generate": 5.0}


def test_string_parameters_that_yaml_reads_as_bool_stay_strings() -> None:
    # `-p protector.fast_reid:=off` reached the node as the bool false and killed it (found by this bench)
    assert _ros_value("off") == "'off'" and _ros_value("yes") == "'yes'" and _ros_value("12") == "'12'"
    assert _ros_value("folded") == "folded" and _ros_value("") == "''" and _ros_value(False) == "false"


def test_bench_e2e_runs_and_counts_what_arrived(tmp_path) -> None:
    from latent_rag_ros.cli import main

    probe = Probe("bench_e2e_witness")
    seen = probe.collect(ProtectedCrop, EGRESS_TOPIC, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    out = tmp_path / "bench"
    try:
        rc = main(["bench", "e2e", "--no-demo-settings", "--people", "1", "--paths", "fast", "--rate", "2",
                   "--duration", "3", "--pool", "2", "--drain", "5", "--gallery-step", "80", "--out", str(out),
                   "--set", "models.generator=random", "--set", "models.latent_encoder=random",
                   "--set", "protector.steps=1", "--set", "protector.m=2"])
    finally:
        probe.close()
    assert rc == 0
    (row,) = json.loads((out / "e2e.json").read_text())
    assert row["people"] == 1 and row["path"] == "fast" and row["frames_sent"] == 6
    assert row["crops_received"] == len(seen) > 0, "the bench must count exactly the crops that arrived"
    assert row["crops_unmatched"] == 0, "every protected crop carries the stamp of a frame the bench sent"
    assert row["frames_protected"] + row["frames_dropped"] == row["frames_sent"]
    assert row["frames_protected"] <= row["frames_detected"] <= row["frames_sent"]
    assert row["crops_received"] <= row["crops_detected"] == row["frames_detected"]   # one person per frame
    lat = [row[k] for k in ("latency_ms_min", "latency_ms_p50", "latency_ms_p99", "latency_ms_max")]
    assert all(math.isfinite(x) and x > 0 for x in lat) and lat == sorted(lat)
    assert math.isfinite(row["crops_per_s"]) and row["crops_per_s"] > 0
    assert "generate" in row["stage_ms_median"]   # evaluation mode: the egress keeps the per-stage times
    assert float(row["node_counters"]["detector_node"]["latency_ms.detect.mean"]) > 0   # the nodes' own times
    prot = row["node_counters"]["protector_node"]
    # the bench drained >= 5 s without output and then waited for two status periods
    assert int(prot["crops_out"]) >= row["crops_received"]
