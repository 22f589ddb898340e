"""The library and the CLI work on a machine without ROS 2 (issue 14, item 6: `pip install .` there).

ROS cannot be uninstalled from this test environment, so a child interpreter hides it: an import
hook makes rclpy, the rosidl runtime, every ROS message package and this package's own generated
interfaces raise ModuleNotFoundError, exactly as on a machine that never had them. Everything else
is the real installed package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HIDE_ROS = textwrap.dedent("""
    import importlib.abc, sys
    ROS = {"rclpy", "rosidl_runtime_py", "rosidl_parser", "rosidl_pycommon", "rpyutils", "rmw", "rcl",
           "sensor_msgs", "std_msgs", "diagnostic_msgs", "builtin_interfaces", "rcl_interfaces",
           "lifecycle_msgs", "launch", "launch_ros", "ament_index_python", "composition_interfaces"}

    class NoRos(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ROS or name.startswith(("latent_rag_ros.msg", "latent_rag_ros.srv")):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoRos())
""")

PROBE = HIDE_ROS + textwrap.dedent("""
    import importlib, io, json, pkgutil, sys
    from contextlib import redirect_stdout
    import numpy as np
    import latent_rag_ros
    imported = []
    for m in pkgutil.walk_packages(latent_rag_ros.__path__, "latent_rag_ros."):
        if m.name.startswith(("latent_rag_ros.nodes", "latent_rag_ros.msg", "latent_rag_ros.srv")) \\
                or m.name.endswith("__main__"):   # __main__ runs the command on import
            continue
        importlib.import_module(m.name)
        imported.append(m.name)
    from latent_rag_ros.cli import main
    buf = io.StringIO()
    with redirect_stdout(buf):
        try:
            main(["--help"])
        except SystemExit as exc:
            help_code = exc.code
    from latent_rag_ros.store.faiss_store import FaissStore
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((20, 8)).astype(np.float32)
    with FaissStore.create(sys.argv[1], 8, 2, 4) as st:
        st.add(vecs, rng.standard_normal((20, 2, 4)).astype(np.float32))
        _, ids = st.search(vecs[3:4], 1)
    leaked = sorted(k for k in sys.modules if k.split(".")[0] in {"rclpy", "sensor_msgs", "std_msgs"})
    print(json.dumps({"imported": imported, "help_code": help_code, "help": buf.getvalue(),
                      "top1": int(ids[0][0]), "leaked": leaked}))
""")


def test_library_and_cli_import_and_run_without_ros(tmp_path: Path) -> None:
    """Every module outside nodes/ imports, `latent-rag --help` lists the commands, a store works."""
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "store")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["leaked"], out["leaked"]
    for mod in ("latent_rag_ros.core.generation", "latent_rag_ros.store.faiss_store", "latent_rag_ros.eval.runner",
                "latent_rag_ros.training.reid", "latent_rag_ros.cli.store"):
        assert mod in out["imported"]
    assert out["help_code"] == 0 and "store" in out["help"] and "eval" in out["help"]
    assert out["top1"] == 3


def test_ros_commands_name_the_missing_package_without_ros(tmp_path: Path) -> None:
    """`latent-rag run` needs rclpy: one line naming it, exit 2, no traceback."""
    code = HIDE_ROS + "from latent_rag_ros.cli import main\nraise SystemExit(main(['run']))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "rclpy" in err, err
