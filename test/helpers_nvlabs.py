"""Test helper: writes NVlabs-style network snapshots, and hostile pickles, without NVlabs code.

Real snapshots are ``pickle.dump`` of a dict (``G``, ``D``, ``G_ema``, ``augment_pipe``,
``training_set_kwargs``); each network object is reduced by ``torch_utils.persistence`` to
``_reconstruct_persistent_obj(meta)``, ``meta = {type, version, module_src, class_name, state}``,
where ``state`` is the module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules`` holding
nested persistent objects, ``_init_args``, ``_init_kwargs``, plain attributes) and kwargs may be
``dnnlib.util.EasyDict``. The writer puts stand-in modules ``torch_utils.persistence`` and
``dnnlib.util`` into ``sys.modules`` only while pickling, so pickle emits exactly those globals.
Tensors are pickled as plain torch pickles them. ``module_src`` is booby-trapped: if a loader ever
ran it, it would create ``marker`` files and raise SystemExit.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

_FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")

_DOCSTRINGS = {
    "stylegan3": '"""Generator architecture from the paper\n"Alias-Free Generative Adversarial Networks"."""\n',
    "stylegan2": '"""Network architectures from the paper\n"Analyzing and Improving the Image Quality of '
                 'StyleGAN"."""\n',
}


def booby_trapped_source(family: str, marker: Path) -> str:
    """Module source text that writes ``marker`` (and ``marker.system``) and exits if it is ever run."""
    return (
        "# Copyright (c) 2021, NVIDIA CORPORATION & AFFILIATES.  (test stand-in)\n"
        + _DOCSTRINGS[family]
        + "import os\n"
        + f"open({str(marker)!r}, 'w').write('module_src was executed')\n"
        + f"os.system('touch {marker}.system')\n"
        + "raise SystemExit('module_src must never be executed')\n"
    )


class _Persistent:
    """Pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, as NVlabs does."""

    def __init__(self, reconstruct: Any, meta: dict[str, Any]) -> None:
        self._reconstruct = reconstruct
        self._meta = meta

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self._reconstruct, (self._meta,)


