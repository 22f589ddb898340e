"""Test-wide settings: a private ROS 2 domain on localhost for every test session."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

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


def clean_fastdds_shm() -> str:
    """Fast DDS's own ``fastdds shm clean``: remove the shared-memory segments whose owner process is gone.

    Tests kill nodes on purpose (SIGKILL), and each such process leaves its Fast DDS segments in /dev/shm,
    which is RAM: about 1 GB per full run here, and 20 GB after a day of runs on one machine, which left a
    later run too little memory. Segments of live processes are locked and stay. Returns the tool's
    summary line ("" where the tool is not installed).
    """
    script = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"   # the PyPI ROS 2 wheels put it here
    cmd = [sys.executable, str(script)] if script.is_file() else [shutil.which("fastdds") or ""]
    if not cmd[0]:
        return ""
    try:
        res = subprocess.run([*cmd, "shm", "clean"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"fastdds shm clean failed: {exc}"
    lines = [ln.strip() for ln in res.stdout.splitlines() if "zombie" in ln]
    return "; ".join(lines) if res.returncode == 0 else f"fastdds shm clean failed: {res.stderr.strip()[-300:]}"


def pytest_sessionstart(session) -> None:
    clean_fastdds_shm()   # what killed runs before this one left behind


def pytest_terminal_summary(terminalreporter) -> None:
    summary = clean_fastdds_shm()
    if summary:
        terminalreporter.write_line(f"Fast DDS shared memory left by killed test processes: {summary}")
