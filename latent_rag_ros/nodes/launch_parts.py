"""The actions of protect.launch.py and store.launch.py (:func:`protect_actions`, :func:`store_actions`).

The launch files are thin callers: they keep their usage docstring and pass the package's share
folder. Imported by the launch files only (it needs ``launch``/``launch_ros``, which ``ros2 launch`` brings).
Every latent_rag_ros node gets the same respawn policy, SROS2 enclave, log level and, for the
lifecycle nodes (detector, protector, egress, store), the ``autostart`` parameter: true (default)
= the node configures and activates itself at start (and again after a respawn); false = it waits
unconfigured for a lifecycle manager or ``ros2 lifecycle set``. Lifecycle nodes are started as
``launch_ros.actions.LifecycleNode`` so that launch's lifecycle events (``ChangeState``,
``OnStateTransition``) work on them.
"""

from __future__ import annotations

import os
from typing import Any

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode, Node

from latent_rag_ros.egress_auth import KEY_ENV, new_run_key

# a node that dies (e.g. a native crash) is restarted; nothing is published while it is down
RESPAWN = {"respawn_delay": 2.0, "respawn_max_retries": 5}
# What a robot-internal process gets (a driver that is not ours cannot enforce it itself).
INTERNAL_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "", "SKIP_DEFAULT_XML": "1"}


def declare(*specs: tuple[str, str, str]) -> list:
    """A DeclareLaunchArgument for each ``(name, default, description)``."""
    return [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in specs]


def shared_arguments(share: str) -> list:
    """Arguments (and the environment they set) both launch files take, with their defaults."""
    # Network zones (egress, store, relay): whole camera-sized messages over shared memory + UDP.
    default_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE",
                                     os.path.join(share, "config", "fastdds_large_images.xml"))
    security = IfCondition(LaunchConfiguration("security"))
    return [
        *declare(("fastdds_profile", default_profile,
                  "Fast DDS XML profile of the network-facing nodes (egress, store, relay)")),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        *declare(
            ("respawn", "true", "restart a node that exits (2 s delay, at most 5 times)"),
            ("autostart", "true", "configure and activate the lifecycle nodes at start; false: leave "
                                  "the transitions to a lifecycle manager / `ros2 lifecycle set`"),
            ("config_file", os.path.join(share, "config", "latent_rag.yaml"),
             "latent_rag_ros parameter file (config/latent_rag.yaml)"),
            ("namespace", "latent_rag", "namespace of every node and of their relative topics/services"),
            ("use_sim_time", "false", "use /clock (bag replay with --clock) instead of the wall clock"),
            ("log_level", "info", "log level of every node (debug, info, warn, error, fatal)"),
            ("security", "false", "SROS2: ROS_SECURITY_ENABLE=true, Enforce, keystore below"),
            ("keystore", os.path.join(os.path.expanduser("~"), "latent_rag_keystore"),
             "SROS2 keystore (tools/make_sros2_keystore.sh makes one)")),
        SetEnvironmentVariable("ROS_SECURITY_ENABLE", "true", condition=security),
        SetEnvironmentVariable("ROS_SECURITY_STRATEGY", "Enforce", condition=security),
        SetEnvironmentVariable("ROS_SECURITY_KEYSTORE", LaunchConfiguration("keystore"), condition=security),
    ]


def latent_rag_node(executable: str, *, parameters: list | None = None, managed: bool = True,
                    package: Any = "latent_rag_ros", namespace: Any = None, **kwargs: Any) -> Node:
    """One node process: respawn policy, ``--enclave /latent_rag/<name>`` (used only with SROS2), log level.

    ``managed``: a lifecycle node (LifecycleNode action, ``autostart`` parameter from the launch
    argument). ``namespace`` defaults to the ``namespace`` launch argument; other keyword arguments
    (condition, additional_env, name) go to the action.
    """
    name = kwargs.pop("name", executable)
    common = dict(package=package, executable=executable, name=name, output="screen",
                  respawn=LaunchConfiguration("respawn"), **RESPAWN,
                  ros_arguments=["--enclave", f"/latent_rag/{name}", "--log-level", LaunchConfiguration("log_level")],
                  **kwargs)
    if parameters is not None:
        common["parameters"] = [*parameters, {"autostart": LaunchConfiguration("autostart")}] if managed else parameters
    ns = LaunchConfiguration("namespace") if namespace is None else namespace
    if managed:
        return LifecycleNode(namespace=ns, **common)
    return Node(namespace=ns, **common) if namespace != "" else Node(**common)


def protect_actions(share: str) -> list:
    """protect.launch.py: the camera driver (optional), store or relay, detector, protector and egress."""
    internal_env = {**INTERNAL_ENV, "FASTDDS_DEFAULT_PROFILES_FILE": os.path.join(share, "config",
                                                                                 "fastdds_host_local.xml")}
    # A fresh egress key for this launch: protector tags, egress verifies (0600 file, 0700 folder).
    egress_key = str(new_run_key({}))
    config = LaunchConfiguration("config_file")
    with_store = LaunchConfiguration("with_store")
    common = {"config_file": config, "use_sim_time": LaunchConfiguration("use_sim_time")}
    params = [config, {**common, "ros.camera_topic": LaunchConfiguration("camera_topic")}]
    via_relay = PythonExpression(["'", with_store, "'.lower() != 'true'"])   # no local store: use the relay
    camera_package = LaunchConfiguration("camera_package")
    return [
        *shared_arguments(share),
        SetEnvironmentVariable(KEY_ENV, egress_key),
        *declare(
            ("camera_topic", "/camera/image_raw", "sensor_msgs/Image topic with people in it (relative: in namespace)"),
            # the protector may be in the middle of a frame (seconds on a CPU) when Ctrl-C arrives
            ("sigterm_timeout", "15", "seconds a node may take to stop after SIGINT before SIGTERM"),
            ("with_store", "false", "also start a local store_node (trusted store on this machine)"),
            ("camera_package", "", "start this camera driver package too, under the host-local profile"),
            ("camera_executable", "", "the camera driver executable")),
        latent_rag_node(LaunchConfiguration("camera_executable"), name="camera_driver", managed=False,
                        package=camera_package, namespace="", additional_env=internal_env,
                        # IfCondition accepts only true/false/1/0: an empty camera_package (the default) = no driver
                        condition=IfCondition(PythonExpression(["'", camera_package, "' != ''"]))),
        latent_rag_node("store_node", parameters=[config, common], condition=IfCondition(with_store)),
        latent_rag_node("relay_node", parameters=[config, common], managed=False,
                        condition=UnlessCondition(with_store)),
        latent_rag_node("detector_node", parameters=params, additional_env=internal_env),
        latent_rag_node("protector_node", parameters=[*params, {"link.via_relay": via_relay}],
                        additional_env=internal_env),
        latent_rag_node("egress_node", parameters=params),
    ]


def store_actions(share: str) -> list:
    """store.launch.py: one store_node on ``store_path`` (empty: the config's ``store.path``)."""
    config = LaunchConfiguration("config_file")
    # services are relative names in the namespace: use the robot's namespace or remap them
    return [
        *shared_arguments(share),
        *declare(("store_path", "", "store directory (FAISS) or Milvus URI; empty: the config's store.path")),
        latent_rag_node("store_node", parameters=[config, {"config_file": config,
                                                           "store.path": LaunchConfiguration("store_path"),
                                                           "use_sim_time": LaunchConfiguration("use_sim_time")}]),
    ]
