# `make run` runs the product on embedded defaults; `make test` runs the whole suite.
# Both create or refresh .venv from PyPI when pyproject.toml changes, and are safe to repeat.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The web app's front-end assets from npm (govuk-frontend; axe-core for the accessibility tests),
# installed into node_modules/ from package-lock.json, never committed.
NODE_STAMP := node_modules/.installed-stamp

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ncpi-followup needs Python 3.11; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm > /dev/null || { echo "the web app's assets need npm (Node.js 18 or later): install nodejs and npm"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

run: $(STAMP) $(NODE_STAMP)
	$(BIN)/ncpi dev

# Two pytest-xdist worker processes (the machine has two cores), each with its own PostgreSQL cluster
# and Temporal dev server; a module's tests stay together, and the tests that kill real worker
# processes run one at a time (tests/conftest.py, ONE_AT_A_TIME). `make test TEST_WORKERS=0` runs
# it in one process, as before.
TEST_WORKERS ?= 2

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=25

# The model-based lifecycle test (tests/test_lifecycle_model.py) at ten times the examples `make test`
# runs (its default NCPI_MODEL_EXAMPLES is 8): about a quarter of an hour on two cores.
.PHONY: test-long
test-long: $(STAMP)
	NCPI_MODEL_EXAMPLES=80 $(BIN)/python -m pytest tests/test_lifecycle_model.py

bench: $(STAMP)
	$(BIN)/python -m bench.run

# The scaling curve (bench/scale.py, issue 15): lifecycle throughput and peak worker RSS at 100, 1,000
# and 5,000 recommendations on PostgreSQL (one and two `ncpi worker` processes, and bare), the
# dashboard at 1,000 to 100,000. Writes bench/results/scale.json, docs/bench-scale.svg and the README's
# scaling table. Run it on a quiet machine: under 20 minutes on two cores.
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

# The fault-injection suite (bench/chaos.py, issue 11) on SQLite and PostgreSQL: worker kill -9 x10,
# an SMTP outage, a Temporal restart, a database crash, two workers. Not part of `make test` (which
# runs its short version, tests/test_chaos_short.py). Writes bench/results/chaos.json and the
# README's chaos table.
.PHONY: chaos
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis node_modules
