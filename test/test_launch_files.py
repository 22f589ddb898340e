"""The launch files, checked without ros2 launch.

`launch`/`launch_ros` cannot be installed from PyPI, so this test MOCKS those two modules with
recording stand-ins (the only mocks in the suite) and checks what the launch files declare: the
arguments, the executables (which must be ones CMakeLists.txt installs) and their parameters.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class _Rec:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _Node(_Rec):
    pass


class _LifecycleNode(_Rec):
    pass


def _stub_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    mods = {
        "launch": {"LaunchDescription": _Rec},
        "launch.actions": {"DeclareLaunchArgument": _Rec, "SetEnvironmentVariable": _Rec},
        "launch.conditions": {"IfCondition": _Rec, "UnlessCondition": _Rec},
        "launch.substitutions": {"LaunchConfiguration": _Rec, "PythonExpression": _Rec},
        "launch_ros": {},
        "launch_ros.actions": {"Node": _Node, "LifecycleNode": _LifecycleNode},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda name: f"/opt/share/{name}"},
    }
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        monkeypatch.setitem(sys.modules, name, m)
    # the launch files' shared helper must bind to these stand-ins, not to an earlier test's
    monkeypatch.delitem(sys.modules, "latent_rag_ros.nodes.launch_parts", raising=False)


def _load(path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    _stub_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        return mod.generate_launch_description().args[0]
    finally:   # bound to the stand-ins: never leave it for another test to import
        sys.modules.pop("latent_rag_ros.nodes.launch_parts", None)


def _installed_executables() -> set[str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    return set(re.search(r"set\(LRR_NODES ([^)]*)\)", text).group(1).split())


def test_protect_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    actions = _load(ROOT / "launch" / "protect.launch.py", monkeypatch)
    args = {a.args[0]: a.kwargs["default_value"] for a in actions if "default_value" in a.kwargs}
    assert args["camera_topic"] == "/camera/image_raw" and args["with_store"] == "false"
    assert args["config_file"] == "/opt/share/latent_rag_ros/config/latent_rag.yaml"
    env = [a for a in actions if a.args and a.args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"]
    assert len(env) == 1 and env[0].args[1].args[0] == "fastdds_profile"
    nodes = [a for a in actions if a.kwargs.get("package") == "latent_rag_ros"]
    exes = {n.kwargs["executable"] for n in nodes}
    assert exes == {"detector_node", "protector_node", "egress_node", "store_node", "relay_node"}
    assert exes <= _installed_executables()
    by_exe = {n.kwargs["executable"]: n for n in nodes}
    assert by_exe["store_node"].kwargs["condition"].args[0].args[0] == "with_store"
    assert by_exe["relay_node"].kwargs["condition"].args[0].args[0] == "with_store"   # UnlessCondition
    for n in nodes:
        assert any(isinstance(p, dict) and "config_file" in p for p in n.kwargs["parameters"])
        assert n.kwargs["ros_arguments"][:2] == ["--enclave", f"/latent_rag/{n.kwargs['executable']}"]
        assert n.kwargs["ros_arguments"][2] == "--log-level" and n.kwargs["namespace"].args[0] == "namespace"
    # zones: detector, protector and the optional camera driver are host-local; the others are not
    camera = [a for a in actions if a.kwargs.get("name") == "camera_driver"]
    assert len(camera) == 1 and camera[0].kwargs["condition"].args[0].args[0][1].args[0] == "camera_package"
    for n in (by_exe["detector_node"], by_exe["protector_node"], camera[0]):
        env = n.kwargs["additional_env"]
        assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds_host_local.xml")
        assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    for exe in ("egress_node", "store_node", "relay_node"):
        assert "additional_env" not in by_exe[exe].kwargs
    # lifecycle nodes (launch's LifecycleNode action) take autostart from the launch argument; the relay does not
    assert args["autostart"] == "true"
    for exe, n in by_exe.items():
        managed = exe != "relay_node"
        assert isinstance(n, _LifecycleNode) == managed, exe
        auto = [p["autostart"] for p in n.kwargs["parameters"] if isinstance(p, dict) and "autostart" in p]
        assert [a.args[0] for a in auto] == (["autostart"] if managed else []), exe
    # every node, the camera driver included, takes the respawn policy
    for n in [*nodes, camera[0]]:
        assert n.kwargs["respawn"].args[0] == "respawn"
        assert n.kwargs["respawn_delay"] > 0 and n.kwargs["respawn_max_retries"] > 0
    # protector and egress share a fresh egress key; security switches on SROS2 only when asked
    key = [a for a in actions if a.args and a.args[0] == "LATENT_RAG_EGRESS_KEY_FILE"]
    assert len(key) == 1 and Path(key[0].args[1]).stat().st_mode & 0o077 == 0
    sec = {a.args[0]: a for a in actions if a.args and str(a.args[0]).startswith("ROS_SECURITY_")}
    assert set(sec) == {"ROS_SECURITY_ENABLE", "ROS_SECURITY_STRATEGY", "ROS_SECURITY_KEYSTORE"}
    assert all(a.kwargs["condition"].args[0].args[0] == "security" for a in sec.values())
    assert args["security"] == "false"


def test_store_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    actions = _load(ROOT / "launch" / "store.launch.py", monkeypatch)
    nodes = [a for a in actions if "executable" in a.kwargs]
    assert [n.kwargs["executable"] for n in nodes] == ["store_node"]
    assert nodes[0].kwargs["ros_arguments"][:3] == ["--enclave", "/latent_rag/store_node", "--log-level"]
    assert isinstance(nodes[0], _LifecycleNode) and nodes[0].kwargs["respawn"].args[0] == "respawn"
    assert any(isinstance(p, dict) and "autostart" in p for p in nodes[0].kwargs["parameters"])


def test_cmake_installs_launch_and_config() -> None:
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in text
    assert "rosidl_generate_interfaces" in text and "DEPENDENCIES std_msgs sensor_msgs" in text
