"""Transport zones: which DDS transport and discovery range each node process gets, and why.

Robot-internal participants (camera driver, detector, protector, their /rosout, /diagnostics and
parameter events) carry raw crops and identity vectors: they get a shared-memory-ONLY Fast DDS
profile and localhost discovery, so nothing they write can reach another host, whatever the user
exported. Egress and trusted-link participants keep SHM+UDP (they must reach the network) and may
carry only protected data (egress) or authenticated ciphertext (trusted link). ROS-free on purpose:
the graph runner, the launch files and every node process apply the same rules.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from latent_rag_ros.config import default_config_path

INTERNAL = "internal"
EGRESS = "egress"
TRUSTED_LINK = "trusted_link"
ZONES = (INTERNAL, EGRESS, TRUSTED_LINK)

# Node executable -> zone. Anything not listed is robot-internal (fail safe: host-local).
NODE_ZONES: dict[str, str] = {
    "detector_node": INTERNAL,
    "protector_node": INTERNAL,
    "egress_node": EGRESS,
    "store_node": TRUSTED_LINK,
    "relay_node": TRUSTED_LINK,
}

HOST_LOCAL_PROFILE = "fastdds_host_local.xml"
NETWORK_PROFILE = "fastdds_large_images.xml"

# Variables that could give an internal participant a network path (a discovery server, static
# unicast peers, builtin UDP transports, a second profile file, a profile file in the working dir).
_NETWORK_ESCAPES = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "FASTDDS_ENVIRONMENT_FILE",
    "ROS_STATIC_PEERS",
    "ROS_DISCOVERY_SERVER",
    "ROS_SUPER_CLIENT",
    "ROS_LOCALHOST_ONLY",
)


class ZoneError(RuntimeError):
    """The host-local profile is missing, so the internal zone cannot be enforced."""


def zone_of(node: str) -> str:
    """Zone of a node executable name (unknown names are robot-internal)."""
    return NODE_ZONES.get(node, INTERNAL)


def profile_path(name: str) -> Path | None:
    """A packaged Fast DDS profile (``config/<name>``) in the installed share/ folder or the source tree."""
    cfg = default_config_path()
    path = cfg.parent / name if cfg else None
    return path if path is not None and path.is_file() else None


def uses_fastdds(env: MutableMapping[str, str]) -> bool:
    """True when the RMW is Fast DDS (the default), the only one whose transports the package controls."""
    return env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps")


def rmw_warning(env: MutableMapping[str, str]) -> str:
    """A warning for another RMW than Fast DDS, or "" (what is then NOT guaranteed)."""
    if uses_fastdds(env):
        return ""
    return (f"RMW_IMPLEMENTATION={env.get('RMW_IMPLEMENTATION')}: latent_rag_ros enforces the robot-internal "
            "zone only with rmw_fastrtps_cpp (shared-memory-only profile). With this RMW, raw crops, identity "
            "vectors and internal /rosout and /diagnostics are held on the host only by "
            "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, which is NOT a transport guarantee; use rmw_fastrtps_cpp "
            "or SROS2 permissions (sros2/) to keep them off the network")


def apply_zone(zone: str, env: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the transport environment of ``zone`` in ``env`` (default: this process's); returns warnings.

    internal: host-local SHM-only profile + LOCALHOST discovery, network escapes removed, whatever
    was exported. egress / trusted_link: the user's Fast DDS profile if set, else the packaged
    SHM(16 MB)+UDP profile; discovery range left as exported (the default reaches the LAN).
    Must run before ``rclpy.init`` (Fast DDS reads these when the participant is created).
    """
    if zone not in ZONES:
        raise ValueError(f"unknown zone {zone!r} (one of {', '.join(ZONES)})")
    env = os.environ if env is None else env
    warnings = []
    if zone == INTERNAL:
        path = profile_path(HOST_LOCAL_PROFILE)
        if path is None:
            raise ZoneError(f"config/{HOST_LOCAL_PROFILE} not found: reinstall latent_rag_ros "
                            "(the robot-internal zone cannot be enforced without it)")
        for key in _NETWORK_ESCAPES:
            env.pop(key, None)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
        env["SKIP_DEFAULT_XML"] = "1"   # no DEFAULT_FASTDDS_PROFILES.xml from the working directory
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    elif uses_fastdds(env) and (not env.get("FASTDDS_DEFAULT_PROFILES_FILE")
                                or Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).name == HOST_LOCAL_PROFILE):
        path = profile_path(NETWORK_PROFILE)
        if path is not None:
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    warning = rmw_warning(env)
    if warning and zone == INTERNAL:
        warnings.append(warning)
    return warnings


def zone_env(node: str, env: MutableMapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """A copy of ``env`` (default: os.environ) set up for node executable ``node``, and the warnings."""
    out = dict(os.environ if env is None else env)
    return out, apply_zone(zone_of(node), out)
