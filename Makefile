# The two commands the README names: `make run` starts the daemon standalone,
# `make test` runs the whole suite. Both do every bit of set-up a fresh Debian
# machine needs (apt packages, the .venv, pip packages) and are idempotent.

PYTHON ?= python3
VENV   := .venv
APT_PACKAGES := libsystemd-dev pkg-config systemd curl inotify-tools
STAMP  := $(VENV)/.installed

.PHONY: run test lint format setup apt clean bench

run: setup
	$(VENV)/bin/hecated $(ARGS)

# Two pytest workers (pytest-xdist): most tests wait on processes and sockets, not the CPU.
# Tests of machine-wide things (a user manager, the journal socket, installed packages)
# run in one group, one after another (tests/conftest.py). XDIST= runs them all in one.
XDIST ?= -n 2 --dist loadgroup

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest $(XDIST) $(PYTEST_ARGS)

# Benchmarks beside their baselines (installs nginx-light and etcd-server with apt);
# writes docs/benchmarks.md, unpinned (ARGS=--pinned: a labelled pinned extra run).
# Takes a few minutes. The candidates table 0 and bench/toml_parse.py compare are
# bench-only: installed into the venv here, never dependencies of hecated.
BENCH_PIP := cheroot gunicorn tomli rtoml
bench: setup
	$(VENV)/bin/pip install -q $(BENCH_PIP)
	$(VENV)/bin/python bench/run.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

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

# --- Packaging (docs/packaging.md, packaging/, tests/test_packaging.py) --------------
# Debian's build tools, lintian, rpmbuild and rpmlint, makepkg (+ bsdtar), and the
# Debian libraries the .deb depends on (also its Build-Depends, for the build's import check).
PACKAGING_APT := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-build python3-installer help2man lintian rpm rpmlint \
	pacman-package-manager libarchive-tools \
	python3-werkzeug python3-waitress python3-watchdog python3-systemd python3-sdnotify \
	python3-tomli-w python3-jeepney
APT_PACKAGES += $(PACKAGING_APT)

# The packaging tests' Python side (kubernetes-validate: the Kubernetes schemas, offline).
PACKAGING_STAMP := $(VENV)/.packaging-installed
setup: $(PACKAGING_STAMP)
$(PACKAGING_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q -e '.[packaging]'
	touch $@

.PHONY: deb rpm arch
# Distro packages into dist/: the .deb (lintian must report no error), the RPM and
# the Arch package (Debian's rpmbuild and makepkg), all from a clean copy of the tree.
deb: apt
	packaging/debian/build.sh --out dist

rpm: apt
	packaging/rpm/build.sh --out dist

arch: apt
	packaging/arch/build.sh --out dist

# -- the reliability suite (issue 8), in its own block so it merges cleanly -------------
# setpriv and mount (util-linux, mount) run the daemon without DAC override, as nobody,
# and on a small tmpfs; nobody runs Debian's python3 (the venv's may sit under /root).
APT_PACKAGES += python3 util-linux mount

.PHONY: soak
# The reliability suite at soak strength (issue 8): far more fuzzed requests, crash
# rounds and concurrent operations than the CI run of `make test`.
soak: setup
	HECATE_FUZZ_EXAMPLES=$${HECATE_FUZZ_EXAMPLES:-5000} \
	HECATE_CRASH_ROUNDS=$${HECATE_CRASH_ROUNDS:-200} \
	HECATE_CONCURRENCY_OPS=$${HECATE_CONCURRENCY_OPS:-20000} \
	$(VENV)/bin/pytest -s -p no:cacheprovider tests/test_fuzz.py tests/test_crash.py \
		tests/test_concurrency.py
