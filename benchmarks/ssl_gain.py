"""The study behind docs/results.md's "do unlabelled images pay?" (``benchmarks/ssl_gain.sh``).

Every method on the same config, seeds and data, under two budgets:

1. **equal steps**: every method ``--steps`` optimizer steps (long enough that the curves have
   flattened: "to convergence");
2. **equal wall-clock**: every method as many steps as it can do in the time Dual Teacher
   needs for ``--steps``, from step times measured first by ``dualteacher bench`` on the real
   data loaders (one short, quiet timing per method). The step counts are fixed before any
   training, so the accuracy part of the study does not depend on how busy the machine is
   while it trains; only the timing phase needs a quiet machine. Supervised with Dual
   Teacher's time is supervised trained for about 3x the steps: its plateau.

Both budgets run through ``dualteacher compare`` with one folder of runs (``OUT/runs``), so
the Dual Teacher runs (the reference of the time budget) are trained once and shared. Writes
``OUT/ssl_gain.md`` (tables, paired differences against supervised, 95 % intervals),
``OUT/ssl_gain.json``, and each budget's ``summary.*`` and ``miou_vs_time.png`` in
``OUT/equal_steps/`` and ``OUT/equal_time/``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from dualteacher.config import load_config
from dualteacher.study.bench import bench
from dualteacher.study.compare import compare, format_markdown

METHODS = ["supervised", "mean_teacher", "fixmatch", "unimatch", "dual_teacher"]
REFERENCE = "dual_teacher"  # the time budget is this method's time for --steps


def step_seconds(cfg, methods: list[str], steps: int, warmup: int) -> dict[str, float]:
    """Mean seconds per training step of each method on the real loaders of ``cfg``."""
    out = {}
    for m in methods:
        run_cfg = replace(cfg, method=replace(cfg.method, name=m))
        r = bench(run_cfg, steps=steps, warmup=warmup, real_data=True)
        out[m] = r["step_seconds"]
        print(f"bench {m}: {out[m]:.3f} s/step")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--steps", type=int, default=1200, help="equal-steps budget per run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="runs/ssl_gain")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time (compare --jobs)")
    p.add_argument("--bench-steps", type=int, default=10)
    p.add_argument("--bench-warmup", type=int, default=3)
    p.add_argument(
        "--step-seconds",
        help="JSON {method: s/step} measured before (skips the timing phase), e.g. from a "
        "previous OUT/ssl_gain.json",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value for every run")
    args = p.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    methods = [m for m in args.methods.split(",") if m]
    if REFERENCE not in methods:
        raise SystemExit(f"--methods must include {REFERENCE} (the time budget's reference)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))

    if args.step_seconds:
        sec = {k: float(v) for k, v in json.loads(args.step_seconds).items()}
    else:
        print("timing phase (needs a quiet machine) ...")
        sec = step_seconds(cfg, methods, args.bench_steps, args.bench_warmup)
    (out / "step_seconds.json").write_text(json.dumps(sec, indent=2))

    # Equal wall-clock: each method's multiple of the step budget that takes Dual Teacher's time.
    mult = {m: sec[REFERENCE] / sec[m] for m in methods}
    time_specs = [m if m == REFERENCE else f"{m}:{mult[m]:.2f}x" for m in methods]

    # One folder of runs for both budgets: the reference runs are trained once.
    runs = out / "runs"
    steps_summary = compare(
        cfg, methods, out / "equal_steps", seeds, steps=args.steps, runs_dir=runs, jobs=args.jobs
    )
    time_summary = compare(
        cfg, time_specs, out / "equal_time", seeds, steps=args.steps, runs_dir=runs, jobs=args.jobs
    )

    budget_s = sec[REFERENCE] * args.steps
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "steps": args.steps,
        "seeds": seeds,
        "step_seconds": sec,
        "equal_time_seconds": budget_s,
        "equal_time_steps": {m: max(1, round(args.steps * mult[m])) for m in methods},
        "equal_steps": steps_summary,
        "equal_time": time_summary,
    }
    (out / "ssl_gain.json").write_text(json.dumps(result, indent=2))
    flags = f"--config {args.config} --steps {args.steps} --seeds {args.seeds} --out {args.out}"
    if args.jobs > 1:
        flags += f" --jobs {args.jobs}"
    command = " ".join(["bash benchmarks/ssl_gain.sh", flags, *args.overrides])
    timing = ", ".join(f"{m} {s:.3f}" for m, s in sec.items())
    md = [
        "# Do unlabelled images pay? (`benchmarks/ssl_gain.sh`)",
        "",
        f"Command: `{command}`.",
        "",
        f"Step times on the real loaders (s/step, `dualteacher bench --data`): {timing}.",
        f"Equal wall-clock = {REFERENCE}'s {args.steps} steps = {budget_s / 60:.1f} min of "
        "training per run; the other methods get the steps that fit in that time: "
        + ", ".join(f"{m} {result['equal_time_steps'][m]}" for m in methods)
        + ".",
        "",
        "## Equal steps",
        "",
        _body(format_markdown(steps_summary)),
        "## Equal wall-clock",
        "",
        _body(format_markdown(time_summary)),
    ]
    (out / "ssl_gain.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out / 'ssl_gain.md'} and {out / 'ssl_gain.json'}")
    return result


def _body(markdown: str) -> str:
    """A ``summary.md`` without its title, to nest under a section of ours."""
    lines = markdown.splitlines()
    return "\n".join(lines[2:] if lines and lines[0].startswith("# ") else lines) + "\n"


if __name__ == "__main__":
    main()
