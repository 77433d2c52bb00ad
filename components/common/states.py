"""Eucalyptus service states (euca-describe-services)."""

from __future__ import annotations

import enum


class ServiceState(str, enum.Enum):
    PRIMORDIAL = "PRIMORDIAL"
    INITIALIZED = "INITIALIZED"
    LOADED = "LOADED"
    NOTREADY = "NOTREADY"
    DISABLED = "DISABLED"
    ENABLED = "ENABLED"
    BROKEN = "BROKEN"
    STOPPED = "STOPPED"
