"""What the store service enforces without ROS: per-client rate limits (controlled clock), model matching."""

from __future__ import annotations

import pytest

from latent_rag_ros.store.base import model_mismatch, same_model
from latent_rag_ros.store.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill_per_client() -> None:
    clock = Clock()
    rl = RateLimiter(2.0, burst=3, clock=clock)
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b")                       # another client has its own bucket
    clock.t += 0.5                             # 2 Hz: one token back
    assert rl.allow("a") and not rl.allow("a")
    clock.t += 10.0                            # refills up to the burst, not beyond
    assert sum(rl.allow("a") for _ in range(10)) == 3


def test_off_and_bad_settings() -> None:
    rl = RateLimiter(0.0)
    assert not rl.enabled and all(rl.allow("x") for _ in range(1000))
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1.0, burst=0.5)


def test_many_clients_are_bounded() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, burst=1, clock=clock, max_clients=10)
    for i in range(100):
        clock.t += 0.001
        assert rl.allow(f"c{i}")
    assert len(rl._buckets) <= 10


def test_model_identity_matching() -> None:
    assert same_model("/srv/models/g.pkl#ab12", "/home/robot/g.safetensors#ab12")   # same weights, other path
    assert not same_model("/srv/g.pkl#ab12", "/srv/g.pkl#cd34")
    assert same_model("deepsort_mobilenetv2:builtin", "deepsort_mobilenetv2:builtin")
    assert not same_model("deepsort_mobilenetv2:builtin", "bagtricks:/m.pth#ab12")
    built = {"generator": "demo:generator#ab12", "reid": "deepsort_mobilenetv2:builtin"}
    assert model_mismatch(built, {"generator": "/x/generator.safetensors#ab12", "reid": ""}) == ""
    msg = model_mismatch(built, {"generator": "/x/other.safetensors#ffff"}, "store 'S'")
    assert "store 'S' was built for generator" in msg and "other.safetensors" in msg
    assert "reid" in model_mismatch(built, {"reid": "agw:/m.pth#0000"})
    assert model_mismatch({}, {"generator": "anything#1"}) == ""   # no record: cannot be checked
