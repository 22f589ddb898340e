"""Start the protection graph as separate node processes, like the launch files do.

``ros2 launch`` cannot be installed from PyPI; this runner starts the same executables with the
same parameters (``config_file`` and overrides), forwards SIGINT/SIGTERM and stops every node.
Each node process gets its transport zone's environment (latent_rag_ros/zones.py: robot-internal
nodes host-local only) and protector and egress share a fresh per-run egress key.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from latent_rag_ros.config import DEFAULT_NAMESPACE
from latent_rag_ros.egress_auth import KEY_ENV, new_run_key
from latent_rag_ros.nodes.shm import clean_fastdds_shm
from latent_rag_ros.zones import zone_env

ROBOT_NODES = ("detector_node", "protector_node", "egress_node")
RESTARTS_ENV = "LATENT_RAG_RESTARTS"   # how often this node was restarted (its /diagnostics shows it)
PARENT_ENV = "LATENT_RAG_PARENT_PID"   # the process that started this node: it stops when that one is gone


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # ROS reads a -p value as YAML: quote strings it would read as another type ("off" -> false)
        return value if value and isinstance(yaml.safe_load(value), str) else "'" + value.replace("'", "''") + "'"
    return str(value)


@dataclass
class Respawn:
    """Restart policy of ``latent-rag run`` (the launch files' respawn, respawn_delay, respawn_max_retries).

    A node that exits is restarted after ``delay`` s, doubled after each further restart up to
    ``max_delay``; after ``max_retries`` restarts the graph stops instead (0 = never restart).
    """

    max_retries: int = 5
    delay: float = 1.0
    max_delay: float = 30.0

    def backoff(self, restarts: int) -> float:
        """Wait before restart number ``restarts + 1``."""
        return min(self.max_delay, self.delay * 2 ** restarts)


@dataclass
class Graph:
    """A set of running node processes."""

    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    run_key_dir: str | None = None     # the per-run egress key's private folder (removed on stop)
    respawn: Respawn = field(default_factory=lambda: Respawn(max_retries=0))
    restarts: dict[str, int] = field(default_factory=dict)
    _launch: dict[str, tuple[list[str], dict[str, str], str | None]] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    _cleaned: set[str] = field(default_factory=set)   # dead by a signal, shared memory already cleaned

    def start(
        self,
        nodes: Sequence[str],
        config_file: str | None,
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        autostart: bool = True,
    ) -> None:
        """Start each node as ``python -m latent_rag_ros.nodes.<name> --ros-args -p ...`` in its zone.

        ``autostart``: the lifecycle nodes configure and activate themselves (a node whose configure
        fails exits with one line); False leaves them unconfigured for a lifecycle manager.
        """
        params = ["-r", f"__ns:={namespace}"] if namespace.strip("/") else []
        if not autostart:
            params += ["-p", "autostart:=false"]
        if config_file:
            params += ["-p", f"config_file:={os.path.abspath(config_file)}"]
        for k, v in (overrides or {}).items():
            params += ["-p", f"{k}:={_ros_value(v)}"]
        base = {**os.environ, **(env or {})}
        if not base.get(KEY_ENV):
            if self.run_key_dir is None:
                self.run_key_dir = str(new_run_key({}).parent)
            base[KEY_ENV] = os.path.join(self.run_key_dir, "egress.key")
        for name in nodes:
            cmd = [sys.executable, "-m", f"latent_rag_ros.nodes.{name}", "--ros-args", *params]
            child_env, warnings = zone_env(name, base)
            for w in warnings:
                print(f"[latent-rag run] WARNING ({name}): {w}", file=sys.stderr, flush=True)
            self._launch[name] = (cmd, child_env, log_dir)
            self.restarts.setdefault(name, 0)
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        cmd, env, log_dir = self._launch[name]
        out = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            out = open(os.path.join(log_dir, f"{name}.log"), "a")
        env = {**env, RESTARTS_ENV: str(self.restarts[name]), PARENT_ENV: str(os.getpid())}
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)

    def supervise(self, now: float | None = None) -> tuple[list[str], dict[str, int]]:
        """Restart dead nodes per the respawn policy; returns (log lines, nodes that are dead for good)."""
        now = time.monotonic() if now is None else now
        lines, gone = [], {}
        for name, p in list(self.procs.items()):
            code = p.poll()
            if code is None:
                continue
            if code < 0 and name not in self._cleaned:   # killed by a signal: its shared memory stayed
                self._cleaned.add(name)
                self._clean_shm(lines)
            if self.restarts[name] >= self.respawn.max_retries:
                gone[name] = code
                continue
            if name not in self._due:
                wait = self.respawn.backoff(self.restarts[name])
                self._due[name] = now + wait
                lines.append(f"{name} exited ({code}); restarting in {wait:.1f} s "
                             f"({self.restarts[name] + 1}/{self.respawn.max_retries})")
            elif now >= self._due[name]:
                del self._due[name]
                self._cleaned.discard(name)
                self.restarts[name] += 1
                self._spawn(name)
                lines.append(f"{name} restarted (pid {self.procs[name].pid}, restart {self.restarts[name]})")
        return lines, gone

    @staticmethod
    def _clean_shm(lines: list[str]) -> None:
        """Fast DDS's ``fastdds shm clean`` (nodes/shm.py): the 16 MB segment of a killed node is RAM."""
        summary = clean_fastdds_shm()
        if summary.startswith("fastdds shm clean failed"):
            lines.append(summary)

    def failed(self) -> dict[str, int]:
        """Nodes that have already exited, with their exit codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every node (measured to stop rclpy reliably), SIGKILL what is left after ``timeout``.

        A node that died by a signal could not remove its Fast DDS segment: `fastdds shm clean` then runs.
        """
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
        if any(c < 0 and n not in self._cleaned for n, c in codes.items()):
            self._clean_shm([])   # a node killed by a signal (here or before) could not remove its segment
        if self.run_key_dir:
            shutil.rmtree(self.run_key_dir, ignore_errors=True)
            self.run_key_dir = None
        return codes


def provision_local_keys(config_file: str | None, overrides: dict[str, Any] | None = None) -> list[str]:
    """Create the robot and administrator link keys of a local store if they are missing; returns what it made.

    ``latent-rag run --with-store`` and the demo call this, so a one-machine graph just works; a real
    deployment provisions keys with ``latent-rag keys new`` and copies each robot's file to it.
    """
    from latent_rag_ros.config import load_config
    from latent_rag_ros.security import new_key
    from latent_rag_ros.security.keys import key_path

    cfg = load_config(config_file or None, overrides or {})
    keys_dir = cfg.resolve_path(cfg.link.keys_dir) if cfg.link.keys_dir else ""
    made = []
    for key_id, role in ((cfg.link.key_id, "robot"), (cfg.link.admin_key_id, "admin")):
        if not key_path(keys_dir, key_id).exists():
            made.append(str(new_key(keys_dir, key_id, role).path))
    return made


def graph_nodes(with_store: bool, overrides: dict[str, Any]) -> tuple[str, ...]:
    """The node processes of ``latent-rag run``: a local store, or a relay to the remote one."""
    if with_store:
        return ("store_node", *ROBOT_NODES)
    overrides.setdefault("link.via_relay", True)   # the host-local protector reaches the network via the relay
    return (*ROBOT_NODES, "relay_node")


def run_graph(config_file: str | None, with_store: bool, overrides: dict[str, Any] | None = None,
              respawn: Respawn | None = None, autostart: bool = True) -> int:
    """``latent-rag run``: start the graph, restart nodes that die (with backoff), stop on SIGINT/SIGTERM.

    The lifecycle nodes configure and activate themselves unless ``autostart`` is False
    (``--no-autostart``): they then wait unconfigured for ``ros2 lifecycle set`` or a lifecycle manager.

    The graph stops with exit code 1 when a node has died more often than ``respawn.max_retries``.
    """
    graph = Graph(respawn=respawn or Respawn())
    stop = {"flag": False}

    def _handler(signum: int, _frame: Any) -> None:
        stop["flag"] = True

    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    overrides = dict(overrides or {})
    nodes = graph_nodes(with_store, overrides)
    if with_store:
        for path in provision_local_keys(config_file, overrides):
            print(f"[latent-rag run] created link key {path} (0600)", flush=True)
    graph.start(nodes, config_file, overrides, autostart=autostart)
    print(f"[latent-rag run] started {', '.join(nodes)}; Ctrl-C to stop", flush=True)
    if not autostart:
        print("[latent-rag run] --no-autostart: the nodes wait unconfigured; drive them with "
              "`ros2 lifecycle set /latent_rag/<node> configure` then `activate` (or a lifecycle manager)", flush=True)
    code = 0
    try:
        while not stop["flag"]:
            lines, dead = graph.supervise()
            for line in lines:
                print(f"[latent-rag run] {line}", file=sys.stderr, flush=True)
            if dead:
                print(f"[latent-rag run] node exited: {dead} after {graph.respawn.max_retries} restarts; "
                      "stopping the graph", file=sys.stderr, flush=True)
                code = 1
                break
            time.sleep(0.2)
    finally:
        codes = graph.stop()
        for s, h in old.items():
            signal.signal(s, h)
    print(f"[latent-rag run] stopped: {codes}", flush=True)
    return code
