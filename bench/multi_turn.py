"""Multi-turn comparisons over seeds -> reports/multi_turn_<study>.md (+ .png of the validation curves).

    python bench/multi_turn.py gigpo_vs_grpo                 # GiGPO vs multi-turn GRPO on the gridworld, seeds 0-2
    python bench/multi_turn.py vineppo_vs_ppo                # VinePPO vs PPO-GAE on arithmetic, seeds 0-2
    python bench/multi_turn.py methods                       # every multi-turn method on its environment, seed 0
    python bench/multi_turn.py gigpo_vs_grpo --seeds 0 --workers 2 --overrides method.max_steps=50
    python bench/multi_turn.py gigpo_vs_grpo --db sqlite:///scratch/mlflow.db   # only aggregate finished runs
    python bench/multi_turn.py methods --only ppo_gae poad --scratch /tmp/ppo  # a subset of a study's methods

Each job is `python -m workbench.train method=<m> task=<t> seed=<s> [study overrides] [--overrides]`. The methods
of one seed start from the same cached SFT base (same model, task and base config), so "before" is the same number
for both sides of a seed and the change is the method's. Success rate is greedy episodes on the task's held-out
test seeds (for arithmetic: exact-match accuracy, a one-turn episode).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from jobs import finished_main_runs, loadavg, machine_info, train_jobs, write_report_lines  # bench/jobs.py

ROOT = Path(__file__).resolve().parent.parent

# both arms on arithmetic: the default experiment's 600-step SFT base (the same cached base as method=grpo), the
# same learning rate, 100 rollout steps (2 PPO epochs each: 200 optimizer steps)
ARITHMETIC = ["method.base.max_steps=600", "method.lr=2e-4", "method.max_steps=200", "method.val_check_interval=50",
              "method.batch_size=16"]
LARGE = [*ARITHMETIC, "method.batch_size=64"]  # 4x the episodes per step (the later override wins)

# study -> (title, [(label, method, task, overrides)], default seeds)
STUDIES = {
    "gigpo_vs_grpo": (
        "GiGPO vs multi-turn GRPO on the text gridworld",
        [("GiGPO (omega 1)", "gigpo", "gridworld", []), ("GRPO (omega 0)", "grpo_multi_turn", "gridworld", [])],
        [0, 1, 2],
    ),
    "vineppo_vs_ppo": (
        "VinePPO vs PPO-GAE on arithmetic",
        [("VinePPO (MC values, token steps)", "vineppo", "arithmetic", ["method.step_split=token", *ARITHMETIC]),
         ("PPO-GAE (learned critic)", "ppo_gae", "arithmetic", ARITHMETIC)],
        [0, 1, 2],
    ),
    "vineppo_vs_ppo_large": (
        "VinePPO vs PPO-GAE on arithmetic, 4x larger batches (64 prompts x 2 samples per step)",
        [("VinePPO (MC values, token steps)", "vineppo", "arithmetic", ["method.step_split=token", *LARGE]),
         ("PPO-GAE (learned critic)", "ppo_gae", "arithmetic", LARGE)],
        [0],
    ),
    "methods": (
        "Every other multi-turn method on its environment (GiGPO / GRPO on the gridworld: multi_turn_gigpo_vs_grpo.md)",
        [("PPO-GAE", "ppo_gae", "gridworld", []), ("POAD", "poad", "gridworld", []),
         ("MA-RLHF", "ma_rlhf", "gridworld", []), ("VinePPO", "vineppo", "gridworld", []),
         ("PURE", "pure", "gridworld", []), ("step-level DAPO", "dapo_step", "gridworld", []),
         ("ArCHer", "archer", "gridworld", []), ("ArCHer", "archer", "guess_number", []),
         ("GiGPO", "gigpo", "guess_number", []),
         # copying a 4-digit tool result is not learned in 100 SFT steps (greedy success 0.075): a 600-step base
         ("GiGPO (600-step SFT base)", "gigpo", "calculator", ["method.base.max_steps=600"])],
        [0],
    ),
}


def jobs_for(study: str, seeds: list[int], extra: list[str], only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    _, arms, _ = STUDIES[study]
    arms = [arm for arm in arms if not only or arm[1] in only]
    return [(f"{method}-{task}-s{seed}", [f"method={method}", f"task={task}", f"seed={seed}", "trainer.num_threads=1",
                                          *overrides, *extra])
            for seed in seeds for _, method, task, overrides in arms]


def collect(uri: str) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    rows = []
    for r in finished_main_runs(uri):
        m, p = r.data.metrics, r.data.params
        if "test/success_rate" not in m:
            continue
        curve = sorted(client.get_metric_history(r.info.run_id, "val/success_rate"), key=lambda x: x.step)
        rows.append({"method": p["method.name"], "task": p["task.name"], "seed": int(p["seed"]),
                     "step_split": p.get("method.step_split"), "before": m.get("test_before/success_rate"),
                     "after": m["test/success_rate"], "turns": m.get("test/turns"), "wall": m["run/wall_time_s"],
                     "steps": int(p["trainer.max_steps"]), "curve": [(x.step, x.value) for x in curve]})
    return rows


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_report(study: str, rows: list[dict], extra: list[str], out: Path, notes: str | None = None,
                 ran_here: bool = True) -> str:
    title, arms, _ = STUDIES[study]
    where = (f" on {machine_info()['cpus']} CPU cores (load average at the end: {loadavg()})." if ran_here else
             " (jobs run by that command; this file re-aggregated from their MLflow stores with `--db`).")
    lines = [f"# {title}", "",
             f"Generated by `python bench/multi_turn.py {study}" + (" --overrides " + " ".join(extra) if extra else "") + "`"
             + where,
             "Success rate: greedy episodes on the task's held-out test seeds, before RL (the shared SFT base of that seed)",
             "and after. Each job ran alone on one thread (`trainer.num_threads=1`); wall time is the whole command.", "",
             "| method | task | seed | success before | success after | change | turns after | steps | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    labels = {(method, task): label for label, method, task, _ in arms}
    order = {(method, task): i for i, (_, method, task, _) in enumerate(arms)}
    picked = sorted([r for r in rows if (r["method"], r["task"]) in labels], key=lambda r: (order[(r["method"], r["task"])], r["seed"]))
    for r in picked:
        lines.append(f"| {labels[(r['method'], r['task'])]} | {r['task']} | {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | "
                     f"{r['after'] - r['before']:+.3f} | {r['turns']:.2f} | {r['steps']} | {r['wall']:.0f} |")
    lines += ["", "| method | task | seeds | success before | success after | change (mean ± std) | seeds improved |",
              "|---|---|---|---|---|---|---|"]
    for (method, task), label in labels.items():
        mine = [r for r in picked if (r["method"], r["task"]) == (method, task)]
        if not mine:
            continue
        changes = [r["after"] - r["before"] for r in mine]
        lines.append(f"| {label} | {task} | {len(mine)} | {_mean_std([r['before'] for r in mine])} | "
                     f"{_mean_std([r['after'] for r in mine])} | {_mean_std(changes)} | "
                     f"{sum(c > 0 for c in changes)} / {len(mine)} |")
    png = out.with_suffix(".png")
    if _plot(picked, labels, png):
        lines += ["", f"![validation success rate during training]({png.name})"]
    return write_report_lines(lines, out, notes)


def _plot(rows: list[dict], labels: dict, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {}
    for r in rows:
        key = (r["method"], r["task"])
        color = colors.setdefault(key, f"C{len(colors)}")
        steps = [s for s, _ in r["curve"]]  # validation split only (the "before" numbers are on the test split)
        values = [v for _, v in r["curve"]]
        ax.plot(steps, values, color=color, alpha=0.8, marker="o", label=labels[key] if r["seed"] == min(x["seed"] for x in rows if (x["method"], x["task"]) == key) else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation success rate (greedy)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every job")
    parser.add_argument("--workers", type=int, default=1, help="jobs at a time (each on one thread)")
    parser.add_argument("--scratch", type=Path, help="where runs and their MLflow store go (default: a temp dir)")
    parser.add_argument("--db", nargs="+", help="only aggregate the finished runs of these tracking URIs")
    parser.add_argument("--only", nargs="+", help="run only these methods of the study")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--notes", type=Path, help="a Markdown file appended to the report as its Notes section")
    args = parser.parse_args()
    out = args.out or ROOT / "reports" / f"multi_turn_{args.study}.md"
    if args.db:
        uris = args.db
    else:
        scratch = args.scratch or Path(tempfile.mkdtemp(prefix=f"multi_turn_{args.study}_"))
        scratch.mkdir(parents=True, exist_ok=True)
        seeds = args.seeds if args.seeds is not None else STUDIES[args.study][2]
        uris = [train_jobs(jobs_for(args.study, seeds, args.overrides, args.only), scratch, workers=args.workers)]
    notes = args.notes.read_text() if args.notes else None
    print(write_report(args.study, [row for uri in uris for row in collect(uri)], args.overrides, out, notes,
                       ran_here=not args.db))


if __name__ == "__main__":
    main()
