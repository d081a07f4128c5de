# drray: `make demo` runs the main job on the built-in synthetic set; `make test` runs the suite.
# Both set everything up themselves (a virtual environment in .venv) on a fresh machine.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all demo test venv clean bench

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/drray demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/synth_throughput.py
	$(PY) benchmarks/cam_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
