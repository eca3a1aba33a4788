# Every target creates .venv and installs the project into it when needed, so each works on a
# fresh machine. `make demo` runs the main job; `make test` runs the checks and the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest test-unit test-unit-offline test-integration test-acceptance bench-emulator bench-ledger bench-workers clean

$(STAMP): pyproject.toml ops/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c ops/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/reservations demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

# The test tiers (tests/conftest.py): unit needs no service; integration needs PostgreSQL, RabbitMQ
# or the emulator; acceptance starts real workers or commands. `make test` runs them all.
test-unit: $(STAMP)
	$(PY) -m pytest -m unit

# Proves unit needs no service: every service on a dead port, and CI=true makes a test that
# reaches for one fail instead of skip.
test-unit-offline: $(STAMP)
	CI=true LEDGER_TEST_ADMIN_URL=postgresql://postgres@127.0.0.1:1/postgres RABBITMQ_TEST_PORT=1 \
	DATABASE_URL=postgresql://postgres@127.0.0.1:1/reservations CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:1// \
	$(PY) -m pytest -m unit -p no:cacheprovider

test-integration: $(STAMP)
	$(PY) -m pytest -m integration

test-acceptance: $(STAMP)
	$(PY) -m pytest -m acceptance

bench-emulator: $(STAMP)
	$(PY) ops/bench_emulator.py

bench-ledger: $(STAMP)
	$(PY) ops/bench_ledger.py

bench-workers: $(STAMP)
	$(PY) ops/bench_workers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
