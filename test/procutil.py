"""Process helpers shared by tests that kill parents and watch what their children do."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def run_group(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` (text, output captured) in its own session; past ``timeout`` the whole group is killed.

    ``subprocess.run`` kills only its child on a timeout: the node processes and worker processes that child
    had started lived on. The test then fails with the output so far, which says where it was.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:5])} ... ran past {timeout:.0f} s; its process group was killed. "
                             f"Output so far:\n{out[-4000:]}\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def own_fastdds_segments(pid: int) -> set[str]:
    """The Fast DDS data segments a process owns: it holds their ``_el`` lock file open (peers only map them)."""
    own = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm/fastdds_") and target.endswith("_el") and "fastdds_port" not in target:
            own.add(target[:-3])
    return own
