# featserve: `make serve` runs the demo service, `make test` runs every check.
# Both create .venv and install the project on first use; nothing else is needed.
SHELL := bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true

LOWEST := var/lowest-venv
PROMTOOL := .tools/bin/promtool

.PHONY: install lint promtool test test-lowest serve train faults bench clean

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
	$(BIN)/lint-imports --no-cache

# Prometheus' promtool checks the shipped alert rules (tests/test_deploy_files.py). Fetched
# once into .tools/bin; without it those tests skip, except under CI (CI set), where they
# must run: there a failed fetch stops make test at once.
promtool:
	@test -x $(PROMTOOL) || .ci/fetch-promtool || { test -z "$$CI" && \
		echo "promtool could not be fetched: the rules checks will skip" >&2; }

test: lint promtool
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-lowest

# The dependency floors are tested: a fresh virtualenv with every direct dependency at the
# lowest version pyproject.toml allows (uv's lowest-direct resolution; its cache keeps reruns
# to seconds) runs the unit tests. The end-to-end tests run on the current versions above.
test-lowest: $(STAMP) promtool
	rm -rf $(LOWEST)
	$(BIN)/uv venv --quiet --python $(BIN)/python $(LOWEST)
	$(BIN)/uv pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -e '.[test]'
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/e2e

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

# Fault drills under load, with figures, into docs/reliability.md (a few minutes), then
# a primary killed under load on a Redis Cluster and behind Sentinel (about 2 minutes).
faults: $(STAMP)
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.failover

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .ruff_cache .tools
