"""Restricted unpickler for NVlabs network snapshots (StyleGAN2-ADA / StyleGAN3 ``*.pkl``).

NVlabs snapshots are plain ``pickle`` files of a dict (``G``, ``D``, ``G_ema``, ``augment_pipe``,
``training_set_kwargs``). Every network object in them is written by ``torch_utils.persistence`` as
``_reconstruct_persistent_obj(meta)`` where ``meta`` carries the *source code* of the defining module
and the object's ``__dict__``; the official loader ``exec``s that source. Here nothing from the file
is ever executed or imported: ``find_class`` answers only an allow-list of globals, persistent
objects become inert :class:`PersistentRecord` values (their ``module_src`` is kept only as a
SHA-256), plain ``torch.nn`` modules become :class:`TorchModuleRecord` values, and tensors are rebuilt
through torch's own ``weights_only`` loader. Anything else is refused with :class:`UnsafePickleError`.

``torch.load(weights_only=True)`` cannot be used directly: it rejects the NVlabs persistence and
``dnnlib`` globals, and these files are not in torch's zip format. Hence this small unpickler.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from latent_rag_ros.models.safe_load import ModelFileError, pickle_errors, require_file

EXPECTED = "an NVlabs StyleGAN2/StyleGAN3 network pickle (a dict holding 'G_ema')"

_MAX_DEPTH = 64


class UnsafePickleError(ModelFileError):
    """The pickle asks for a global outside the allow-list (it could run code): refused."""


class _RefusalError(Exception):
    """Raised inside unpickling for a forbidden global or call; turned into UnsafePickleError."""


class _MalformedError(Exception):
    """Raised inside unpickling for structurally wrong data; turned into ModelFileError."""


# ------------------------------------------------------------------------------------------------
# Inert records


class _Sealed(type):
    """Metaclass of the record classes the unpickler hands out: a pickle cannot patch them."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _RefusalError(f"the file tries to modify the loader class {cls.__name__} - refused")

    def __delattr__(cls, name: str) -> None:
        raise _RefusalError(f"the file tries to modify the loader class {cls.__name__} - refused")


class _SafeCallable:
    """An allow-listed function as handed to the unpickler: callable, but its attributes are frozen."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _RefusalError("the file tries to modify a loader function - refused")


class _ModuleStateView:
    """Accessors shared by the records: the pickled ``torch.nn.Module.__dict__`` in ``state``."""

    state: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        """The module's own ``_parameters`` (name -> tensor or None)."""
        return dict(self.state.get("_parameters") or {})

    @property
    def buffers(self) -> dict[str, Any]:
        """The module's own persistent ``_buffers`` (name -> tensor or None)."""
        skip = self.state.get("_non_persistent_buffers_set") or set()
        return {k: v for k, v in (self.state.get("_buffers") or {}).items() if k not in skip}

    @property
    def modules(self) -> dict[str, Any]:
        """The module's direct children (name -> record or None)."""
        return dict(self.state.get("_modules") or {})


class PersistentRecord(_ModuleStateView):
    """One ``torch_utils.persistence`` object as stored: class name, state, and a source digest."""

    def __init__(
        self, class_name: str, module_name_guess: str, version: Any, state: dict[str, Any], module_src: str
    ) -> None:
        self.class_name = class_name
        self.module_name_guess = module_name_guess
        self.version = version
        self.state = state
        self.module_src_sha256 = hashlib.sha256(module_src.encode("utf-8", "replace")).hexdigest()
        self.module_src_chars = len(module_src)

    @property
    def init_args(self) -> tuple[Any, ...]:
        """Positional constructor arguments recorded by the persistence decorator."""
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Keyword constructor arguments recorded by the persistence decorator."""
        return dict(self.state.get("_init_kwargs") or {})

    def __repr__(self) -> str:
        return f"PersistentRecord({self.module_name_guess}.{self.class_name}, children={list(self.modules)})"


class TorchModuleRecord(_ModuleStateView, metaclass=_Sealed):
    """A plain ``torch.nn.modules.*`` object from the pickle, kept as its state dict only."""

    class_path = "torch.nn.Module"

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _MalformedError(f"state of {self.class_path} is not a dict")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"TorchModuleRecord({self.class_path})"


class EasyDictRecord(dict, metaclass=_Sealed):
    """Stands in for ``dnnlib.util.EasyDict`` (a plain dict subclass)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


_SOURCE_MARKERS = (
    ("Alias-Free Generative Adversarial Networks", "training.networks_stylegan3"),
    ("Analyzing and Improving the Image Quality of StyleGAN", "training.networks_stylegan2"),
    ("Training Generative Adversarial Networks with Limited Data", "training.augment"),
)


def _guess_module(src: str) -> str:
    for marker, name in _SOURCE_MARKERS:
        if marker in src:
            return name
    return "unknown"


