"""Trusted server side: the store_node serving RetrieveLatents and AddIdentities.

    ros2 launch latent_rag_ros store.launch.py config_file:=/path/latent_rag.yaml store_path:=/data/store

The store is in the trusted-link zone: it answers robots over the network, and only requests
sealed with a provisioned robot key (writes: the administrator key) get anything (README "Security
model"). security:=true adds SROS2 (sros2/README.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("latent_rag_ros")
    default_config = os.path.join(share, "config", "latent_rag.yaml")
    # Whole camera frames over shared memory between Fast DDS participants (see the XML's comment).
    default_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE",
                                     os.path.join(share, "config", "fastdds_large_images.xml"))
    config = LaunchConfiguration("config_file")
    security = IfCondition(LaunchConfiguration("security"))
    # a node that dies (e.g. a native crash) is restarted; nothing is published while it is down
    respawn = {"respawn": LaunchConfiguration("respawn"), "respawn_delay": 2.0, "respawn_max_retries": 5}
    return LaunchDescription([
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile,
                              description="Fast DDS XML profile (large shared-memory segment for images)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        DeclareLaunchArgument("respawn", default_value="true",
                              description="restart a node that exits (2 s delay, at most 5 times)"),
        DeclareLaunchArgument("config_file", default_value=default_config,
                              description="latent_rag_ros parameter file (config/latent_rag.yaml)"),
        DeclareLaunchArgument("store_path", default_value="",
                              description="store directory (FAISS) or Milvus URI; empty: the config's store.path"),
        DeclareLaunchArgument("security", default_value="false",
                              description="SROS2: ROS_SECURITY_ENABLE=true, Enforce, keystore below"),
        DeclareLaunchArgument("keystore", default_value=os.path.join(os.path.expanduser("~"), "latent_rag_keystore"),
                              description="SROS2 keystore (tools/make_sros2_keystore.sh makes one)"),
        SetEnvironmentVariable("ROS_SECURITY_ENABLE", "true", condition=security),
        SetEnvironmentVariable("ROS_SECURITY_STRATEGY", "Enforce", condition=security),
        SetEnvironmentVariable("ROS_SECURITY_KEYSTORE", LaunchConfiguration("keystore"), condition=security),
        Node(package="latent_rag_ros", executable="store_node", name="store_node", output="screen", **respawn,
             parameters=[config, {"config_file": config, "store.path": LaunchConfiguration("store_path")}],
             ros_arguments=["--enclave", "/latent_rag/store_node"]),
    ])
