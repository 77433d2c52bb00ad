"""The JSON config file the testbed writes for each component process.

Fields: ``host``, ``component`` (clc|walrus|cc|sc|nc), ``port`` and ``data_dir``
(created if missing) are required; ``role`` (primary|secondary|single),
``listen_host`` ("0.0.0.0"), ``events_path``, ``state`` (initial: ENABLED or
DISABLED), ``region`` ("eucalyptus"), ``admin`` {account_id, access_key,
secret_key}, ``internal_token`` (this component's role's credential),
``internal_callers`` {role: SHA-256 of that role's token} (components/common/service.py)
and ``endpoints`` {"clc": url, "walrus": url, "cc": {zone: url}, "sc": {zone: url}} have
defaults. Keys not listed here are
kept as they are for the component that needs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .kinds import NAMES


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field."""


COMPONENTS = NAMES  # every component kind (kinds.py)


REQUIRED: dict[str, type | tuple[type, ...]] = {
    "host": str, "component": str, "port": int, "data_dir": str,
}
OPTIONAL: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "role": (str, "single"),
    "listen_host": (str, "0.0.0.0"),
    "events_path": ((str, type(None)), None),
    "state": (str, "ENABLED"),
    "region": (str, "eucalyptus"),
    "internal_token": (str, ""),
    "internal_callers": (dict, {}),
    "endpoints": (dict, {}),
    "zones": (list, []),
}


def validate_config(cfg: Any) -> dict:
    """Check types and fill defaults; raise ConfigError naming the first bad field."""
    if not isinstance(cfg, dict):
        raise ConfigError("a component config is a JSON object")
    for key, typ in REQUIRED.items():
        if key not in cfg:
            raise ConfigError(f"{key}: missing")
        if not isinstance(cfg[key], typ) or isinstance(cfg[key], bool):
            raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {cfg[key]!r}")
    for key, (typ, default) in OPTIONAL.items():
        cfg.setdefault(key, default)
        if not isinstance(cfg[key], typ):
            raise ConfigError(f"{key}: has the wrong type ({cfg[key]!r})")
    if cfg["component"] not in COMPONENTS:
        raise ConfigError(f"component: must be one of {', '.join(COMPONENTS)}, not {cfg['component']!r}")
    if cfg["role"] not in ("primary", "secondary", "single"):
        raise ConfigError(f"role: must be primary, secondary or single, not {cfg['role']!r}")
    if cfg["state"] not in ("ENABLED", "DISABLED"):
        raise ConfigError(f"state: must be ENABLED or DISABLED, not {cfg['state']!r}")
    if not 0 < cfg["port"] < 65536:
        raise ConfigError(f"port: out of range ({cfg['port']})")
    admin = cfg.get("admin")
    if admin is not None:
        if not isinstance(admin, dict):
            raise ConfigError("admin: expected an object with account_id, access_key and secret_key")
        for key in ("account_id", "access_key", "secret_key"):
            if not isinstance(admin.get(key), str) or not admin[key]:
                raise ConfigError(f"admin.{key}: missing")
    _check_endpoints(cfg["endpoints"])
    Path(cfg["data_dir"]).mkdir(parents=True, exist_ok=True)
    return cfg


def _check_endpoints(endpoints: dict) -> None:
    for name in ("clc", "walrus"):
        url = endpoints.get(name)
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise ConfigError(f"endpoints.{name}: expected an http(s) URL, got {url!r}")
    for name in ("cc", "sc"):
        zones = endpoints.get(name)
        if zones is None:
            continue
        if not isinstance(zones, dict):
            raise ConfigError(f"endpoints.{name}: expected an object of zone -> URL, got {zones!r}")
        for zone, url in zones.items():
            if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                raise ConfigError(f"endpoints.{name}.{zone}: expected an http(s) URL, got {url!r}")


def load_config(path: str | Path) -> dict:
    """Read and validate a component's config file (raises ConfigError)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return validate_config(cfg)
