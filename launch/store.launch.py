"""Trusted server side: the store_node serving RetrieveLatents and AddIdentities.

    ros2 launch latent_rag_ros store.launch.py config_file:=/path/latent_rag.yaml store_path:=/data/store

The store is in the trusted-link zone: it answers robots over the network, and only requests
sealed with a provisioned robot key (writes: the administrator key) get anything (README "Security
model"). security:=true adds SROS2 (sros2/README.md). store_node is a lifecycle node: the store
opens in configure (a missing or damaged store fails it), the services exist only while active;
autostart:=false leaves the transitions to a lifecycle manager.
"""

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription

from latent_rag_ros.nodes.launch_parts import store_actions


def generate_launch_description() -> LaunchDescription:
    """What `ros2 launch` runs: the actions from latent_rag_ros.nodes.launch_parts."""
    return LaunchDescription(store_actions(get_package_share_directory("latent_rag_ros")))
