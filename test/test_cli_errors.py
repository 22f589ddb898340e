"""The latent-rag command as a user meets it: one-line errors (exit 2), --debug, paths, progress bars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from latent_rag_ros.cli import main
from latent_rag_ros.config import absolute_paths, demo_store_path, load_config

from rosutil import vtest_frames, write_params


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert needle in err, err
    return err


def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _one_line_error(capsys, ["convert", str(tmp_path / "missing.pkl"), str(tmp_path / "out")], "missing.pkl")
    _one_line_error(capsys, ["protect", "--config", str(tmp_path / "nope.yaml"), "--input", "a", "--out", "b"],
                    "nope.yaml: configuration file not found")
    _one_line_error(capsys, ["replay", "--bag", str(tmp_path / "nobag"), "--out", str(tmp_path / "o")], "nobag")
    cfg = write_params(tmp_path / "c.yaml", {"store": {"path": "no_store_here"}, "models": {"generator": "random"}})
    err = _one_line_error(capsys, ["protect", "--config", str(cfg), "--input", str(tmp_path), "--out", "o"],
                          str(tmp_path / "no_store_here"))  # relative to the config file, not the cwd
    assert "--debug" in err
    bad = write_params(tmp_path / "bad.yaml", {"protector": {"m": "not-an-int"}})
    _one_line_error(capsys, ["protect", "--config", str(bad), "--input", "a", "--out", "b"], "protector.m")


def test_missing_option_is_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["protect", "--out", "x"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "--input" in err, err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"missing\.pkl"):
        main(["--debug", "convert", str(tmp_path / "missing.pkl"), str(tmp_path / "out")])


def test_progress_bars_only_on_a_terminal(tmp_path: Path) -> None:
    """build-store and make-bag into a pipe (a log file): no progress bar lines, the summary only."""
    frames = vtest_frames([100, 200])
    crops = tmp_path / "crops"
    crops.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(crops / f"p{i}.png"), f[100:228, 300:364])
    exe = str(Path(sys.executable).parent / "latent-rag")
    common = ["--set", "models.generator=random", "--set", "models.latent_encoder=random"]
    for argv in (["build-store", "--images", str(crops), "--out", str(tmp_path / "store"), *common],
                 ["make-bag", "--input", str(crops), "--out", str(tmp_path / "bag")]):
        r = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "it/s" not in r.stderr and "%|" not in r.stderr, r.stderr[-500:]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    f = write_params(tmp_path / "conf" / "p.yaml", {"store": {"path": "stores/mine"},
                                                     "models": {"generator": "../models/g.pkl"}})
    monkeypatch.chdir(tmp_path)
    cfg = load_config(f)
    assert cfg.store.path == str(tmp_path / "conf" / "stores" / "mine")
    assert cfg.models.generator == str(tmp_path / "models" / "g.pkl")
    assert cfg.models.latent_encoder == "demo"  # special names stay names
    # values typed in a shell (--set) are relative to the current folder instead
    cfg = load_config(f, absolute_paths({"store.path": "here"}))
    assert cfg.store.path == str(tmp_path / "here")
    assert load_config(f, {"store.path": "milvus://host:19530"}).store.path == "milvus://host:19530"


def test_demo_store_lives_in_the_user_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "roshome"))
    assert load_config(None).store.path == str(tmp_path / "roshome" / "latent_rag_ros" / "stores" / "demo")
    assert demo_store_path() == tmp_path / "roshome" / "latent_rag_ros" / "stores" / "demo"
    pkg = Path(__file__).resolve().parent.parent / "latent_rag_ros"
    assert not list(pkg.rglob("manifest.json")), "a store ships inside the package"


def test_missing_package_of_a_subcommand_is_one_line_naming_it(tmp_path: Path) -> None:
    """No subcommand vanishes when its package is missing: `--help` lists it, running it names the package.

    pymilvus is pinned and installed here; the child process hides it (``sys.modules[...] = None``, how
    Python itself spells "not importable") because a machine without it cannot be made in a test.
    """
    code = ("import sys; sys.modules['pymilvus'] = None; from latent_rag_ros.cli import main; "
            f"sys.exit(main(['store', 'stats', {str(tmp_path / 'people.db')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    err = res.stderr.strip()
    assert res.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "'pymilvus'" in err and "pip install" in err, err
    helped = subprocess.run([sys.executable, "-c", "import sys; sys.modules['pymilvus'] = None; "
                             "from latent_rag_ros.cli import main; main(['--help'])"],
                            capture_output=True, text=True, timeout=300)
    for command in ("build-store", "store", "eval", "make-bag", "train", "keys", "bench"):
        assert command in helped.stdout, helped.stdout
