# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.l0fast-installed
# torch is pinned: this machine serves the 2.13.0 CPU wheel locally; an
# unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup run test test-l0-suite bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): $(PY) setup.py pyproject.toml $(wildcard csrc/*)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

setup: $(INSTALLED)

run: setup
	$(PY) -m l0fast.examples.calibrate

test: setup
	$(PY) -m pytest tests
	$(PY) tests/run_l0_suite.py

test-l0-suite: setup
	$(PY) tests/run_l0_suite.py

bench: setup
	$(PY) -m pip install -q --no-build-isolation -e '.[bench]'
	$(PY) -m l0fast bench --quick

clean:
	rm -rf build .l0_suite l0fast/_C*.so *.egg-info
