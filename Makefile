# medplugin: `make demo` sets up and runs the main job on built-in demo data; `make test` sets up and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo/run_$(shell date +%Y%m%d_%H%M%S)

.PHONY: setup demo lint test test-fast test-integration bench

# test tiers (markers in pyproject.toml, set in tests/conftest.py): the unit tier runs in-process only; the rest
# starts bundle runs, the medplugin command, servers or virtual environments. Together they are the whole suite,
# each test once.
UNIT := not slow and not integration
# the integration tier's processes: its tests mostly wait on one single-threaded bundle run each, so two test files
# at a time keep two cores busy (pytest-xdist; a file's tests stay together and share its trained fixtures)
JOBS ?= 2

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/medplugin demo retina_oct_classification --out $(DEMO_DIR) --run

lint: setup
	$(VENV)/bin/ruff check .

# everything: lint, then the unit tier (a failure stops here, in minutes), then the integration tier
test: lint test-fast test-integration

test-fast: setup
	$(PY) -m pytest -m "$(UNIT)" -n $(JOBS)

test-integration: setup
	$(PY) -m pytest -m "not ($(UNIT))" -n $(JOBS) --dist loadfile --no-loadscope-reorder --durations=25

bench: setup
	$(PY) -m benchmarks

# MONAI Label 0.8.5 in its own environment (.venv-monailabel: pydicom<3, torchvision), about 5 minutes once
.PHONY: monailabel-env
monailabel-env: setup
	$(VENV)/bin/medplugin monailabel-env
