"""SROS2 policy (sros2/policy.xml) -> DDS-Security governance and per-enclave permissions XML.

The ``ros2 security`` CLI cannot be installed from PyPI, so tools/make_sros2_keystore.sh calls this
instead (standard library only). It follows ROS 2's name mangling: topic ``/x`` is ``rt/x``; a
service client publishes ``rq/<srv>Request`` and reads ``rr/<srv>Reply``, a server the reverse. Every
enclave also gets what any rclpy node needs (its parameter services, /rosout, /parameter_events,
/diagnostics, ros_discovery_info), like sros2's common/node.xml.

    python3 tools/sros2_permissions.py governance OUT.xml [DOMAIN]
    python3 tools/sros2_permissions.py permissions POLICY.xml ENCLAVE OUT.xml [DOMAIN]
    python3 tools/sros2_permissions.py enclaves POLICY.xml
"""

from __future__ import annotations

import datetime as dt
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

_PARAM_SERVICES = ("describe_parameters", "get_parameter_types", "get_parameters", "get_type_description",
                   "list_parameters", "set_parameters", "set_parameters_atomically")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def enclaves(policy: Path) -> list[str]:
    """Enclave paths declared in ``policy``."""
    return [e.get("path", "") for e in ET.parse(policy).getroot().iter("enclave")]


def _domains(parent: ET.Element, domain: str | None) -> None:
    d = ET.SubElement(parent, "domains")
    if domain:
        ET.SubElement(d, "id").text = domain
    else:
        r = ET.SubElement(d, "id_range")
        ET.SubElement(r, "min").text = "0"
        ET.SubElement(r, "max").text = "232"


def rules(policy: Path, enclave: str) -> tuple[list[str], list[str]]:
    """DDS topic names ``enclave`` may publish and subscribe (sorted, with the node basics)."""
    root = ET.parse(policy).getroot()
    match = [e for e in root.iter("enclave") if e.get("path") == enclave]
    if not match:
        raise SystemExit(f"{policy}: no enclave {enclave!r} (have: {', '.join(enclaves(policy))})")
    pub = {"rt/rosout", "rt/parameter_events", "rt/diagnostics", "ros_discovery_info"}
    sub = {"rt/parameter_events", "ros_discovery_info"}
    for profile in match[0].iter("profile"):
        node = "/".join(p for p in (profile.get("ns", "/").strip("/"), profile.get("node", "")) if p)
        sub.update(f"rq/{node}/{s}Request" for s in _PARAM_SERVICES)
        pub.update(f"rr/{node}/{s}Reply" for s in _PARAM_SERVICES)
        for topics in profile.iter("topics"):
            names = [f"rt{t.text.strip()}" for t in topics.iter("topic")]
            if topics.get("publish") == "ALLOW":
                pub.update(names)
            if topics.get("subscribe") == "ALLOW":
                sub.update(names)
        for services in profile.iter("services"):
            names = [s.text.strip() for s in services.iter("service")]
            if services.get("request") == "ALLOW":   # client
                pub.update(f"rq{n}Request" for n in names)
                sub.update(f"rr{n}Reply" for n in names)
            if services.get("reply") == "ALLOW":     # server
                sub.update(f"rq{n}Request" for n in names)
                pub.update(f"rr{n}Reply" for n in names)
    return sorted(pub), sorted(sub)


def permissions(policy: Path, enclave: str, domain: str | None, years: int = 10) -> ET.Element:
    """The DDS permissions document of one enclave (default DENY)."""
    pub, sub = rules(policy, enclave)
    root = ET.Element("dds", {"xmlns:xsi": _XSI, "xsi:noNamespaceSchemaLocation":
                              "http://www.omg.org/spec/DDS-SECURITY/20170901/omg_shared_ca_permissions.xsd"})
    grant = ET.SubElement(ET.SubElement(root, "permissions"), "grant", name=enclave)
    ET.SubElement(grant, "subject_name").text = f"CN={enclave}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    validity = ET.SubElement(grant, "validity")
    ET.SubElement(validity, "not_before").text = now.isoformat()
    ET.SubElement(validity, "not_after").text = now.replace(year=now.year + years).isoformat()
    rule = ET.SubElement(grant, "allow_rule")
    _domains(rule, domain)
    for tag, names in (("publish", pub), ("subscribe", sub)):
        topics = ET.SubElement(ET.SubElement(rule, tag), "topics")
        for n in names:
            ET.SubElement(topics, "topic").text = n
    ET.SubElement(grant, "default").text = "DENY"
    return root


def governance(domain: str | None) -> ET.Element:
    """Governance: authenticated participants only, every topic access-controlled and encrypted."""
    root = ET.Element("dds", {"xmlns:xsi": _XSI, "xsi:noNamespaceSchemaLocation":
                              "http://www.omg.org/spec/DDS-SECURITY/20170901/omg_shared_ca_governance.xsd"})
    domain_rule = ET.SubElement(ET.SubElement(root, "domain_access_rules"), "domain_rule")
    _domains(domain_rule, domain)
    for key, value in (("allow_unauthenticated_participants", "false"), ("enable_join_access_control", "true"),
                       ("discovery_protection_kind", "ENCRYPT"), ("liveliness_protection_kind", "ENCRYPT"),
                       ("rtps_protection_kind", "SIGN")):
        ET.SubElement(domain_rule, key).text = value
    rule = ET.SubElement(ET.SubElement(domain_rule, "topic_access_rules"), "topic_rule")
    for key, value in (("topic_expression", "*"), ("enable_discovery_protection", "true"),
                       ("enable_liveliness_protection", "true"), ("enable_read_access_control", "true"),
                       ("enable_write_access_control", "true"), ("metadata_protection_kind", "ENCRYPT"),
                       ("data_protection_kind", "ENCRYPT")):
        ET.SubElement(rule, key).text = value
    return root


def _write(root: ET.Element, out: Path) -> None:
    ET.indent(root)
    out.write_bytes(ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n")


def main(argv: list[str]) -> int:
    """Command-line entry (see the module docstring)."""
    if len(argv) >= 2 and argv[0] == "governance":
        _write(governance(argv[2] if len(argv) > 2 else None), Path(argv[1]))
    elif len(argv) >= 4 and argv[0] == "permissions":
        _write(permissions(Path(argv[1]), argv[2], argv[4] if len(argv) > 4 else None), Path(argv[3]))
    elif len(argv) == 2 and argv[0] == "enclaves":
        print("\n".join(enclaves(Path(argv[1]))))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
