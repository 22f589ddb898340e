"""Training tools: determinism of resume, finite losses, atomic and safe checkpoints, CLI wiring."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_rag_ros.models.safe_load import ModelFileError
from latent_rag_ros.training import checkpoints as ck
from latent_rag_ros.training.augment import diff_augment, parse_policy, rand_cutout, rand_translation, random_xflip
from latent_rag_ros.training.data import CropSet, load_crops, save_crops
from latent_rag_ros.training.discriminator import ResNetDiscriminator, minibatch_std
from latent_rag_ros.training.encoder import EncoderTrainConfig, progressive_codes, train_encoder
from latent_rag_ros.training.generator import GeneratorTrainConfig, train_generator
from latent_rag_ros.training.losses import ssim_per_image


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest (and bit-reproducibly) on one thread, also on a busy CI machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_crops(n: int = 12, h: int = 16, w: int = 8, seed: int = 0) -> CropSet:
    """Person-like toy crops: a dark vertical bar (body) on a random light background."""
    g = torch.Generator().manual_seed(seed)
    img = 150 + (torch.rand(n, 3, h, w, generator=g) * 100)
    for i in range(n):
        x0 = 2 + i % 3
        img[i, :, 3: h - 1, x0: x0 + 3] = 40 + 20 * (i % 4)
    return CropSet(img.round().to(torch.uint8), [f"toy{i}" for i in range(n)], {"source": "toy"})


def tiny_gcfg(**kw) -> GeneratorTrainConfig:
    base = dict(resolution=16, channels=8, num_layers=3, z_dim=16, w_dim=16, d_channels=16, batch=4, steps=4,
                r1_interval=2, recon_weight=1.0, e_width=0.1, e_blocks=[1, 1, 1, 1], e_style_width=16,
                checkpoint_every=2, log_every=1, threads=1)
    base.update(kw)
    return GeneratorTrainConfig(**base)


def tiny_ecfg(**kw) -> EncoderTrainConfig:
    base = dict(width=0.1, blocks=[1, 1, 1, 1], style_width=16, batch=4, steps=4, checkpoint_every=2, log_every=1,
                progressive_every=1, threads=1)
    base.update(kw)
    return EncoderTrainConfig(**base)


def crash_at(step: int):
    def hook(s: int, _losses: dict) -> None:
        if s == step:
            raise KeyboardInterrupt("simulated crash")
    return hook


def final_state(out: Path, kind: str) -> dict:
    path = ck.latest_checkpoint(out)
    assert path is not None
    return ck.load_checkpoint(path, kind)


def assert_same_tensors(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --------------------------------------------------------------------------------------- augmentation


def test_translation_shifts_whole_image_and_zero_fills():
    x = torch.arange(1, 2 * 1 * 16 * 8 + 1, dtype=torch.float32).reshape(2, 1, 16, 8)
    y = rand_translation(x, 0.25, torch.Generator().manual_seed(3))
    for i in range(2):
        nz = y[i, 0] != 0
        src = (y[i, 0][nz] - 1 - i * 128).long()  # flat source index of every kept pixel
        ys, xs = torch.nonzero(nz, as_tuple=True)
        dy, dx = ys - src // 8, xs - src % 8
        assert len(set(dy.tolist())) == 1 and len(set(dx.tolist())) == 1  # one rigid shift
        assert abs(dy[0]) <= 4 and abs(dx[0]) <= 2
        assert int(nz.sum()) == (16 - abs(int(dy[0]))) * (8 - abs(int(dx[0])))


def test_cutout_and_color_are_random_but_reproducible_and_differentiable():
    x = torch.ones(4, 3, 16, 8)
    y = rand_cutout(x, 0.5, torch.Generator().manual_seed(0))
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert bool((zeros > 0).all()) and bool((zeros <= 8 * 4).all())
    x = torch.randn(4, 3, 16, 8, requires_grad=True)
    a = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(5))
    b = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(5))
    c = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert parse_policy("none") == () and parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_policy("color,rotate")
    f = random_xflip(torch.arange(8.0).view(1, 1, 1, 8).repeat(64, 1, 1, 1), 0.5, torch.Generator().manual_seed(1))
    flipped = int((f[:, 0, 0, 0] == 7).sum())
    assert 10 < flipped < 54 and bool(((f[:, 0, 0, 0] == 0) | (f[:, 0, 0, 0] == 7)).all())


def test_discriminator_shapes_and_minibatch_std():
    d = ResNetDiscriminator(64, 32, channel_base=256, channel_max=16)
    assert d(torch.randn(6, 3, 64, 32)).shape == (6, 1)
    with pytest.raises(ValueError, match="expected"):
        d(torch.randn(2, 3, 32, 32))
    same = minibatch_std(torch.ones(4, 2, 3, 3))
    assert same.shape == (4, 3, 3, 3) and float(same[:, 2].max()) < 1e-3  # identical samples: ~no spread


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 3, 64, 32)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(3), atol=1e-5)
    assert float(ssim_per_image(x, torch.rand(3, 3, 64, 32)).mean()) < 0.2


# ------------------------------------------------------------------------------------------- training


def test_generator_resume_after_crash_equals_uninterrupted(tmp_path):
    crops = tiny_crops()
    cfg = tiny_gcfg()
    full = train_generator(cfg, crops, tmp_path / "a", progress=False)
    assert full["step"] == 4 and full["stopped"] == "steps"
    with pytest.raises(KeyboardInterrupt):
        train_generator(tiny_gcfg(), crops, tmp_path / "b", progress=False, on_step=crash_at(3))
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "b")] == [2]
    resumed = train_generator(tiny_gcfg(), crops, tmp_path / "b", resume=True, progress=False)
    assert resumed["step"] == 4
    a, b = final_state(tmp_path / "a", "generator"), final_state(tmp_path / "b", "generator")
    for key in ("G", "G_ema", "D", "E", "opt_g", "opt_d", "opt_e", "rng"):
        assert_same_tensors(a[key], b[key], key)
    assert a["cur_nimg"] == b["cur_nimg"] == 16
    losses = [{k: v for k, v in h.items() if k not in ("sec_per_step",)} for h in a["history"]]
    assert losses == [{k: v for k, v in h.items() if k not in ("sec_per_step",)} for h in b["history"]]
    for h in a["history"]:
        for k in ("d_loss", "g_loss", "rec_loss", "rec_ssim"):
            assert np.isfinite(h[k]), (k, h)
    assert any("r1" in h for h in a["history"])
    # the outputs load with the project's own loaders
    from latent_rag_ros.models.e4e import load_e4e
    from latent_rag_ros.models.stylegan3 import load_generator

    G = load_generator(tmp_path / "b" / "generator.safetensors")
    assert (G.img_height, G.img_width) == (16, 8)
    for k, v in G.state_dict().items():  # the saved generator is G_ema of the last step
        assert torch.equal(v, b["G_ema"][k]), k
    E = load_e4e(tmp_path / "b" / "encoder_warm.pt", num_ws=G.num_ws, input_size=(16, 8))
    assert E(torch.rand(2, 3, 16, 8)).shape == (2, G.num_ws, G.w_dim)
    assert (tmp_path / "b" / "samples.png").stat().st_size > 0
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["hardware"]["cpu_count"] >= 1 and summary["step"] == 4


def test_generator_steps_change_weights_and_track_averages(tmp_path):
    cfg = tiny_gcfg(steps=2, recon_weight=0.0, checkpoint_every=10)
    train_generator(cfg, tiny_crops(), tmp_path, progress=False)
    state = final_state(tmp_path, "generator")
    assert "E" not in state and state["step"] == 2
    from latent_rag_ros.models.generator_io import build_generator

    torch.manual_seed(cfg.seed)
    init = build_generator("stylegan3", cfg.generator_kwargs()).state_dict()
    changed = [k for k in init if not torch.equal(init[k], state["G"][k])]
    assert "mapping.w_avg" in changed and any(k.endswith(".weight") for k in changed)


def save_tiny_generator(path: Path) -> Path:
    from latent_rag_ros.models.generator_io import build_generator, save_generator

    torch.manual_seed(0)
    g = build_generator("stylegan3", tiny_gcfg().generator_kwargs())
    with torch.no_grad():
        g(torch.randn(64, 16), update_emas=True)  # a non-zero w_avg, as a trained G has
    st, _ = save_generator(g, path)
    return st


def test_encoder_resume_after_crash_equals_uninterrupted(tmp_path):
    gpath = save_tiny_generator(tmp_path / "g" / "generator")
    crops = tiny_crops()
    full = train_encoder(tiny_ecfg(), crops, gpath, tmp_path / "a", progress=False)
    assert full["step"] == 4
    with pytest.raises(KeyboardInterrupt):
        train_encoder(tiny_ecfg(), crops, gpath, tmp_path / "b", progress=False, on_step=crash_at(3))
    train_encoder(tiny_ecfg(), crops, gpath, tmp_path / "b", resume=True, progress=False)
    a, b = final_state(tmp_path / "a", "encoder"), final_state(tmp_path / "b", "encoder")
    for key in ("E", "opt", "rng"):
        assert_same_tensors(a[key], b[key], key)
    for h in a["history"]:
        for k in ("loss", "rec_loss", "ssim", "mse", "delta_norm"):
            assert np.isfinite(h[k]), (k, h)
    assert [h["stage"] for h in a["history"]] == [0, 1, 2, 3]
    from latent_rag_ros.models.e4e import load_e4e
    from latent_rag_ros.models.stylegan3 import load_generator

    G = load_generator(gpath)
    E = load_e4e(tmp_path / "b" / "encoder.pt", num_ws=G.num_ws, input_size=(16, 8))
    assert torch.allclose(E.latent_avg[0], G.w_avg)  # e4e: deltas around the generator's average latent
    # progressive stage 0 keeps only w0 (all layers equal)
    codes = progressive_codes(E, torch.rand(2, 3, 16, 8), 0)
    assert torch.allclose(codes, codes[:, :1].expand_as(codes), atol=1e-6)


def test_encoder_identity_loss_uses_the_reid_encoder(tmp_path):
    gpath = save_tiny_generator(tmp_path / "g" / "generator")
    out = train_encoder(tiny_ecfg(steps=2, id_weight=0.5, reid_size=[32, 32], progressive_every=0), tiny_crops(),
                        gpath, tmp_path / "e", progress=False)
    ids = [h["id_loss"] for h in final_state(tmp_path / "e", "encoder")["history"]]
    assert out["step"] == 2 and len(ids) == 2 and all(0.0 <= v <= 2.0 for v in ids)


def test_resume_refuses_other_settings_and_data(tmp_path):
    crops = tiny_crops()
    train_generator(tiny_gcfg(steps=2, recon_weight=0.0), crops, tmp_path, progress=False)
    with pytest.raises(ValueError, match="g_lr"):
        train_generator(tiny_gcfg(steps=4, recon_weight=0.0, g_lr=0.01), crops, tmp_path, resume=True,
                        progress=False)
    with pytest.raises(ValueError, match="data differ"):
        train_generator(tiny_gcfg(steps=4, recon_weight=0.0), tiny_crops(seed=1), tmp_path, resume=True,
                        progress=False)
    # run settings (steps, minutes) may change: a zero-minute budget stops at once and keeps the step
    out = train_generator(tiny_gcfg(steps=4, recon_weight=0.0, minutes=1e-9), crops, tmp_path, resume=True,
                          progress=False)
    assert out["step"] == 2 and out["stopped"] == "time"


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    first = ck.save_checkpoint(tmp_path, "generator", 1, {"x": torch.arange(3)})
    before = first.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, "generator", 1, {"x": torch.arange(5)})
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, "generator", 2, {"x": torch.arange(5)})
    monkeypatch.undo()
    assert first.read_bytes() == before  # the old checkpoint is untouched
    assert sorted(p.name for p in ck.checkpoint_dir(tmp_path).iterdir()) == [first.name]  # no temp/partial file
    assert torch.equal(ck.load_checkpoint(first, "generator")["x"], torch.arange(3))
    for step in (2, 3, 4):
        ck.save_checkpoint(tmp_path, "generator", step, {"x": torch.arange(step)}, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 4]


def test_corrupt_or_foreign_checkpoint_gives_clear_error(tmp_path):
    crops = tiny_crops()
    train_generator(tiny_gcfg(steps=2, recon_weight=0.0), crops, tmp_path, progress=False)
    path = ck.latest_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ModelFileError, match=r"ckpt_00000002\.pt.*training checkpoint"):
        train_generator(tiny_gcfg(steps=4, recon_weight=0.0), crops, tmp_path, resume=True, progress=False)
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="'generator' run, not 'encoder'"):
        ck.load_checkpoint(path, "encoder")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": ck.FORMAT, "payload": Evil()}, protocol=2))
    with pytest.raises(ModelFileError, match=r"evil\.pt"):
        ck.load_checkpoint(evil, "generator")
    assert not (tmp_path / "owned").exists()
    with pytest.raises(ModelFileError, match="not found"):
        train_generator(tiny_gcfg(), crops, tmp_path, resume=tmp_path / "nope.pt", progress=False)


def test_crops_file_roundtrip_and_corrupt(tmp_path):
    crops = tiny_crops(5)
    path = save_crops(crops, tmp_path / "c.npz")
    back = load_crops(path)
    assert torch.equal(back.images, crops.images) and back.names == crops.names and back.fingerprint() == \
        crops.fingerprint()
    path.write_bytes(path.read_bytes()[:100])
    from latent_rag_ros.datasets import DatasetError

    with pytest.raises(DatasetError, match=r"c\.npz"):
        load_crops(path)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_train_generator_encoder_evaluate(tmp_path, capsys):
    import cv2

    from latent_rag_ros.cli import main

    folder = tmp_path / "crops"
    folder.mkdir()
    for i, img in enumerate(tiny_crops(6, 32, 16).images.permute(0, 2, 3, 1).numpy()):
        cv2.imwrite(str(folder / f"p{i}.png"), np.ascontiguousarray(img[:, :, ::-1]))
    common = ["--no-progress", "--threads", "1", "--batch", "4", "--checkpoint-every", "5"]
    gen_args = ["train", "generator", "--data", str(folder), "--out", str(tmp_path / "g"), "--resolution", "16",
                "--channels", "8", "--num-layers", "3", "--z-dim", "16", "--w-dim", "16", "--d-channels", "16",
                "--steps", "1", "--recon-weight", "1", "--e-width", "0.1", "--e-blocks", "1,1,1,1",
                "--e-style-width", "16", *common]
    assert main(gen_args) == 0
    assert (tmp_path / "g" / "crops.npz").is_file()
    # resume with --steps only: the stored settings are reused
    assert main(["train", "generator", "--data", str(folder), "--out", str(tmp_path / "g"), "--steps", "2",
                 "--resume", *common]) == 0
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path / "g"), "generator")["step"] == 2
    assert main(["train", "encoder", "--data", str(folder), "--generator", str(tmp_path / "g" / "generator"),
                 "--out", str(tmp_path / "e"), "--init", str(tmp_path / "g" / "encoder_warm.pt"), "--steps", "1",
                 *common]) == 0
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert main(["train", "evaluate", "--data", str(folder), "--generator", str(tmp_path / "g" / "generator.json"),
                 "--encoder", str(tmp_path / "e" / "encoder.pt"), "--report", str(report),
                 "--figure", str(tmp_path / "fig.png"), "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads(report.read_text())
    assert saved["n"] == 6 and -1.0 <= saved["ssim_mean"] <= 1.0 and printed["ssim_mean"] == saved["ssim_mean"]
    assert (tmp_path / "fig.png").stat().st_size > 0
