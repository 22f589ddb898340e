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

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription

from latent_rag_ros.nodes.launch_parts import protect_actions


def generate_launch_description() -> LaunchDescription:
    """What `ros2 launch` runs: the actions from latent_rag_ros.nodes.launch_parts."""
    return LaunchDescription(protect_actions(get_package_share_directory("latent_rag_ros")))
