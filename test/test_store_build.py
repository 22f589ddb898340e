"""build_store (batched, resumable, model-identity checked) and the store CLI commands.

The tiny networks here stand in for the real re-ID and E4E models, which are tested elsewhere;
the last test runs ``latent-rag build-store`` end to end with the configured (random-weight
generator/encoder, real MobileNetV2 re-ID) models.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.cli.store import register
from latent_rag_ros.core.imaging import bgr_to_tensor
from latent_rag_ros.store import StoreError, StoreMismatchError, open_store
from latent_rag_ros.store.build import BuildPlan, build_store

from nets import TinyReID


class TinyEncoder(nn.Module):
    """Stand-in W+ encoder: a conv + linear head giving [B, num_ws, w_dim]."""

    def __init__(self, num_ws: int = 3, w_dim: int = 8, seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, num_ws * w_dim)
        self.num_ws, self.w_dim = num_ws, w_dim
        self.name = f"tiny_e4e_{num_ws}x{w_dim}"
        self.input_size = (48, 24)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3))).view(-1, self.num_ws, self.w_dim)


@dataclass
class FakeSample:
    image: np.ndarray
    name: str
    pid: str | None


def _samples(n: int, seed: int = 0) -> list[FakeSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(20, 45))
        out.append(FakeSample(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), f"cam1/img{i:03d}.jpg",
                              f"{i % 5:04d}" if i % 7 else None))
    return out


class Interrupting:
    """Yields samples, then raises KeyboardInterrupt (a user pressing Ctrl-C mid-build)."""

    def __init__(self, samples: list[FakeSample], stop_after: int) -> None:
        self.samples, self.stop_after = samples, stop_after

    def __iter__(self):
        for i, s in enumerate(self.samples):
            if i == self.stop_after:
                raise KeyboardInterrupt
            yield s


def test_build_store_embeds_inverts_and_records_models(tmp_path: Path) -> None:
    reid, enc = TinyReID(dim=16).eval(), TinyEncoder().eval()
    samples = _samples(21)
    stats = build_store(BuildPlan(samples, tmp_path / "s", reid, enc, batch_size=8, progress=False))
    assert stats["added"] == 21 and stats["size"] == 21 and not stats["resumed"]
    s = open_store(tmp_path / "s", dim=16, num_ws=3, w_dim=8,
                   built_with={"reid": "tiny_reid", "latent_encoder": "tiny_e4e_3x8"})
    ids = s.ids()
    names = s.get_names(ids)
    assert names == [x.name for x in samples]
    assert s.get_labels(ids) == [x.pid or "" for x in samples]
    with torch.no_grad():  # one by one: f at the re-ID input size, w at the encoder's working size
        f = reid(bgr_to_tensor([samples[4].image], reid.input_size)).numpy()
        w = enc(bgr_to_tensor([samples[4].image], (48, 24))).numpy()
    np.testing.assert_allclose(s.get_vectors(ids[4:5]), f, atol=1e-5)
    np.testing.assert_allclose(s.get_latents(ids[4:5]), w, atol=1e-5)
    assert s.verify()["ok"] and s.stats()["unsnapshotted"] == 0  # compacted at the end
    s.close()


def test_build_resumes_after_interruption_without_duplicates(tmp_path: Path) -> None:
    reid, enc = TinyReID(dim=16).eval(), TinyEncoder().eval()
    samples = _samples(30)
    with pytest.raises(KeyboardInterrupt):
        build_store(BuildPlan(Interrupting(samples, 19), tmp_path / "s", reid, enc, batch_size=8, progress=False))
    s = open_store(tmp_path / "s")
    assert len(s) == 16  # two whole batches were acknowledged before the interruption
    s.close()
    stats = build_store(BuildPlan(samples, tmp_path / "s", reid, enc, batch_size=8, progress=False))
    assert stats["resumed"] and stats["skipped_existing"] == 16 and stats["added"] == 14
    build_store(BuildPlan(samples, tmp_path / "ref", reid, enc, batch_size=8, progress=False))
    a, b = open_store(tmp_path / "s"), open_store(tmp_path / "ref")
    assert a.get_names(a.ids()) == b.get_names(b.ids())
    np.testing.assert_allclose(a.get_vectors(a.ids()), b.get_vectors(b.ids()), atol=1e-6)
    np.testing.assert_allclose(a.get_latents(a.ids()), b.get_latents(b.ids()), atol=1e-6)
    a.close()
    b.close()


def test_build_refuses_other_models_or_shapes(tmp_path: Path) -> None:
    reid, enc = TinyReID(dim=16).eval(), TinyEncoder().eval()
    build_store(BuildPlan(_samples(5), tmp_path / "s", reid, enc, batch_size=4, progress=False,
                          built_with={"generator": "sg3:aaa", "reid": "tiny", "latent_encoder": "e4e:1"}))
    more = _samples(9, seed=1)
    for i, smp in enumerate(more):
        smp.name = f"new{i}"
    with pytest.raises(StoreMismatchError, match="generator"):
        build_store(BuildPlan(more, tmp_path / "s", reid, enc, progress=False,
                              built_with={"generator": "sg3:bbb", "reid": "tiny", "latent_encoder": "e4e:1"}))
    with pytest.raises(StoreMismatchError, match="W\\+"):
        build_store(BuildPlan(more, tmp_path / "s", reid, TinyEncoder(num_ws=4), progress=False,
                              built_with={"generator": "sg3:aaa", "reid": "tiny", "latent_encoder": "e4e:1"}))
    with pytest.raises(StoreMismatchError, match="identity dim"):
        build_store(BuildPlan(more, tmp_path / "s", TinyReID(dim=8), enc, progress=False,
                              built_with={"generator": "sg3:aaa", "reid": "tiny", "latent_encoder": "e4e:1"}))
    with pytest.raises(StoreError, match="already exists"):
        build_store(BuildPlan(more, tmp_path / "s", reid, enc, resume=False, progress=False))
    s = open_store(tmp_path / "s")
    assert len(s) == 5  # nothing was added by the refused runs
    s.close()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench").add_subparsers(dest="bench_command", required=True)
    register(sub, bench)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_stats_verify_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_store(BuildPlan(_samples(6), tmp_path / "s", TinyReID(dim=16).eval(), TinyEncoder().eval(), progress=False))
    assert _cli(["store", "stats", str(tmp_path / "s")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["size"] == 6 and stats["dim"] == 16 and stats["built_with"]["reid"] == "tiny_reid"
    assert _cli(["store", "verify", str(tmp_path / "s")]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    assert _cli(["store", "compact", "--purge", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    db = tmp_path / "s" / "store.sqlite"
    with open_store(tmp_path / "s") as s:
        needle = s.get_latents([3])[0].tobytes()
    data = bytearray(db.read_bytes())
    data[data.find(needle) + 5] ^= 1
    db.write_bytes(bytes(data))
    assert _cli(["store", "verify", str(tmp_path / "s")]) == 1
    assert "store.sqlite" in capsys.readouterr().err
    assert _cli(["store", "stats", str(tmp_path / "missing")]) == 1
    assert "no store" in capsys.readouterr().err


def test_cli_build_store_from_a_crops_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crops = tmp_path / "crops"
    for pid in ("0001", "0002"):
        (crops / pid).mkdir(parents=True)
        for i, smp in enumerate(_samples(3, seed=int(pid))):
            cv2.imwrite(str(crops / pid / f"{i}.png"), smp.image)
    args = ["--set", "models.generator=random", "--set", "models.latent_encoder=random",
            "--set", "protector.device=cpu"]
    assert _cli(["build-store", "--images", str(crops), "--out", str(tmp_path / "s"), "--quiet", *args]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["added"] == 6
    # store add: same names are skipped, the store keeps its model record
    assert _cli(["store", "add", "--store", str(tmp_path / "s"), "--images", str(crops), "--quiet", *args]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["added"] == 0 and again["skipped_existing"] == 6
    s = open_store(tmp_path / "s")
    assert len(s) == 6 and set(s.get_labels(s.ids())) == {"0001", "0002"}
    assert set(s.built_with) == {"generator", "reid", "latent_encoder"}
    s.close()
