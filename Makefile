# make demo / make test: each creates .venv when missing and is idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint venv clean

venv: $(STAMP)

# torch first, from its CPU wheel and exactly the pinned version; then the project with
# the constraints so nothing can replace that torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m edgecls demo

# the layers (import-linter contracts in pyproject.toml) and ruff's small rule set
lint: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check --no-cache edgecls tests benchmarks fuzz

# every core (pytest-xdist): whole files handed to whichever worker is free (their module
# fixtures built once), the zoo's tests one by one, the files with the longest fixtures first
# and the zoo last (tests/conftest.py: LONG_FIRST, pytest_xdist_make_scheduler). Not --dist
# loadgroup: with pytest 9 xdist 3.8 cannot tag a test with its group (it sets Item._nodeid,
# which pytest 9 no longer reads). Session fixtures used by several files are built once, by
# the first worker that needs them, and shared as files (tests/conftest.py: built_once). Each
# worker's runtimes use its share of the cores (tests/conftest.py: _share_the_cores_between_workers).
XDIST := -n auto --dist loadfile --no-loadscope-reorder

test: lint
	$(PY) -m pytest -q $(XDIST)

# the inner loop: lint and the tests without the zoo's ONNX exports, QAT, the sweep and the
# EfficientNet-Lite0 INT8 searches (what `make test` adds; see the README)
check: lint
	$(PY) -m pytest -q $(XDIST) -m "not slow" --ignore=tests/test_qat.py \
		--ignore=tests/test_sweep.py --ignore=tests/test_onnx_int8.py \
		--ignore=tests/test_int8_targets.py --ignore=tests/test_executorch.py

clean:
	rm -rf $(VENV) out reports .pytest_cache
