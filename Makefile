# eucalab: `make run` and `make test` are the front door; both set the machine up first
# (.ci/setup.sh: Debian packages, Open vSwitch, .venv; idempotent, about a second when ready).
PY      := .venv/bin/python
EUCALAB := .venv/bin/eucalab
# Building networks needs root: as a normal user, run/test/bench go through sudo
# (setup has already stopped with a clear message where there is no sudo).
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo -E)
PYTEST  := -m pytest -v -ra --durations=20 -p no:cacheprovider
# The unit tests run in two processes (pytest-xdist): most of their time is waiting on the
# processes and sockets they start, each on free ports of its own. The integration tests
# run one at a time: they build networks on this machine's one Open vSwitch.
UNIT    := -n 2 -m 'not integration and not kernel' tests
INTEG   := -m 'integration and not multiserver' tests

# $(call pytest,COMMAND): echo it, run it; pytest's exit 5 (no test collected) is a failure,
# said so plainly.
define pytest
@echo "$(strip $(1))"
@$(1) || { rc=$$?; \
  [ $$rc -ne 5 ] || echo "make: pytest collected no tests (exit 5): that is a failure" >&2; \
  exit $$rc; }
endef

.PHONY: setup venv run test test-kernel test-cluster unit integration bench clean

setup:
	@bash .ci/setup.sh

# Only .venv, no root: enough for the unit tests.
venv:
	@bash .ci/setup.sh venv

# The main job: the default failover experiment; prints where its report is.
run: setup
	$(SUDO) $(EUCALAB) run

# Every test: unit tests (in two processes), real-network integration tests (as root they
# run, never skip), then the kernel lane (tests/kernel: OVS kernel datapath, netem, 802.1Q),
# here if this kernel has them, else in a VM with Debian's kernel (eucalab vm test).
test: setup
	$(call pytest,$(SUDO) $(PY) $(PYTEST) $(UNIT))
	$(call pytest,$(SUDO) $(PY) $(PYTEST) $(INTEG))
	$(SUDO) $(EUCALAB) vm test

# Only the kernel lane.
test-kernel: setup
	$(SUDO) $(EUCALAB) vm test

# A whole deployment over this machine and the kernel-lane VM (docs/cluster.md): a few
# minutes more than make test can afford, so on its own.
test-cluster: setup
	$(call pytest,$(SUDO) $(PY) $(PYTEST) -m multiserver tests/integration/test_cluster.py)

unit: venv
	$(call pytest,$(PY) $(PYTEST) $(UNIT))

integration: setup
	$(call pytest,$(SUDO) $(PY) $(PYTEST) $(INTEG))

bench: setup
	$(SUDO) $(EUCALAB) bench bringup

# Removes the environment and build junk; results/ stays.
clean:
	rm -rf .venv build dist *.egg-info .pytest_cache
	find topologies controllers components experiments tests -name __pycache__ -type d -prune -exec rm -rf {} +
