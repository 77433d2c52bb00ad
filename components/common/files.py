"""Small files a component keeps: written whole, so a crash leaves the old one or the new one."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``.

    Not fsynced: these files must survive the component's crash, and the page cache does
    (a machine crash takes the whole emulated cloud with it). A blocking call: from an
    event loop, run it in a worker thread (a rename can wait on the filesystem journal).
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
