"""Child processes that notice when the process that started them is gone (no ROS here).

A parent killed by SIGKILL (out of memory, a supervisor's timeout) cannot stop its children: the
protector's worker processes and the nodes a ``Graph`` starts then lived on. Each polls its parent pid.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def watch_parent(parent: int, on_gone: Callable[[], None], interval_s: float = 1.0) -> threading.Thread:
    """A daemon thread that calls ``on_gone()`` once this process's parent is no longer ``parent``."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        on_gone()

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t
