"""Robot side: detector, protector and egress nodes (and, with with_store:=true, a local store).

    ros2 launch latent_rag_ros protect.launch.py config_file:=/path/latent_rag.yaml \
        camera_topic:=/camera/image_raw with_store:=false \
        camera_package:=usb_cam camera_executable:=usb_cam_node_exe   # optional: the driver too

Transport zones (README "Security model", latent_rag_ros/zones.py): detector, protector and a camera
driver started here are robot-internal (shared-memory-only Fast DDS profile, localhost discovery:
raw frames and crops cannot leave the host); egress and the store/relay keep the network. Every
latent_rag_ros node also enforces its zone itself at start-up. Without a local store a relay node
carries the (encrypted) store link to the network. security:=true turns SROS2 on (sros2/README.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from latent_rag_ros.egress_auth import KEY_ENV, new_run_key

# What a robot-internal process gets (a driver that is not ours cannot enforce it itself).
_INTERNAL_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "", "SKIP_DEFAULT_XML": "1"}


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("latent_rag_ros")
    default_config = os.path.join(share, "config", "latent_rag.yaml")
    host_local = os.path.join(share, "config", "fastdds_host_local.xml")
    # Network zones (egress, store, relay): whole camera-sized messages over shared memory + UDP.
    default_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE",
                                     os.path.join(share, "config", "fastdds_large_images.xml"))
    internal_env = {**_INTERNAL_ENV, "FASTDDS_DEFAULT_PROFILES_FILE": host_local}
    # A fresh egress key for this launch: protector tags, egress verifies (0600 file, 0700 folder).
    egress_key = str(new_run_key({}))
    config = LaunchConfiguration("config_file")
    # a node that dies (e.g. a native crash) is restarted; nothing is published while it is down
    respawn = {"respawn": LaunchConfiguration("respawn"), "respawn_delay": 2.0, "respawn_max_retries": 5}
    camera = LaunchConfiguration("camera_topic")
    with_store = LaunchConfiguration("with_store")
    security = IfCondition(LaunchConfiguration("security"))
    params = [config, {"config_file": config, "ros.camera_topic": camera}]
    via_relay = PythonExpression(["'", with_store, "'.lower() != 'true'"])   # no local store: use the relay

    def enclave(name: str) -> list[str]:
        return ["--enclave", f"/latent_rag/{name}"]   # used only when ROS_SECURITY_ENABLE=true

    return LaunchDescription([
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile,
                              description="Fast DDS XML profile of the network-facing nodes (egress, store, relay)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile")),
        SetEnvironmentVariable(KEY_ENV, egress_key),
        DeclareLaunchArgument("respawn", default_value="true",
                              description="restart a node that exits (2 s delay, at most 5 times)"),
        DeclareLaunchArgument("config_file", default_value=default_config,
                              description="latent_rag_ros parameter file (config/latent_rag.yaml)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic with people in it"),
        DeclareLaunchArgument("with_store", default_value="false",
                              description="also start a local store_node (trusted store on this machine)"),
        DeclareLaunchArgument("camera_package", default_value="",
                              description="start this camera driver package too, under the host-local profile"),
        DeclareLaunchArgument("camera_executable", default_value="", description="the camera driver executable"),
        DeclareLaunchArgument("security", default_value="false",
                              description="SROS2: ROS_SECURITY_ENABLE=true, Enforce, keystore below"),
        DeclareLaunchArgument("keystore", default_value=os.path.join(os.path.expanduser("~"), "latent_rag_keystore"),
                              description="SROS2 keystore (tools/make_sros2_keystore.sh makes one)"),
        SetEnvironmentVariable("ROS_SECURITY_ENABLE", "true", condition=security),
        SetEnvironmentVariable("ROS_SECURITY_STRATEGY", "Enforce", condition=security),
        SetEnvironmentVariable("ROS_SECURITY_KEYSTORE", LaunchConfiguration("keystore"), condition=security),
        Node(package=LaunchConfiguration("camera_package"), executable=LaunchConfiguration("camera_executable"),
             name="camera_driver", output="screen", additional_env=internal_env, **respawn,
             ros_arguments=enclave("camera_driver"),
             condition=IfCondition(LaunchConfiguration("camera_package"))),
        Node(package="latent_rag_ros", executable="store_node", name="store_node", output="screen", **respawn,
             parameters=[config, {"config_file": config}], ros_arguments=enclave("store_node"),
             condition=IfCondition(with_store)),
        Node(package="latent_rag_ros", executable="relay_node", name="relay_node", output="screen", **respawn,
             parameters=[config, {"config_file": config}], ros_arguments=enclave("relay_node"),
             condition=UnlessCondition(with_store)),
        Node(package="latent_rag_ros", executable="detector_node", name="detector_node", output="screen", **respawn,
             parameters=params, additional_env=internal_env, ros_arguments=enclave("detector_node")),
        Node(package="latent_rag_ros", executable="protector_node", name="protector_node", output="screen", **respawn,
             parameters=[*params, {"link.via_relay": via_relay}], additional_env=internal_env,
             ros_arguments=enclave("protector_node")),
        Node(package="latent_rag_ros", executable="egress_node", name="egress_node", output="screen", **respawn,
             parameters=params, ros_arguments=enclave("egress_node")),
    ])
