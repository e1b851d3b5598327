"""The paper-claim report command: the verdict rule on hand values, claim files, run reuse, the CI micro version."""

from __future__ import annotations

import math
import re
import subprocess

import mlflow
import pytest

from conftest import cli_env, python
from workbench import ROOT
from workbench.errors import ConfigError
from workbench.report import claim as claim_module
from workbench.report.claim import available, compose_run, load, parse, run_identity
from workbench.report.runs import plan
from workbench.report.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, interval, judge, overall


# ---- the rule -----------------------------------------------------------------------------------------------
def test_interval_is_the_t_interval_on_hand_values():
    mean, low, high = interval([0.10, 0.12, 0.08])  # sd 0.02, n 3, t(0.95, 2) = 2.919986
    half = 2.919986 * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.10) and low == pytest.approx(0.10 - half, abs=1e-6) and high == pytest.approx(0.10 + half, abs=1e-6)


def test_higher_claims():
    assert judge([0.10, 0.12, 0.08], "higher", min_effect=0.02).verdict == REPRODUCED  # [0.066, 0.134]
    assert judge([0.001, 0.002, 0.0], "higher", min_effect=0.05).verdict == NOT_REPRODUCED  # upper 0.0027 < 0.05
    assert judge([-0.10, -0.12, -0.08], "higher").verdict == NOT_REPRODUCED  # surely the other way
    assert judge([0.10, -0.10, 0.05], "higher", min_effect=0.02).verdict == INCONCLUSIVE
    assert judge([0.3], "higher").verdict == INCONCLUSIVE  # one seed: no interval


def test_a_sure_but_too_small_effect_is_not_the_claim():
    r = judge([0.010, 0.011, 0.009], "higher", min_effect=0.05)  # interval [0.0066, 0.0134]: above 0, below 0.05
    assert r.low > 0 and r.verdict == NOT_REPRODUCED


def test_lower_claims_flip_the_sign():
    r = judge([-0.10, -0.12, -0.08], "lower", min_effect=0.02)
    assert r.differences == (0.10, 0.12, 0.08) and r.verdict == REPRODUCED


def test_equal_claims_are_tost_style():
    assert judge([0.001, -0.001, 0.0], "equal", margin=0.01).verdict == REPRODUCED
    assert judge([0.5, 0.6, 0.55], "equal", margin=0.1).verdict == NOT_REPRODUCED
    assert judge([0.05, -0.05, 0.12], "equal", margin=0.1).verdict == INCONCLUSIVE


