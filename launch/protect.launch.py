"""Robot side: detector, protector and egress nodes (and, with with_store:=true, a local store).

    ros2 launch latent_rag_ros protect.launch.py config_file:=/path/latent_rag.yaml \
        camera_topic:=/camera/image_raw with_store:=false \
        camera_package:=usb_cam camera_executable:=usb_cam_node_exe   # optional: the driver too

Every latent_rag_ros node runs in ``namespace`` (default ``latent_rag``): its relative names
(``crops``, ``protected``, ``retrieve_latents``, ...) resolve there, so ``namespace:=robot1`` moves a
whole graph. ``/reid/protected`` (egress) and ``/diagnostics`` stay absolute; remap them like any name.

Transport zones (README "Security model", latent_rag_ros/zones.py): detector, protector and a camera
driver started here are robot-internal (shared-memory-only Fast DDS profile, localhost discovery:
raw frames and crops cannot leave the host); egress and the store/relay keep the network. Every
latent_rag_ros node also enforces its zone itself at start-up. Without a local store a relay node
carries the (encrypted) store link to the network. security:=true turns SROS2 on (sros2/README.md).

Detector, protector, egress and store are lifecycle nodes: with autostart:=true (default) each one
configures and activates itself; autostart:=false leaves them unconfigured for a lifecycle manager
(``ros2 lifecycle set /latent_rag/protector_node configure``, then ``activate``).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression

from latent_rag_ros.egress_auth import KEY_ENV, new_run_key
from latent_rag_ros.nodes.launch_parts import latent_rag_node, shared_arguments

# What a robot-internal process gets (a driver that is not ours cannot enforce it itself).
_INTERNAL_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "", "SKIP_DEFAULT_XML": "1"}


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("latent_rag_ros")
    host_local = os.path.join(share, "config", "fastdds_host_local.xml")
    internal_env = {**_INTERNAL_ENV, "FASTDDS_DEFAULT_PROFILES_FILE": host_local}
    # A fresh egress key for this launch: protector tags, egress verifies (0600 file, 0700 folder).
    egress_key = str(new_run_key({}))
    config = LaunchConfiguration("config_file")
    with_store = LaunchConfiguration("with_store")
    common = {"config_file": config, "use_sim_time": LaunchConfiguration("use_sim_time")}
    params = [config, {**common, "ros.camera_topic": LaunchConfiguration("camera_topic")}]
    via_relay = PythonExpression(["'", with_store, "'.lower() != 'true'"])   # no local store: use the relay

    return LaunchDescription([
        *shared_arguments(share),
        SetEnvironmentVariable(KEY_ENV, egress_key),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic with people in it (relative: in namespace)"),
        # the protector may be in the middle of a frame (seconds on a CPU) when Ctrl-C arrives
        DeclareLaunchArgument("sigterm_timeout", default_value="15",
                              description="seconds a node may take to stop after SIGINT before SIGTERM"),
        DeclareLaunchArgument("with_store", default_value="false",
                              description="also start a local store_node (trusted store on this machine)"),
        DeclareLaunchArgument("camera_package", default_value="",
                              description="start this camera driver package too, under the host-local profile"),
        DeclareLaunchArgument("camera_executable", default_value="", description="the camera driver executable"),
        latent_rag_node(LaunchConfiguration("camera_executable"), name="camera_driver", managed=False,
                        package=LaunchConfiguration("camera_package"), namespace="", additional_env=internal_env,
                        # IfCondition accepts only true/false/1/0: an empty camera_package (the default) = no driver
                        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("camera_package"),
                                                                "' != ''"]))),
        latent_rag_node("store_node", parameters=[config, common], condition=IfCondition(with_store)),
        latent_rag_node("relay_node", parameters=[config, common], managed=False,
                        condition=UnlessCondition(with_store)),
        latent_rag_node("detector_node", parameters=params, additional_env=internal_env),
        latent_rag_node("protector_node", parameters=[*params, {"link.via_relay": via_relay}],
                        additional_env=internal_env),
        latent_rag_node("egress_node", parameters=params),
    ])
