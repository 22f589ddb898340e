"""Text of the package's own .msg/.srv definitions, for tools that work without ROS (rosbags).

The build installs ``msg/`` and ``srv/`` next to this module (``interfaces/``); in a source
checkout they sit at the repository root.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "latent_rag_ros"
_HERE = Path(__file__).resolve().parent


def _candidates(kind: str) -> list[Path]:
    return [_HERE / "interfaces" / kind, _HERE.parent / kind]


def definition_text(name: str, kind: str = "msg") -> str:
    """Return the text of ``msg/NAME.msg`` (or ``srv/NAME.srv``) of this package."""
    for folder in _candidates(kind):
        path = folder / f"{name}.{kind}"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"{PACKAGE}/{kind}/{name}.{kind} not found in {[str(c) for c in _candidates(kind)]}")


def message_names() -> list[str]:
    """Names of the package's messages (PersonCrop, PersonCrops, ProtectedCrop)."""
    for folder in _candidates("msg"):
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.msg"))
    return []