def _reconstruct_persistent_record(meta: Any) -> PersistentRecord:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: never runs the source."""
    if not isinstance(meta, dict):
        raise _MalformedError("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise _MalformedError(f"unsupported persistent object type {meta.get('type')!r}")
    class_name = meta.get("class_name")
    src = meta.get("module_src")
    state = meta.get("state")
    if not isinstance(class_name, str) or not isinstance(src, str) or not isinstance(state, dict):
        raise _MalformedError("persistent object metadata lacks class_name/module_src/state")
    return PersistentRecord(class_name, _guess_module(src), meta.get("version"), dict(state), src)


# ------------------------------------------------------------------------------------------------
# Allow-listed callables


class _TensorTypeToken:
    """Inert stand-in for ``torch.Tensor`` / ``Parameter`` classes named in ``_rebuild_from_type_v2``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _RefusalError("the file tries to modify a loader object - refused")


_TENSOR_TOKEN = _TensorTypeToken("torch.Tensor")
_PARAMETER_TOKEN = _TensorTypeToken("torch.nn.Parameter")


def _no_hooks(hooks: Any) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise _RefusalError("tensor carries backward hooks (code) - refused")


def _load_from_bytes(data: Any) -> Any:
    """``torch.storage._load_from_bytes`` with torch's ``weights_only`` loader onto the CPU."""
    if not isinstance(data, (bytes, bytearray)):
        raise _MalformedError("storage payload is not bytes")
    try:
        return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise _RefusalError("an embedded tensor storage asks for objects outside torch's safe list") from None
        raise _MalformedError(f"embedded tensor storage is corrupt ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise _MalformedError(f"embedded tensor storage is corrupt ({detail})") from None


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _MalformedError("tensor storage is not a torch storage")
    if not isinstance(storage_offset, int) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise _MalformedError("tensor geometry is malformed")
    if metadata is not None and not isinstance(metadata, dict):
        raise _MalformedError("tensor metadata is malformed")
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict(), metadata)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride, False, None)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.nn.Parameter:
    if not isinstance(data, torch.Tensor):
        raise _MalformedError("parameter data is not a tensor")
    _no_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    if state:
        raise _RefusalError("parameter carries extra Python state - refused")
    return _rebuild_parameter(data, requires_grad, backward_hooks)


_TENSOR_BUILDERS: tuple[Callable[..., Any], ...] = (
    _rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    func = func.fn if isinstance(func, _SafeCallable) else None
    if func not in _TENSOR_BUILDERS or new_type not in (_TENSOR_TOKEN, _PARAMETER_TOKEN):
        raise _RefusalError("tensor subclass rebuild with a non-tensor type or function - refused")
    if state:
        raise _RefusalError("tensor carries extra Python state - refused")
    if not isinstance(args, tuple):
        raise _MalformedError("tensor rebuild arguments are malformed")
    out = func(*args)
    if new_type is _PARAMETER_TOKEN and not isinstance(out, torch.nn.Parameter):
        out = torch.nn.Parameter(out, requires_grad=out.requires_grad)
    return out


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise _RefusalError("numpy array of a non-ndarray subtype - refused")
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype):
        raise _MalformedError("numpy scalar without a dtype")
    if dtype.hasobject:
        return data  # object scalars are just the (already safely unpickled) object
    return _numpy_multiarray().scalar(dtype, data)


def _numpy_multiarray() -> Any:
    core = getattr(np, "_core", None)
    return core.multiarray if core is not None else np.core.multiarray


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusalError("_codecs.encode is allowed only for latin1 byte strings")
    return text.encode("latin1")


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, TorchModuleRecord)) or base is not object or state is not None:
        name = getattr(cls, "__name__", cls)
        raise _RefusalError(f"copyreg._reconstructor for {name!r} - only torch.nn modules are allowed")
    return cls()


_STUBS: dict[str, type[TorchModuleRecord]] = {}


def _torch_module_stub(module: str, name: str) -> type[TorchModuleRecord]:
    path = f"{module}.{name}"
    if path not in _STUBS:
        _STUBS[path] = _Sealed(name, (TorchModuleRecord,), {"class_path": path, "__module__": __name__})
    return _STUBS[path]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("__builtin__", "object"): object,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Tensor"): _TENSOR_TOKEN,
    ("torch._tensor", "Tensor"): _TENSOR_TOKEN,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TOKEN,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}

_ALLOWED = {k: _SafeCallable(v) if isinstance(v, types.FunctionType) else v for k, v in _ALLOWED.items()}
_RECONSTRUCT_RECORD = _SafeCallable(_reconstruct_persistent_record)

_PERSISTENCE_MODULE = re.compile(r"^(?:[A-Za-z_]\w*\.)*torch_utils\.persistence$")
_DNNLIB_MODULE = re.compile(r"^(?:[A-Za-z_]\w*\.)*dnnlib(?:\.util)?$")
_TORCH_NN_MODULE = re.compile(r"^torch\.nn\.modules(?:\.[a-z_][a-z0-9_]*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def allowed_global(module: str, name: str) -> Any:
    """The safe object for the global ``module.name`` in a snapshot; raises for anything else."""
    key = (module, name)
    if key in _ALLOWED:
        return _ALLOWED[key]
    if name == "_reconstruct_persistent_obj" and _PERSISTENCE_MODULE.match(module):
        return _RECONSTRUCT_RECORD
    if name == "EasyDict" and _DNNLIB_MODULE.match(module):
        return EasyDictRecord
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype) and _IDENTIFIER.match(name):
        return getattr(torch, name)
    if _TORCH_NN_MODULE.match(module) and _IDENTIFIER.match(name) and name[:1].isupper():
        return _torch_module_stub(module, name)
    raise _RefusalError(f"refused: the file asks for the global '{module}.{name}', which is not on the allow-list "
                   "(loading it could run code)")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise _MalformedError("the pickle refers to external persistent storage (a torch.save file, not a snapshot)")


