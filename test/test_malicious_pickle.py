"""Every model loader refuses booby-trapped pickles without running them, and explains bad files.

The trap: a pickle whose unpickling calls ``exec`` to create a marker file. It is fed to each loader
as a raw pickle and inside a genuine torch zip checkpoint; each loader must raise ModelFileError
naming the file, and the marker must not exist afterwards. Missing, empty, truncated and
wrong-kind files must give one clear ModelFileError naming the file, too.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from latent_rag_ros.models.detectors import load_detector
from latent_rag_ros.models.e4e import build_e4e, load_e4e, save_e4e
from latent_rag_ros.models.reid import load_reid
from latent_rag_ros.models.safe_load import ModelFileError


class _Trap:
    """Unpickling this object runs ``exec`` (a stand-in for arbitrary code) that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _generator_loader() -> Callable[[Path], object]:
    from latent_rag_ros.models.stylegan3 import load_generator

    return lambda p: load_generator(p)


LOADERS: dict[str, Callable[[Path], object]] = {
    "reid_deepsort_mobilenetv2": lambda p: load_reid("deepsort_mobilenetv2", p),
    "reid_bagtricks": lambda p: load_reid("bagtricks", p),
    "reid_agw": lambda p: load_reid("agw", p),
    "reid_torchreid": lambda p: load_reid("torchreid", p),
    "e4e": lambda p: load_e4e(p),
    "detector_onnx": lambda p: load_detector("onnx", p),
    "stylegan3_generator": lambda p: _generator_loader()(p),
}


def _loader(name: str) -> Callable[[Path], object]:
    return _generator_loader() if name == "stylegan3_generator" else LOADERS[name]


@pytest.fixture
def traps(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(raw pickle, torch zip checkpoint with the trap inside, marker path)."""
    marker = tmp_path / "PWNED"
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"state_dict": {"w": _Trap(marker)}}, protocol=2))
    zipped = tmp_path / "evil_checkpoint.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "opts": _Trap(marker),
                "latent_avg": torch.zeros(1, 4)}, zipped)
    return raw, zipped, marker


def test_the_traps_are_live(traps: tuple[Path, Path, Path]) -> None:
    """Unrestricted loading really runs the payload (in this test's folder): refusals mean something."""
    raw, zipped, marker = traps
    pickle.loads(raw.read_bytes())  # deliberately unsafe, to prove the trap works
    assert marker.read_text() == "pwned"
    marker.unlink()
    torch.load(zipped, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


@pytest.mark.parametrize("name", list(LOADERS))
def test_loader_refuses_malicious_pickles(name: str, traps: tuple[Path, Path, Path]) -> None:
    raw, zipped, marker = traps
    load = _loader(name)
    for path in (raw, zipped):
        with pytest.raises(ModelFileError) as info:
            load(path)
        assert str(path) in str(info.value), str(info.value)
        assert not marker.exists(), f"{name} executed code from {path.name}"


def _valid_torch_file(tmp_path: Path) -> Path:
    """A small but real checkpoint (an E4E one) to truncate."""
    path = tmp_path / "real.pt"
    model = build_e4e(num_ws=4, input_size=(32, 16), width_mult=0.25, num_layers=(1, 1, 1, 1), w_dim=16)
    save_e4e(model, path)
    return path


@pytest.mark.parametrize("name", list(LOADERS))
def test_loader_explains_bad_files(name: str, tmp_path: Path) -> None:
    load = _loader(name)
    real = _valid_torch_file(tmp_path)
    if name == "detector_onnx":  # a truncated ONNX model for the ONNX loader
        real = tmp_path / "real.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 32, 32), str(real), dynamo=False)
    blob = real.read_bytes()
    suffix = real.suffix
    files = {
        "missing": tmp_path / f"missing{suffix}",
        "empty": tmp_path / f"empty{suffix}",
        "truncated": tmp_path / f"truncated{suffix}",
        "wrong_kind": tmp_path / f"wrong_kind{suffix}",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(blob[: len(blob) // 2])
    files["wrong_kind"].write_text('{"this": "is JSON, not a model"}\n')
    for kind, path in files.items():
        with pytest.raises(ModelFileError) as info:
            load(path)
        msg = str(info.value)
        assert str(path) in msg and "expected" in msg, f"{kind}: {msg}"
        assert "\n" not in msg.strip(), f"{kind}: one line please: {msg}"
