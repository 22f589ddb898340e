"""Typed node parameters through rclpy's parameter services, exactly as `ros2 param describe/set/list` use them.

Descriptors come from the one schema in config.py; each node declares only its own keys; safe
run-time changes are applied, others are refused with the reason; a wrong type is refused at start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters, SetParameters

from latent_rag_ros.nodes.graph import Graph

from rosutil import Probe, call, wait_for, write_params

pytestmark = pytest.mark.ros
NS = "/latent_rag"


def _call(probe: Probe, node: str, srv, name: str, req):
    return call(probe.node.create_client(srv, f"{NS}/{node}/{name}"), req, f"{node}/{name}")


def _set(probe: Probe, node: str, name: str, value: ParameterValue):
    res = _call(probe, node, SetParameters, "set_parameters",
                SetParameters.Request(parameters=[Parameter(name=name, value=value)]))
    return res.results[0]


def _get(probe: Probe, node: str, name: str) -> ParameterValue:
    return _call(probe, node, GetParameters, "get_parameters", GetParameters.Request(names=[name])).values[0]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("params")
    # detector.upscale written as an integer: a double parameter must still accept it
    cfg = write_params(tmp / "p.yaml", {"models": {"generator": "random", "latent_encoder": "random"},
                                        "protector": {"device": "cpu"}, "detector": {"upscale": 2}})
    graph = Graph()
    graph.start(["detector_node", "protector_node", "egress_node"], str(cfg), log_dir=str(tmp / "logs"))
    probe = Probe("param_probe")
    # parameter services answer once a node spins, i.e. after its constructor (model loading, warm-up)
    wait_for(lambda: probe.node.count_publishers(f"{NS}/protected") > 0 and probe.node.count_publishers(f"{NS}/crops")
             > 0 and probe.node.count_publishers("/reid/protected") > 0, 240, "all three nodes up")
    yield probe, graph, tmp
    probe.close()
    codes = graph.stop()
    assert all(c == 0 for c in codes.values()), codes


def test_descriptors_come_from_the_schema(nodes) -> None:
    probe, _, _ = nodes
    res = _call(probe, "protector_node", DescribeParameters, "describe_parameters",
                DescribeParameters.Request(names=["protector.m", "protector.coarse_step", "models.generator",
                                                  "protector.schedule"]))
    m, step, gen, sched = res.descriptors
    assert m.type == ParameterType.PARAMETER_INTEGER and not m.read_only and "retrieved latent codes" in m.description
    assert (m.integer_range[0].from_value, m.integer_range[0].to_value) == (1, 1024)
    assert step.type == ParameterType.PARAMETER_DOUBLE and step.floating_point_range[0].to_value == 1.0
    assert gen.type == ParameterType.PARAMETER_STRING and gen.read_only
    assert "simultaneous" in sched.additional_constraints
    assert _get(probe, "detector_node", "detector.upscale").double_value == 2.0


def test_each_node_declares_only_its_own_keys(nodes) -> None:
    probe, _, _ = nodes
    names = {}
    for node in ("detector_node", "protector_node", "egress_node"):
        names[node] = set(_call(probe, node, ListParameters, "list_parameters", ListParameters.Request()).result.names)
    assert "protector.m" in names["protector_node"] and "protector.m" not in names["egress_node"]
    assert "models.generator" not in names["detector_node"] and "detector.kind" in names["detector_node"]
    assert "ros.egress_topic" in names["egress_node"] and "store.path" not in names["egress_node"]
    assert len(names["egress_node"]) < 15 < len(names["protector_node"])


def test_runtime_changes_applied_or_refused_with_a_reason(nodes) -> None:
    probe, graph, tmp = nodes
    r = _set(probe, "protector_node", "protector.m", ParameterValue(type=ParameterType.PARAMETER_INTEGER,
                                                                      integer_value=5))
    assert r.successful, r.reason
    assert _get(probe, "protector_node", "protector.m").integer_value == 5
    wait_for(lambda: "parameter protector.m = 5 (applied)" in (tmp / "logs" / "protector_node.log").read_text(),
             30, "the protector's log line")
    r = _set(probe, "protector_node", "protector.fine_step", ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                                              double_value=0.05))
    assert r.successful, r.reason
    refused = [
        ("protector.m", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="not-an-int")),
        ("protector.m", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=0)),
        ("protector.coarse_step", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-1.0)),
        ("models.generator", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="other.pkl")),
        ("protector.schedule", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="sideways")),
    ]
    for name, value in refused:
        r = _set(probe, "protector_node", name, value)
        assert not r.successful and r.reason, (name, value)
    assert _get(probe, "protector_node", "protector.m").integer_value == 5
    assert "sideways" in _set(probe, "protector_node", "protector.schedule", refused[-1][1]).reason
    assert not graph.failed()


def test_a_wrongly_typed_parameter_stops_the_node_with_one_line(tmp_path: Path) -> None:
    cfg = write_params(tmp_path / "bad.yaml", {"detector": {"max_crops": "not-an-int"}})
    graph = Graph()
    graph.start(["detector_node"], str(cfg), log_dir=str(tmp_path / "logs"))
    try:
        wait_for(lambda: graph.failed(), 120, "the detector to refuse its parameters")
    finally:
        graph.stop()
    assert graph.failed()["detector_node"] != 0
    log = (tmp_path / "logs" / "detector_node.log").read_text()
    assert "detector.max_crops" in log and "Traceback" not in log, log


def test_relay_declares_only_its_own_keys() -> None:
    """relay_node has its own NODE_KEYS entry (before, it declared every key)."""
    from latent_rag_ros.config import node_owns

    assert node_owns("relay_node", "link.relay_service") and node_owns("relay_node", "ros.retrieve_service")
    assert not node_owns("relay_node", "protector.m") and not node_owns("relay_node", "store.path")
    assert not node_owns("relay_node", "link.keys_dir")   # the relay holds no key
