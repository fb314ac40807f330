# featserve: `make serve` runs the demo service, `make test` runs every check.
# Both create .venv and install the project on first use; nothing else is needed.
#
# Every package of .venv comes from requirements/dev.txt (exact versions with hashes), the
# Bento's from requirements/bento.txt (the same versions, runtime only): both are compiled
# from pyproject.toml by `make lock`, which `make lint` checks is still the case.
SHELL := bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
export BENTOML_DO_NOT_TRACK := true
# uv uses the Python it is given; it never downloads one.
export UV_PYTHON_DOWNLOADS := never

LOWEST := var/lowest-venv
LATEST := var/latest-venv
LOCK_CHECK := var/lock-check
FEAST_VENV := var/feast-venv
PROMTOOL := .tools/bin/promtool

# One way to compile each requirements file, for `make lock` and its check alike. The
# resolution stops at [tool.uv] exclude-newer in pyproject.toml, so it is repeatable.
COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 \
	--custom-compile-command "make lock"
compile_dev = $(COMPILE) pyproject.toml --extra dev --extra bench --extra spark \
	--generate-hashes -o $(1)/dev.txt
compile_bento = $(COMPILE) pyproject.toml --no-annotate -c $(1)/dev.txt -o $(1)/bento.txt
compile_uv = $(COMPILE) requirements/uv.in --generate-hashes -o $(1)/uv.txt
compile_feast = $(COMPILE) requirements/feast.in --generate-hashes -o $(1)/feast.txt

.PHONY: install lint lock lock-check promtool test test-lowest test-latest serve train container \
	faults soak bench bench-peers clean

# pip (the one python -m venv gives) installs only the pinned uv, once; uv installs the
# rest, exactly requirements/dev.txt (which holds the same uv), then the project itself.
$(UV):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/uv.txt

$(STAMP): pyproject.toml requirements/dev.txt requirements/uv.txt | $(UV)
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes requirements/dev.txt
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

install: $(STAMP)

lint: $(STAMP) lock-check
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
# to seconds) runs the unit tests. The end-to-end tests run on the locked versions above.
# Transitive packages resolve as of the lock's date ([tool.uv] exclude-newer), so the set
# is the same on any day.
test-lowest: $(STAMP) promtool
	rm -rf $(LOWEST)
	$(UV) venv --quiet --python $(BIN)/python $(LOWEST)
	$(UV) pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -e '.[test]'
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/e2e

# Drift, on purpose: the whole suite in a fresh virtualenv holding the newest release of
# every dependency today (--no-config drops the lock's date). Not part of make test: a new
# release must not turn an unrelated change red. What it finds is fixed together with
# `make lock`, in one commit. bentoml is pinned exactly, so it stays at the locked version.
test-latest: $(STAMP) promtool
	rm -rf $(LATEST)
	$(UV) venv --quiet --python $(BIN)/python $(LATEST)
	$(UV) pip install --quiet --no-config --python $(LATEST)/bin/python -e '.[dev,bench]'
	@echo "Versions newer than requirements/dev.txt's:"
	@$(UV) pip freeze --python $(LATEST)/bin/python | grep '==' | sort > $(LATEST)/versions.txt
	@grep -oE '^[A-Za-z0-9._-]+==[^ ;\\]+' requirements/dev.txt | sort \
		| comm -13 - $(LATEST)/versions.txt | sed 's/^/  /'
	$(LATEST)/bin/python -m pytest -p no:cacheprovider

# Upgrade on purpose: resolve every requirements file again as of now (the date goes into
# pyproject.toml), then run make test on the new versions and commit all of it together.
lock: | $(UV)
	sed -i -E 's/^exclude-newer = .*/exclude-newer = "'"$$(date -u +%Y-%m-%dT%H:%M:%SZ)"'"/' \
		pyproject.toml
	$(call compile_uv,requirements) --upgrade
	$(call compile_dev,requirements) --upgrade
	$(call compile_bento,requirements) --upgrade
	$(call compile_feast,requirements) --upgrade

# The committed requirements are what pyproject.toml resolves to as of the lock's date.
lock-check: | $(UV)
	rm -rf $(LOCK_CHECK) && mkdir -p $(LOCK_CHECK)
	$(call compile_uv,$(LOCK_CHECK))
	$(call compile_dev,$(LOCK_CHECK))
	$(call compile_bento,$(LOCK_CHECK))
	$(call compile_feast,$(LOCK_CHECK))
	@for name in uv dev bento feast; do \
		diff -q requirements/$$name.txt $(LOCK_CHECK)/$$name.txt >/dev/null || { \
		echo "requirements/$$name.txt is not what pyproject.toml resolves to: run make lock" >&2; \
		diff requirements/$$name.txt $(LOCK_CHECK)/$$name.txt | head -20 >&2; exit 1; }; done

# The project `make serve` and `make train` work on: FEATSERVE_PROJECT when it is set, else
# the example examples/default-project names (`make serve PROJECT=path/to/project` for another).
PROJECT ?= $(or $(FEATSERVE_PROJECT),$(file < examples/default-project))

# Embedded Redis (unless REDIS_URL is set), the project's demo data, a model if the store
# has none, then `bentoml serve` on 127.0.0.1:3000.
serve: $(STAMP)
	$(BIN)/python -m service.cli.demo --project $(PROJECT)

# Train the project's model on its demo rows and save it to the BentoML model store.
train: $(STAMP)
	$(BIN)/python -m models.train --project $(PROJECT)

# The OCI image localhost/featserve:<bento version> (and :latest) from the Bento, with podman:
# no Docker daemon, no Docker Hub (.ci/container/build-image; needs root).
container: $(STAMP)
	.ci/container/build-image

# Every benchmark (~30 min), Feast as a peer among them; rewrites the generated end of
# docs/benchmarks.md and docs/img/*.png.
bench: $(STAMP) $(FEAST_VENV)/.installed
	$(BIN)/python -m bench.run_all

# Feast 0.67's feature server beside featserve and the echo floor, on the same Redis, data,
# load client and CPU split (~4 min; bench/feast_peer.py): prints the Markdown tables. Feast
# lives in a virtualenv of its own, exactly requirements/feast.txt, since its pins differ.
$(FEAST_VENV)/.installed: requirements/feast.txt | $(UV)
	rm -rf $(FEAST_VENV)
	$(UV) venv --quiet --python $(BIN)/python $(FEAST_VENV)
	$(UV) pip sync --quiet --python $(FEAST_VENV)/bin/python --require-hashes requirements/feast.txt
	touch $@

bench-peers: $(STAMP) $(FEAST_VENV)/.installed
	$(BIN)/python -m bench.feast_peer

# Fault drills under load, with figures, into docs/reliability.md (a few minutes), then
# a primary killed under load on a Redis Cluster and behind Sentinel (about 2 minutes).
faults: $(STAMP)
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.failover

# /score and /push together for 10 minutes at 64 connections that honour Retry-After: per
# minute latency, real answers, refusals, worker RSS and open descriptors, into
# docs/reliability.md (bench/soak.py).
soak: $(STAMP)
	$(BIN)/python -m bench.soak --write

clean:
	rm -rf $(VENV) $(LOWEST) $(LATEST) $(LOCK_CHECK) $(FEAST_VENV) .pytest_cache .ruff_cache .tools
