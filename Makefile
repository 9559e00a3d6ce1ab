# Everything a fresh machine needs: `make sample` runs the main job, `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv sample test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[testing]"
	touch $(STAMP)

venv: $(STAMP)

sample: $(STAMP)
	$(VENV)/bin/clara-napari run --app brain_extraction_t1 --input sample_data/mr_t1 --output out/output --publish out/publish --logs out/logs --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
