"""Robot side: detector, protector and egress nodes (and, with with_store:=true, a local store).

    ros2 launch latent_rag_ros protect.launch.py config_file:=/path/latent_rag.yaml \
        camera_topic:=/camera/image_raw with_store:=false namespace:=latent_rag

Every node runs in ``namespace`` (default ``latent_rag``): its relative names (``crops``,
``protected``, ``retrieve_latents``, ...) resolve there, so ``namespace:=robot1`` moves a whole
graph and two cameras need two namespaces, nothing else. ``/reid/protected`` (egress) and
``/diagnostics`` stay absolute; remap them like any ROS name.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(executable: str, params: list, **kwargs) -> Node:
    """One of the package's nodes with the shared arguments (namespace, log level, sim time, respawn)."""
    # a node that dies (e.g. a native crash) is restarted; nothing is published while it is down
    respawn = {"respawn": LaunchConfiguration("respawn"), "respawn_delay": 2.0, "respawn_max_retries": 5}
    return Node(package="latent_rag_ros", executable=executable, name=executable, output="screen", **respawn,
                namespace=LaunchConfiguration("namespace"), parameters=params,
                ros_arguments=["--log-level", LaunchConfiguration("log_level")], **kwargs)


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("latent_rag_ros")
    default_config = os.path.join(share, "config", "latent_rag.yaml")
    # Whole camera frames over shared memory between Fast DDS participants (see the XML's comment).
    default_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE",
                                     os.path.join(share, "config", "fastdds_large_images.xml"))
    config = LaunchConfiguration("config_file")
    common = {"config_file": config, "use_sim_time": LaunchConfiguration("use_sim_time")}
    params = [config, {**common, "ros.camera_topic": LaunchConfiguration("camera_topic")}]
    return LaunchDescription([
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile,
                              description="Fast DDS XML profile (large shared-memory segment for images)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        DeclareLaunchArgument("respawn", default_value="true",
                              description="restart a node that exits (2 s delay, at most 5 times)"),
        DeclareLaunchArgument("config_file", default_value=default_config,
                              description="latent_rag_ros parameter file (config/latent_rag.yaml)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic with people in it (relative: in namespace)"),
        DeclareLaunchArgument("namespace", default_value="latent_rag",
                              description="namespace of every node and of their relative topics/services"),
        DeclareLaunchArgument("with_store", default_value="false",
                              description="also start a local store_node (trusted store on this machine)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay with --clock) instead of the wall clock"),
        # the protector may be in the middle of a frame (seconds on a CPU) when Ctrl-C arrives
        DeclareLaunchArgument("sigterm_timeout", default_value="15",
                              description="seconds a node may take to stop after SIGINT before SIGTERM"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="log level of every node (debug, info, warn, error, fatal)"),
        _node("store_node", [config, common], condition=IfCondition(LaunchConfiguration("with_store"))),
        _node("detector_node", params),
        _node("protector_node", params),
        _node("egress_node", params),
    ])
