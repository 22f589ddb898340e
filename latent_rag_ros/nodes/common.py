"""What every node shares: config from ROS parameters, QoS from config, image conversion, status.

Camera messages are converted in ``nodes.images`` (cv_bridge where importable, rosbags-image
otherwise); this module re-exports those functions.
"""

from __future__ import annotations

import array
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from latent_rag_ros.config import (
    Config,
    ConfigError,
    ParamSpec,
    apply_runtime,
    load_config,
    node_owns,
    parameter_specs,
)
from latent_rag_ros.config import QosConfig as QosCfg
from latent_rag_ros.nodes.images import (  # noqa: F401 - re-exported: the nodes' one import point
    FrameLimits,
    bgr_to_image_fields,
    camera_to_bgr,
    compressed_to_bgr,
    image_to_bgr,
)

_PARAM_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
_ROLES = {"DetectorNode": "detector_node", "ProtectorNode": "protector_node", "EgressNode": "egress_node",
          "StoreNode": "store_node", "RelayNode": "relay_node"}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """ROS ParameterDescriptor of one schema key: type, description, range, read_only."""
    d = ParameterDescriptor(name=spec.name, type=_PARAM_TYPES[spec.type], description=spec.description,
                            read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = f"one of: {', '.join(spec.choices)}"
    if spec.range is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    elif spec.range is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    return d


def _int_overrides_as_double(node: Node, specs: dict[str, ParamSpec]) -> None:
    """A parameter file's ``2`` for a double key means ``2.0`` (rclpy would refuse the whole node)."""
    overrides = getattr(node, "_parameter_overrides", {})
    for key, p in list(overrides.items()):
        spec = specs.get(key)
        if spec is not None and spec.type is float and p.type_ == Parameter.Type.INTEGER:
            overrides[key] = Parameter(key, Parameter.Type.DOUBLE, float(p.value))


def declare_config(node: Node) -> Config:
    """Declare this node's config keys as typed ROS parameters (defaults from ``config_file``) and build the Config.

    Descriptors (description, type, range, read-only) come from the one schema in config.py; each
    node declares only the keys it uses. Parameter files written for the nodes
    (``/**: ros__parameters: {models: {...}, ...}``) set the same dotted names, so ``--params-file
    config/latent_rag.yaml`` and ``config_file:=...`` agree. Run-time changes of the keys in
    ``config.RUNTIME_KEYS`` are validated and applied at once; others are refused with the reason.
    """
    config_file = node.declare_parameter(
        "config_file", "", ParameterDescriptor(description="latent_rag_ros parameter file the values start from",
                                               read_only=True)).value or None
    base = load_config(config_file)
    role = _ROLES.get(type(node).__name__, node.get_name())
    specs = {k: s for k, s in parameter_specs(base).items() if node_owns(role, k)}
    _int_overrides_as_double(node, specs)
    overrides: dict[str, Any] = {}
    for key, spec in specs.items():
        value = node.declare_parameter(key, spec.default, descriptor(spec)).value
        if value == "" and spec.default != "":
            continue  # an empty string means "keep the config file's value" (launch-file defaults)
        if value != spec.default:
            overrides[key] = value
    try:
        cfg = load_config(config_file, overrides)
    except ConfigError as exc:
        node.get_logger().fatal(f"invalid configuration: {exc}")
        raise

    def on_set(params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in specs}
        reason = apply_runtime(cfg, changes) if changes else ""
        if reason:
            node.get_logger().warning(f"parameter change refused: {reason}")
        else:
            for key, value in changes.items():
                node.get_logger().info(f"parameter {key} = {value!r} (applied)")
        return SetParametersResult(successful=not reason, reason=reason)

    node.add_on_set_parameters_callback(on_set)
    node.get_logger().info(f"configuration: {config_file or 'built-in defaults'} ({len(overrides)} overrides)")
    return cfg


def f32_array(values: np.ndarray) -> array.array:
    """float32 values as ``array.array('f')``: what rclpy stores float32[] fields as, without a per-element copy."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def qos_profile(q: QosCfg) -> QoSProfile:
    """QoS profile from config: keep-last ``depth`` with the configured reliability."""
    rel = ReliabilityPolicy.BEST_EFFORT if q.reliability == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=q.depth, reliability=rel)


def service_qos(depth: int) -> QoSProfile:
    """QoS of the store services (both ends): ROS's service defaults with a deeper history.

    Every client of a service receives every reply and keeps only its own at take (rmw_fastrtps), so a
    robot whose executor is busy while other robots are served needs room for their replies as well.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def frame_limits(cfg: Config) -> FrameLimits:
    """The configured largest camera frame (``ros.max_frame_pixels``, ``ros.max_frame_bytes``)."""
    return FrameLimits(cfg.ros.max_frame_pixels, cfg.ros.max_frame_bytes)


def bgr_to_image(bgr: np.ndarray, header: Any = None, encoding: str = "bgr8") -> Image:
    """uint8 BGR HxWx3 -> sensor_msgs/Image (``bgr8`` or ``rgb8``)."""
    msg = Image(**bgr_to_image_fields(bgr, encoding))
    if header is not None:
        msg.header = header
    return msg


class NodeStatus:
    """Thread-safe counters and per-stage latency of a node, published on /diagnostics."""

    def __init__(self, node: Node, period_s: float, state: Callable[[], str] | None = None) -> None:
        self._node = node
        self._state = state   # a managed node's lifecycle state, shown as ``lifecycle_state``
        self._lock = threading.Lock()
        self.counters: dict[str, int] = defaultdict(int)
        self.flags: dict[str, str] = {}
        self._lat: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=100))
        # restarts: set by `latent-rag run` when it respawns a node; started_at shows any respawn
        self.flags.update(restarts=os.environ.get("LATENT_RAG_RESTARTS", "0"),
                          started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.level = DiagnosticStatus.OK
        self.message = "starting"
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(period_s, self.publish)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        with self._lock:
            self.counters[key] += n

    def reject(self, key: str, reason: str) -> None:
        """Count one rejected input under ``key`` and keep the latest reason (``last_rejection``)."""
        with self._lock:
            self.counters[key] += 1
            self.flags["last_rejection"] = f"{key}: {reason[:200]}"

    def latency(self, stage: str, ms: float) -> None:
        """Record one latency sample of ``stage`` in milliseconds."""
        with self._lock:
            self._lat[stage].append(float(ms))

    def set(self, level: int, message: str, **flags: Any) -> None:
        """Set the level (DiagnosticStatus.OK/WARN/ERROR), a message and named flags."""
        with self._lock:
            self.level, self.message = level, message
            self.flags.update({k: str(v) for k, v in flags.items()})

    def snapshot(self) -> dict[str, str]:
        """Current values as strings (what /diagnostics carries)."""
        with self._lock:
            values = {k: str(v) for k, v in self.counters.items()}
            values.update(self.flags)
            if self._state is not None:
                values["lifecycle_state"] = self._state()
            for k, d in self._lat.items():
                if d:
                    values[f"latency_ms.{k}.mean"] = f"{sum(d) / len(d):.2f}"
                    values[f"latency_ms.{k}.last"] = f"{d[-1]:.2f}"
            return values

    def publish(self) -> None:
        """Publish one DiagnosticArray with this node's status."""
        st = DiagnosticStatus()
        st.level = self.level
        st.name = f"latent_rag_ros: {self._node.get_name()}"
        st.hardware_id = self._node.get_fully_qualified_name()
        st.message = self.message
        st.values = [KeyValue(key=k, value=v) for k, v in sorted(self.snapshot().items())]
        arr = DiagnosticArray()
        arr.header.stamp = self._node.get_clock().now().to_msg()
        arr.status = [st]
        self._pub.publish(arr)


class LatestSlot:
    """A one-deep (or ``depth``-deep) mailbox where the newest item wins and overwritten ones are counted.

    With ``max_age_s`` > 0, an item that waited longer than that (on ``clock``, monotonic seconds by
    default; tests inject their own) is discarded when a consumer reaches it and counted in
    ``stale``: under overload the queue never holds more than ``depth`` items and no processed item
    is older than ``max_age_s``.
    """

    def __init__(self, depth: int = 1, max_age_s: float = 0.0, clock: Any = time.monotonic) -> None:
        self._items: deque[tuple[float, Any]] = deque()
        self._depth = depth
        self._max_age = max_age_s
        self._clock = clock
        self._cv = threading.Condition()
        self.dropped = 0
        self.stale = 0
        self._stale_reported = 0
        self.closed = False

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)

    def put(self, item: Any) -> bool:
        """Store ``item``; returns False if an older waiting item had to be dropped for it."""
        with self._cv:
            dropped = False
            while len(self._items) >= self._depth:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append((self._clock(), item))
            self._cv.notify()
            return not dropped

    def get(self, timeout: float = 0.2) -> Any | None:
        """Oldest waiting item that is not too old, or None after ``timeout`` s (or when closed)."""
        with self._cv:
            if not self._items and not self.closed:
                self._cv.wait(timeout)
            while self._items:
                t, item = self._items.popleft()
                if self._max_age <= 0 or self._clock() - t <= self._max_age:
                    return item
                self.stale += 1
            return None

    def take_stale(self) -> int:
        """Stale discards since the last call: each is reported once, even with several consumers."""
        with self._cv:
            n, self._stale_reported = self.stale - self._stale_reported, self.stale
            return n

    def close(self) -> None:
        """Wake waiting consumers for shutdown."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()


class InOrder:
    """Several worker threads, one output order: ticket t may publish only after tickets 0..t-1 are done.

    The protector takes frames with one thread per worker process, and a small frame can finish before a
    larger one taken earlier; without this gate its crops left first and consumers saw stamps go back.
    Every ticket handed out (``next``) must be marked ``done``, published or not, or later ones wait
    until ``wait_turn`` gives up.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._issued = 0
        self._next = 0          # lowest ticket not yet done
        self._done: set[int] = set()

    def next(self) -> int:
        """A new ticket, in the order items are taken (call it where the item is taken, under that lock)."""
        with self._cv:
            self._issued += 1
            return self._issued - 1

    def wait_turn(self, ticket: int, keep_waiting: Callable[[], bool] = lambda: True,
                  poll_s: float = 0.2) -> bool:
        """Block until every lower ticket is done; False if ``keep_waiting()`` turned False first (shutdown)."""
        with self._cv:
            while self._next < ticket:
                if not keep_waiting():
                    return False
                self._cv.wait(poll_s)
            return True

    def done(self, ticket: int) -> None:
        """Ticket finished (published, skipped or failed): the next ones may go."""
        with self._cv:
            self._done.add(ticket)
            while self._next in self._done:
                self._done.remove(self._next)
                self._next += 1
            self._cv.notify_all()


def now_ms() -> float:
    """Monotonic time in milliseconds."""
    return time.perf_counter() * 1e3
