"""Shared test set-up: integration tests need root and Open vSwitch, and never skip as root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = str(item.fspath).replace(os.sep, "/")
        if "tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "tests/kernel/" in path:
            # The kernel lane: never skipped; tests/kernel/conftest.py fails them with the
            # reason where this kernel lacks the features (`eucalab vm test` runs them in a VM).
            item.add_marker(pytest.mark.kernel)
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests build real networks: run as root (make test)")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
