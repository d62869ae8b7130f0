# make demo / make test: each creates .venv when missing and is idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

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

# every core (pytest-xdist), one worker per test file so module fixtures are built once;
# files that share a session fixture share a worker (tests/conftest.py: SHARED_WORKER)
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup

clean:
	rm -rf $(VENV) out reports .pytest_cache
