"""``dualteacher models [NAME ...]``: the registered models and their sizes."""

from __future__ import annotations

import argparse
import json

from dualteacher.commands._options import COUNT, add_command
from dualteacher.errors import ConfigError


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "models",
        "list the registered models with their parameter counts",
        "dualteacher models segformer-b1 dpt-dinov2-s --classes 150",
    )
    p.add_argument("names", nargs="*", help="models to list (default: all)")
    p.add_argument("--classes", type=COUNT, default=21, help="number of classes (default 21)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.models import MODELS, list_models

    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}. Available: {', '.join(MODELS)}")
    rows = list_models(args.classes, names=args.names or None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<20} {'params (M)':>10}  {'pad to':>6}  description")
    for r in rows:
        print(f"{r['name']:<20} {r['params_m']:>10.1f}  {r['size_divisor']:>6}  {r['description']}")
    print(f"(parameters for {args.classes} classes; inputs are padded to multiples of 'pad to')")
