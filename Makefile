.PHONY: help venv test stress bench lint demo

VENV ?= .venv
PY := $(VENV)/bin/python

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-8s %s\n", $$1, $$2}'

venv:  ## create the virtual environment with test, bench and lint tools
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,lint]'

test:  ## run the tests (as CI does)
	$(PY) -m pytest

stress:  ## run the long multi-process runs (off by default)
	$(PY) -m pytest -m stress

bench:  ## run the benchmarks; compare runs with --benchmark-compare
	$(PY) -m pytest bench --benchmark-autosave -p no:randomly

lint:  ## ruff and mypy --strict
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ringbuf livemon daemon

demo:  ## the whole pipeline once: daemon, 4 coordinators, what landed
	$(VENV)/bin/livemon-daemon demo
