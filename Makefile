# The two commands the README names: `make run` starts the daemon standalone,
# `make test` runs the whole suite. Both do every bit of set-up a fresh Debian
# machine needs (apt packages, the .venv, pip packages) and are idempotent.

PYTHON ?= python3
VENV   := .venv
APT_PACKAGES := libsystemd-dev pkg-config systemd curl
STAMP  := $(VENV)/.installed

.PHONY: run test lint format setup apt clean bench

run: setup
	$(VENV)/bin/hecated $(ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Benchmarks beside their baselines (installs nginx-light and etcd-server with apt);
# writes docs/benchmarks.md. Takes a few minutes.
bench: setup
	$(VENV)/bin/python bench/run.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

setup: $(STAMP)

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | apt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[systemd,test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
