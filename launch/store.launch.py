"""Trusted server side: the store_node serving RetrieveLatents and AddIdentities.

    ros2 launch latent_rag_ros store.launch.py config_file:=/path/latent_rag.yaml store_path:=/data/store
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("latent_rag_ros"), "config", "latent_rag.yaml")
    config = LaunchConfiguration("config_file")
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=default_config,
                              description="latent_rag_ros parameter file (config/latent_rag.yaml)"),
        DeclareLaunchArgument("store_path", default_value="",
                              description="store directory (FAISS) or Milvus URI; empty: the config's store.path"),
        Node(package="latent_rag_ros", executable="store_node", name="store_node", output="screen",
             parameters=[config, {"config_file": config, "store.path": LaunchConfiguration("store_path")}]),
    ])
