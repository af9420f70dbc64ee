# The two commands of the README: `make run` and `make test`. Everything else is installed by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean-data

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py run_platform

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# The django-stubs plugin imports the settings: give it URLs so that no embedded server is started for it.
	DATABASE_URL=postgresql://typecheck@localhost/none REDIS_URL=redis://localhost:1/0 $(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-data:
	rm -rf .data
