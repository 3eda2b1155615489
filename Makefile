# One command to start the app, one to run the tests; both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint format bench clean demo

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ./client -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin --host $(HOST) --port $(PORT)
	@echo "Serving at http://$(HOST):$(PORT)/  (overview: /, admin: /admin/, health: /healthz; Ctrl-C stops)"
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) eventbus_project.asgi:application

# The server in the background (its log in var/demo-server.log) and simulated agents in the foreground,
# so the live feed and the approval queue fill within seconds; Ctrl-C stops both (the simulator first
# withdraws its pending requests). SIMULATE="--sessions 5 --rate 10" passes options to simulate_agents.
demo: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin --host $(HOST) --port $(PORT)
	$(PY) manage.py setup_roles >/dev/null
	@$(PY) -c 'import socket; socket.create_server(("$(HOST)", $(PORT))).close()' 2>/dev/null \
		|| { echo "$(HOST):$(PORT) is in use (make run already running?); try PORT=8001 make demo"; exit 1; }; \
	log="$${VAR_DIR:-var}/demo-server.log"; mkdir -p "$$(dirname "$$log")"; \
	schemas="$${VAR_DIR:-var}/demo-tool-schemas.json"; $(PY) manage.py simulate_agents --write-schemas "$$schemas" >/dev/null; \
	HITL_TOOL_SCHEMAS_FILE="$$schemas" $(VENV)/bin/daphne -b $(HOST) -p $(PORT) eventbus_project.asgi:application >"$$log" 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	up=; for i in $$(seq 1 100); do \
		kill -0 $$server 2>/dev/null || break; \
		$(PY) -c 'import urllib.request as r; r.urlopen("http://$(HOST):$(PORT)/healthz", timeout=1)' \
			2>/dev/null && { up=1; break; }; \
		sleep 0.2; \
	done; \
	[ -n "$$up" ] || { echo "The server did not come up; the end of $$log:"; tail -n 20 "$$log"; exit 1; }; \
	echo "Serving at http://$(HOST):$(PORT)/ (server log: $$log). Sign in as admin, then watch:"; \
	echo "  approvals  http://$(HOST):$(PORT)/hitl/"; \
	echo "  live feed  http://$(HOST):$(PORT)/events/live/"; \
	echo "  admin      http://$(HOST):$(PORT)/admin/  (traces: Stored events -> an event -> trace)"; \
	$(PY) manage.py simulate_agents $(SIMULATE)

# Two workers (pytest-xdist), a test file each at a time: the machines here have two cores.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	cd client && ../$(VENV)/bin/mypy eventbus_client

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Each script measures this project and its anchor in one run and prints the ratio last.
bench: $(STAMP)
	$(PY) benchmarks/bus_throughput.py
	$(PY) benchmarks/store_ingest.py
	$(PY) benchmarks/live_fanout.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
