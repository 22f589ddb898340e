"""NVlabs snapshot loading through the restricted unpickler, the own format, and hostile files."""

from __future__ import annotations

import builtins
import collections
import copyreg
import io
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from latent_rag_ros.models import nvlabs_pickle
from latent_rag_ros.models.generator_io import convert_snapshot, load_own_format, save_generator
from latent_rag_ros.models.nvlabs_pickle import UnsafePickleError
from latent_rag_ros.models.safe_load import ModelFileError
from latent_rag_ros.models.stylegan3 import load_generator

from helpers_nvlabs import (
    make_small_generator,
    write_global_call_pickle,
    write_nvlabs_snapshot,
    write_reduce_pickle,
)


def _images(net: torch.nn.Module, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, net.z_dim, generator=gen)
    ws = torch.randn(2, net.num_ws, net.w_dim, generator=gen) * 0.5 + net.w_avg
    with torch.no_grad():
        return net(z, truncation_psi=0.7, noise_mode="const"), net.synthesis(ws, noise_mode="const")


def _assert_same_outputs(a: torch.nn.Module | tuple[torch.Tensor, torch.Tensor], b: torch.nn.Module) -> None:
    """Same images (max abs diff <= 1e-4) from z with truncation and from fixed W+ codes."""
    ref = a if isinstance(a, tuple) else _images(a)
    for x, y in zip(ref, _images(b)):
        assert x.shape == y.shape
        assert float((x - y).abs().max()) <= 1e-4


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k, v in sa.items():
        assert torch.equal(sb[k], v), k


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "module_src_ran"
    yield m
    assert not m.exists() and not Path(f"{m}.system").exists(), "snapshot source code was executed"


@pytest.mark.parametrize("kind,layout", [
    ("sg3-t", "stylegan3-repo"), ("sg3-r", "stylegan3-repo"), ("sg3-human", "stylegan3-repo"),
    ("sg2", "ada"), ("sg2-human", "positional"),
])
def test_snapshot_round_trip_and_convert(kind: str, layout: str, tmp_path: Path, marker: Path) -> None:
    G_ema = make_small_generator(kind, seed=1)
    G_train = make_small_generator(kind, seed=2)  # the non-EMA network must not be picked
    pkl = write_nvlabs_snapshot(G_ema, tmp_path / "network-snapshot-000100.pkl", marker=marker, train_net=G_train,
                                layout=layout)

    loaded = load_generator(pkl)
    assert type(loaded) is type(G_ema)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for attr in ("z_dim", "w_dim", "c_dim", "num_ws", "img_resolution", "img_channels", "img_height", "img_width"):
        assert getattr(loaded, attr) == getattr(G_ema, attr), attr
    _assert_same_weights(G_ema, loaded)
    reference = _images(G_ema)
    _assert_same_outputs(reference, loaded)

    st, js = convert_snapshot(pkl, tmp_path / "converted")
    assert st.name == "converted.safetensors" and js.name == "converted.json"
    spec = json.loads(js.read_text())
    assert spec["family"] == G_ema.family and spec["num_ws"] == G_ema.num_ws
    assert spec["source"]["network"] == "G_ema" and spec["source"]["module"].startswith("training.networks")
    _assert_same_outputs(reference, load_generator(st))
    for path in (js, tmp_path / "converted"):
        _assert_same_weights(G_ema, load_generator(path))


