"""experiments/ has one folder per job, and imports flow one way between them:
cli -> bench -> failover -> testbed, analysis (docs/architecture.md)."""

import ast
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
LAYERS = {
    "cli": ["analysis", "bench", "failover", "testbed"],
    "bench": ["analysis", "failover", "testbed"],
    "failover": ["analysis", "testbed"],
    "testbed": [],
    "analysis": [],
}


def _imports(path: Path) -> set[str]:
    """The experiments folders a module imports, relative and absolute imports alike."""
    package = path.relative_to(EXPERIMENTS.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            parts = base + (node.module.split(".") if node.module else [])
            targets = [parts + [a.name] for a in node.names] if len(parts) == 1 else [parts]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        else:
            continue
        found |= {t[1] for t in targets if len(t) > 1 and t[0] == "experiments"}
    return found


def test_top_level_holds_only_the_cli():
    assert sorted(p.name for p in EXPERIMENTS.glob("*.py")) == ["__init__.py", "cli.py"]
    assert sorted(p.name for p in EXPERIMENTS.iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(LAYERS.keys() - {"cli"})


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(EXPERIMENTS.rglob("*.py")):
        folder = path.stem if path.parent == EXPERIMENTS else path.relative_to(EXPERIMENTS).parts[0]
        if folder == "__init__":
            continue
        for target in _imports(path) - {folder}:
            if target not in LAYERS[folder]:
                wrong.append(f"{path.relative_to(EXPERIMENTS)} imports experiments.{target}")
    assert not wrong


def test_the_readme_api():
    from experiments import Deployment
    from experiments.testbed.deployment import Deployment as Defined

    assert Deployment is Defined
    readme = (EXPERIMENTS.parent / "README.md").read_text()
    assert "from experiments import Deployment" in readme
