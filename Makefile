# eucalab: `make run` and `make test` are the front door; both set the machine up first.
PY := .venv/bin/python

.PHONY: setup run test unit integration bench clean

setup:
	@bash .ci/setup.sh

run: setup
	$(PY) -m experiments.cli run

# Every test: unit tests and real-network integration tests (root). pytest exits
# non-zero when a test fails or when no test ran at all.
test: setup
	$(PY) -m pytest tests -v -ra -p no:cacheprovider

unit: setup
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

integration: setup
	$(PY) -m pytest tests/integration -v -ra -p no:cacheprovider

bench: setup
	$(PY) -m experiments.cli bench bringup

clean:
	rm -rf .venv build *.egg-info
