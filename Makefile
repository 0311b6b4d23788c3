# The README's commands. Every target that needs Python depends on the .venv stamp, so a fresh clone
# installs itself and a second run skips what is already there.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastlt-installed
FLOOR_VENV  := .venv-floor
FLOOR_PY    := $(FLOOR_VENV)/bin/python
FLOOR_STAMP := $(FLOOR_VENV)/.fastlt-installed
DEMO_DIR ?= data/demo
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-fast test-floor test-gpu gpu-check bench lint clean-venv

setup: $(STAMP)

system-deps:
	@bash tools/setup_system.sh

# install-venv(VENV, CONSTRAINTS): fastlt and its dependencies into VENV, torch pinned by CONSTRAINTS
# (setup.cfg declares a range; the constraints file picks the one version a venv is tested on).
define install-venv
	@bash tools/setup_system.sh
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip wheel setuptools
	$(1)/bin/python -m pip uninstall -qq -y nvidia-dali-cuda120  # the CUDA 12 build an older setup installed: same files
	$(1)/bin/python -m pip install -q --progress-bar off -c $(2) -e '.[dev]'
	$(1)/bin/python -c "import ffcv, nvidia.dali, torch, torchvision, accelerate; print('fastlt: $(1) ready, torch', torch.__version__)"
	@touch $(1)/.fastlt-installed
endef

# Reinstall only when the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml constraints.txt tools/setup_system.sh
	$(call install-venv,$(VENV),constraints.txt)

# The oldest supported torch, in a venv of its own (`make test-floor`).
$(FLOOR_STAMP): setup.cfg pyproject.toml constraints-floor.txt tools/setup_system.sh
	$(call install-venv,$(FLOOR_VENV),constraints-floor.txt)

demo: $(STAMP)
	$(PY) -m tools.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

# The fast suite on the oldest supported torch (constraints-floor.txt): code that needs a newer torch fails here.
# Then gpu-check's dry run, since GPU machines may well have that torch. Inductor gets a cache of its own: the
# precompiled headers another torch left in the shared one do not compile against this one.
test-floor: export TORCHINDUCTOR_CACHE_DIR = $(CURDIR)/.venv-floor/inductor-cache
test-floor: $(FLOOR_STAMP)
	$(FLOOR_PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)
	$(FLOOR_PY) -m pytest tests/test_gpu_check.py::test_dry_run_schema_and_cpu_figures $(PYTEST_ARGS)

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
