"""Benchmark: N robot clients (separate processes) calling one store_node at once; p50/p99 per client.

    .venv/bin/python tools/bench_store_clients.py --clients 8 --requests 200 --entries 20000

Prints one JSON object: overall and per-client latency percentiles (ms) and how many requests each
client got answered. "No starvation" means every client got all its answers and the slowest
client's p99 stays within a small factor of the overall p99. Numbers, not a test (docs/soak.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def client(index: int, requests: int, dim: int, m: int, service: str, keys_dir: str) -> None:
    """One robot: own process, own DDS participant, own link key; sequential sealed requests; prints latencies (ms)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from latent_rag_ros.config import RosConfig
    from latent_rag_ros.nodes import link
    from latent_rag_ros.nodes.common import service_qos
    from latent_rag_ros.security import ClientSealer, load_key
    from latent_rag_ros.srv import RetrieveLatents

    sealer = ClientSealer(load_key(Path(keys_dir) / f"robot_{index}.key"))

    rclpy.init()
    node = rclpy.create_node(f"bench_robot_{index}")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    cli = node.create_client(RetrieveLatents, service, qos_profile=service_qos(RosConfig().service_depth))
    if not cli.wait_for_service(timeout_sec=60):
        raise SystemExit(f"robot {index}: {service} not available")
    rng = np.random.default_rng(index)
    lat, ok, lost = [], 0, []
    for k in range(requests):
        query = rng.normal(size=dim).astype(np.float32)
        done = threading.Event()
        t0 = time.perf_counter()   # sealing and opening are part of the round trip
        env = sealer.seal("retrieve", {"m": m, "exclude_id": -1}, {"identity": query})
        fut = cli.call_async(link.to_request("retrieve", env))
        fut.add_done_callback(lambda _f, ev=done: ev.set())
        if done.wait(30):
            reply = link.open_reply(sealer, "retrieve", env, fut.result())
            lat.append((time.perf_counter() - t0) * 1e3)
            ok += bool(reply.ok)
        else:
            cli.remove_pending_request(fut)
            lost.append(k)   # no answer within 30 s: counted, the client goes on
    print(json.dumps({"client": index, "latency_ms": lat, "ok": ok, "lost": lost}))
    ex.shutdown()
    node.destroy_node()
    rclpy.shutdown()


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}


def main() -> int:
    """Build a random store, start store_node, run the clients at once, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1280, help="identity dimension (DeepSORT MobileNetV2: 1280)")
    ap.add_argument("--num-ws", type=int, default=12)
    ap.add_argument("--w-dim", type=int, default=512)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--client", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--keys-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    service = "/latent_rag/retrieve_latents"
    if args.client >= 0:
        client(args.client, args.requests, args.dim, args.m, service, args.keys_dir)
        return 0
    from latent_rag_ros.nodes.graph import Graph
    from latent_rag_ros.store import open_store

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "91")
    tmp = Path(tempfile.mkdtemp(prefix="bench_clients_"))
    rng = np.random.default_rng(0)
    store = open_store(tmp / "store", create=True, dim=args.dim, num_ws=args.num_ws, w_dim=args.w_dim)
    for i in range(0, args.entries, 2000):
        n = min(2000, args.entries - i)
        store.add(rng.normal(size=(n, args.dim)).astype(np.float32),
                  rng.normal(size=(n, args.num_ws, args.w_dim)).astype(np.float32))
    store.close()
    from latent_rag_ros.security import new_key

    for i in range(args.clients):   # one provisioned robot key per client
        new_key(tmp / "keys", f"robot_{i}", "robot")
    params = tmp / "p.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    store: {{path: {tmp / 'store'}, max_m: {max(args.m, 10)}}}\n"
                      f"    link: {{keys_dir: {tmp / 'keys'}}}\n")
    graph = Graph()
    graph.start(["store_node"], str(params))
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--client", str(i), "--requests", str(args.requests),
                                   "--dim", str(args.dim), "--m", str(args.m), "--keys-dir", str(tmp / "keys")],
                                  stdout=subprocess.PIPE, text=True)
                 for i in range(args.clients)]
        t0 = time.perf_counter()
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - t0
    finally:
        graph.stop()
    everything = [v for r in results for v in r["latency_ms"]]
    per_client = {r["client"]: {**_pct(r["latency_ms"]), "answered": len(r["latency_ms"]), "ok": r["ok"],
                                "lost": r["lost"]}
                  for r in results}
    print(json.dumps({"clients": args.clients, "requests_each": args.requests, "entries": args.entries,
                      "dim": args.dim, "m": args.m, "wall_s": round(wall, 1), "overall_ms": _pct(everything),
                      "per_client_ms": per_client,
                      "slowest_client_p99_over_overall_p99": round(max(c["p99"] for c in per_client.values())
                                                                   / _pct(everything)["p99"], 2)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
