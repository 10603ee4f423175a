# Each target makes its own virtual environment and installs what it needs.
# torch is pinned (extra "local"): an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test test-fast test-slow lint eval-scifact bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[local,e5,dev,postgres,spark,bench,otlp]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

## The main job, offline: ingest the speakers data as an MLflow run, then search it.
demo: $(STAMP)
	PATH=$(BIN):$$PATH bash scripts/demo.sh

## The whole test suite: the fast tests, then the slow ones (kill loops, real servers).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q
	$(BIN)/python -m pytest -m slow -q -s

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q -s

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-store mlflow.db mlruns.db mlartifacts
