"""reports/<claim>.md and .png from a claim's runs, and the index reports/README.md."""

from __future__ import annotations

import math
import os
import re
import statistics
from datetime import datetime
from pathlib import Path

from workbench.report.claim import Check, Claim, available, load
from workbench.report.runs import JOB_WALL, Job, curve
from workbench.report.verdict import RULE, CheckResult, judge, overall

VERDICT_LINE = re.compile(r"^\*\*Verdict: (?P<verdict>[a-z ]+)\*\*")
TIME_LINE = re.compile(r"^Compute: (?P<minutes>[0-9.]+) min")


def values(jobs: list[Job], arm: str, metric: str) -> dict[int, float]:
    out = {}
    for job in jobs:
        value = job.metrics.get(metric)
        if job.arm.id == arm and value is not None and math.isfinite(value):
            out[job.seed] = value
    return out


def evaluate(check: Check, jobs: list[Job]) -> CheckResult:
    mine = values(jobs, check.arm, check.metric)
    if isinstance(check.other, str):
        theirs = values(jobs, check.other, check.metric)
        differences = [mine[s] - theirs[s] for s in sorted(mine) if s in theirs]
    else:
        differences = [mine[s] - float(check.other) for s in sorted(mine)]
    return judge(differences, check.direction, check.min_effect, check.margin)


def fmt(x: float, sign: str = "") -> str:
    """3 decimals, or scientific notation for the tiny numbers (gradient differences) 3 decimals would hide."""
    if x != 0 and abs(x) < 1e-3:
        return f"{x:{sign}.2e}"
    return f"{x:{sign}.3f}"


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(statistics.fmean(xs))} ± {fmt(statistics.stdev(xs))}"


def describe(check: Check, claim: Claim) -> str:
    other = claim.arm(check.other).label if isinstance(check.other, str) else f"{check.other:g}"
    if check.direction == "equal":
        return f"{claim.arm(check.arm).label} = {other} on `{check.metric}` within ± {check.margin:g}"
    word = ">" if check.direction == "higher" else "<"
    return f"{claim.arm(check.arm).label} {word} {other} on `{check.metric}`" + (
        f" by ≥ {check.min_effect:g}" if check.min_effect else "")


def job_minutes(job: Job) -> float:
    """The job's whole wall time; for runs from before it was logged, the run's own (its SFT base not included)."""
    if job.seconds is not None and not job.reused:
        return job.seconds / 60
    return job.metrics.get(JOB_WALL, job.metrics.get("run/wall_time_s", 0.0)) / 60


