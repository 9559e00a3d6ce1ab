# Everything a fresh machine needs: `make sample` runs the main job, `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv sample test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,testing]"
	touch $(STAMP)

venv: $(STAMP)

# The main job on the bundled sample: embedded Triton, real model (deepbet), real T1 MRI;
# then the Dice against the reference brain mask.
sample: $(STAMP)
	$(VENV)/bin/clara-napari run --app brain_extraction_t1 --input sample_data/mr_t1 \
	    --output out/output --publish out/publish --logs out/logs --overwrite
	$(PY) scripts/dice.py out/output/mr_t1_colin27.mhd sample_data/reference/mr_t1_colin27_brain_mask.nii.gz

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