@contextlib.contextmanager
def fake_nvlabs_modules() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    """Install stand-in ``torch_utils.persistence`` and ``dnnlib.util`` modules while pickling."""
    saved = {name: sys.modules.get(name) for name in _FAKE_MODULES}
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta: Any) -> Any:
        raise RuntimeError("writer-side stand-in: never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        def __getattr__(self, name: str) -> Any:
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        def __setattr__(self, name: str, value: Any) -> None:
            self[name] = value

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    torch_utils.persistence = persistence
    dnnlib.util = util
    dnnlib.EasyDict = EasyDict
    sys.modules.update({"torch_utils": torch_utils, "torch_utils.persistence": persistence,
                        "dnnlib": dnnlib, "dnnlib.util": util})
    try:
        yield persistence, util
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def _easy(util: types.ModuleType, value: Any) -> Any:
    if isinstance(value, dict):
        return util.EasyDict({k: _easy(util, v) for k, v in value.items()})
    return value


def _is_persistent_class(module: nn.Module | None) -> bool:
    """NVlabs' own classes are persistent; plain ``torch.nn`` modules pickle as ordinary objects."""
    return module is not None and not type(module).__module__.startswith("torch.nn")


def _persist(module: nn.Module, src: str, version: int, persistence: types.ModuleType,
             init_args: tuple[Any, ...] = (), init_kwargs: dict[str, Any] | None = None) -> _Persistent:
    """Wrap ``module`` (and, recursively, its children) the way ``persistent_class`` pickles it."""
    state = dict(module.__dict__)
    state.pop("init_kwargs", None)  # this package's own record; NVlabs keeps _init_kwargs instead
    state["_parameters"] = OrderedDict(module._parameters)
    state["_buffers"] = OrderedDict(module._buffers)
    state["_modules"] = OrderedDict(
        (name, _persist(child, src, version, persistence) if _is_persistent_class(child) else child)
        for name, child in module._modules.items())
    state["_init_args"] = tuple(init_args)
    state["_init_kwargs"] = dict(init_kwargs or {})
    meta = dict(type="class", version=version, module_src=src, class_name=type(module).__name__, state=state)
    return _Persistent(persistence._reconstruct_persistent_obj, meta)


def _generator_init(net: nn.Module, util: types.ModuleType, layout: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    kwargs = copy.deepcopy(net.init_kwargs)
    kwargs["mapping_kwargs"] = util.EasyDict(kwargs.get("mapping_kwargs") or {})
    if layout == "stylegan3-repo":
        return (), kwargs
    if layout == "ada":  # stylegan2-ada-pytorch: Generator(..., mapping_kwargs={}, synthesis_kwargs={})
        top = {k: kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
                                          "mapping_kwargs")}
        top["synthesis_kwargs"] = util.EasyDict(kwargs)
        return (), top
    if layout == "positional":  # constructed positionally: _init_args holds the leading arguments
        args = tuple(kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"))
        return args, kwargs
    raise ValueError(f"unknown layout {layout!r}")


class _TinyDiscriminator(nn.Module):
    """Stand-in ``D`` holding plain torch.nn modules (they pickle as ordinary torch objects)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.extra = nn.ModuleList([nn.Identity(), nn.LeakyReLU(0.2)])


def write_nvlabs_snapshot(
    ema_net: nn.Module,
    path: str | os.PathLike,
    *,
    marker: Path,
    train_net: nn.Module | None = None,
    version: int = 6,
    layout: str = "stylegan3-repo",
    protocol: int | None = None,
    drop_tensor: str | None = None,
    extra_init_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``ema_net`` as ``G_ema`` (``train_net``, default the same, as ``G``; a tiny ``D``) as a snapshot.

    ``layout``: ``stylegan3-repo`` (flat synthesis kwargs), ``ada`` (nested ``synthesis_kwargs``) or
    ``positional`` (leading args in ``_init_args``). ``drop_tensor`` removes one tensor (dotted
    state-dict name) from ``ema_net`` to make a damaged file; ``extra_init_kwargs`` adds kwargs.
    """
    family = ema_net.family
    src = booby_trapped_source(family, marker)
    out = Path(path)
    with fake_nvlabs_modules() as (persistence, util):
        args, kwargs = _generator_init(ema_net, util, layout)
        kwargs.update(extra_init_kwargs or {})
        g_ema = _persist(ema_net, src, version, persistence, args, kwargs)
        if drop_tensor is not None:
            _drop(g_ema, drop_tensor)
        g = _persist(train_net if train_net is not None else ema_net, src, version, persistence, args, kwargs)
        d = _persist(_TinyDiscriminator(), src, version, persistence)
        snapshot = {
            "training_set_kwargs": util.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                 path="~/datasets/people.zip", resolution=ema_net.img_resolution,
                                                 use_labels=False, max_size=None, xflip=True),
            "G": g,
            "D": d,
            "G_ema": g_ema,
            "augment_pipe": None,
        }
        with open(out, "wb") as fh:
            pickle.dump(snapshot, fh, protocol=protocol)
    return out


def _drop(obj: _Persistent, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        obj = obj._meta["state"]["_modules"][name]
    state = obj._meta["state"]
    for key in ("_parameters", "_buffers"):
        if leaf in state[key]:
            del state[key][leaf]
            return
    raise KeyError(dotted)


# ------------------------------------------------------------------------------------------------
# Hostile pickles


class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def write_reduce_pickle(path: str | os.PathLike, func: Any, *args: Any, wrap_in_snapshot: bool = True) -> Path:
    """A pickle whose REDUCE calls ``func(*args)`` (e.g. ``os.system('touch X')``) when loaded naively."""
    payload: Any = _Reduce(func, *args)
    if wrap_in_snapshot:
        payload = {"G_ema": payload, "training_set_kwargs": {}}
    out = Path(path)
    out.write_bytes(pickle.dumps(payload, protocol=4))
    return out


def write_global_call_pickle(path: str | os.PathLike, module: str, name: str, arg: str) -> Path:
    """A protocol-2 pickle calling ``module.name(arg)`` for a global that need not exist here."""
    m, n, a = module.encode(), name.encode(), arg.encode()
    data = (b"\x80\x02c" + m + b"\n" + n + b"\n" + b"X" + len(a).to_bytes(4, "little") + a
            + b"\x85" + b"R" + b".")
    out = Path(path)
    out.write_bytes(data)
    return out


# ------------------------------------------------------------------------------------------------
# Small random-weight generators for tests

SMALL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "sg3-t": ("stylegan3", dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                                channel_base=2048, channel_max=64, num_layers=6, magnitude_ema_beta=0.999)),
    "sg3-r": ("stylegan3", dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                                channel_base=4096, channel_max=64, num_layers=6, conv_kernel=1,
                                use_radial_filters=True)),
    "sg3-human": ("stylegan3", dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3,
                                    channel_base=2048, channel_max=64, num_layers=6, square=False)),
    "sg2": ("stylegan2", dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                              channel_base=1024, channel_max=64, mapping_kwargs={"num_layers": 2})),
    "sg2-human": ("stylegan2", dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                                    channel_base=1024, channel_max=64, square=False,
                                    mapping_kwargs={"num_layers": 2})),
}


def make_small_generator(kind: str, seed: int = 0) -> nn.Module:
    """A small random-weight generator whose buffers are also randomised (w_avg, EMAs, noise)."""
    from latent_rag_ros.models.generator_io import build_generator

    family, kwargs = SMALL_CONFIGS[kind]
    torch.manual_seed(seed)
    net = build_generator(family, copy.deepcopy(kwargs))
    with torch.no_grad():
        net.mapping.w_avg.normal_()
        for name, t in net.named_buffers():
            if name.endswith("magnitude_ema"):
                t.uniform_(0.5, 2.0)
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.uniform_(0.05, 0.2)
        if family == "stylegan3":
            net.synthesis.input.affine.weight.normal_(0.0, 0.1)  # zero at init; trained nets rotate/shift
            angle = 0.3
            net.synthesis.input.transform.copy_(torch.tensor(
                [[float(torch.cos(torch.tensor(angle))), -float(torch.sin(torch.tensor(angle))), 0.1],
                 [float(torch.sin(torch.tensor(angle))), float(torch.cos(torch.tensor(angle))), -0.05],
                 [0.0, 0.0, 1.0]]))
    return net.eval()