def write(claim: Claim, jobs: list[Job], uri: str, out_dir: Path, command: str, micro: bool, wall_s: float) -> tuple[Path, str]:
    results = [(check, evaluate(check, jobs)) for check in claim.checks]
    verdict = overall([r.verdict for _, r in results])
    failed = [j for j in jobs if j.error]
    seeds = sorted({j.seed for j in jobs})
    png = out_dir / f"{claim.name}.png"
    lines = [f"# {claim.title}", ""]
    if micro:
        lines += ["> **Micro version** (CI smoke run of the report path: a few steps per run). Not a result.", ""]
    lines += [f"**Verdict: {verdict}** (computed from the runs below by the rule at the end; never edited by hand)", "",
              f"Compute: {sum(job_minutes(j) for j in jobs):.1f} min of runs in all (sum over the {len(jobs)} runs, "
              f"{sum(j.reused for j in jobs)} reused from MLflow); this command took {wall_s / 60:.1f} min. "
              f"Generated {datetime.now():%Y-%m-%d %H:%M} on {os.cpu_count()} CPU cores (load average as it was written "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}; runs may have shared the machine with other work, so "
              "compare wall times within a report, not across) by", "", f"    {command}", "",
              "## The paper's claim", "", f"{claim.paper_claim.strip()}", "", f"Source: {claim.paper.strip()}", ""]
    if claim.paper_numbers:
        table = claim.paper_numbers
        lines += [f"Paper numbers{': ' + table['caption'] if table.get('caption') else ''}", "",
                  "| " + " | ".join(map(str, table["columns"])) + " |", "|" + "---|" * len(table["columns"])]
        lines += ["| " + " | ".join(map(str, row)) + " |" for row in table["rows"]]
        lines += [""]
    lines += ["## Our setting (and how it differs from the paper's)", "", claim.setting.strip(), "",
              f"Seeds: {', '.join(map(str, seeds))}. Each arm is `python -m workbench.train experiment=claims/{claim.name}` "
              "plus its overrides:", ""]
    lines += [f"- **{a.label}** (`{a.id}`): `{' '.join(a.overrides) or '(the shared settings)'}`" for a in claim.arms]
    lines += ["", "## Results", "", "Mean ± std over seeds (final values of each run).", "",
              "| arm | seeds | " + " | ".join(f"{desc} (`{m}`)" for m, desc in claim.metrics.items()) + " |",
              "|---|---|" + "---|" * len(claim.metrics)]
    for arm in claim.arms:
        n = len({j.seed for j in jobs if j.arm.id == arm.id and j.run is not None})
        cells = [mean_std(list(values(jobs, arm.id, m).values())) for m in claim.metrics]
        lines.append(f"| {arm.label} | {n} | " + " | ".join(cells) + " |")
    lines += ["", f"![{claim.title}]({png.name})", "", "## Checks", "",
              "| check | per-seed difference (claimed direction +) | mean | 90 % interval | verdict |", "|---|---|---|---|---|"]
    for check, r in results:
        diffs = ", ".join(fmt(d, "+") for d in r.differences) or "—"
        interval = f"[{fmt(r.low, '+')}, {fmt(r.high, '+')}]" if math.isfinite(r.low) else "— (one seed)"
        mean = fmt(r.mean, "+") if math.isfinite(r.mean) else "—"
        lines.append(f"| {check.name}: {describe(check, claim)} | {diffs} | {mean} | {interval} | {r.verdict} |")
    lines += ["", f"Rule: {RULE}", "", "## Runs", "", "| arm | seed | " + " | ".join(f"`{m}`" for m in claim.metrics)
              + " | wall (min) | MLflow run |", "|---|---|" + "---|" * (len(claim.metrics) + 2)]
    for job in jobs:
        cells = [f"{job.metrics[m]:.4g}" if m in job.metrics else "—" for m in claim.metrics]
        run = f"`{job.run.info.run_id[:12]}`" + (" (reused)" if job.reused else "") if job.run else f"FAILED: {job.error}"
        lines.append(f"| {job.arm.id} | {job.seed} | " + " | ".join(cells) + f" | {job_minutes(job):.1f} | {run} |")
    if failed:
        lines += ["", f"**{len(failed)} run(s) failed**; the checks use the seeds where both sides finished."]
    lines += ["", f"MLflow store: `{uri}` (tags `claim={claim.name}`, `claim_arm`, `claim_key`).", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{claim.name}.md"
    path.write_text("\n".join(lines))
    plot(claim, jobs, uri, png)
    return path, verdict


def plot(claim: Claim, jobs: list[Job], uri: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, d, False) for m, d in claim.metrics.items()] + [(m, d, True) for m, d in claim.curves.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, desc, is_curve) in zip(axes[0], panels):
        if is_curve:
            for i, arm in enumerate(claim.arms):
                runs = [curve(uri, j, metric) for j in jobs if j.arm.id == arm.id and j.run is not None]
                runs = [r for r in runs if r]
                if not runs:
                    continue
                steps = sorted(set.intersection(*(set(s for s, _ in r) for r in runs)))
                mean = [statistics.fmean(dict(r)[s] for r in runs) for s in steps]
                ax.plot(steps, mean, label=arm.label, color=colors[i % len(colors)])
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        else:
            for i, arm in enumerate(claim.arms):
                ys = list(values(jobs, arm.id, metric).values())
                if ys:
                    ax.bar(i, statistics.fmean(ys), color=colors[i % len(colors)], alpha=0.6)
                    ax.scatter([i] * len(ys), ys, color="black", s=12, zorder=3)
            ax.set_xticks(range(len(claim.arms)), [a.label for a in claim.arms], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{desc}\n({metric})", fontsize=9)
    fig.suptitle(claim.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_index(reports: Path) -> Path:
    """reports/README.md: one line per claim with its verdict (read from its report), then the other reports."""
    lines = ["# Reports", "", "Regenerate a claim's report (runs what is missing, reuses finished runs from MLflow):", "",
             "    python -m workbench.report <claim>", "",
             "## Paper claims", "", "| # | claim | verdict | compute (2 cores) | report |", "|---|---|---|---|---|"]
    claimed = set()
    for claim in sorted((load(name) for name in available()), key=lambda c: (c.number is None, c.number or 0, c.name)):
        name = claim.name
        path = reports / f"{name}.md"
        claimed.add(path.name)
        verdict, minutes = "not generated yet", "—"
        if path.is_file():
            for line in path.read_text().splitlines():
                if m := VERDICT_LINE.match(line):
                    verdict = m["verdict"]
                if m := TIME_LINE.match(line):
                    minutes = f"{float(m['minutes']):.0f} min"
        link = f"[{name}.md]({name}.md)" if path.is_file() else f"`python -m workbench.report {name}`"
        lines.append(f"| {claim.number or ''} | {claim.title} | **{verdict}** | {minutes} | {link} |")
    lines += ["", "Verdict rule: " + RULE, "", "## Other reports (bench/ scripts and measurements)", ""]
    for path in sorted(reports.glob("*.md")):
        if path.name in claimed or path.name == "README.md":
            continue
        title = path.read_text().splitlines()[0].lstrip("# ").strip()
        lines.append(f"- [{path.name}]({path.name}): {title}")
    index = reports / "README.md"
    index.write_text("\n".join(lines) + "\n")
    return index
