"""Latent-RAG privacy-preserving person re-identification for ROS 2.

The package holds the ROS 2 interfaces (``latent_rag_ros.msg`` / ``.srv``, generated at build
time), thin nodes (``latent_rag_ros.nodes``) and a ROS-free library (core, models, store, eval).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _join_generated_interfaces() -> None:
    """In a source checkout, let ``latent_rag_ros.msg``/``.srv`` resolve to the built interfaces.

    The build installs the generated msg/srv modules into the environment's copy of this package;
    when Python imports the package from the source tree instead (tests, development), that copy
    is appended to ``__path__`` so both halves import as one package.
    """
    here = _Path(__file__).resolve().parent
    if (here / "msg").is_dir():
        return
    for entry in _sys.path:
        cand = _Path(entry or ".").resolve() / "latent_rag_ros"
        if cand != here and (cand / "msg").is_dir():
            __path__.append(str(cand))  # type: ignore[name-defined]
            return


_join_generated_interfaces()
