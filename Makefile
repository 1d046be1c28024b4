# Everything sets itself up: the first target run creates .venv and installs the core and every
# plugin under plugins/ in editable mode, pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.moxin-installed
PLUGINS := $(sort $(wildcard plugins/moxin-plugin-*))
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench docs lint clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile $(wildcard plugins/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch first, from the pinned versions (on the reference machines these come from a local
	# wheel store); then the core and plugins (with their test extras) against the same
	# constraints.
	$(PIP) install --quiet -c constraints.txt torch torchvision
	$(PIP) install --quiet -c constraints.txt -e ".[test]" $(foreach p,$(PLUGINS),-e "$(p)[test]")
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moxin demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

docs: $(STAMP)
	$(PY) -m moxin_core.docs_gen

clean:
	rm -rf runs .pytest_cache
