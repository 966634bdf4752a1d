# Two commands: `make verify` (the main job) and `make test` (the suite).
# Each creates .venv when missing and installs what its target needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
STAMP_DOCS := $(VENV)/.installed-docs

.PHONY: verify test fuzz bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(STAMP_RUN)

$(STAMP_DOCS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@ $(STAMP_RUN)

verify: $(STAMP_RUN)
	$(BIN)/refmem verify

test: $(STAMP_TEST)
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q

# The bad-input guard with hypothesis' dev profile: random details, 200 examples per test.
fuzz: $(STAMP_TEST)
	HYPOTHESIS_PROFILE=dev $(BIN)/python -m pytest -q tests/test_bad_input.py

# The documentation, warnings as errors (`make test` builds it too, in tests/test_docs.py).
docs: $(STAMP_DOCS)
	$(BIN)/python -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "docs/_build/html/index.html"

bench: $(STAMP_RUN)
	$(BIN)/refmem bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info docs/_build docs/api docs/specs
