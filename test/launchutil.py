"""Run the package's launch files with the REAL launch/launch_ros (vendored beside the clone).

`launch`/`launch_ros` are not on PyPI; ../shared/vendor/ros2-launch holds their unmodified sources
(Apache-2.0, see its README) and tools/setup.sh builds the composition_interfaces they import. On CI
(CI=true) a missing piece is a test failure; elsewhere the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = Path(sys.prefix)


def vendor_dir() -> Path | None:
    """The vendored ros2-launch folder, found the way tools/setup.sh finds it."""
    for c in (os.environ.get("LRR_ROS2_LAUNCH", ""), ROOT.parent / "shared" / "vendor" / "ros2-launch",
              ROOT / "shared" / "vendor" / "ros2-launch"):
        if c and (Path(c) / "launch_ros" / "__init__.py").is_file():
            return Path(c).resolve()
    return None


def missing_reason() -> str:
    """Why the real launch cannot run here, or "" when it can."""
    vendor = vendor_dir()
    if vendor is None:
        return "no ../shared/vendor/ros2-launch (real launch/launch_ros sources) beside the clone"
    code = "import launch, launch_ros.actions, composition_interfaces.srv, osrf_pycommon"
    env = {**os.environ, "PYTHONPATH": str(vendor), "AMENT_PREFIX_PATH": str(PREFIX)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode:
        return f"launch_ros cannot be imported ({r.stderr.strip().splitlines()[-1]}); run tools/setup.sh"
    return ""


def require_launch() -> None:
    """Skip (or, on CI, fail) the calling test when the real launch is not available."""
    reason = missing_reason()
    if reason and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    if reason:
        pytest.skip(reason)


class LaunchRun:
    """``ros2 launch latent_rag_ros FILE args...`` as a child process (test/ros2_launch.py)."""

    def __init__(self, launch_file: str, **args: str) -> None:
        vendor = vendor_dir()
        path = PREFIX / "share" / "latent_rag_ros" / "launch" / launch_file  # the installed file, as ros2 launch uses
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(vendor), os.environ.get("PYTHONPATH", "")]),
               "AMENT_PREFIX_PATH": str(PREFIX), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, str(ROOT / "test" / "ros2_launch.py"), str(path),
               *[f"{k}:={v}" for k, v in args.items()]]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> dict[str, int]:
        """Node process name -> pid, from launch's "process started with pid [N]" lines."""
        pattern = r"\[INFO\] \[(\w+)-\d+\]: process started with pid \[(\d+)\]"
        return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, self.output)}

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT (Ctrl-C) to launch, as a terminal does; the launch process's exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Best-effort clean-up after a failed test (SIGINT, then SIGKILL)."""
        if self.proc.poll() is None:
            self.interrupt(30)
        for pid in self.pids().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]