def test_overall_needs_every_check():
    assert overall([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert overall([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert overall([REPRODUCED, INCONCLUSIVE, NOT_REPRODUCED]) == NOT_REPRODUCED
    assert overall([]) == INCONCLUSIVE


# ---- claim files ----------------------------------------------------------------------------------------------
GOOD = {"title": "t", "paper": "p", "paper_claim": "c", "setting": "s", "seeds": [0, 1, 2],
        "arms": [{"id": "a", "overrides": ["method=dpo"]}, {"id": "b", "overrides": ["method=ipo"]}],
        "metrics": {"test/x": "x"}, "checks": [{"name": "n", "metric": "test/x", "arm": "a", "other": "b", "direction": "higher"}]}


def _with(path: str, value):
    import copy

    spec = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return spec


@pytest.mark.parametrize("path,value,field", [
    ("checks.0.direction", "bigger", "checks[0].direction"),
    ("checks.0.other", "c", "checks[0].other"),
    ("checks.0.arm", "zzz", "checks[0].arm"),
    ("checks.0.min_effect", -1, "checks[0].min_effect"),
    ("seeds", [0, 0], "claim.seeds"),
    ("arms.1.id", "a", "claim.arms"),
    ("arms.0.overrides", ["method"], "arms[0].overrides"),
    ("title", "", "claim.title"),
    ("micro", "x", "claim.micro"),
])
def test_a_bad_claim_file_names_the_field(path, value, field):
    with pytest.raises(ConfigError) as e:
        parse("demo", _with(path, value))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_equal_checks_need_a_margin_and_constants_are_allowed():
    spec = _with("checks.0.direction", "equal")
    with pytest.raises(ConfigError, match=r"checks\[0\]\.margin"):
        parse("demo", spec)
    spec["checks"][0].update(margin=0.1, other=0.5)
    assert parse("demo", spec).checks[0].other == 0.5


def test_an_unknown_claim_names_the_known_ones():
    with pytest.raises(ConfigError, match="robust_dpo"):
        load("no_such_claim")


def test_the_shipped_claims_are_issue_9s_twelve_numbered_in_order():
    # the index sorts by number; a claim file that loses its number drops to the bottom unnumbered
    assert sorted(load(name).number for name in available()) == list(range(1, 13))


@pytest.mark.parametrize("name", available())
def test_every_claim_file_loads_and_its_micro_jobs_compose_and_validate(name):
    claim = load(name)
    assert len(claim.seeds) >= 3, "a result needs >= 3 seeds"
    assert claim.micro, "every claim has a micro version"
    jobs = plan(claim, list(claim.micro_seeds), list(claim.micro))
    assert len(jobs) == len(claim.arms) * len(claim.micro_seeds)
    assert len({j.key for j in jobs}) == len(jobs)  # every (arm, seed) is its own run
    full = plan(claim, [claim.seeds[0]], [])
    assert not {j.key for j in full} & {j.key for j in jobs}  # a micro run never passes for a full one


def test_run_identity_ignores_speed_settings_but_not_the_method():
    base = run_identity(compose_run("robust_dpo", ["seed=0"]))
    assert run_identity(compose_run("robust_dpo", ["seed=0", "trainer.num_threads=1", "trainer.progress_bar=false"])) == base
    assert run_identity(compose_run("robust_dpo", ["seed=0", "method.lr=1e-3"])) != base
    assert run_identity(compose_run("robust_dpo", ["seed=1"])) != base


def test_runs_ignore_the_claim_block(tmp_path):
    cfg = compose_run("robust_dpo", [])
    assert "claim" in cfg and cfg.method.name == "dpo" and cfg.task.name == "synthetic_preference"


# ---- the command, end to end (the CI micro version of one claim) ----------------------------------------------
def _report(tmp_path, *args):
    return subprocess.run([python(), "-m", "workbench.report", *args, "--out", str(tmp_path / "out"),
                           "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=900)


def test_micro_claim_end_to_end_then_every_run_is_reused(tmp_path):
    first = _report(tmp_path, "robust_dpo", "--micro", "--workers", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "10 to run" in first.stdout
    report = (tmp_path / "out" / "robust_dpo.md").read_text()
    assert "**Verdict: " in report and "Micro version" in report and (tmp_path / "out" / "robust_dpo.png").stat().st_size > 10_000
    assert report.count("| dpo_flip40 |") == 2  # one row per seed in the runs table
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("workbench")
    tagged = client.search_runs([exp.experiment_id], filter_string="tags.claim = 'robust_dpo'")
    assert len(tagged) == 10 and {r.data.tags["claim_arm"] for r in tagged} == {a.id for a in load("robust_dpo").arms}
    assert all("claim.title" not in r.data.params for r in tagged)  # the grid is not a run parameter

    again = _report(tmp_path, "robust_dpo", "--micro")
    assert again.returncode == 0 and "10 reused" in again.stdout and "0 to run" in again.stdout
    regenerated = (tmp_path / "out" / "robust_dpo.md").read_text()
    minutes = [re.search(r"Compute: ([\d.]+) min of runs", text).group(1) for text in (report, regenerated)]
    assert minutes[0] == minutes[1] and float(minutes[0]) > 0  # reused runs count the jobs' whole wall time again
    assert len(client.search_runs([exp.experiment_id], filter_string="tags.claim = 'robust_dpo'")) == 10

    from workbench.report.write import write_index

    index = write_index(tmp_path / "out").read_text()
    verdict = report.split("**Verdict: ")[1].split("**")[0]
    assert f"| **{verdict}** |" in index and index.count("not generated yet") == len(available()) - 1


def test_bad_input_is_one_line_and_runs_nothing(tmp_path):
    for args, field in ((["no_such_claim"], "claim"), (["robust_dpo", "--workers", "0"], "--workers"),
                        (["robust_dpo", "--micro", "method.lr=-1"], "method.lr")):
        proc = _report(tmp_path, *args)
        assert proc.returncode == 2 and field in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_list_names_every_claim(tmp_path):
    proc = subprocess.run([python(), "-m", "workbench.report", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and all(name in proc.stdout for name in available())


def test_claims_dir_is_the_repo_conf():
    assert claim_module.CLAIMS_DIR == ROOT / "conf" / "experiment" / "claims"


def test_the_shared_sft_base_run_carries_no_claim_tags():
    from workbench.config import base_config

    cfg = compose_run("robust_dpo", ["++logger.tags.claim=robust_dpo", "++logger.tags.claim_arm=dpo_clean",
                                     "++logger.tags.claim_key=abc", "++logger.tags.team=rl"])
    assert dict(base_config(cfg).logger.tags) == {"team": "rl"}
    assert set(cfg.logger.tags) == {"claim", "claim_arm", "claim_key", "team"}  # the main run keeps them
