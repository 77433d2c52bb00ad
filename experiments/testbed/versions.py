"""The versions a result depends on, recorded beside every run."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess

from .rundir import REPO_ROOT


def _out(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5, cwd=REPO_ROOT)
        return (proc.stdout or proc.stderr).strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict:
    def dist(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    ovs = _out(["ovs-vsctl", "--version"])
    return {"kernel": platform.release(), "python": platform.python_version(),
            "openvswitch": ovs.splitlines()[0] if ovs else None, "os-ken": dist("os-ken"),
            "mininet": dist("mininet") or _mininet(), "boto3": dist("boto3"), "aiohttp": dist("aiohttp"),
            "keepalived": (_out(["keepalived", "--version"]) or "?").splitlines()[0],
            "eucalab_commit": _out(["git", "rev-parse", "HEAD"]),
            "eucalab_dirty": bool(_out(["git", "status", "--porcelain"]))}


def _mininet() -> str | None:
    try:
        from mininet.net import VERSION

        return VERSION
    except ImportError:
        return None
