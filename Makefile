# eucalab: `make run` and `make test` are the front door; both set the machine up first
# (.ci/setup.sh: Debian packages, Open vSwitch, .venv; idempotent, about a second when ready).
PY      := .venv/bin/python
EUCALAB := .venv/bin/eucalab
# Building networks needs root: as a normal user, run/test/bench go through sudo
# (setup has already stopped with a clear message where there is no sudo).
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo -E)
PYTEST  := -m pytest -v -ra --durations=20 -p no:cacheprovider

.PHONY: setup venv run test test-kernel unit integration bench clean

setup:
	@bash .ci/setup.sh

# Only .venv, no root: enough for the unit tests.
venv:
	@bash .ci/setup.sh venv

# The main job: the default failover experiment; prints where its report is.
run: setup
	$(SUDO) $(EUCALAB) run

# Every test: unit and real-network integration (as root they run, never skip), then the
# kernel lane (tests/kernel: OVS kernel datapath, netem, 802.1Q), here if this kernel has
# them, else in a VM with Debian's kernel (eucalab vm test).
# pytest exit 5 means no test was collected: a failure, said so plainly.
test: setup
	@echo "$(strip $(SUDO) $(PY) $(PYTEST) -m 'not kernel' tests)"
	@$(SUDO) $(PY) $(PYTEST) -m 'not kernel' tests || { rc=$$?; \
	  [ $$rc -ne 5 ] || echo "make test: pytest collected no tests (exit 5): that is a failure" >&2; \
	  exit $$rc; }
	$(SUDO) $(EUCALAB) vm test

# Only the kernel lane.
test-kernel: setup
	$(SUDO) $(EUCALAB) vm test

unit: venv
	$(PY) $(PYTEST) -m 'not integration and not kernel' tests

integration: setup
	$(SUDO) $(PY) $(PYTEST) -m integration tests

bench: setup
	$(SUDO) $(EUCALAB) bench bringup

# Removes the environment and build junk; results/ stays.
clean:
	rm -rf .venv build dist *.egg-info .pytest_cache
	find topologies controllers components experiments tests -name __pycache__ -type d -prune -exec rm -rf {} +
