"""What the bench scripts share: run `python -m workbench.train` jobs one after another into one scratch MLflow store,
and describe the machine a measurement ran on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
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
