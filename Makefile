# Each target is one command a new user runs:
#   make venv | test | crash-test | lint | fuzz | demo | bench | deb | system-test-arm64 | clean.

PYTHON ?= python3
VENV := .venv
# Rebuilt whenever pyproject.toml (dependencies, entry points) changes.
STAMP := $(VENV)/.installed

.PHONY: venv test crash-test lint fuzz demo bench deb system-test-arm64 prerequisites clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

# pytest exits 5 when it collects no tests; make treats that as the failure it is.
# The system tests (tests/system) build the .deb and boot Debian containers: they need root.
test: prerequisites venv
	$(VENV)/bin/python -m pytest -m 'not arm64'

# The power cuts of tests/crash in full: 50 under the receiver, 30 under the sender, with scans
# of 64 MiB and more (`make test` runs 10 of each, smaller). Needs /dev/fuse (root). Prints one
# row per side: cut points, ACKed files, and files lost, partials visible, restarts failed,
# which must all be 0. SCANXFER_TEST_SEED=N replays the cut points of a run.
CRASH_TABLE := build/crash-table.jsonl

crash-test: prerequisites venv
	@mkdir -p build; rm -f $(CRASH_TABLE)
	@SCANXFER_CRASH_FULL=1 SCANXFER_CRASH_TABLE=$(CRASH_TABLE) $(VENV)/bin/python -m pytest \
		tests/crash; status=$$?; \
		SCANXFER_CRASH_TABLE=$(CRASH_TABLE) $(VENV)/bin/python -m tests.crash.table; exit $$status

# The same package on the Pi's architecture, in an arm64 container run by qemu-user-static.
system-test-arm64: prerequisites venv
	$(VENV)/bin/python -m pytest -m arm64

# Debian tools the system tests need (and python3-venv); installs only what is missing.
prerequisites:
	bash tests/system/prerequisites.sh

# ruff (its checks, and the format every file is in), mypy on scanxfer/ (0 errors), then the
# import rules of docs/architecture.md (import-linter; its contracts are in pyproject.toml).
# Any finding fails.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# The parsers that face the network (tests/fuzz: both ends of the protocol, the .npy header
# check) under atheris/libFuzzer, FUZZ_SECONDS each; the corpus grows from run to run. Not
# part of `make test`: a fuzzer finds things by running long. A crash fails the run and leaves
# its input in build/fuzz/TARGET/; `python -m tests.fuzz.fuzz_TARGET FILE` replays it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := protocol npy
NO_ATHERIS := make fuzz: cannot install atheris into $(VENV) (see the pip error above). \
	pip has wheels for Linux on x86_64; elsewhere it builds atheris from source, which needs \
	clang with libFuzzer (see atheris's README)

fuzz: venv
	@$(VENV)/bin/python -c 'import atheris' 2>/dev/null || \
		$(VENV)/bin/python -m pip install --quiet -e '.[fuzz]' || { echo "$(NO_ATHERIS)"; exit 1; }
	@set -e; for target in $(FUZZ_TARGETS); do \
		dir=build/fuzz/$$target; mkdir -p $$dir/corpus; \
		echo "make fuzz: $$target for $(FUZZ_SECONDS) s (log: $$dir/log)"; \
		$(VENV)/bin/python -m tests.fuzz.fuzz_$$target $$dir/corpus \
			-max_total_time=$(FUZZ_SECONDS) -artifact_prefix=$$dir/ >$$dir/log 2>&1 || { \
			tail -n 60 $$dir/log; \
			echo "make fuzz: $$target failed; its input is $$dir/crash-*, timeout-* or oom-*"; \
			echo "replay it with: $(VENV)/bin/python -m tests.fuzz.fuzz_$$target FILE"; exit 1; }; \
		grep -E '^(Done|stat::new_units_added)' $$dir/log || true; \
	done

demo: venv
	$(VENV)/bin/python -m scanxfer.demo

# scanxfer against a bare socket pump and an rsync daemon on loopback (issue 6); about 6 min.
# Writes bench/results.json and bench/results.md. Not part of `make test`: speed is measured
# here, as ratios to the other tools from the same run, never asserted in tests.
bench: venv
	rsync --help 2>/dev/null | grep -q -- --fsync || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync; }
	$(VENV)/bin/python -m tests.bench

# The Debian package: `sudo apt install ./scanxfer-receiver.deb`. Built in a copy, so
# debhelper's files never land in the work tree; build/deb keeps the .changes, the source
# package and the log for lintian. Build dependencies missing from this machine are
# installed first (as root, or through sudo). First of all, debian/changelog and
# scanxfer.__version__ must name the same version (debian/check_version.py; debian/rules
# checks it again for a dpkg-buildpackage run by hand).
DEB := scanxfer-receiver.deb
DEB_INPUTS := pyproject.toml README.md \
	$(shell find scanxfer config systemd debian -type f -not -path '*/__pycache__/*')
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Debian's python3 and tools, not a virtualenv's or pyenv's that may come first on PATH.
DEB_PATH := /usr/sbin:/usr/bin:/sbin:/bin

deb: $(DEB)

$(DEB): $(DEB_INPUTS)
	@python3 debian/check_version.py
	dpkg-checkbuilddeps >/dev/null 2>&1 || $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get build-dep -y -qq --no-install-recommends ./
	mkdir -p build
	set -e; dir=$$(mktemp -d build/deb.XXXXXX); mkdir $$dir/src; \
	tar -c --exclude=__pycache__ pyproject.toml README.md scanxfer config systemd debian \
		| tar -x -C $$dir/src; \
	(cd $$dir/src && env PATH=$(DEB_PATH) dpkg-buildpackage -us -uc >../build.log 2>&1) \
		|| { tail -n 40 $$dir/build.log; echo "make deb: failed, see $$dir/build.log"; exit 1; }; \
	rm -rf $$dir/src build/deb; mv $$dir build/deb
	cp build/deb/scanxfer-receiver_*_all.deb $@.tmp
	mv $@.tmp $@

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .hypothesis $(DEB)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
