# Every target creates .venv and installs the project into it when needed, so each works on a
# fresh machine. `make demo` runs the main job; `make test` runs the checks and the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench-emulator bench-ledger bench-workers clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
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

bench-emulator: $(STAMP)
	$(PY) ops/bench_emulator.py

bench-ledger: $(STAMP)
	$(PY) ops/bench_ledger.py

bench-workers: $(STAMP)
	$(PY) ops/bench_workers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
