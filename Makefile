# The two set-up commands named in README.md: `make demo` (main job) and `make test` (test suite).
# Both create .venv on first use and install everything the project needs into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On the project's CPU machines this resolves to a local CPU wheel; on GPU clusters set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo clean

setup: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,demo,eval,kernels]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q --durations=25 tests

# The fast tier: everything but the tests marked `slow` (tests/tiers.py lists them; docs/operations.md).
test-fast: setup
	$(BIN)/python -m pytest -q --durations=25 -m "not slow" tests

demo: setup
	$(BIN)/python examples/tiny_recipe.py --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
