# Clarion: `make run` starts everything on the embedded default, `make test` runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What running Clarion needs (`pip install -e .`): `make run` installs no test tools. The dev
# install (STAMP, `.[dev]`: pytest, ruff, mypy, the storage servers, Playwright, schemathesis)
# includes it, so `make run` after `make install` installs nothing more.
RUN_STAMP := $(VENV)/.installed-run

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(RUN_STAMP) $(STAMP)

install: $(STAMP) ## Create .venv and install Clarion with its dev tools

run: $(RUN_STAMP) ## Install Clarion (no test tools), migrate, start API + workers + scheduler + simulators on SQLite (./var/); keys in var/demo.env
	$(VENV)/bin/clarion dev

# The Web SDK's build tools, so that `make test` rebuilds the committed bundles and compares them
# (tests/test_websdk_e2e.py, tests/inapp/test_render_e2e.py) and runs the TypeScript unit tests.
# Without npm those tests skip and say why; running Clarion never needs Node.
WEB_STAMP := websdk/node_modules/.installed

$(WEB_STAMP): websdk/package-lock.json
	@if command -v npm >/dev/null; then \
		(cd websdk && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed) \
		|| echo "npm ci failed: the Web SDK bundle checks will be skipped"; \
	else echo "npm not found: the Web SDK bundle checks will be skipped"; fi

# Shuffled (pytest-randomly): modules, classes and tests in an order drawn from a seed printed
# at the end; `make test SEED=N` runs that order again.
SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')

test: $(STAMP) $(WEB_STAMP) lint typecheck ## Lint, type-check and run the whole test suite (SQLite and PostgreSQL), shuffled
	$(VENV)/bin/pytest -q -p randomly --randomly-seed=$(SEED)

lint: $(STAMP) ## ruff + import-linter architecture contracts
	$(VENV)/bin/ruff check clarion tests bench
	$(VENV)/bin/ruff format --check clarion tests bench
	$(VENV)/bin/lint-imports

fmt: $(STAMP) ## Format the code
	$(VENV)/bin/ruff format clarion tests bench
	$(VENV)/bin/ruff check --fix clarion tests bench

typecheck: $(STAMP) ## mypy --strict
	$(VENV)/bin/mypy clarion

migrate: $(RUN_STAMP) ## Apply database migrations (CLARION_DATABASE_URL)
	$(VENV)/bin/clarion migrate

sim: $(RUN_STAMP) ## Start only the APNs / FCM / Web Push simulators
	$(VENV)/bin/clarion sim

bench: $(STAMP) ## Run the benchmarks under bench/
	$(PY) bench/run_all.py

web: ## Rebuild the committed browser bundles from websdk/ (inapp-render.js, sdk/web/clarion.js, sdk/web/clarion-sw.js) and run its unit tests (needs Node 20; running Clarion does not)
	cd websdk && npm ci && npm run check && npm run build && npm test

.PHONY: help install run test lint fmt typecheck migrate sim bench web
