"""Process entry helper for every node: init, spin, clean shutdown on SIGINT and SIGTERM."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from latent_rag_ros.nodes.graph import PARENT_ENV
from latent_rag_ros.orphans import watch_parent as _watch_pid
from latent_rag_ros.zones import ZoneError, apply_zone, zone_of


def node_zone(factory: Callable[[], Node]) -> str:
    """The factory's ``ZONE`` attribute, else the zone of its module's name (``store_node`` ...)."""
    zone = getattr(factory, "ZONE", None)
    if zone:
        return zone
    module = getattr(factory, "__module__", "") or ""
    if module == "__main__":   # started as python -m latent_rag_ros.nodes.<name>
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else ""
    return zone_of(module.rsplit(".", 1)[-1])


def watch_parent(name: str, interval_s: float = 1.0, grace_s: float = 30.0) -> threading.Thread | None:
    """A node started by a ``Graph`` (``latent-rag run``, the demo) stops once the process that started it is gone.

    A parent killed by SIGKILL (out of memory, a supervisor's timeout) cannot stop its nodes; orphans stayed on
    its ROS domain, taking and publishing what the next graph on that domain sent. The stop is the clean one
    (SIGTERM, as ``Graph.stop`` sends), with a hard exit after ``grace_s``.
    """
    raw = os.environ.get(PARENT_ENV, "")
    if not raw:
        return None   # started by ros2 launch, ros2 run or by hand: their supervisors stop it
    try:
        parent = int(raw)
    except ValueError:
        print(f"[{name}] WARNING: {PARENT_ENV}={raw!r} is not a process id; not watching the parent",
              file=sys.stderr, flush=True)
        return None

    def stop() -> None:
        print(f"[{name}] the process that started this node (pid {parent}) is gone: stopping",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    return _watch_pid(parent, stop, interval_s)


def release_dds() -> None:
    """Destroy this process's DDS participant now, so that Fast DDS removes its shared-memory files.

    Fast DDS deletes its /dev/shm segment and port files (RAM: a 16 MB segment per participant with the
    shipped profiles) only when the participant is destroyed, and rclpy destroys it with the context once
    nothing refers to its entities any more. The ``os._exit`` that ends a node skipped that: every clean
    stop left 1-2 segments and 1-2 ports behind (measured), and a day of restarts filled /dev/shm. The
    caller drops its node and executor first; one garbage collection releases what still pointed at them.
    """
    try:
        gc.collect()
        rclpy.utilities.get_default_context().destroy()
    except Exception as exc:  # noqa: BLE001 - exiting anyway; only the files are at stake
        print(f"[runner] could not release the DDS participant: {exc}", file=sys.stderr, flush=True)


def spin_node(factory: Callable[[], Node], args: list[str] | None = None, threads: int = 4) -> NoReturn:
    """Create the node, spin it on a multi-threaded executor until shutdown; exit the process (0 on a clean stop).

    A managed node (nodes/managed.py) with ``autostart`` is configured and activated before it spins;
    if that fails, the reason is printed as one ``fatal`` line and the exit code is 1.
    SIGINT and SIGTERM both end the spin (rclpy's handlers), after which the node is destroyed
    (its worker threads and models released) before the process exits. The node's transport zone
    (:func:`node_zone`; robot-internal for unknown nodes) is applied to this process's environment
    before the DDS participant exists, whatever the user exported (latent_rag_ros/zones.py).
    """
    name = getattr(factory, "__name__", "node")
    try:
        for warning in apply_zone(node_zone(factory)):
            print(f"[{name}] WARNING: {warning}", file=sys.stderr, flush=True)
    except ZoneError as exc:
        print(f"[{name}] fatal: {exc}", file=sys.stderr)
        return 1
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.ALL)
    watch_parent(name)
    node = None
    executor = None
    code = 0
    try:
        node = factory()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        # lifecycle nodes with autostart (the default) configure and activate here; a failed configure
        # (missing model file, damaged store) ends the process with its one line
        problem = node.start_up() if getattr(node, "autostart", False) else ""
        if problem and rclpy.ok():
            print(f"[{name}] fatal: {problem}", file=sys.stderr)
            code = 1
        elif rclpy.ok():
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report start-up failures as one clear line
        # SIGTERM/SIGINT can shut the context down while the executor is between waits, or while the
        # node is still being built; rclpy then raises "context is not valid" (from the wait set, or
        # from a first publish) instead of ExternalShutdownException: a requested stop, not a failure
        if rclpy.ok():
            print(f"[{name}] fatal: {exc}", file=sys.stderr)
            code = 1
    finally:
        # `ros2 launch` forwards Ctrl-C to its nodes, which the terminal has already sent them: a
        # second SIGINT must not interrupt the clean-up half way (traceback, exit code -2)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        node = executor = None   # the last references to their DDS entities (release_dds)
        release_dds()
    # The node is destroyed and its store closed: nothing is left to save. Skip the interpreter's
    # finalisation (module teardown of torch/OpenCV objects), measured at 2-20 s on a busy 2-core machine,
    # longer than `ros2 launch` waits after SIGINT before it escalates to SIGTERM (5 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
