"""python -m workbench.report <claim> [--workers N] [--seeds 0 1 2] [--micro] [--rerun] [--out reports]

Runs the claim's missing runs (reusing finished ones from MLflow by tag), aggregates them over seeds, computes the
verdict by the stated rule and writes reports/<claim>.md + .png, then refreshes the index reports/README.md.
`--list` names the claims; `--micro` is the CI smoke version (its own runs, a report marked as not a result).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.stores import sqlite_path


def main(argv: list[str] | None = None) -> int:
    from workbench.report.claim import available, load
    from workbench.report.runs import plan, run_all
    from workbench.report.write import write, write_index

    parser = argparse.ArgumentParser(prog="python -m workbench.report", description=__doc__.splitlines()[2])
    parser.add_argument("claim", nargs="?", help=f"one of: {', '.join(available())}")
    parser.add_argument("--list", action="store_true", help="list the claims and exit")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (each on one torch thread when > 1)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the claim's seeds")
    parser.add_argument("--micro", action="store_true", help="the CI micro version: a few steps per run, not a result")
    parser.add_argument("--rerun", action="store_true", help="run every job again instead of reusing finished runs")
    parser.add_argument("--out", type=Path, help="where the report goes (default reports/, or outputs/claims-micro with --micro)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="MLflow store the runs are logged to and reused from (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "claims", help="where the jobs' run directories go")
    parser.add_argument("overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.list or not args.claim:
        for name in available():
            print(f"{name:28s} {load(name).title}")
        return 0
    started = time.perf_counter()
    try:
        if args.workers < 1:
            raise ConfigError("--workers", f"must be >= 1, got {args.workers}", "e.g. --workers 2")
        claim = load(args.claim)
        seeds = args.seeds or list(claim.micro_seeds if args.micro else claim.seeds)
        extra_overrides = [*(claim.micro if args.micro else ()), *args.overrides, *extra]
        jobs = plan(claim, seeds, extra_overrides)
    except ConfigError as e:
        print(f"workbench.report: error: {e}", file=sys.stderr)
        return 2
    out = args.out or (ROOT / "outputs" / "claims-micro" if args.micro else ROOT / "reports")
    uri = args.tracking_uri
    if sqlite_path(uri) is not None:
        uri = f"sqlite:///{sqlite_path(uri)}"  # absolute: the jobs run from the repo root
    run_all(claim, jobs, uri, args.workers, args.runs_dir, rerun=args.rerun)
    command = "python -m workbench.report " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    path, verdict = write(claim, jobs, uri, out, command, args.micro, time.perf_counter() - started)
    print(f"{claim.name}: {verdict} -> {path}")
    if not args.micro and out.resolve() == (ROOT / "reports").resolve():
        print(f"index: {write_index(out)}")
    return 1 if any(j.error for j in jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
