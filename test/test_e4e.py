"""E4E encoder (official layout, checkpoint format, progressive deltas) and W+ projection.

No E4E weights exist offline: small random encoders are written in the official checkpoint layout
and must load back to identical outputs; the full-size layout is checked on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.models.e4e import (
    LatentEncoder,
    build_e4e,
    load_e4e,
    save_e4e,
)
from latent_rag_ros.models.projection import ProjectionEncoder
from latent_rag_ros.models.safe_load import ModelFileError

from nets import TinyReID

SMALL = dict(num_ws=10, input_size=(64, 32), width_mult=0.25, num_layers=(1, 2, 2, 1), w_dim=32)


def _small(seed: int = 0, **kw: object) -> LatentEncoder:
    """A small random E4E with data-calibrated BN statistics and random PReLU slopes."""
    torch.manual_seed(seed)
    model = build_e4e(**{**SMALL, **kw}, latent_avg=torch.randn(SMALL["num_ws"], SMALL["w_dim"]))
    enc = model.encoder
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.momentum = 1.0
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.5)
        enc.train()(torch.rand(4, 3, *model.input_size) * 2 - 1)
    return model.eval()


def _official_ckpt(model: LatentEncoder, start_from_latent_avg: bool = True) -> dict:
    """The dict layout e4e's training code writes: state_dict (encoder.* + decoder.*), opts, latent_avg."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state["decoder.style.1.weight"] = torch.randn(8, 8)  # the StyleGAN2 decoder; ignored by the loader
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 64,
            "start_from_latent_avg": start_from_latent_avg, "lr": 0.0001, "batch_size": 8,
            "checkpoint_path": None, "dataset_type": "ffhq_encode"}
    return {"state_dict": state, "opts": opts, "latent_avg": model.latent_avg.clone()}