# ------------------------------------------------------------------------------------------------
# Public API


def load_snapshot(path: str | os.PathLike) -> Any:
    """Unpickle an NVlabs snapshot safely; networks come back as :class:`PersistentRecord` values."""
    p = require_file(path, EXPECTED)
    with open(p, "rb") as fh:
        head = fh.read(2)
    if head == b"PK":
        raise ModelFileError(p, EXPECTED, "this is a torch.save zip archive, not an NVlabs pickle")
    if len(head) < 2 or head[0] != 0x80 or head[1] > pickle.HIGHEST_PROTOCOL or head[1] < 2:
        raise ModelFileError(p, EXPECTED, "not a pickle file (no pickle protocol 2-5 header)")
    try:
        with open(p, "rb") as fh:
            return _RestrictedUnpickler(fh).load()
    except _RefusalError as exc:
        raise UnsafePickleError(p, EXPECTED, str(exc)) from None
    except _MalformedError as exc:
        raise ModelFileError(p, EXPECTED, f"malformed snapshot: {exc}") from None
    except (*pickle_errors(), EOFError, ValueError, RuntimeError, OverflowError, MemoryError, RecursionError,
            UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelFileError(p, EXPECTED, f"corrupt or truncated pickle ({type(exc).__name__}: {first})") from None


def snapshot_network(snapshot: Any, path: str | os.PathLike, key: str = "G_ema") -> PersistentRecord:
    """Pick one network record (default ``G_ema``, falling back to ``G``) from a loaded snapshot."""
    if isinstance(snapshot, PersistentRecord):
        return snapshot
    if not isinstance(snapshot, dict):
        raise ModelFileError(path, EXPECTED, f"top level is a {type(snapshot).__name__}, not a snapshot dict")
    for k in (key, "G") if key == "G_ema" else (key,):
        rec = snapshot.get(k)
        if isinstance(rec, PersistentRecord):
            return rec
    raise ModelFileError(path, EXPECTED, f"no network '{key}' in the snapshot (keys: {sorted(map(str, snapshot))})")


def _walk(record: Any, prefix: str, depth: int) -> Iterator[tuple[str, Any]]:
    if depth > _MAX_DEPTH:
        raise _MalformedError("module nesting is too deep")
    for name, t in record.parameters.items():
        if t is not None:
            yield prefix + name, t
    for name, t in record.buffers.items():
        if t is not None:
            yield prefix + name, t
    for name, child in record.modules.items():
        if child is None:
            continue
        if not isinstance(child, _ModuleStateView):
            raise _MalformedError(f"child module '{prefix}{name}' is a {type(child).__name__}, not a module record")
        yield from _walk(child, f"{prefix}{name}.", depth + 1)


def record_tensors(record: PersistentRecord, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Flatten a network record into a ``state_dict``-style mapping (persistent buffers included)."""
    out: dict[str, torch.Tensor] = {}
    try:
        for name, t in _walk(record, "", 0):
            if not isinstance(t, torch.Tensor):
                raise _MalformedError(f"'{name}' is a {type(t).__name__}, not a tensor")
            out[name] = t.detach()
    except _MalformedError as exc:
        raise ModelFileError(path, EXPECTED, f"malformed network: {exc}") from None
    return out


def to_plain(value: Any, depth: int = 0) -> Any:
    """Convert records' init arguments to JSON-able Python (EasyDict -> dict, numpy -> Python)."""
    if depth > _MAX_DEPTH:
        raise ValueError("nesting too deep")
    if isinstance(value, dict):
        return {str(k): to_plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist(), depth + 1)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"unsupported value of type {type(value).__name__}")


def detect_family(record: PersistentRecord, path: str | os.PathLike) -> str:
    """``stylegan3`` (synthesis has ``input``) or ``stylegan2`` (synthesis has ``b4``)."""
    synthesis = record.modules.get("synthesis")
    children = synthesis.modules if isinstance(synthesis, _ModuleStateView) else {}
    if "input" in children:
        return "stylegan3"
    if "b4" in children:
        return "stylegan2"
    raise ModelFileError(path, EXPECTED, f"network '{record.class_name}' is neither a StyleGAN2 nor a StyleGAN3 "
                         "generator (no synthesis.input / synthesis.b4)")


__all__ = [
    "EXPECTED",
    "EasyDictRecord",
    "PersistentRecord",
    "TorchModuleRecord",
    "UnsafePickleError",
    "allowed_global",
    "detect_family",
    "load_snapshot",
    "record_tensors",
    "snapshot_network",
    "to_plain",
]
