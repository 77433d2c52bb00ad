"""Shared test set-up: integration tests need root and Open vSwitch, and never skip as root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests build real networks: run as root (make test)")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
