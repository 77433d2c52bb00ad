"""Shared test set-up: the three kinds of test, and what tells them apart.

* ``integration`` (tests/integration): needs root and Open vSwitch, builds real networks;
  never skipped as root.
* ``kernel`` (tests/kernel): the kernel lane.
* ``loopback`` (in tests/unit, marked per module): starts real processes (components,
  the controller, the prober, tools) on 127.0.0.1; no root.
* everything else in tests/unit runs in this process. It may serve on loopback sockets
  from its own event loop or threads, but it starts no process: a test that does without
  the ``loopback`` mark fails, so the marks stay true.
"""

from __future__ import annotations

import os
import subprocess

import pytest

_KINDS = ("integration", "kernel", "loopback")


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


@pytest.fixture(autouse=True)
def _in_process_unless_marked(request, monkeypatch):
    """An unmarked test that starts a process fails, naming the process."""
    if any(request.node.get_closest_marker(kind) for kind in _KINDS):
        yield
        return
    started: list[str] = []
    real = subprocess.Popen._execute_child

    def recording(self, args, *rest, **kw):
        started.append(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
        return real(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", recording)
    yield
    if started:
        pytest.fail(f"this test started processes ({started[:3]}): mark its module "
                    "`pytestmark = pytest.mark.loopback`", pytrace=False)
