"""The table a run prints when it ends."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000   (or: make ui)"


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    m = summary["metrics"]
    table = Table(title=f"workbench: {summary['method']} on {summary['task']} ({summary['model']}, seed {summary['seed']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    before, after = m.get("test_before/accuracy"), m.get("test/accuracy")
    rows = [
        ("held-out accuracy before (greedy)", before),
        ("held-out accuracy after (greedy)", after),
        ("change", None if before is None or after is None else after - before),
        ("validation accuracy (last)", m.get("val/accuracy")),
        ("held-out pair reward accuracy before", m.get("test_before/reward_accuracy")),
        ("held-out pair reward accuracy after", m.get("test/reward_accuracy")),
        ("judge reward of samples before", m.get("test_before/judge_reward")),
        ("judge reward of samples after", m.get("test/judge_reward")),
        ("win rate vs reference (judge)", m.get("test/win_rate")),
        ("sampled KL to reference", m.get("test/kl")),
        ("normalized score before (random 0, expert 100)", m.get("test_before/normalized_score")),
        ("normalized score at the end of the offline phase", m.get("offline_end/normalized_score")),
        ("normalized score after", m.get("test/normalized_score")),
        ("held-out success rate before (greedy episodes)", m.get("test_before/success_rate")),
        ("held-out success rate after (greedy episodes)", m.get("test/success_rate")),
        ("return before (mean over episodes)", m.get("test_before/return")),
        ("return after (mean over episodes)", m.get("test/return")),
        ("turns per episode after", m.get("test/turns")),
        ("invalid actions after (share of turns)", m.get("test/invalid_frac")),
        ("best validation normalized score", m.get("val/best_normalized_score")),
        ("train reward (last step)", m.get("train/reward")),
        ("train loss (last step)", m.get("train/loss")),
        ("KL to reference (last step)", m.get("train/kl")),
        ("optimizer steps", int(m["steps"]) if "steps" in m else None),
        ("wall time (s)", m.get("wall_time_s")),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, _fmt(value))
    table.add_row("run directory", summary["run_dir"])
    table.add_row("MLflow run id", summary["mlflow_run_id"])
    console.print(table)
    console.print(f"MLflow UI: {ui_command(summary['tracking_uri'])}")