def test_full_size_matches_official_layout() -> None:
    """Built on the meta device (no memory): names/shapes of omertov/encoder4editing's IR-SE-50 E4E."""
    with torch.device("meta"):
        model = build_e4e(18)
    state = model.encoder.state_dict()
    # counts measured on the official Encoder4Editing(50, 'ir_se', stylegan_size=1024)
    assert len(state) == 621
    assert sum(v.numel() for v in state.values()) == 267_161_076
    shapes = {
        "input_layer.0.weight": (64, 3, 3, 3), "input_layer.2.weight": (64,),
        "body.0.res_layer.1.weight": (64, 64, 3, 3), "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
        "body.3.shortcut_layer.0.weight": (128, 64, 1, 1), "body.23.res_layer.5.fc2.weight": (512, 32, 1, 1),
        "styles.0.convs.6.weight": (512, 512, 3, 3), "styles.3.convs.8.weight": (512, 512, 3, 3),
        "styles.17.convs.10.weight": (512, 512, 3, 3), "styles.17.linear.weight": (512, 512),
        "latlayer1.weight": (512, 256, 1, 1), "latlayer2.weight": (512, 128, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "styles.0.convs.8.weight" not in state and "styles.3.convs.10.weight" not in state
    assert "body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: max-pool shortcut
    assert len(model.encoder.body) == 24 and model.num_ws == 18


def test_official_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _small()
    path = tmp_path / "e4e_small.pt"
    torch.save(_official_ckpt(model), path)
    loaded = load_e4e(path, num_ws=SMALL["num_ws"], input_size=(64, 32))
    assert (loaded.num_ws, loaded.w_dim, loaded.input_size) == (10, 32, (64, 32))
    assert loaded.encoder.blocks == (1, 2, 2, 1) and loaded.encoder.channels == (16, 32, 64, 128)
    x = torch.rand(3, 3, 80, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(x), loaded(x)
    assert got.shape == (3, 10, 32)
    assert (got - want).abs().max() <= 1e-5
    # the latent average is added on top of the encoder's codes
    with torch.no_grad():
        raw = loaded.encoder(F.interpolate(x, size=(64, 32), mode="bilinear", align_corners=False) * 2 - 1)
    assert (got - raw - model.latent_avg).abs().max() <= 1e-5


def test_start_from_latent_avg_false_and_single_row_avg(tmp_path: Path) -> None:
    model = _small(seed=1)
    ckpt = _official_ckpt(model, start_from_latent_avg=False)
    path = tmp_path / "no_avg.pt"
    torch.save(ckpt, path)
    x = torch.rand(1, 3, 64, 32)
    with torch.no_grad():
        plain = load_e4e(path, input_size=(64, 32))(x)
        assert (plain - (model(x) - model.latent_avg)).abs().max() <= 1e-5
    ckpt = _official_ckpt(model)
    ckpt["latent_avg"] = torch.randn(1, 32)  # [1, w_dim] is broadcast to every layer
    torch.save(ckpt, path)
    with torch.no_grad():
        with_avg = load_e4e(path, input_size=(64, 32))(x)
    assert (with_avg - plain - ckpt["latent_avg"]).abs().max() <= 1e-5


def test_progressive_deltas_and_fpn_levels() -> None:
    """w_i = w0 + delta_i; coarse layers [0,3) read c3 only, the rest see the FPN laterals."""
    model = _small(seed=2)
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        base = model.encoder(x * 2 - 1)
        model.encoder.latlayer1.weight.add_(0.5)
        model.encoder.latlayer2.weight.add_(0.5)
        moved = model.encoder(x * 2 - 1)
        assert (moved[:, :3] - base[:, :3]).abs().max() == 0
        assert (moved[:, 3:7] - base[:, 3:7]).abs().amin(dim=-1).max() > 0
        assert (moved[:, 7:] - base[:, 7:]).abs().max() > 1e-4
        for style in model.encoder.styles[1:]:
            style.linear.weight.zero_()
            style.linear.bias.zero_()
        flat = model.encoder(x * 2 - 1)
    assert (flat - flat[:, :1]).abs().max() == 0  # no deltas: every layer equals w0
    assert (flat[:, 0] - base[:, 0]).abs().max() == 0


def test_person_shaped_input_and_gradients() -> None:
    model = build_e4e(num_ws=12, input_size=(256, 128), width_mult=0.25, num_layers=(1, 1, 1, 1), w_dim=16)
    assert model.encoder.base_pools == 4  # 16x8 c3 map -> 1x1 after 4 stride-2 convs, as the official heads
    x = torch.rand(1, 3, 200, 100, requires_grad=True)
    codes = model(x)
    assert codes.shape == (1, 12, 16)
    codes.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="B,3,H,W"):
        model(torch.rand(3, 64, 64))


def test_project_format_round_trip(tmp_path: Path) -> None:
    model = _small(seed=3, width_mult=0.125)  # widths clamp to 16: stages are not told apart by width
    assert model.encoder.channels == (16, 16, 32, 64)
    path = tmp_path / "trained.pt"
    save_e4e(model, path)
    loaded = load_e4e(path)  # input size comes from the checkpoint's opts
    assert loaded.input_size == (64, 32) and loaded.encoder.blocks == (1, 2, 2, 1)
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-5


def test_e4e_loader_errors(tmp_path: Path) -> None:
    model = _small(seed=4)
    good = _official_ckpt(model)
    path = tmp_path / "e4e.pt"
    torch.save(good, path)
    with pytest.raises(ModelFileError, match=r"e4e\.pt.*10 style heads.*num_ws=16"):
        load_e4e(path, num_ws=16)
    with pytest.raises(ModelFileError, match=r"absent\.pt.*not found"):
        load_e4e(tmp_path / "absent.pt")
    cases = {
        "no_state.pt": {"opts": {}},
        "decoder_only.pt": {"state_dict": {"decoder.conv1.weight": torch.zeros(1)}},
        "missing_key.pt": {**good, "state_dict": {k: v for k, v in good["state_dict"].items()
                                                  if k != "encoder.latlayer2.weight"}},
        "no_avg.pt": {k: v for k, v in good.items() if k != "latent_avg"},
        "bare_tensor.pt": torch.zeros(3),
    }
    messages = {"no_state.pt": "no 'state_dict'", "decoder_only.pt": "no 'encoder",
                "missing_key.pt": "missing latlayer2.weight", "no_avg.pt": "'latent_avg' is missing",
                "bare_tensor.pt": "no 'state_dict'"}
    for name, obj in cases.items():
        p = tmp_path / name
        torch.save(obj, p)
        with pytest.raises(ModelFileError) as info:
            load_e4e(p)
        assert name in str(info.value) and messages[name] in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- W+ projection


class TinyGenerator(nn.Module):
    """Stand-in for the real StyleGAN (covered by test_stylegan3.py) with the same generator interface.

    Each W+ layer drives its own random linear map to a 16x8 image; a tanh keeps outputs in [-1, 1].
    """

    def __init__(self, num_ws: int = 4, w_dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_ws, self.w_dim, self.img_height, self.img_width = num_ws, w_dim, 16, 8
        self.register_buffer("w_avg", torch.randn(w_dim, generator=g) * 0.1)
        self.maps = nn.Parameter(torch.randn(num_ws, w_dim, 3 * 16 * 8, generator=g) / w_dim**0.5)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        assert noise_mode in ("const", "random", "none")
        out = torch.einsum("blc,lcp->bp", ws, self.maps)
        return torch.tanh(out).view(-1, 3, self.img_height, self.img_width)


def test_projection_recovers_a_reachable_image() -> None:
    G = TinyGenerator()
    w_true = G.w_avg + torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = (G.synthesis(w_true) + 1) / 2
    target = F.interpolate(target, size=(32, 16), mode="bilinear", align_corners=False)  # other size
    before = [p.detach().clone() for p in G.parameters()]
    proj = ProjectionEncoder(G, steps=80, lr=0.1, ssim_weight=0.1)
    ws = proj(target)
    assert ws.shape == (2, G.num_ws, G.w_dim) and not ws.requires_grad
    losses = proj.last_losses
    assert len(losses) == 80 and losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    with torch.no_grad():
        err_start = (proj.render(G.w_avg.expand(2, G.num_ws, -1), (32, 16)) - target).abs().mean()
        err_end = (proj.render(ws, (32, 16)) - target).abs().mean()
    assert err_end < 0.25 * err_start
    assert all(torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))
    assert all(p.grad is None for p in G.parameters())


def test_projection_with_identity_term() -> None:
    G = TinyGenerator(seed=3)
    reid = TinyReID(dim=16)
    target = torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(4))
    proj = ProjectionEncoder(G, steps=30, lr=0.05, reid=reid, id_weight=1.0)
    ws = proj(target)
    assert ws.shape == (1, 4, 8) and proj.last_losses[-1] < proj.last_losses[0]
    with pytest.raises(TypeError, match="w_avg"):
        ProjectionEncoder(nn.Linear(2, 2))
