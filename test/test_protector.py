"""The batched Protector (paper section III end to end) and the offline `latent-rag protect` command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from latent_rag_ros.cli import main as cli_main
from latent_rag_ros.config import ProtectorConfig
from latent_rag_ros.core.protector import Protector
from latent_rag_ros.models.stylegan3 import Generator
from latent_rag_ros.store import open_store

from nets import TinyReID
from rosutil import vtest_frames


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    g = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs={"num_layers": 2},
                  channel_base=32 * 32, channel_max=32, num_layers=4, num_critical=1, margin_size=2, square=False)
    reid = TinyReID(dim=16)
    store = open_store(tmp_path_factory.mktemp("p") / "store", create=True, dim=16, num_ws=g.num_ws, w_dim=32)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ws = g.mapping(torch.randn(40, 32, generator=gen))
        vecs = reid(torch.rand(40, 3, 32, 16, generator=gen))
    store.add(vecs.numpy(), ws.numpy(), [f"id{i % 10}" for i in range(40)])
    yield g, reid, store
    store.close()


def test_batch_equals_one_by_one(small_setup) -> None:
    g, reid, store = small_setup
    prot = Protector(g, reid, ProtectorConfig(m=5, steps=3, device="cpu"))
    images = torch.rand(3, 3, *prot.working_size, generator=torch.Generator().manual_seed(5))
    batch = prot.protect_with_store(images, store)
    assert batch.images.shape == (3, 3, 32, 16) and batch.embeddings.shape == (3, 16)
    assert batch.ids.shape == (3, 5) and len(batch.losses) == 4
    assert {"embed", "retrieve", "augment", "generate", "render", "total"} <= set(batch.timings_ms)
    for i in range(3):
        one = prot.protect_with_store(images[i:i + 1], store)
        assert torch.allclose(one.images, batch.images[i:i + 1], atol=1e-5)
        assert torch.allclose(one.embeddings, batch.embeddings[i:i + 1], atol=1e-5)
        np.testing.assert_array_equal(one.ids[0], batch.ids[i])
    again = prot.protect_with_store(images, store)
    assert torch.equal(again.images, batch.images), "not deterministic on CPU"


def test_protected_images_differ_from_the_input_and_keep_sizes(small_setup) -> None:
    g, reid, store = small_setup
    prot = Protector(g, reid, ProtectorConfig(m=4, steps=2, batch_size=2, device="cpu"))
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(80, 30), (64, 40), (100, 52)]]
    out, res = prot.protect_crops(crops, store)
    assert [o.shape for o in out] == [c.shape for c in crops]
    assert res.images.shape[0] == 3 and len(res.trace.distance[0]) == 3
    for o, c in zip(out, crops):
        assert np.abs(o.astype(float) - c.astype(float)).mean() > 5


def test_wrong_store_shape_is_refused(small_setup, tmp_path: Path) -> None:
    g, reid, _ = small_setup
    other = open_store(tmp_path / "other", create=True, dim=16, num_ws=g.num_ws + 1, w_dim=32)
    other.add(np.ones((4, 16), np.float32) + np.eye(4, 16, dtype=np.float32),
              np.zeros((4, g.num_ws + 1, 32), np.float32))
    prot = Protector(g, reid, ProtectorConfig(m=2, steps=1, device="cpu"))
    with pytest.raises(ValueError, match="W\\+ shape"):
        prot.protect_with_store(torch.rand(1, 3, 32, 16), other)
    other.close()


def test_cli_protect_a_folder_and_a_video_without_ros(tmp_path: Path) -> None:
    """`latent-rag build-store` then `latent-rag protect` with the real re-ID weights, random G/E4E."""
    crops_dir = tmp_path / "crops"
    crops_dir.mkdir()
    from latent_rag_ros.config import load_config
    from latent_rag_ros.models.factory import build_detector
    from latent_rag_ros.people import crop_people

    cfg = load_config(None)
    det = build_detector(cfg)
    n = 0
    for frame in vtest_frames([0, 40, 80, 120]):
        for p in crop_people(det, frame, cfg.detector):
            cv2.imwrite(str(crops_dir / f"{n:03d}.png"), p.crop)
            n += 1
    assert n >= 4
    sets = ["--set", "models.generator=random", "--set", "models.latent_encoder=random",
            "--set", "protector.steps=2", "--set", "protector.m=3", "--set", "protector.device=cpu"]
    store = tmp_path / "store"
    assert cli_main(["build-store", "--images", str(crops_dir), "--out", str(store), *sets]) == 0
    out = tmp_path / "out"
    assert cli_main(["protect", "--input", str(crops_dir), "--out", str(out), "--store", str(store), *sets]) == 0
    # a store built for another generator (other random weights) is refused, naming both
    with pytest.raises(SystemExit, match="built for generator"):
        cli_main(["protect", "--input", str(crops_dir), "--out", str(tmp_path / "o2"), "--store", str(store), *sets,
                  "--set", "models.random_seed=7"])
    index = json.loads((out / "index.json").read_text())
    assert len(index["items"]) == n and "random" in index["models"]["generator"]
    for item in index["items"]:
        src = cv2.imread(str(crops_dir / Path(item["source"]).name))
        got = cv2.imread(str(out / item["file"]))
        assert got.shape == src.shape
        assert len(item["embedding"]) == 1280
    # the people in a video (first frames of vtest.avi) are found by the detector and protected
    vid = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for frame in vtest_frames([300, 301]):
        writer.write(frame)
    writer.release()
    out2 = tmp_path / "out2"
    assert cli_main(["protect", "--input", str(vid), "--out", str(out2), "--store", str(store), *sets]) == 0
    assert len(json.loads((out2 / "index.json").read_text())["items"]) >= 1
    # a bag folder holds whole frames too: the detector cuts people out of it (datasets.needs_detector;
    # before issue #12 a bag got no detector and whole 768x576 frames were "protected")
    from latent_rag_ros.eval.bags import BagPlan, make_bag

    bag = tmp_path / "clip_bag"
    make_bag(BagPlan(list(vtest_frames([300, 301])), bag))
    out3 = tmp_path / "out3"
    assert cli_main(["protect", "--input", str(bag), "--out", str(out3), "--store", str(store), *sets]) == 0
    items = json.loads((out3 / "index.json").read_text())["items"]
    assert items and all("_b" in item["source"] for item in items), items
    assert all(cv2.imread(str(out3 / item["file"])).shape[:2] != (576, 768) for item in items)
