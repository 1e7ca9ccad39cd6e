# Two commands on a fresh machine: `make demo` and `make test`.
# Each target creates or refreshes the virtualenv it needs; nothing else is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo up lint test test-fast bench celery-compat clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/resilience demo

up: $(STAMP)
	$(BIN)/resilience up

# ruff and mypy, as configured in pyproject.toml; the first step of `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The linters, then two test processes, each with its own private redis-server (tests/conftest.py).
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# Celery's own integration tests (test_tasks.py, test_canvas.py; downloaded at run time)
# on a plain app and on the platform, side by side. 20-30 minutes a run; not part of `make test`.
$(VENV)/.compat-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,compat]'
	@touch $@

celery-compat: $(VENV)/.compat-installed
	$(BIN)/python -m compat

clean:
	rm -rf $(VENV) .resilience .compat build *.egg-info .ruff_cache .mypy_cache