def test_snapshot_records_are_inert(tmp_path: Path, marker: Path) -> None:
    pkl = write_nvlabs_snapshot(make_small_generator("sg3-t"), tmp_path / "s.pkl", marker=marker, version=4,
                                protocol=2)
    snap = nvlabs_pickle.load_snapshot(pkl)
    g = snap["G_ema"]
    assert isinstance(g, nvlabs_pickle.PersistentRecord) and g.class_name == "Generator"
    assert g.module_name_guess == "training.networks_stylegan3" and g.version == 4
    assert len(g.module_src_sha256) == 64 and not hasattr(g, "module_src")
    assert isinstance(g.init_kwargs["mapping_kwargs"], dict)
    assert isinstance(snap["training_set_kwargs"], dict) and snap["training_set_kwargs"]["xflip"] is True
    d_children = snap["D"].modules
    assert isinstance(d_children["fc"], nvlabs_pickle.TorchModuleRecord)
    assert d_children["fc"].class_path == "torch.nn.modules.linear.Linear"
    assert set(d_children["fc"].parameters) == {"weight", "bias"}
    assert nvlabs_pickle.detect_family(g, pkl) == "stylegan3"
    assert "synthesis.input.freqs" in nvlabs_pickle.record_tensors(g, pkl)


def test_own_format_round_trip(tmp_path: Path) -> None:
    G = make_small_generator("sg2-human")
    st, js = save_generator(G, tmp_path / "gen.safetensors")
    assert st.exists() and js.exists()
    _assert_same_outputs(G, load_own_format(tmp_path / "gen.json"))
    spec = json.loads(js.read_text())
    spec["format_version"] = 99
    js.write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match="format_version"):
        load_generator(js)


def test_damaged_snapshot_names_missing_tensor(tmp_path: Path, marker: Path) -> None:
    pkl = write_nvlabs_snapshot(make_small_generator("sg3-t"), tmp_path / "d.pkl", marker=marker,
                                drop_tensor="synthesis.L1_36_64.affine.weight")
    with pytest.raises(ModelFileError, match=r"missing: synthesis\.L1_36_64\.affine\.weight") as err:
        load_generator(pkl)
    assert str(pkl) in str(err.value)


def test_unknown_architecture_option_is_a_clear_error(tmp_path: Path, marker: Path) -> None:
    pkl = write_nvlabs_snapshot(make_small_generator("sg3-t"), tmp_path / "u.pkl", marker=marker,
                                extra_init_kwargs={"some_future_option": 3})
    with pytest.raises(ModelFileError, match="some_future_option"):
        load_generator(pkl)


