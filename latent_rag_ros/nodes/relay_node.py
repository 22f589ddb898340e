"""relay_node: carries sealed RetrieveLatents requests from the host-local protector to a remote trusted store.

The protector is robot-internal (shared-memory-only transport, localhost discovery), so it cannot
reach a store on another machine. The relay is one trusted-link participant (SHM + UDP): it serves
``link.relay_service`` to the protector over shared memory and calls ``ros.retrieve_service`` on
the network. It forwards the envelope unchanged and holds no key: it sees only the key id, the
timestamp, the nonce and AES-GCM ciphertext, and cannot read or alter either direction (the tags
would fail). Trusted-link zone: both its service server and client carry ciphertext only.
"""

from __future__ import annotations

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node

from latent_rag_ros.nodes.common import NodeStatus, declare_config, now_ms, service_qos
from latent_rag_ros.security import PROTOCOL_VERSION
from latent_rag_ros.srv import RetrieveLatents


class RelayNode(Node):
    """Forwards RetrieveLatents envelopes between a host-local service and the network store, verbatim."""

    ZONE = "trusted_link"   # latent_rag_ros/zones.py: SHM to the protector, UDP to the remote store

    def __init__(self) -> None:
        super().__init__("relay_node")
        self.cfg = declare_config(self)
        if self.cfg.link.relay_service == self.cfg.ros.retrieve_service:
            raise ValueError(f"link.relay_service and ros.retrieve_service are both {self.cfg.ros.retrieve_service!r}: "
                             "the relay would call itself; give them different names")
        self.status = NodeStatus(self, self.cfg.ros.status_period_s)
        self.group = ReentrantCallbackGroup()
        qos = service_qos(self.cfg.ros.service_depth)
        self.upstream = self.create_client(RetrieveLatents, self.cfg.ros.retrieve_service, qos_profile=qos,
                                           callback_group=self.group)
        self.create_service(RetrieveLatents, self.cfg.link.relay_service, self.on_retrieve, qos_profile=qos,
                            callback_group=self.group)
        self.status.set(self.status.level, "relaying", upstream=self.cfg.ros.retrieve_service)
        self.get_logger().info(f"relaying {self.cfg.link.relay_service} -> {self.cfg.ros.retrieve_service} "
                               "(sealed envelopes only)")

    async def on_retrieve(self, req: RetrieveLatents.Request,
                          res: RetrieveLatents.Response) -> RetrieveLatents.Response:
        """Forward ``req`` as is and copy the store's reply back; on timeout a bare ok=false.

        A coroutine: waiting for the store does not hold an executor thread, so any number of
        concurrent requests (the protector sends one per crop) are in flight at once.
        """
        t0 = now_ms()
        self.status.count("requests")
        res.protocol = PROTOCOL_VERSION
        res.ok = False
        timeout = self.cfg.ros.service_timeout_s
        if not self.upstream.service_is_ready() and not self.upstream.wait_for_service(timeout_sec=timeout):
            res.message = f"relay: trusted store {self.cfg.ros.retrieve_service} not reachable"
            self.status.count("unreachable")
            return res
        fut = self.upstream.call_async(req)   # the same envelope: protocol, key id, stamp, nonce, ciphertext
        timer = None

        def expire() -> None:
            if not fut.done():
                self.upstream.remove_pending_request(fut)
                fut.cancel()
            if timer is not None:
                timer.cancel()

        timer = self.create_timer(timeout, expire, callback_group=self.group)
        up = await fut
        timer.cancel()
        self.destroy_timer(timer)
        if up is None:
            res.message = f"relay: no reply from the trusted store within {timeout:g} s"
            self.status.count("timeouts")
            return res
        res.protocol, res.ok, res.message, res.nonce, res.sealed = up.protocol, up.ok, up.message, up.nonce, up.sealed
        self.status.count("forwarded")
        self.status.latency("forward", now_ms() - t0)
        return res


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_rag_ros relay_node``."""
    from latent_rag_ros.nodes.runner import spin_node

    return spin_node(RelayNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
