"""python -m workbench.sweep.summary --study NAME [--storage URL] [--out reports/sweeps]

Writes ``<out>/<study>.md`` (best trial and the command that reruns it, parameter importances, every trial)
and ``<out>/<study>_history.png`` (objective per trial and the best so far), plus
``<out>/<study>_importance.png`` once two trials have completed.
"""

from __future__ import annotations

import argparse
import math
import shlex
import os
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from workbench import ROOT
from workbench.sweep.space import trial_overrides
from workbench.sweep.study import absolute_storage, best_trial

DEFAULT_STORAGE = "sqlite:///optuna.db"


def importances(study: optuna.Study) -> dict[str, float] | str:
    """fANOVA importances of the parameters, or why there are none yet."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2:
        return f"needs 2 complete trials, has {len(complete)}"
    if len({t.value for t in complete}) < 2:
        return "every complete trial has the same objective value"
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as e:
        return f"not computable ({e})"


def rerun_command(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """The run of the trial's first seed (its other seeds: change ``seed=``)."""
    seeds = study.user_attrs.get("seeds") or [0]
    parts = [*study.user_attrs.get("fixed_overrides", []), *trial_overrides(trial.params), f"seed={seeds[0]}"]
    return " ".join(["python -m workbench.train", *(shlex.quote(p) for p in parts)])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def history_plot(study: optuna.Study, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False)
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue", zorder=3)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="tab:gray", label="pruned (last reported value)", zorder=3)
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = t.value if best is None else better(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    ax.set_xlabel(f"trial ({len(failed)} failed, not shown)" if failed else "trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: optimization history ({study.direction.name.lower()})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def importance_plot(values: dict[str, float], path: Path, study_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set_xlabel("fANOVA importance (sums to 1)")
    ax.set_title(f"{study_name}: parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(study: optuna.Study, out: Path, storage: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    metric = study.user_attrs.get("metric", "objective")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    lines = [
        f"# Sweep `{study.study_name}`",
        "",
        f"Written by `python -m workbench.sweep.summary --study {study.study_name}` from `{storage}`.",
        "",
        f"- objective: `{metric}`, {study.direction.name.lower()}d; mean over "
        f"{study.user_attrs.get('seeds_per_trial', 1)} seed(s) per trial",
        f"- trials: {len(trials)} (" + ", ".join(f"{n} {k}" for k, n in counts.items()) + ")",
        f"- search space: " + ", ".join(f"`{k}` {v}" for k, v in study.user_attrs.get("space", {}).items()),
        "",
    ]
    best = best_trial(study)
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        lines += [
            "## Best trial",
            "",
            f"Trial {best.number}: **{metric} = {best.value:.4g}**"
            + (f" (seeds: {', '.join(_fmt(v) for v in best.user_attrs['seed_values'].values())})" if best.user_attrs.get("seed_values") else ""),
            "",
            "| parameter | value |",
            "|---|---|",
            *[f"| `{k}` | {_fmt(v)} |" for k, v in best.params.items()],
            "",
            f"MLflow run: `{best.user_attrs.get('mlflow_run_id', '?')}` (tag `optuna.best=true`). Rerun it:",
            "",
            "```",
            rerun_command(study, best),
            "```",
            "",
        ]
    imp = importances(study)
    lines += ["## Parameter importance", ""]
    if isinstance(imp, str):
        lines += [f"Not computed: {imp}.", ""]
    else:
        lines += ["fANOVA (Optuna's default evaluator) over the complete trials.", "", "| parameter | importance |", "|---|---|",
                  *[f"| `{k}` | {v:.3f} |" for k, v in imp.items()], "", f"![importance]({study.study_name}_importance.png)", ""]
        importance_plot(imp, out / f"{study.study_name}_importance.png", study.study_name)
    history_plot(study, out / f"{study.study_name}_history.png", metric)
    lines += ["## Optimization history", "", f"![history]({study.study_name}_history.png)", "", "## Trials", "",
              "| trial | state | " + metric + " | " + " | ".join(f"`{k}`" for k in study.user_attrs.get("space", {})) + " | note |",
              "|---|---|---|" + "---|" * len(study.user_attrs.get("space", {})) + "---|"]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = lambda t: t.state == TrialState.COMPLETE and t.value is not None
    ordered = sorted(trials, key=lambda t: (not complete(t), -(t.value or 0) if reverse else (t.value or 0), t.number))
    for t in ordered:
        monitor = study.user_attrs.get("monitor") or "reported value"
        last = max(t.intermediate_values) if t.intermediate_values else None
        note = ("interrupted, queued again" if t.user_attrs.get("interrupted") else
                f"pruned at step {last} ({monitor} = {_fmt(t.intermediate_values[last])})"
                if t.state == TrialState.PRUNED and last is not None else t.user_attrs.get("error", "")[:160])
        # Optuna stores a pruned trial's last reported value as its value: not the objective, so not in its column
        value = _fmt(t.value) if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value) else ""
        params = " | ".join(_fmt(t.params.get(k, "")) for k in study.user_attrs.get("space", {}))
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {params} | {note.replace('|', '/')} |")
    path = out / f"{study.study_name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.sweep.summary", description=__doc__.split("\n\n")[1])
    parser.add_argument("--study", help="study name (default: the only study in the storage)")
    parser.add_argument("--storage", default=os.environ.get("WORKBENCH_OPTUNA_STORAGE", DEFAULT_STORAGE),
                        help="SQLAlchemy URL of the study storage (default: $WORKBENCH_OPTUNA_STORAGE or sqlite:///optuna.db)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "sweeps"), help="folder for the .md and .png files")
    args = parser.parse_args(argv)
    storage = absolute_storage(args.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception as e:  # noqa: BLE001 - a bad URL or a missing driver: one line, not a traceback
        print(f"workbench: error: --storage: cannot read '{args.storage}' ({type(e).__name__}) -> "
              "give the URL the sweep used (hydra.sweeper.storage)", file=sys.stderr)
        return 2
    name = args.study or (names[0] if len(names) == 1 else None)
    if name not in names:
        print(f"workbench: error: --study: {'no study ' + repr(args.study) if args.study else 'several studies'} in "
              f"{args.storage} -> pick one of {names}", file=sys.stderr)
        return 2
    path = write_summary(optuna.load_study(study_name=name, storage=storage), Path(args.out), args.storage)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
