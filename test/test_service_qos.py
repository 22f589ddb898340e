"""The store services' QoS keeps a busy robot's reply while other robots are being served.

rmw_fastrtps delivers every reply of a service to every client's reader and drops the foreign ones only
at take. With ROS's default service history (keep last 10), a robot that did not take for a moment lost
its own reply once ten other replies had arrived: CI saw RetrieveLatents requests that never got an
answer with 8 concurrent robots. Real DDS over shared memory, three participants in one process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import rclpy
from lifecycle_msgs.srv import GetState
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_services_default

from latent_rag_ros.config import RosConfig
from latent_rag_ros.nodes.common import service_qos

from rosutil import wait_for

pytestmark = pytest.mark.ros
OTHERS = 30   # replies to another robot while the first one is busy: more than the default depth of 10


class Participant:
    """One DDS participant (own context), a node and an executor that is spun only when asked."""

    def __init__(self, name: str) -> None:
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.node = Node(name, context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)

    def spin_in_background(self) -> None:
        threading.Thread(target=self.ex.spin, daemon=True).start()

    def close(self) -> None:
        self.ex.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture
def parts() -> Iterator[tuple[Participant, Participant, Participant]]:
    made = [Participant(n) for n in ("qos_store", "qos_busy_robot", "qos_other_robot")]
    try:
        yield made[0], made[1], made[2]
    finally:
        for p in made:
            p.close()


def _busy_robot_gets_reply(parts: tuple[Participant, Participant, Participant], qos: QoSProfile, name: str) -> bool:
    """The busy robot asks once and does not take; the other robot is answered OTHERS times; then the
    busy robot takes. True when its own reply is still there."""
    store, busy, other = parts
    store.node.create_service(GetState, name, lambda _req, res: res, qos_profile=qos)
    store.spin_in_background()
    mine = busy.node.create_client(GetState, name, qos_profile=qos)
    theirs = other.node.create_client(GetState, name, qos_profile=qos)
    wait_for(lambda: mine.service_is_ready() and theirs.service_is_ready(), 60, f"{name} service")
    other.spin_in_background()
    # one answered call each way first: both reply readers are matched before the measured request
    warm = theirs.call_async(GetState.Request())
    wait_for(warm.done, 60, "the other robot's first reply")
    pending = mine.call_async(GetState.Request())
    time.sleep(0.5)                                          # the store has answered; the busy robot took nothing
    for k in range(OTHERS):
        fut = theirs.call_async(GetState.Request())
        wait_for(fut.done, 60, f"the other robot's reply {k}")
    end = time.monotonic() + 5
    while not pending.done() and time.monotonic() < end:
        busy.ex.spin_once(timeout_sec=0.1)
    return pending.done()


def test_default_service_depth_loses_a_busy_robots_reply(parts) -> None:
    """The failure mode itself, with ROS's defaults: shows what the package's QoS protects against."""
    assert qos_profile_services_default.depth < OTHERS
    assert not _busy_robot_gets_reply(parts, qos_profile_services_default, "qos_default/get_state")


def test_package_service_qos_keeps_a_busy_robots_reply(parts) -> None:
    depth = RosConfig().service_depth
    assert depth > OTHERS
    assert _busy_robot_gets_reply(parts, service_qos(depth), "qos_package/get_state")
