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

# every core (pytest-xdist), tests handed out one by one, the long ones first (tests/conftest.py:
# LONG_FIRST). --maxschedchunk 1: plain --dist load sends runs of consecutive tests (an eighth
# of the suite each at the start), so one worker can get the long tests of several files. Not
# --dist loadgroup: with pytest 9 xdist 3.8 cannot tag a test with its group (it sets
# Item._nodeid, which pytest 9 no longer reads). The expensive fixtures are built once per
# session, by the first worker that needs them, and shared as files (conftest.py: built_once).
XDIST := -n auto --dist load --maxschedchunk 1

test: lint
	$(PY) -m pytest -q $(XDIST)

# the inner loop: lint and the tests without the whole-zoo export, QAT, the sweep and the
# EfficientNet-Lite0 INT8 searches (what `make test` adds; see the README)
check: lint
	$(PY) -m pytest -q $(XDIST) -m "not slow" --ignore=tests/test_qat.py \
		--ignore=tests/test_sweep.py --ignore=tests/test_onnx_int8.py \
		--ignore=tests/test_int8_targets.py --ignore=tests/test_executorch.py

clean:
	rm -rf $(VENV) out reports .pytest_cache
