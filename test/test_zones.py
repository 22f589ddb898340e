"""Transport zones (ROS-free rules) and the egress tag's coverage of every ProtectedCrop field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from latent_rag_ros.msg import ProtectedCrop
from latent_rag_ros.nodes.egress_node import protected_payload
from latent_rag_ros.nodes.runner import node_zone
from latent_rag_ros.zones import EGRESS, INTERNAL, TRUSTED_LINK, apply_zone, zone_env, zone_of

# What a user (or an attacker's wrapper script) might have exported to get data off the host.
HOSTILE = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": "10.0.0.9",
           "FASTDDS_DEFAULT_PROFILES_FILE": "/tmp/udp_only.xml", "FASTRTPS_DEFAULT_PROFILES_FILE": "/tmp/x.xml",
           "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4", "ROS_DISCOVERY_SERVER": "10.0.0.9:11811",
           "FASTDDS_ENVIRONMENT_FILE": "/tmp/env.json", "ROS_DOMAIN_ID": "7"}


def test_internal_zone_is_host_local_whatever_was_exported() -> None:
    env = dict(HOSTILE)
    assert apply_zone(INTERNAL, env) == []
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).name == "fastdds_host_local.xml"
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and env["SKIP_DEFAULT_XML"] == "1"
    for gone in ("ROS_STATIC_PEERS", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS",
                 "ROS_DISCOVERY_SERVER", "FASTDDS_ENVIRONMENT_FILE"):
        assert gone not in env, gone
    assert env["ROS_DOMAIN_ID"] == "7"
    xml = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text()
    assert "<type>SHM</type>" in xml and "UDP" not in xml.split("-->")[-1]
    assert "<useBuiltinTransports>false</useBuiltinTransports>" in xml


def test_network_zones_keep_the_network() -> None:
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml"}
    apply_zone(EGRESS, env)
    assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml"}   # the user's own profile stays
    env = {}
    apply_zone(INTERNAL, env)                                                  # inherited from a parent process
    apply_zone(TRUSTED_LINK, env)
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).name == "fastdds_large_images.xml"


def test_other_rmw_gets_a_warning_and_unknown_zone_an_error() -> None:
    env = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    warnings = apply_zone(INTERNAL, env)
    assert len(warnings) == 1 and "NOT a transport guarantee" in warnings[0]
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    with pytest.raises(ValueError, match="unknown zone"):
        apply_zone("dmz", {})


def test_each_node_has_its_zone() -> None:
    assert [zone_of(n) for n in ("detector_node", "protector_node", "egress_node", "store_node", "relay_node",
                                  "some_future_node")] == [INTERNAL, INTERNAL, EGRESS, TRUSTED_LINK, TRUSTED_LINK,
                                                           INTERNAL]
    from latent_rag_ros.nodes.egress_node import EgressNode
    from latent_rag_ros.nodes.store_node import StoreNode

    assert node_zone(EgressNode) == EGRESS and node_zone(StoreNode) == TRUSTED_LINK
    env, _ = zone_env("detector_node", dict(HOSTILE))
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_egress_tag_covers_every_field_but_the_tag() -> None:
    base = ProtectedCrop(embedding_model="e", label="a", store_version="v", m=3, steps=2, track_id=1,
                         stage_names=["x"], stage_ms=[1.0], embedding=[0.5, 0.5])
    base.image.data = bytes(6)
    ref = protected_payload(base)
    changes = {
        "header": lambda m: setattr(m.header, "frame_id", "cam2"),
        "image": lambda m: setattr(m.image, "data", bytes([1]) + bytes(5)),
        "embedding": lambda m: setattr(m, "embedding", [0.5, 0.25]),
        "embedding_model": lambda m: setattr(m, "embedding_model", "f"),
        "box": lambda m: setattr(m.box, "x_offset", 3),
        "track_id": lambda m: setattr(m, "track_id", 2),
        "label": lambda m: setattr(m, "label", "b"),
        "store_version": lambda m: setattr(m, "store_version", "w"),
        "m": lambda m: setattr(m, "m", 4),
        "steps": lambda m: setattr(m, "steps", 3),
        "stage_names": lambda m: setattr(m, "stage_names", ["y"]),
        "stage_ms": lambda m: setattr(m, "stage_ms", [2.0]),
    }
    assert set(changes) | {"tag"} == set(ProtectedCrop.get_fields_and_field_types())
    for name, change in changes.items():
        msg = copy.deepcopy(base)
        change(msg)
        assert protected_payload(msg) != ref, f"the tag does not cover {name}"
    base.tag = list(range(32))
    assert protected_payload(base) == ref
