"""``dualteacher configs``: the built-in configs, one line each."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import add_command
from dualteacher.config import builtin_config_dir


def add_parser(sub) -> None:
    p = add_command(sub, "configs", "list the built-in configs", "dualteacher configs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    paths = sorted(builtin_config_dir().glob("*.yaml"))
    width = max((len(p.stem) for p in paths), default=0) + 2  # names never run into the text
    for path in paths:
        first = next(
            (ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")),
            "",
        )
        print(f"{path.stem:<{width}}{first}")
    print(f"\n(in {builtin_config_dir()}; use a name or a path: dualteacher train demo)")
