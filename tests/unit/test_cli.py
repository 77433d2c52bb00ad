"""The eucalab command's help: its module docstring lists every command it has."""

from __future__ import annotations

import argparse

from experiments import cli


def _commands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, p in sub.choices.items():
        what = next((a for a in p._actions if a.dest == "what"), None)
        out += [f"{name} {w}" for w in what.choices] if what is not None else [name]
    return out


def test_the_docstring_names_every_command():
    listed = {line.split()[1] + (" " + line.split()[2] if line.split()[1] == "bench" else "")
              for line in cli.__doc__.splitlines() if line.strip().startswith("eucalab ")}
    assert sorted(listed) == sorted(_commands())
