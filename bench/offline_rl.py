"""CORL-style table of the offline RL methods on the Pendulum datasets -> reports/offline_rl.md (+ a PNG of curves).

    python bench/offline_rl.py                                   # 6 methods x 6 datasets x 3 seeds, 2 jobs at a time
    python bench/offline_rl.py --methods bc iql --tasks pendulum_expert --seeds 0
    python bench/offline_rl.py --db sqlite:///path/mlflow.db     # only aggregate the finished runs of an earlier call

Each job is `python -m workbench.train method=<m> task=<t> seed=<s> trainer.num_threads=1` with the method's
default config (its step budget and evaluation interval are in the table). The five generated datasets
(pendulum_random ... pendulum_medium_expert) are built once, before the jobs, by the D4RL-style generator into the
scratch cache; pendulum_expert is the shipped imitation expert data.

Scores are D4RL normalized scores (the dataset's random-policy return = 0, its expert return = 100) over
task.eval_episodes deterministic episodes: *last* is the final evaluation during training, *best* the maximum over the
run's evaluations (CORL reports both), as mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from jobs import finished_main_runs, loadavg, machine_info, train_jobs  # bench/jobs.py

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["bc", "td3_bc", "iql", "cql", "awac", "prdc"]
TASKS = ["pendulum_random", "pendulum_medium", "pendulum_medium_replay", "pendulum_sac_expert", "pendulum_medium_expert",
         "pendulum_expert"]


def existing(names: list[str], group: str) -> list[str]:
    return [n for n in names if (ROOT / "conf" / group / f"{n}.yaml").is_file()]


def build_datasets(tasks: list[str], cache: Path) -> None:
    """Compose each task and build it, so generated datasets exist before parallel jobs look for them."""
    import os

    from hydra import compose, initialize_config_dir

    import importlib

    importlib.import_module("workbench.config")  # registers the config resolvers (${workbench_root:})
    from workbench.tasks import build_task

    os.environ["WORKBENCH_CACHE"] = str(cache)
    for task in tasks:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["method=bc", f"task={task}", "hydra.runtime.output_dir=/tmp"])
        print(f"dataset {task} ...", flush=True)
        build_task(cfg.task)


def collect(uri: str) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    rows = []
    for r in finished_main_runs(uri):
        if r.data.tags.get("workbench.family") != "offline_rl":
            continue
        m, p = r.data.metrics, r.data.params
        curve = [(h.step, h.value) for h in client.get_metric_history(r.info.run_id, "val/normalized_score")]
        rows.append({"method": p["method.name"], "task": p["task.name"], "seed": int(p["seed"]),
                     "steps": int(p["trainer.max_steps"]), "every": int(p["trainer.val_check_interval"]),
                     "last": curve[-1][1] if curve else float("nan"), "best": m.get("val/best_normalized_score", float("nan")),
                     "test": m.get("test/normalized_score", float("nan")), "wall": m.get("run/wall_time_s", float("nan")),
                     "offline_end": m.get("offline_end/normalized_score"),
                     "curve": curve})
    return rows


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def plot(rows: list[dict], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted({r["task"] for r in rows}, key=lambda t: TASKS.index(t) if t in TASKS else 99)
    if not tasks:
        return None
    cols = min(3, len(tasks))
    fig, axes = plt.subplots((len(tasks) + cols - 1) // cols, cols, figsize=(5 * cols, 3.6 * ((len(tasks) + cols - 1) // cols)),
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        by_method = defaultdict(list)
        for r in rows:
            if r["task"] == task and r["curve"]:
                by_method[r["method"]].append(r["curve"])
        for method, curves in sorted(by_method.items()):
            n = min(len(c) for c in curves)
            steps = [s for s, _ in curves[0][:n]]
            values = np.array([[v for _, v in c[:n]] for c in curves])
            ax.plot(steps, values.mean(0), label=f"{method} ({len(curves)})")
            if len(curves) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15)
        ax.axhline(100, color="grey", lw=0.5, ls="--")
        ax.set_title(task)
        ax.set_xlabel("updates")
        ax.set_ylabel("normalized score")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: list[dict], argv: list[str], out: Path, wall_total: float | None,
                 title: str = "Offline RL on Pendulum-v1 datasets (CORL-style table)") -> str:
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)] + sorted({r["method"] for r in rows} - set(METHODS))
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)] + sorted({r["task"] for r in rows} - set(TASKS))
    cell = defaultdict(list)
    for r in rows:
        cell[(r["task"], r["method"])].append(r)
    info = machine_info()
    lines = [
        f"# {title}",
        "",
        "Generated by `python bench/offline_rl.py " + shlex.join(argv) + "`"
        + (f" in {wall_total / 60:.0f} min" if wall_total else "") + f" on {info['cpus']} CPU cores "
        f"(torch {info['torch']}, jobs at 1 thread each; load average at the end {loadavg()}).",
        "D4RL normalized score: the dataset's random-policy return = 0, its expert return = 100 (reference returns stored "
        "in each dataset's meta.json). Mean ± std over seeds; each cell's seed count is in the last table. "
        "`pendulum_expert` is the shipped imitation expert data; the others are generated by "
        "`python -m workbench.tasks.control.generate` (SAC on Pendulum; see the README).",
    ]
    for title, key in (("Last", "last"), ("Best", "best"), ("Held-out (fresh evaluation seeds, after training)", "test")):
        lines += ["", f"## {title} normalized score", "", "| dataset | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * len(methods)]
        totals = defaultdict(list)
        for t in tasks:
            cells = []
            for m in methods:
                values = [r[key] for r in cell[(t, m)]]
                if values:
                    totals[m].append(statistics.mean(values))
                cells.append(mean_std(values))
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("| **average** | " + " | ".join(f"{statistics.mean(totals[m]):.1f}" if totals[m] else "–" for m in methods) + " |")
    switched = [r for r in rows if r["offline_end"] is not None]
    if switched:
        lines += ["", "## Offline-to-online: held-out score at the switch -> after online fine-tuning", "",
                  "| dataset | method | seeds | at the switch | after | change |", "|---|---|---|---|---|---|"]
        for t in tasks:
            for m in methods:
                rs = [r for r in cell[(t, m)] if r["offline_end"] is not None]
                if rs:
                    lines.append(f"| {t} | {m} | {len(rs)} | {mean_std([r['offline_end'] for r in rs])} | "
                                 f"{mean_std([r['test'] for r in rs])} | {mean_std([r['test'] - r['offline_end'] for r in rs])} |")
    lines += ["", "## Budget per run", "", "| method | updates | eval every | seeds per cell | wall per run (s, median) |",
              "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        seeds = sorted({len(cell[(t, m)]) for t in tasks if cell[(t, m)]})
        lines.append(f"| {m} | {rs[0]['steps']} | {rs[0]['every']} | {'/'.join(map(str, seeds))} | "
                     f"{statistics.median(r['wall'] for r in rs):.0f} |")
    png = plot(rows, out)
    if png:
        lines += ["", f"![validation normalized score vs updates, mean over seeds, band = min..max]({png.name})"]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main() -> None:
    import time

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time (each at 1 thread)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every job")
    parser.add_argument("--db", help="aggregate the finished runs in this tracking URI instead of running")
    parser.add_argument("--scratch", type=Path, help="working folder (reuse one to add runs to an earlier table)")
    parser.add_argument("--title", default="Offline RL on Pendulum-v1 datasets (CORL-style table)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "offline_rl.md")
    args = parser.parse_args()
    started = time.time()
    if args.db:
        uri = args.db
    else:
        missing = [n for n in args.methods if n not in existing(args.methods, "method")] + \
                  [n for n in args.tasks if n not in existing(args.tasks, "task")]
        if missing:
            sys.exit(f"unknown methods/tasks: {missing} (see conf/method, conf/task)")
        scratch = args.scratch or Path(tempfile.mkdtemp(prefix="workbench-offline-rl-"))
        scratch.mkdir(parents=True, exist_ok=True)
        build_datasets(args.tasks, scratch / "cache")
        jobs = [(f"{m}-{t}-s{s}", [f"method={m}", f"task={t}", f"seed={s}", "trainer.num_threads=1", *args.overrides])
                for s in args.seeds for t in args.tasks for m in args.methods]
        uri = train_jobs(jobs, scratch, workers=args.workers)
    rows = collect(uri)
    if not rows:
        sys.exit(f"no finished control runs in {uri}")
    print(write_report(rows, sys.argv[1:], args.out, None if args.db else time.time() - started, args.title))


if __name__ == "__main__":
    main()
