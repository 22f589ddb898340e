"""Fast DDS shared-memory housekeeping: remove what processes that are gone left in /dev/shm.

Fast DDS keeps a segment per participant (16 MB with the shipped profiles) and small port files in
/dev/shm, which is RAM. A process that stops cleanly removes its own (``runner.release_dds``); one
killed by SIGKILL cannot. Fast DDS's own tool, ``fastdds shm clean``, removes the files whose lock no
live process holds, so it never touches a running participant. No rclpy here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def fastdds_tool() -> list[str]:
    """The command that runs Fast DDS's CLI: the PyPI ROS 2 wheels' copy in this venv, else ``fastdds`` on PATH."""
    script = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"
    if script.is_file():
        return [sys.executable, str(script)]
    exe = shutil.which("fastdds")
    return [exe] if exe else []


def clean_fastdds_shm(timeout_s: float = 60.0) -> str:
    """Run ``fastdds shm clean``; returns its summary ("N zombie ports cleaned; M zombie segments cleaned").

    "" where the tool is not installed; a line starting "fastdds shm clean failed" where it failed
    (it needs ``psutil``). Never raises: this is housekeeping.
    """
    cmd = fastdds_tool()
    if not cmd:
        return ""
    try:
        res = subprocess.run([*cmd, "shm", "clean"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"fastdds shm clean failed: {exc}"
    if res.returncode != 0 or "zombie" not in res.stdout:
        return f"fastdds shm clean failed: {(res.stderr or res.stdout).strip()[-300:]}"
    return "; ".join(ln.strip() for ln in res.stdout.splitlines() if "zombie" in ln)
