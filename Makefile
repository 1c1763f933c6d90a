# Everyday targets. `make run` starts embedq on this machine; `make test` installs what the
# tests need (system packages, a virtualenv) and runs them: CI runs exactly `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := systemd docker-compose chromium
STAMP := $(VENV)/.installed

.PHONY: install system-packages test test-fast lint format typecheck bench run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU build on this machine's disk; a bare sentence-transformers
# install would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[local,test,dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive: systemd-analyze (unit checks), docker-compose (compose
# validation, no engine needed), chromium (the status page). Installed only when missing.
system-packages:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: system-packages install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -x tests/unit tests/integration

lint: install
	$(BIN)/ruff check embedq_common embedq_server embedq_worker tests bench
	$(BIN)/ruff format --check embedq_common embedq_server embedq_worker tests bench

format: install
	$(BIN)/ruff format embedq_common embedq_server embedq_worker tests bench
	$(BIN)/ruff check --fix embedq_common embedq_server embedq_worker tests bench

typecheck: install
	$(BIN)/mypy embedq_common embedq_server embedq_worker

bench: install
	$(BIN)/python -m bench.run

run: install
	./scripts/run-local.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
