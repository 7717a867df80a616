# Two commands for a new user: `make run` (the whole chain on the embedded data, on CPU)
# and `make test` (the test suite). Both create .venv and install what they need.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export DATA_OPTIMIZER_CACHE_FOLDER := $(CURDIR)/.cache/litdata
export MPLBACKEND := Agg

.PHONY: run studies test test-fast lint install ui ui-postgres bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the builds this machine's pip serves from disk (see README).
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test,wandb,comet,cluster,postgres]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m pipelines.main run

# The hyperparameter search, the six studies (3 seeds each) and their report: about 12 minutes on 2 cores.
studies: $(STAMP)
	$(BIN)/python -m pipelines.main studies

# Everything, what CI runs (.ci/run): lint, types, then every test including the slow ones (17-33 min on 2 cores), slowest 25 listed.
test: lint system-deps
	$(BIN)/python -m pytest -q --durations=25 tests

# Debian packages the tests start for real, installed when missing: chromium (Playwright drives it; it cannot
# download its own browsers here), slurm-wlm + munge (a Slurm cluster on localhost), postgresql.
SYSTEM_DEPS := chromium:chromium slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge \
	/usr/lib/postgresql/15/bin/initdb:postgresql
system-deps:
	@missing=$$(for dep in $(SYSTEM_DEPS); do command -v $${dep%%:*} >/dev/null || echo $${dep#*:}; done | sort -u); \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; fi

# The quick lane while working (~1.5 min): no training jobs, torchrun, SIGKILL, daemon or chain tests.
test-fast: lint
	$(BIN)/python -m pytest -q tests -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check lightning_modules pipelines tests bench
	$(BIN)/ruff format --check lightning_modules pipelines tests bench
	$(BIN)/mypy

ui: $(STAMP)
	$(BIN)/python -m pipelines.main ui

# The same UIs with Dagster's and MLflow's records in PostgreSQL: $VISIONFLOW_POSTGRES_URL, else a local server
# (Debian's postgresql) in .postgres/, loopback only; it keeps running: python -m pipelines.storage stop
ui-postgres: $(STAMP)
	$(BIN)/python -m pipelines.main ui --postgres

bench: $(STAMP)
	$(BIN)/python bench/data_loading.py

clean:
	rm -rf $(VENV) .cache .dagster_home mlflow.db runs prepared
