"""Command-line interface: ``dualteacher <command> ...`` (also ``python -m dualteacher``).

A dispatcher: each command's options and code are in ``commands/<verb>.py``; this module
builds the parser from them and turns errors into one line and an exit status."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback

from dualteacher import __version__
from dualteacher.commands import COMMANDS
from dualteacher.commands._options import check_out_folders
from dualteacher.errors import INPUT_EXIT, DualTeacherError

# the Dual Teacher checkpoint `dualteacher demo` writes (seed 0), named in the examples
DEMO_CHECKPOINT = "runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt"
EPILOG = f"""examples:
  dualteacher demo                                   supervised vs. Dual Teacher on demo data
  dualteacher train configs/demo.yaml train.steps=200
  dualteacher eval {DEMO_CHECKPOINT} --models all      (written by demo)
  dualteacher check configs/demo.yaml data.name=folder data.root=my_data
  dualteacher eval {DEMO_CHECKPOINT} --report runs/report
  dualteacher predict {DEMO_CHECKPOINT} photos/ --out runs/pred
  dualteacher export {DEMO_CHECKPOINT} --out exported --format safetensors,onnx
  dualteacher predict exported photos/ --out runs/pred --runtime onnx
  dualteacher compare demo --methods supervised,mean_teacher,dual_teacher --seeds 3
  dualteacher suggest {DEMO_CHECKPOINT} --top 20 --out runs/next
  dualteacher pseudolabel best.pt --images my_data/unlabeled --out runs/pseudo --conf 0.9
  dualteacher configs                                list the built-in configs
  dualteacher upgrade-checkpoint old.pt --trust      convert your checkpoint of an older version
  dualteacher models                                 registered models and their sizes
  dualteacher bench --model segformer-b1 --crop 512 --batch 2 --method dual_teacher
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualteacher",
        description="Semi-supervised semantic segmentation with Dual Teacher and its baselines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dualteacher {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _close_progress_bars() -> None:
    """End every open tqdm bar, so that an error starts on a line of its own: a bar written to
    a file (stderr redirected) has no newline after its last update."""
    if "tqdm" in sys.modules:  # only when a command loaded it (importing it here would not)
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


# OS errors that are the user's environment, not a bug: reported in one line.
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option, so overrides (or inputs)
    # given after an option (train CONFIG --out DIR key=value) come back as extras: hand them
    # to that list, in order.
    target = next((n for n in ("overrides", "inputs") if hasattr(args, n)), None)
    if extra:
        unknown = [a for a in extra if a.startswith("-")] if target else extra
        if unknown:
            parser.error(
                f"unrecognized argument(s) for '{args.command}': {' '.join(unknown)} "
                f"(`dualteacher {args.command} --help` lists the options)"
            )
        getattr(args, target).extend(extra)
    try:
        check_out_folders(args)
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # commands that never load torch skip this
            # Here, not at the top: it loads torch, which the light commands never need.
            from dualteacher.engine.distributed import shutdown

            shutdown()  # torchrun: leave the process group together
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except DualTeacherError as e:
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"{e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # `dualteacher ... | head`: the reader has gone. Silence the final flush of stdout
        # (Python would print another traceback for it) and exit as a SIGPIPE-killed
        # command does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"error: {where}{e.strerror}. Free disk space or fix the permissions, then run "
            "the command again (a training run resumes from its last checkpoint).",
            file=sys.stderr,
        )
        sys.exit(INPUT_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