@pytest.mark.parametrize("func,args,forbidden", [
    (os.system, None, "system"),
    (builtins.open, None, "io.open"),
    (builtins.eval, ("__import__('os').system('touch {target}')",), "builtins.eval"),
    (builtins.exec, ("open('{target}', 'w')",), "builtins.exec"),
])
def test_malicious_reduce_is_refused_and_never_runs(func, args, forbidden: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    if args is None:
        args = (f"touch {target}",) if func is os.system else (str(target), "w")
    args = tuple(a.replace("{target}", str(target)) for a in args)
    bad = write_reduce_pickle(tmp_path / "evil.pkl", func, *args)
    with pytest.raises(UnsafePickleError) as err:
        load_generator(bad)
    assert str(bad) in str(err.value) and forbidden in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize("module,name", [
    ("torch_utils.persistence", "_src_to_module"),
    ("dnnlib.util", "call_func_by_name"),
    ("torch", "load"),
    ("subprocess", "Popen"),
    ("numpy", "load"),
])
def test_non_allowlisted_globals_are_refused(module: str, name: str, tmp_path: Path) -> None:
    bad = write_global_call_pickle(tmp_path / f"{name}.pkl", module, name, "x")
    with pytest.raises(UnsafePickleError, match=re.escape(f"{module}.{name}")):
        nvlabs_pickle.load_snapshot(bad)


def test_reconstructor_only_for_torch_modules(tmp_path: Path) -> None:
    bad = write_reduce_pickle(tmp_path / "recon.pkl", copyreg._reconstructor, collections.OrderedDict, object, None)
    with pytest.raises(UnsafePickleError, match="_reconstructor"):
        load_generator(bad)


def test_tensor_with_backward_hooks_is_refused(tmp_path: Path) -> None:
    t = torch.zeros(2)
    hooks = collections.OrderedDict(h=1)
    bad = write_reduce_pickle(tmp_path / "hooks.pkl", torch._utils._rebuild_parameter, t, False, hooks)
    with pytest.raises(UnsafePickleError, match="backward hooks"):
        load_generator(bad)
    bad = write_reduce_pickle(tmp_path / "hooks2.pkl", torch._utils._rebuild_parameter, t, False,
                              collections.OrderedDict(h=print))
    with pytest.raises(UnsafePickleError, match=r"builtins\.print"):
        load_generator(bad)


def test_wrong_kind_truncated_and_missing_files(tmp_path: Path, marker: Path) -> None:
    good = write_nvlabs_snapshot(make_small_generator("sg2"), tmp_path / "good.pkl", marker=marker)
    data = good.read_bytes()
    cases = {
        "truncated.pkl": data[: len(data) // 2],
        "random.pkl": os.urandom(4096),
        "model.pkl": json.dumps({"G_ema": 1}).encode(),
        "list.pkl": pickle.dumps([1, 2, 3]),
        "nog.pkl": pickle.dumps({"D": 1, "training_set_kwargs": {}}),
        "empty.pkl": b"",
    }
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    cases["state_dict.pt"] = buf.getvalue()
    for name, payload in cases.items():
        p = tmp_path / name
        p.write_bytes(payload)
        with pytest.raises(ModelFileError) as err:
            load_generator(p)
        assert str(p) in str(err.value), name
    with pytest.raises(ModelFileError, match="not found"):
        load_generator(tmp_path / "absent.pkl")
    (tmp_path / "other.json").write_text('{"hello": "world"}')
    with pytest.raises(ModelFileError, match="format"):
        load_generator(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="JSON"):
        load_generator(tmp_path / "broken.json")


def _build_with_slotstate(module: str, name: str, attr: str, value_ops: bytes) -> bytes:
    """Protocol-2 pickle: push global ``module.name``, then BUILD it with ``(None, {attr: value})``."""
    a = attr.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + b"N}" + b"X"
            + len(a).to_bytes(4, "little") + a + value_ops + b"s\x86b.")


@pytest.mark.parametrize("module,name,attr,value_ops", [
    ("dnnlib.util", "EasyDict", "__setstate__", b"cbuiltins\nset\n"),
    ("torch._utils", "_rebuild_tensor_v2", "__defaults__", b"K\x01\x85"),
    ("torch._utils", "_rebuild_tensor_v2", "fn", b"cbuiltins\nset\n"),
    ("torch.nn.modules.linear", "Linear", "class_path", b"K\x01"),
])
def test_pickle_cannot_patch_the_loader(module: str, name: str, attr: str, value_ops: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "patch.pkl"
    bad.write_bytes(_build_with_slotstate(module, name, attr, value_ops))
    with pytest.raises(ModelFileError):
        nvlabs_pickle.load_snapshot(bad)
    assert nvlabs_pickle.EasyDictRecord.__dict__["__setstate__"].__module__ == nvlabs_pickle.__name__
    assert nvlabs_pickle._rebuild_tensor_v2.__defaults__ == (None,)
    assert nvlabs_pickle.allowed_global("torch.nn.modules.linear", "Linear").class_path.endswith(".Linear")


def test_storages_saved_on_cuda_load_on_cpu(tmp_path: Path) -> None:
    """Storage bytes that name a CUDA device (GPU-saved snapshots) are mapped to the CPU."""
    data = pickle.dumps({"G_ema": torch.nn.Parameter(torch.arange(6.0), requires_grad=False)}, protocol=3)
    start = data.index(b"\x80\x02\x8a\n")  # the legacy torch.save bytes of the storage
    size = int.from_bytes(data[start - 4: start], "little")
    inner = data[start: start + size].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert inner != data[start: start + size]
    path = tmp_path / "cuda.pkl"
    path.write_bytes(data[: start - 4] + len(inner).to_bytes(4, "little") + inner + data[start + size:])
    t = nvlabs_pickle.load_snapshot(path)["G_ema"]
    assert t.device.type == "cpu" and torch.equal(t.detach(), torch.arange(6.0))
