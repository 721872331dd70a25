# interest-migration: every command a user or CI types. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEAM_STAMP := $(VENV)/.installed-team
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-team run up down status env up-team down-team status-team env-team test test-slow test-fast test-team lint bench bench-data bench-model bench-scoring clean distclean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): constraints.txt pyproject.toml
	@echo "==> installing the pinned stack into $(VENV) (first time: a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)
	@echo "==> installed"

install: $(STAMP) ## create .venv with the locked versions (constraints.txt)

$(TEAM_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,team,teamstack]"
	@touch $(TEAM_STAMP)

install-team: $(TEAM_STAMP) ## add the team stack's packages (Celery provider, Redis, PostgreSQL drivers/servers)

run: install ## install, start the stack, load demo data, train, backfill scoring, print a summary
	$(PY) -m pipelines stack run

up: install ## start SeaweedFS (S3), MLflow and Airflow on 127.0.0.1 (state in .local/)
	$(PY) -m pipelines stack up

down: ## stop every process of the stack (data in .local/ is kept)
	@if [ -x $(PY) ]; then $(PY) -m pipelines stack down; else echo "nothing installed, nothing running"; fi

status: ## show which services run, their URLs and health
	$(PY) -m pipelines stack status

up-team: install-team ## the team stack: PostgreSQL, Redis, SeaweedFS, MLflow, Airflow with CeleryExecutor and 2 workers (state in .local/team/)
	$(PY) -m pipelines stack up --team

down-team: ## stop every process of the team stack, workers included (data in .local/team/ is kept)
	@if [ -x $(PY) ]; then $(PY) -m pipelines stack down --team; else echo "nothing installed, nothing running"; fi

status-team: ## show which team stack processes run, their URLs and health
	$(PY) -m pipelines stack status --team

env-team: ## `export ...` lines for the team stack: eval "$$(make -s env-team)"
	@$(PY) -m pipelines stack env --team

env: ## print `export ...` lines to use the running stack from a shell: eval "$$(make -s env)"
	@$(PY) -m pipelines stack env

lint: install ## ruff over the package, DAGs and tests
	$(VENV)/bin/ruff check pipelines dags tests bench

test: install lint ## every test but the slow, fault and team-stack suites (starts its own services on free ports, stops them after)
	$(VENV)/bin/pytest -m "not teamstack and not slow and not faults" $(PYTEST_ARGS)

test-slow: install ## the slow suites: end-to-end DAG runs, real-size training, faults (kills services mid-work)
	$(VENV)/bin/pytest -m "(slow or faults) and not teamstack" $(PYTEST_ARGS)

test-team: install-team ## the team stack suite: PostgreSQL + Redis + 2 Celery workers, training, backfill, a killed worker
	$(VENV)/bin/pytest -m teamstack $(PYTEST_ARGS)

test-fast: install ## tests that need no service, no Airflow and no long run
	$(VENV)/bin/pytest -m "not services and not airflow and not slow and not teamstack" $(PYTEST_ARGS)

bench: bench-data bench-scoring bench-model ## every benchmark (prints its figures)

bench-data: install ## land + validate + preprocess beside DuckDB on a 10M-event file, and the per-day cost of a 4,000-day history
	$(PY) bench/data_bench.py
	$(PY) bench/data_bench.py --history-days 4000 --rows-per-day 300

bench-scoring: install ## scoring 100k users: users/second and peak memory
	$(PY) bench/scoring_bench.py --users 100000

bench-model: install ## train + evaluate on real Ciao and Taobao data (needs ../shared/data)
	$(PY) bench/model_bench.py --data ciao
	$(PY) bench/model_bench.py --data taobao

clean: ## remove caches (keeps .venv and .local)
	rm -rf .pytest_cache .ruff_cache .mypy_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: down clean ## remove .venv and all local stack state (.local/)
	rm -rf $(VENV) .local
