# envkit: `make demo` runs the demo, `make test` runs the tests; both set up .venv first.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
READY       := $(VENV)/.envkit-ready

VENV20      ?= .venv-torch20
TORCH20_SPEC ?= torch==2.0.1
BIN20       := $(VENV20)/bin
READY20     := $(VENV20)/.envkit-ready

.PHONY: all venv test test-fast lint demo demo-ddp bench bench-8g bench-conda bench-ddp test-torch20 clean

all: test

$(READY): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" "numpy"
	$(BIN)/python -m pip install -q -e ".[dev,safetensors,lightning,transformers,s3]" --config-settings editable_mode=compat
	@# Byte-compile so that start-up is measured as users see it, even under PYTHONDONTWRITEBYTECODE.
	$(BIN)/python -m compileall -q envkit $(VENV)/lib >/dev/null || true
	@touch $@

venv: $(READY)

# lint first: one command for CI (.ci/run)
test: $(READY) lint
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (process-spawning, solves, training runs): under a minute on 2 cores
test-fast: $(READY)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff (lint and import order) and mypy, configured in pyproject.toml; the first step of `make test`.
# Their caches live in the checkout (.ruff_cache, .mypy_cache); where any part of them cannot be
# written (a read-only checkout, a cache another user made) both run without one: both crash otherwise.
LINT_CACHE = $(shell mkdir -p .ruff_cache .mypy_cache 2>/dev/null && test -z "$$(find .ruff_cache .mypy_cache ! -writable -print -quit 2>/dev/null)" && echo yes)
lint: $(READY)
	$(BIN)/ruff check $(if $(LINT_CACHE),,--no-cache )envkit tests examples benchmarks
	$(BIN)/mypy $(if $(LINT_CACHE),,--cache-dir=/dev/null )envkit

demo: $(READY)
	$(BIN)/python examples/demo.py

# 2 CPU ranks under torchrun, SIGTERM to one rank, resumed by the same command: bit-identical.
demo-ddp: $(READY)
	$(BIN)/python examples/demo_ddp.py

bench: $(READY)
	$(BIN)/python benchmarks/run.py

bench-8g: $(READY)
	$(BIN)/python benchmarks/run.py --size-gb 8

# lock --check, lock on the local channel, a 10,000-record solve, envkit --help
bench-conda: $(READY)
	$(BIN)/python benchmarks/conda.py

# gloo on the CPU: check_consistency() at start-up (2 and 4 ranks), sharded vs single-file save (2 GB).
bench-ddp: $(READY)
	$(BIN)/python benchmarks/distributed.py

# torch 2.0.1 (the target runtime): its PyPI wheel is ~2.3 GB with its CUDA 11.7 deps. Not part of `make test`.
$(READY20): pyproject.toml
	@test -x $(BIN20)/python || $(PYTHON) -m venv $(VENV20)
	$(BIN20)/python -m pip install -q "$(TORCH20_SPEC)" "numpy<2"
	$(BIN20)/python -m pip install -q -e ".[dev,safetensors,s3]" --config-settings editable_mode=compat
	@touch $@

test-torch20: $(READY) $(READY20)
	$(BIN20)/python -m pytest -q tests/checkpoint tests/distributed tests/test_cross_version.py
	ENVKIT_OTHER_PYTHON=$(abspath $(BIN20)/python) $(BIN)/python -m pytest -q tests/test_cross_version.py tests/test_trial_cross_version.py

clean:
	rm -rf $(VENV) $(VENV20) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
