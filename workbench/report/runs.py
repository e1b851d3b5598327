"""The runs behind a claim: one `python -m workbench.train` job per (arm, seed), found again in MLflow by tag.

A job is tagged ``claim``, ``claim_arm`` and ``claim_key`` (run_identity: a hash of the resolved method, model, task,
trainer and seed). A FINISHED main run with the same key is reused, so a report command fills in only the missing
runs, and a changed config (or a micro run) never passes for another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workbench import ROOT
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from workbench.config import validate
from workbench.errors import ConfigError
from workbench.report.claim import Arm, Claim, compose_run, run_identity


JOB_WALL = "claim/job_wall_s"  # a job's whole wall time (its SFT base, data generation, start-up), logged on its run


@dataclass
class Job:
    arm: Arm
    seed: int
    overrides: list[str]
    key: str
    experiment: str
    run: object | None = None  # the MLflow run once found or finished
    seconds: float | None = None
    error: str | None = None
    reused: bool = False
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arm.id}-s{self.seed}"


def plan(claim: Claim, seeds: list[int], extra: list[str]) -> list[Job]:
    """Compose and validate every job before any runs: a bad arm fails in a second, naming its field."""
    jobs = []
    for arm in claim.arms:
        for seed in seeds:
            overrides = [*arm.overrides, *extra, f"seed={seed}"]
            try:
                cfg = compose_run(claim.name, overrides)
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(f"claims/{claim.name}: arm {arm.id}", str(e).strip().splitlines()[0],
                                  "fix the override (python -m workbench.train experiment=claims/<claim> ... shows the same error)") from None
            validate(cfg)
            jobs.append(Job(arm, seed, overrides, run_identity(cfg, arm.id), cfg.logger.experiment_name))
    return jobs


def finished_run(client, experiment_id: str, claim: str, key: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.claim = '{claim}' and tags.claim_key = '{key}' "
                              "and attributes.status = 'FINISHED' and tags.`workbench.stage` = 'main'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def run_all(claim: Claim, jobs: list[Job], uri: str, workers: int, out_dir: Path, rerun: bool = False) -> None:
    """Reuse finished runs, run the rest (``workers`` at a time, one torch thread each when > 1), print progress."""
    import mlflow

    from workbench.stores import ensure_experiment

    client = mlflow.MlflowClient(uri)
    experiment_id = ensure_experiment(uri, jobs[0].experiment)
    todo = []
    for job in jobs:
        job.run = None if rerun else finished_run(client, experiment_id, claim.name, job.key)
        job.reused = job.run is not None
        if job.run is None:
            todo.append(job)
    print(f"claim {claim.name}: {len(jobs)} runs, {len(jobs) - len(todo)} reused from {uri}, {len(todo)} to run"
          + (f" ({workers} at a time)" if todo and workers > 1 else ""), flush=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    done = [0]

    def one(job: Job) -> None:
        run_dir = out_dir / claim.name / f"{job.name}-{job.key[:8]}"
        cmd = [sys.executable, "-m", claim.entry, f"experiment=claims/{claim.name}", *job.overrides,
               f"++logger.tags.claim={claim.name}", f"++logger.tags.claim_arm={job.arm.id}", f"++logger.tags.claim_key={job.key}",
               "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
        if workers > 1:
            cmd.append("trainer.num_threads=1")
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        job.seconds = time.perf_counter() - started
        if proc.returncode == 0:
            job.run = finished_run(client, experiment_id, claim.name, job.key)
            if job.run is not None:  # so a report from reused runs counts the same minutes as the first one
                client.log_metric(job.run.info.run_id, JOB_WALL, job.seconds)
        if job.run is None:
            lines = proc.stderr.strip().splitlines()
            job.error = (lines[-1] if lines else f"exit code {proc.returncode}")[:300]
        done[0] += 1
        outcome = "ok" if job.error is None else f"FAILED: {job.error}"
        print(f"[{done[0]}/{len(todo)}] {job.name} {outcome} in {job.seconds:.0f} s", flush=True)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, todo))
    else:
        for job in todo:
            one(job)
    for job in jobs:
        if job.run is not None:
            job.metrics = dict(job.run.data.metrics)


def curve(uri: str, job: Job, metric: str) -> list[tuple[int, float]]:
    import mlflow

    history = mlflow.MlflowClient(uri).get_metric_history(job.run.info.run_id, metric)
    return sorted((m.step, m.value) for m in history)
