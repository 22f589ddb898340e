"""What protect.launch.py and store.launch.py share: the common launch arguments and the node action.

Imported by the launch files only (it needs ``launch``/``launch_ros``, which ``ros2 launch`` brings).
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
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

# a node that dies (e.g. a native crash) is restarted; nothing is published while it is down
RESPAWN = {"respawn_delay": 2.0, "respawn_max_retries": 5}


def shared_arguments(share: str) -> list:
    """Arguments (and the environment they set) both launch files take, with their defaults."""
    # Network zones (egress, store, relay): whole camera-sized messages over shared memory + UDP.
    default_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE",
                                     os.path.join(share, "config", "fastdds_large_images.xml"))
    security = IfCondition(LaunchConfiguration("security"))
    return [
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile,
                              description="Fast DDS XML profile of the network-facing nodes (egress, store, relay)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        DeclareLaunchArgument("respawn", default_value="true",
                              description="restart a node that exits (2 s delay, at most 5 times)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the lifecycle nodes at start; false: leave "
                                          "the transitions to a lifecycle manager / `ros2 lifecycle set`"),
        DeclareLaunchArgument("config_file", default_value=os.path.join(share, "config", "latent_rag.yaml"),
                              description="latent_rag_ros parameter file (config/latent_rag.yaml)"),
        DeclareLaunchArgument("namespace", default_value="latent_rag",
                              description="namespace of every node and of their relative topics/services"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay with --clock) instead of the wall clock"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="log level of every node (debug, info, warn, error, fatal)"),
        DeclareLaunchArgument("security", default_value="false",
                              description="SROS2: ROS_SECURITY_ENABLE=true, Enforce, keystore below"),
        DeclareLaunchArgument("keystore", default_value=os.path.join(os.path.expanduser("~"), "latent_rag_keystore"),
                              description="SROS2 keystore (tools/make_sros2_keystore.sh makes one)"),
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
