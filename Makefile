# The README's commands. Every target that needs Python depends on the .venv stamp, so a fresh clone
# installs itself and a second run skips what is already there.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastlt-installed
DEMO_DIR ?= data/demo
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-fast test-gpu gpu-check bench lint clean-venv

setup: $(STAMP)

system-deps:
	@bash tools/setup_system.sh

# Reinstall only when the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml tools/setup_system.sh
	@bash tools/setup_system.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q --progress-bar off -e '.[dev]'
	$(PY) -c "import ffcv, nvidia.dali, torch, torchvision, accelerate; print('fastlt: environment ready, torch', torch.__version__)"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tools.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# The GPU machine's check (tools/gpu_check.py): runs with the machine's own python3 and torch, so it does
# not depend on the venv; `GPU_CHECK_ARGS=--dry-run` tries it on a CPU.
GPU_CHECK_ARGS ?= --out bench_out/gpu_check.jsonl
gpu-check:
	PYTHONPATH=. $(PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

bench: $(STAMP)
	$(PY) -m tools.benchmark --out bench_out

# check_refs: no citation of a document the repository does not ship (tools/check_refs.py).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m tools.check_refs

clean-venv:
	rm -rf $(VENV)
