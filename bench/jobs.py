"""What the bench scripts share: run `python -m workbench.train` jobs one after another into one scratch MLflow store,
and describe the machine a measurement ran on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train_jobs(jobs: list[tuple[str, list[str]]], scratch: Path, workers: int = 1) -> str:
    """Run each (name, overrides) job, printing its outcome; return the tracking URI they logged to.

    Every job shares the scratch cache (SFT bases, generated control datasets), so jobs with the same base train it
    once. ``workers`` > 1 runs that many jobs at a time (give each job trainer.num_threads=1 so they do not fight).
    """
    from concurrent.futures import ThreadPoolExecutor

    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, WORKBENCH_CACHE=str(scratch / "cache"))

    def one(job: tuple[str, list[str]]) -> None:
        name, overrides = job
        if (scratch / name / "summary.json").is_file():
            print(f"{name} done earlier (skipped)", flush=True)  # re-running a command fills in only what is missing
            return
        started = time.perf_counter()
        if workers == 1:
            print(f"{name} ...", end=" ", flush=True)
        proc = subprocess.run([sys.executable, "-m", "workbench.train", *overrides, "trainer.progress_bar=false",
                               f"hydra.run.dir={scratch / name}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else str(proc.returncode)
        outcome = f"{'ok' if proc.returncode == 0 else f'FAILED ({last})'} in {time.perf_counter() - started:.0f} s"
        print(outcome if workers == 1 else f"{name} {outcome}", flush=True)

    if workers > 1:  # create the store once: parallel first jobs would race to create its tables
        import mlflow

        client = mlflow.MlflowClient(uri)
        if client.get_experiment_by_name("workbench") is None:
            client.create_experiment("workbench")
    if workers == 1:
        for job in jobs:
            one(job)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, jobs))
    return uri


def finished_main_runs(uri: str) -> list:
    """The FINISHED main runs in the store, oldest first (SFT bases, which are child runs, left out)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("workbench")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], order_by=["start_time ASC"])
    return [r for r in runs if r.data.tags.get("workbench.stage") == "main" and r.info.status == "FINISHED"]


def runs_with_curves(uri: str, required: str, curve: str):
    """(metrics, params, [(step, value)] of ``curve``) of each finished main run that logged ``required``."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    for r in finished_main_runs(uri):
        if required in r.data.metrics:
            history = sorted(client.get_metric_history(r.info.run_id, curve), key=lambda x: x.step)
            yield r.data.metrics, r.data.params, [(x.step, x.value) for x in history]


def machine_info() -> dict:
    import lightning
    import torch
    import transformers
    import trl

    return dict(cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__,
                lightning=lightning.__version__)


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_report_with_profiles(lines: list[str], results: list[dict], out: Path, notes: str | None = None) -> str:
    """Append each setting's torch.profiler tables (and hand notes) to a report's lines and write it."""
    for setting, tables in [(r["setting"], r["profile"]) for r in results if r.get("profile")]:
        lines += ["", f"## torch.profiler, one step each, setting {setting} (top ops by self CPU time)", ""]
        for side, table in tables.items():
            lines += [f"### {side}", "", "```", table.rstrip(), "```", ""]
    return write_report_lines(lines, out, notes)


def write_report_lines(lines: list[str], out: Path, notes: str | None = None) -> str:
    """Write a report's lines (and a Notes section from hand-written Markdown) to ``out``; return the text."""
    if notes:
        lines = [*lines, "", "## Notes", "", notes.rstrip()]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


# ---- seeded studies: arms x seeds of `workbench.train` jobs, then a report from their MLflow store ----------------
def study_jobs(arms: list[tuple], seeds: list[int], extra: list[str], only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(name, overrides) per (arm, seed) of the arms ``(label, method, task, overrides)``, ``only`` filtering methods.

    Arm-major order: the first method of every seed comes first, so with parallel workers each seed's SFT warm start
    is trained once, before the other methods of that seed start (two jobs of one seed at once would both train it).
    """
    arms = [arm for arm in arms if not only or arm[1] in only]
    arms_of = Counter((method, task) for _, method, task, _ in arms)

    def name(i, method, task, seed):  # arms of one method and task (differing by overrides) get their index too
        return f"{method}-{task}-a{i}-s{seed}" if arms_of[method, task] > 1 else f"{method}-{task}-s{seed}"

    return [(name(i, method, task, seed), [f"method={method}", f"task={task}", f"seed={seed}", "trainer.num_threads=1",
                                           *overrides, *extra])
            for i, (_, method, task, overrides) in enumerate(arms) for seed in seeds]


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    import statistics

    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def study_main(doc: str, studies: dict, report_prefix: str, collect, write_report) -> None:
    """The command line of a study script: run the jobs of ``studies[study]`` (or only aggregate ``--db`` stores),
    then ``write_report(study, rows, overrides, out, notes, ran_here)`` to reports/<report_prefix><study>.md."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(studies))
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every job")
    parser.add_argument("--workers", type=int, default=1, help="jobs at a time (each on one thread)")
    parser.add_argument("--scratch", type=Path, help="where runs and their MLflow store go (default: a temp dir)")
    parser.add_argument("--db", nargs="+", help="only aggregate the finished runs of these tracking URIs")
    parser.add_argument("--only", nargs="+", help="run only these methods of the study")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--notes", type=Path, help="a Markdown file appended to the report as its Notes section")
    args = parser.parse_args()
    out = args.out or ROOT / "reports" / f"{report_prefix}{args.study}.md"
    if args.db:
        uris = args.db
    else:
        scratch = args.scratch or Path(tempfile.mkdtemp(prefix=f"{report_prefix}{args.study}_"))
        scratch.mkdir(parents=True, exist_ok=True)
        _, arms, default_seeds = studies[args.study]
        seeds = args.seeds if args.seeds is not None else default_seeds
        uris = [train_jobs(study_jobs(arms, seeds, args.overrides, args.only), scratch, workers=args.workers)]
    notes = args.notes.read_text() if args.notes else None
    print(write_report(args.study, [row for uri in uris for row in collect(uri)], args.overrides, out, notes,
                       ran_here=not args.db))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed (no plot then)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, png: Path) -> None:
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
