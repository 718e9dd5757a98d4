.PHONY: help venv test test-all stress bench lint demo

VENV ?= .venv
PY := $(VENV)/bin/python
# The supported Pythons, as in setup.cfg's classifiers and .ci/run; each
# is python3.x on PATH or a pyenv build (pyenv's shims run only the
# selected version, so python3.12 may exist and fail).
PYTHONS ?= 3.11 3.12 3.13

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-8s %s\n", $$1, $$2}'

venv:  ## create the virtual environment with test, bench and lint tools
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,lint,bench]'

test:  ## run the tests (as CI does)
	$(PY) -m pytest

test-all:  ## run the tests on every supported Python here, in .venv-3.x
	@failed=; for v in $(PYTHONS); do \
	    py=; for c in $$(command -v python$$v) \
	        $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python3; do \
	        if $$c -c '' 2>/dev/null; then py=$$c; break; fi; \
	    done; \
	    if [ -z "$$py" ]; then \
	        echo "== Python $$v: not installed, skipped"; continue; fi; \
	    echo "== Python $$v: $$py"; \
	    [ -x .venv-$$v/bin/python ] || { $$py -m venv .venv-$$v && \
	        .venv-$$v/bin/pip install -q -e '.[test]'; } && \
	    .venv-$$v/bin/python -m pytest -q || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed on:$$failed"; exit 1; fi

stress:  ## run the long multi-process runs (off by default)
	$(PY) -m pytest -m stress

bench:  ## run the benchmarks; compare runs with --benchmark-compare
	$(PY) -m pytest bench --benchmark-autosave -p no:randomly

lint:  ## ruff and mypy --strict (as CI does)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ringbuf livemon daemon

demo:  ## the whole pipeline once: daemon, 4 coordinators, what landed
	$(VENV)/bin/livemon-daemon demo
