"""The import layers are enforced: `lint-imports` (import-linter, pinned) passes on the source tree and
fails on a copy with one violation added on purpose (issue #12, acceptance 1 and 2).

The contracts live in pyproject.toml ``[tool.importlinter]``; ``make lint`` and ``make test`` run them.
The checks analyse the source tree (the repository beside this test), not the installed copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports in ``root`` (its pyproject.toml, its latent_rag_ros/)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "latent_rag_ros", tmp_path / "latent_rag_ros",
                    ignore=shutil.ignore_patterns("__pycache__", "msg", "srv"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")


def test_source_tree_keeps_every_contract() -> None:
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_upward_import_breaks_layers(tree: Path) -> None:
    _append(tree / "latent_rag_ros/core/retrieval.py", "from latent_rag_ros.store import open_store  # noqa")
    res = _lint(tree)
    assert res.returncode != 0
    assert "layers" in res.stdout and "BROKEN" in res.stdout
    assert "latent_rag_ros.core.retrieval -> latent_rag_ros.store" in res.stdout


def test_rclpy_outside_nodes_breaks_contract(tree: Path) -> None:
    _append(tree / "latent_rag_ros/store/base.py", "import rclpy  # noqa")
    res = _lint(tree)
    assert res.returncode != 0
    assert "only nodes/ imports rclpy" in res.stdout.replace("\n", " ")
    assert "latent_rag_ros.store.base -> rclpy" in res.stdout


def test_cycle_breaks_acyclic_contract(tree: Path) -> None:
    # people (bottom layer) and zones (same layer, may import each other): a cycle, not a layer breach
    _append(tree / "latent_rag_ros/people.py", "import latent_rag_ros.zones  # noqa")
    _append(tree / "latent_rag_ros/zones.py", "import latent_rag_ros.people  # noqa")
    res = _lint(tree)
    assert res.returncode != 0
    assert "no import cycles" in res.stdout and "BROKEN" in res.stdout


def test_unlisted_top_level_module_breaks_exhaustive_layers(tree: Path) -> None:
    (tree / "latent_rag_ros/newthing.py").write_text('"""A module no layer names."""\n', encoding="utf-8")
    res = _lint(tree)
    assert res.returncode != 0
    assert "newthing" in res.stdout


def test_make_lint_and_make_test_run_lint_imports() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "lint-imports" in makefile
    for target in ("lint:", "test:"):
        body = makefile.split("\n" + target, 1)[1].split("\n\n", 1)[0]
        assert "$(LINT_IMPORTS)" in body, target
