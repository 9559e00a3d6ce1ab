# Everything a fresh machine needs: `make sample` runs the main job, `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# the plugin, a Qt binding, the embedded Triton server (Linux) and the test tools
EXTRAS ?= all,qt,server,testing

.PHONY: venv sample test test-fast lint system-deps clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

# Xvfb + Mesa for the napari tests (apt-get when root; otherwise it says what is missing)
system-deps:
	bash scripts/install_system_deps.sh

# The main job on the bundled sample: embedded Triton, real model (deepbet), real T1 MRI;
# then the Dice against the reference brain mask.
sample: $(STAMP)
	$(VENV)/bin/clara-napari sample --output out

# Everything: the three lanes tests/unit, tests/integration (real Triton, PACS, CLI processes, Dask)
# and tests/gui (a napari viewer; Xvfb started by the tests when there is no display) in one process;
# the wheel tests (build, resolve, install in a fresh venv outside the checkout) in a second one.
test: $(STAMP) system-deps
	$(PY) -m pytest -q --ignore=tests/integration/test_packaging.py
	$(PY) -m pytest -q tests/integration/test_packaging.py

# The unit lane: no Triton server, no display, no PACS, no wheel build (under a minute).
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

# ruff on the package and the tests, mypy on core/ (also run by tests/unit/test_lint.py)
lint: $(STAMP)
	$(VENV)/bin/ruff check clara_napari tests
	$(VENV)/bin/mypy clara_napari/core

clean:
	rm -rf $(VENV) out
