"""Process entry helper for every node: init, spin, clean shutdown on SIGINT and SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def spin_node(factory: Callable[[], Node], args: list[str] | None = None, threads: int = 4) -> int:
    """Create the node, spin it on a multi-threaded executor until shutdown; 0 on a clean stop.

    SIGINT and SIGTERM both end the spin (rclpy's handlers), after which the node is destroyed
    (its worker threads and models released) before the process exits.
    """
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    code = 0
    try:
        node = factory()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report start-up failures as one clear line
        # SIGTERM/SIGINT can shut the context down while the executor is between waits; rclpy then
        # raises "context is not valid" from the wait set instead of ExternalShutdownException
        if node is None or rclpy.ok():
            print(f"[{getattr(factory, '__name__', 'node')}] fatal: {exc}", file=sys.stderr)
            code = 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return code
