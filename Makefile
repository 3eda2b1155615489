# One command to start the app, one to run the tests; both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin
	@echo "Serving at http://$(HOST):$(PORT)/  (admin: /admin/, health: /healthz; Ctrl-C stops)"
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) eventbus_project.asgi:application

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Each script measures this project and its anchor in one run and prints the ratio last.
bench: $(STAMP)
	$(PY) benchmarks/bus_throughput.py
	$(PY) benchmarks/store_ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
