# The two commands of the README: `make run` and `make test`. Everything else is installed by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
NGINX := /usr/sbin/nginx

.PHONY: run cluster test lint typecheck bench clean-data

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the Python packages into $(VENV): 1 to 3 minutes the first time, quiet while it works..."
	@started=$$(date +%s); \
		$(BIN)/python -m pip install --quiet --upgrade pip && \
		$(BIN)/python -m pip install --quiet -r requirements-dev.txt && \
		echo "Installed in $$(( $$(date +%s) - started )) s."
	touch $(STAMP)

# RUN_ARGS: the command's options, e.g. make run RUN_ARGS="--port 9000". Ctrl-C exits 0: the command takes the
# terminal's Ctrl-C for itself (operations/startup.py), since make dies of any SIGINT it receives.
run: $(STAMP)
	$(BIN)/python manage.py run_platform $(RUN_ARGS)

# Cluster mode (README, "Cluster mode"): nginx in front of several web, WebSocket and Celery processes, a Valkey
# cluster, PostgreSQL primary and replica, in .data/cluster. RUN_ARGS as for run, e.g. RUN_ARGS="--web 2 --port 9080".
cluster: $(STAMP) $(NGINX)
	@command -v nginx >/dev/null || { echo "Cluster mode needs nginx: apt-get install nginx-light"; exit 1; }
	$(BIN)/python manage.py run_cluster $(RUN_ARGS)

# Cluster mode's nginx is Debian's; install it where we may (root with apt), else cluster mode's tests skip.
$(NGINX):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's nginx-light for cluster mode"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	else echo "No $(NGINX): cluster mode's tests will be skipped"; fi

# Browser tests drive Debian's Chromium; install it where we may (root with apt), else those tests skip.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "No $(CHROMIUM): browser tests will be skipped"; fi

# Two workers, one per core of the machines this runs on, each with its own embedded servers (tests/embedded_test_env.py).
TEST_WORKERS ?= 2

test: $(STAMP) $(CHROMIUM) $(NGINX)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/readme_layout.py --check
	# The django-stubs plugin imports the settings: give it URLs so that no embedded server is started for it.
	@echo "Type-checking with mypy: about 90 s the first time, seconds once its cache is warm..."
	@started=$$(date +%s); \
		DATABASE_URL=postgresql://typecheck@localhost/none REDIS_URL=redis://localhost:1/0 $(BIN)/mypy; \
		status=$$?; echo "mypy took $$(( $$(date +%s) - started )) s."; exit $$status
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-data:
	rm -rf .data
