# drray: `make demo` runs the main job on the built-in synthetic set; `make test` runs the suite.
# Both set everything up themselves (a virtual environment in .venv) on a fresh machine.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all demo test venv system clean bench

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium (and its driver) for the browser tests of the report and the Gradio page; never a
# browser download. Installed when missing and this user may (root); otherwise those tests skip and say so.
system:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium and chromium-driver for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

demo: $(STAMP)
	$(VENV)/bin/drray demo

test: $(STAMP) system
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/synth_throughput.py
	$(PY) benchmarks/cam_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
