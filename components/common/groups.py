"""The security-group record the CLC sends its CCs, and its digest.

The CLC sends every group's rules to each CC as ``{"id", "name", "account", "rules"}``
(``PUT /cluster/groups/{id}``), and checks now and then that each CC still holds them
(a CC restarted with nothing learns them again). A CC answers the check with one digest
per group it holds (``GET /cluster/groups``), so the CLC re-sends only the groups a CC
is missing or holds differently, not all of them every time.
"""

from __future__ import annotations

import hashlib
import json


def digest(group: dict) -> str:
    """A short, stable digest of a group record (key order does not matter)."""
    canon = json.dumps(group, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]
