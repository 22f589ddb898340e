# Two commands do everything on a fresh machine (README): `make demo` and `make test`.
# Both run the same idempotent set-up first (tools/setup.sh): venv, pinned wheels, ROS 2 interfaces.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)
export AMENT_PREFIX_PATH := $(VENV)
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
PYTEST_ARGS ?=

.PHONY: setup test demo lint clean

setup:
	@LRR_VENV=$(VENV) bash tools/setup.sh

# Python 3.10 (ROS 2 Humble) compatibility of the package's own code, checked statically.
VERMIN := $(VENV)/bin/vermin -q -t=3.10- --violations --eval-annotations --no-tips latent_rag_ros launch
# Import layers and no cycles (contracts in pyproject.toml [tool.importlinter]; docs/design.md "Layers").
# Run from the repository root so the source tree is what is analysed.
LINT_IMPORTS := cd $(CURDIR) && $(VENV)/bin/lint-imports --no-cache

test: setup
	$(VENV)/bin/ruff check latent_rag_ros test launch tools
	$(VERMIN)
	$(LINT_IMPORTS)
	cd test && $(PY) -m pytest -q -p no:cacheprovider --instafail $(PYTEST_ARGS) .

demo: setup
	$(VENV)/bin/latent-rag demo --out demo_out

lint: setup
	$(VENV)/bin/ruff check latent_rag_ros test launch tools
	$(VERMIN)
	$(LINT_IMPORTS)

clean:
	rm -rf build .cmake-configure.log demo_out
