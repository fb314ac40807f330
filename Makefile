# featserve: `make serve` runs the demo service, `make test` runs every check.
# Both create .venv and install the project on first use; nothing else is needed.
SHELL := bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true

.PHONY: install lint test serve train faults bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# Embedded Redis (unless REDIS_URL is set), demo data, a model if the store has none,
# then `bentoml serve` on 127.0.0.1:3000.
serve: $(STAMP)
	$(BIN)/python -m service.cli.demo

# Train the fraud model and save it to the BentoML model store.
train: $(STAMP)
	$(BIN)/python -m models.train

# Every benchmark (~15 min); rewrites the generated end of docs/benchmarks.md and docs/img/*.png.
bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# Fault drills under load, with figures, into docs/reliability.md (a few minutes).
faults: $(STAMP)
	$(BIN)/python -m bench.faults

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
