"""Test-wide settings: a private ROS 2 domain on localhost for every test session."""

from __future__ import annotations

import os
import random

# Set before any rclpy import: real DDS, but only on 127.0.0.1 and on a domain of our own so
# parallel runs on one machine do not see each other.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(30, 100)))
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# Tests start several node processes at once on a 2-core machine: one math thread each avoids the
# oversubscription that otherwise makes torch 10-50x slower (measured on MobileNetV2).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Whole camera frames over shared memory (config/fastdds_large_images.xml): the same profile the
# graph runner gives its nodes.
_profile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "fastdds_large_images.xml")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", os.path.abspath(_profile))

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def pytest_sessionstart(session) -> None:
    """Remove the Fast DDS shared memory (RAM) that killed processes of earlier runs left in /dev/shm.

    Tests kill nodes on purpose (SIGKILL); each such process leaves its segment behind, and 20 GB of them
    after a day of runs on one machine left a later run too little memory. Live participants' files are
    locked and stay (nodes/shm.py).
    """
    from latent_rag_ros.nodes.shm import clean_fastdds_shm

    clean_fastdds_shm()


def pytest_terminal_summary(terminalreporter) -> None:
    from latent_rag_ros.nodes.shm import clean_fastdds_shm

    summary = clean_fastdds_shm()
    if summary:
        terminalreporter.write_line(f"Fast DDS shared memory left by killed test processes: {summary}")
