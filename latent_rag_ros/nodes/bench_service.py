"""Round trip of the authenticated, encrypted RetrieveLatents service over real DDS (``latent-rag bench store``).

Each timed call includes sealing the query (AES-256-GCM), the store's authentication, freshness
and replay checks, the search, sealing the reply, and opening it on the client.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from typing import Any

import numpy as np


def service_round_trip(store_path: str | None = None, n: int = 100, m: int = 10, num_ws: int = 16,
                       w_dim: int = 512, dim: int = 512, entries: int = 2000) -> dict[str, Any]:
    """Start a store_node process, call RetrieveLatents ``n`` times (m codes of num_ws x w_dim), time it.

    Without ``store_path`` a throw-away store of ``entries`` random identities is built. The node
    runs on a private ROS domain on localhost with throw-away link keys; the client runs in this process.
    """
    import rclpy

    from latent_rag_ros.config import RETRIEVE_SERVICE, RosConfig
    from latent_rag_ros.nodes.common import service_qos
    from latent_rag_ros.nodes.graph import Graph
    from latent_rag_ros.nodes.link import open_reply, to_request
    from latent_rag_ros.security import ClientSealer, new_key
    from latent_rag_ros.srv import RetrieveLatents
    from latent_rag_ros.store import open_store

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(20, 99)))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        if store_path is None:
            store_path = f"{tmp}/store"
            s = open_store(store_path, create=True, dim=dim, num_ws=num_ws, w_dim=w_dim)
            for start in range(0, entries, 500):
                k = min(500, entries - start)
                s.add(rng.normal(size=(k, dim)).astype(np.float32),
                      rng.normal(size=(k, num_ws, w_dim)).astype(np.float32))
            s.close()
        keys_dir = f"{tmp}/keys"
        sealer = ClientSealer(new_key(keys_dir, "bench_robot", "robot"))
        graph = Graph()
        graph.start(["store_node"], None, {"store.path": store_path, "link.keys_dir": keys_dir})
        own = not rclpy.ok()
        if own:
            rclpy.init()
        node = rclpy.create_node("bench_service_client")
        try:
            client = node.create_client(RetrieveLatents, RETRIEVE_SERVICE,
                                        qos_profile=service_qos(RosConfig().service_depth))
            if not client.wait_for_service(timeout_sec=60.0):
                raise TimeoutError("store_node did not come up within 60 s")
            times = []
            for i in range(n + 5):
                query = rng.normal(size=dim).astype(np.float32)
                t0 = time.perf_counter()
                env = sealer.seal("retrieve", {"m": m, "exclude_id": -1}, {"identity": query})
                fut = client.call_async(to_request("retrieve", env))
                rclpy.spin_until_future_complete(node, fut, timeout_sec=10.0)
                res = fut.result()
                reply = open_reply(sealer, "retrieve", env, res) if res is not None else None
                dt = (time.perf_counter() - t0) * 1e3
                if reply is None or not reply.ok:
                    raise RuntimeError(f"request failed: {reply.message if reply else 'timeout'}")
                if reply.arrays["latents"].shape != (m, num_ws, w_dim):
                    raise RuntimeError(f"reply has latents of shape {reply.arrays['latents'].shape}")
                if i >= 5:  # warm-up calls excluded
                    times.append(dt)
        finally:
            node.destroy_node()
            if own:
                rclpy.try_shutdown()
            graph.stop()
    times.sort()
    return {"calls": n, "m": m, "authenticated": True, "encrypted": "AES-256-GCM", "latent_shape": [num_ws, w_dim],
            "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3),
            "mean_ms": round(statistics.fmean(times), 3)}
