"""The project's own text points at code that is there: a file a doc, docstring or comment
names exists, and a constant or class named with its file ("components/cc/nodes.py
HANDOFF_S") is defined in that file. Moves of code between files leave such pointers
behind; this finds them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A file of the project's own folders (not another project's "ipmininet/tests/utils.py").
FILE = r"(?<![\w/.])((?:components|controllers|experiments|topologies|tests)/[\w/]+\.py)"
# The file, then (after "'s", a backtick, a comma or spaces) a constant or a class name.
NAMED = re.compile(FILE + r"(?:'s)?`?[ ,]+`{0,2}([A-Z]\w*)")
CONSTANT_OR_CLASS = re.compile(r"[A-Z][A-Z0-9_]{2,}|[A-Z][a-z0-9]+[A-Z]\w*")


FOLDERS = ("components", "controllers", "experiments", "topologies", "tests", "docs")


def _texts():
    """Every Python file and Markdown document of the project's folders, and its top-level documents."""
    paths = [*ROOT.glob("*.md"), *(p for folder in FOLDERS for suffix in ("*.py", "*.md")
                                   for p in (ROOT / folder).rglob(suffix))]
    for path in sorted(paths):
        yield str(path.relative_to(ROOT)), path.read_text(errors="replace")


def _where(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _defines(path: Path, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+def|def|class)\s+{name}\b|^\s*{name}\s*[:=]", path.read_text(),
                     re.M) is not None


def test_every_named_file_exists():
    missing = [f"{name}:{_where(text, m.start())}: {m.group(1)}"
               for name, text in _texts() for m in re.finditer(FILE, text) if not (ROOT / m.group(1)).exists()]
    assert not missing


def test_a_constant_or_class_named_with_its_file_is_defined_there():
    stale = []
    for name, text in _texts():
        for m in NAMED.finditer(text):
            path, symbol = ROOT / m.group(1), m.group(2)
            if CONSTANT_OR_CLASS.fullmatch(symbol) and path.exists() and not _defines(path, symbol):
                stale.append(f"{name}:{_where(text, m.start())}: {m.group(1)} does not define {symbol}")
    assert not stale
