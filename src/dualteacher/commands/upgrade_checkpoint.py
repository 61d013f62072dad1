"""``dualteacher upgrade-checkpoint FILE --trust``: an older checkpoint rewritten in the safe
format (see ``dualteacher.checkpoint``)."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import add_command
from dualteacher.errors import CheckpointError


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "upgrade-checkpoint",
        "rewrite a checkpoint you trust, made by an older dualteacher, in the safe format "
        "(tensors, numbers and strings only)",
        "dualteacher upgrade-checkpoint runs/old/best.pt --trust --out runs/old/best_v2.pt",
    )
    p.add_argument("checkpoint", help="the .pt file to convert")
    p.add_argument(
        "--trust",
        action="store_true",
        help="unpickle the file with weights_only=False, which runs any code it holds: "
        "only for files you made yourself",
    )
    p.add_argument("--out", help="where to write the converted file (default: in place)")
    p.set_defaults(func=run, out_is_file=True)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.checkpoint import load_checkpoint, trust_upgrade

    if not args.trust:
        try:
            load_checkpoint(args.checkpoint)  # safe: refuses a file that needs unpickling code
        except CheckpointError as e:
            raise CheckpointError(
                f"{e} (this command converts it only with --trust, which runs the file's "
                "code: give it only for a file you made yourself)"
            ) from None
        print(f"{args.checkpoint} already loads safely; nothing to do")
        return
    written = trust_upgrade(args.checkpoint, args.out)
    load_checkpoint(written)  # the converted file must now pass the safe loader
    print(f"wrote {written}: loads with weights_only=True")
