"""Optuna sweeps: the search-space grammar, the study's bookkeeping, every definition in sweeps/, the summary, and
whole sweeps through the CLI (failed, pruned, resumed and shared studies)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from omegaconf import open_dict
from optuna.trial import TrialState

from conftest import CONF_DIR, FAST, cli_env, python
from workbench import ROOT
from workbench.config import validate
from workbench.errors import ConfigError
from workbench.sweep.space import format_value, parse_search_space
from workbench.sweep.study import (absolute_storage, make_pruner, make_sampler, open_study, recover_interrupted, sampler_for,
                                  trials_used)
from workbench.sweep import study as study_module
from workbench.sweep.summary import main as summary_main

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


# ---- the search space ------------------------------------------------------------------------------------
def test_search_space_grammar_maps_to_optuna_distributions():
    space, fixed = parse_search_space(
        {"method.lr": "tag(log, interval(1e-5, 1e-3))", "method.group_size": "choice(2, 4, 8)"},
        ["method.clip_eps_high=range(0.2, 0.32, 0.04)", "method.epochs=tag(int, interval(1, 4))",
         "b=range(1, 10, 2)", "method=dpo,ipo", "seed=3", "task=gsm8k"],
    )
    assert space["method.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert space["method.group_size"] == CategoricalDistribution((2, 4, 8))
    assert space["method.clip_eps_high"] == FloatDistribution(0.2, 0.28, step=0.04)  # Hydra's range excludes its stop
    assert space["method.epochs"] == IntDistribution(1, 4)
    assert space["b"] == IntDistribution(1, 9, step=2)
    assert space["method"] == CategoricalDistribution(("dpo", "ipo"))
    assert fixed == ["seed=3", "task=gsm8k"]


def test_command_line_wins_over_the_definition_for_the_same_key():
    space, fixed = parse_search_space({"method.lr": "interval(0.1, 0.2)", "method.beta": "choice(1, 2)"},
                                      ["method.lr=interval(0.3, 0.4)", "method.beta=5"])
    assert space == {"method.lr": FloatDistribution(0.3, 0.4)}
    assert fixed == ["method.beta=5"]


@pytest.mark.parametrize("params, field", [
    ({"method.lr": "tag(log, interval(0, 1))"}, "hydra.sweeper.params.method.lr"),
    ({"method.lr": "interval(2, 1)"}, "hydra.sweeper.params.method.lr"),
    ({"method.lr": "range(5, 1, 1)"}, "hydra.sweeper.params.method.lr"),
    ({"method.lr": "tag(cosine, interval(1, 2))"}, "hydra.sweeper.params.method.lr"),
    ({"method.lr": "0.1"}, "hydra.sweeper.params"),  # nothing swept
    ({"method.lr": "interval(1, "}, "hydra.sweeper.params"),
])
def test_bad_search_space_names_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        parse_search_space(params, [])
    assert str(e.value).startswith(field + ":") and "->" in str(e.value)


@pytest.mark.parametrize("value", ["sqlite:////tmp/a b/optuna.db", "it's", "null", "true", "1e-3", "val/accuracy", "",
                                   3, 0.1, 1e-7, True, None, "a,b", "x=y", {"p": {"name": "median", "n": 3}}, [1, "a b"]])
def test_format_value_reads_back_unchanged(value):
    parsed = OverridesParser.create().parse_override(f"k={format_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


# ---- the study -------------------------------------------------------------------------------------------
def test_samplers_and_pruners_by_name_and_bad_names_refused():
    assert isinstance(make_sampler({"name": "random", "seed": 1}), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner({"name": "median", "n_warmup_steps": 5}), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(None), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.sampler.name: unknown sampler 'cma'"):
        make_sampler({"name": "cma"})
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner: median: "):
        make_pruner({"name": "median", "patience": 3})


def test_a_resumed_seeded_sampler_does_not_redraw_the_first_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    space = {"x": FloatDistribution(0, 1)}
    spec = {"name": "random", "seed": 0}

    def draw(study, n):
        study.sampler = sampler_for(study, spec)
        xs = []
        for _ in range(n):
            t = study.ask(space)
            study.tell(t, 0.0)
            xs.append(t.params["x"])
        return xs

    first = draw(open_study("a", storage, "maximize"), 3)
    assert draw(open_study("b", storage, "maximize"), 3) == first  # a fresh study: exactly the configured seed
    resumed = draw(open_study("a", storage, "maximize"), 3)  # a new process joins study a
    assert not set(resumed) & set(first)


def test_open_study_keeps_its_direction(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    open_study("s", storage, "maximize")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.direction: study 's' .* maximize"):
        open_study("s", storage, "minimize")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.storage: cannot open"):
        open_study("s", "nosuchdb://x", "maximize")


def test_relative_sqlite_paths_become_absolute(tmp_path):
    assert absolute_storage("sqlite:///optuna.db") == f"sqlite:///{tmp_path / 'optuna.db'}"  # tests run in tmp_path
    assert absolute_storage("sqlite:////abs/o.db") == "sqlite:////abs/o.db"
    assert absolute_storage("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])  # a finished, reaped child: its pid is free (and not reused within the test)
    proc.wait()
    return proc.pid


def test_interrupted_trials_are_failed_and_queued_again(tmp_path):
    study = open_study("s", f"sqlite:///{tmp_path / 'o.db'}", "maximize")
    space = {"x": FloatDistribution(0, 1)}
    mine = study.ask(space)
    mine.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}")
    alive = study.ask(space)
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    elsewhere = study.ask(space)
    elsewhere.set_user_attr("worker", "another-host:1")
    study.tell(study.ask(space), 0.5)
    assert trials_used(study) == 4
    assert recover_interrupted(study) == [mine.number]
    states = {t.number: t.state for t in study.trials}
    assert states[mine.number] == TrialState.FAIL and states[alive.number] == states[elsewhere.number] == TrialState.RUNNING
    assert trials_used(study) == 3  # the interrupted one no longer counts ...
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.user_attrs["retry_of"] for t in queued] == [mine.number]  # ... and its params run again first
    assert study.ask(space).params == {"x": mine.params["x"]}


def test_a_trial_whose_sweeper_died_before_stamping_it_is_recovered_after_a_grace_period(tmp_path, monkeypatch):
    study = open_study("s", f"sqlite:///{tmp_path / 'o.db'}", "maximize")
    unowned = study.ask({"x": FloatDistribution(0, 1)})  # killed between ask and the worker stamp
    assert recover_interrupted(study) == []  # a live sweeper may be about to stamp it
    monkeypatch.setattr(study_module, "UNOWNED_GRACE_S", 0.0)
    assert recover_interrupted(study) == [unowned.number]
    assert study.trials[unowned.number].state == TrialState.FAIL


# ---- the definitions in sweeps/ ----------------------------------------------------------------------------
def test_every_family_has_a_sweep():
    families = set()
    for name in SWEEPS:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            families.add(compose(config_name="train", overrides=[f"+sweeps={name}"]).method.family)
    assert families >= {"preference", "group_rl", "offline_rl", "multi_turn", "self_correction"}


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_definition_composes_and_its_space_parses(name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+sweeps={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("WorkbenchOptunaSweeper")
    assert sweeper.metric.startswith("test/") and sweeper.monitor.startswith("val/")
    space, _ = parse_search_space(dict(sweeper.params), [])
    make_sampler(dict(sweeper.sampler))
    make_pruner(dict(sweeper.pruner))
    for key in space:  # each swept key exists in the composed config (a typo would only fail at the first trial)
        node = cfg
        for part in key.split("."):
            assert part in node, f"{name}: {key} is not a config key"
            node = node[part]
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)


# ---- the summary -------------------------------------------------------------------------------------------
def test_summary_writes_best_params_importance_and_history(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = open_study("toy", storage, "maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("metric", "test/accuracy")
    study.set_user_attr("monitor", "val/accuracy")
    study.set_user_attr("fixed_overrides", ["method=sft"])
    study.set_user_attr("space", {"x": "FloatDistribution(0, 1)", "y": "FloatDistribution(0, 1)"})
    space = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    for _ in range(8):  # the objective depends on x only
        t = study.ask(space)
        study.tell(t, 1 - (t.params["x"] - 0.3) ** 2)
    pruned = study.ask(space)
    pruned.report(0.1, step=4)
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask(space)
    failed.set_user_attr("error", "seed 0: RuntimeError: boom")
    study.tell(failed, state=TrialState.FAIL)
    out = tmp_path / "report"
    assert summary_main(["--storage", storage, "--out", str(out)]) == 0  # the only study: no --study needed
    text = (out / "toy.md").read_text()
    best = study.best_trial
    assert f"test/accuracy = {best.value:.4g}" in text
    assert f"method.lr" not in text and f"x={best.params['x']!r}" in text  # the rerun command
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    assert float(rows["`x`"].split("|")[2]) > float(rows["`y`"].split("|")[2])  # x explains the objective
    assert "pruned at step 4 (val/accuracy = 0.1)" in text and "RuntimeError: boom" in text
    pruned_row = next(line for line in text.splitlines() if line.startswith(f"| {pruned.number} | pruned |"))
    assert pruned_row.split("|")[3].strip() == ""  # its reported value is not the objective
    assert (out / "toy_history.png").stat().st_size > 5000 and (out / "toy_importance.png").stat().st_size > 5000


def test_summary_refuses_a_missing_study(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    open_study("a", storage, "maximize")
    assert summary_main(["--storage", storage, "--study", "b", "--out", str(tmp_path)]) == 2
    assert "--study: no study 'b'" in capsys.readouterr().err


# ---- whole sweeps through the CLI ----------------------------------------------------------------------------
def _sweep(tmp_path: Path, *overrides: str, name: str = "multi", timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [python(), "-m", "workbench.train", "-m", "hydra/sweeper=workbench_optuna", "method=sft", *FAST,
           f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.study_name=toy",
           f"hydra.sweep.dir={tmp_path / name}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def _runs(tmp_path: Path):
    client = mlflow.MlflowClient(cli_env(tmp_path)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("workbench")
    return client.search_runs([exp.experiment_id])


def test_sweep_tracks_trials_in_mlflow_and_survives_a_crashing_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study("toy", storage, "maximize")
    study.enqueue_trial({"method.lr": -1.0})  # refused by the run's config check: this trial fails
    study.enqueue_trial({"method.lr": 0.001})
    study.enqueue_trial({"method.lr": 0.003})
    done = _sweep(tmp_path, "method.lr=choice(-1.0, 0.001, 0.003)", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.seeds_per_trial=2", "hydra.sweeper.sampler.name=random")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="toy", storage=storage).trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.COMPLETE] and len(trials) == 3
    assert "method.lr: must be > 0" in trials[0].user_attrs["error"]
    assert set(trials[1].user_attrs["seed_values"]) == {"0", "1"}

    runs = _runs(tmp_path)
    trial_runs = {r.data.tags["optuna.trial"]: r for r in runs if r.data.tags.get("workbench.stage") == "trial"}
    assert set(trial_runs) == {"0", "1", "2"}
    assert trial_runs["0"].info.status == "FAILED" and trial_runs["0"].data.tags["optuna.state"] == "FAIL"
    assert trial_runs["1"].info.status == "FINISHED" and trial_runs["1"].data.params["method.lr"] == "0.001"
    assert all(r.data.tags["optuna.study"] == "toy" for r in trial_runs.values())
    best = [r for r in trial_runs.values() if r.data.tags.get("optuna.best") == "true"]
    best_number = optuna.load_study(study_name="toy", storage=storage).best_trial.number
    assert [r.data.tags["optuna.trial"] for r in best] == [str(best_number)]
    # each seed is its own run, nested under its trial's run; the failed trial's jobs never started a run
    seeds = [r for r in runs if r.data.tags.get("workbench.stage") == "main"]
    by_parent = {}
    for r in seeds:
        by_parent.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r.data.tags["workbench.seed"])
    assert {k: sorted(v) for k, v in by_parent.items()} == {trial_runs[n].info.run_id: ["0", "1"] for n in ("1", "2")}
    assert trial_runs["1"].data.metrics["test/accuracy"] == pytest.approx(
        sum(trials[1].user_attrs["seed_values"].values()) / 2)

    # the study resumes where it stopped: a larger budget runs only the missing trials
    again = _sweep(tmp_path, "method.lr=choice(-1.0, 0.001, 0.003)", "hydra.sweeper.n_trials=4", name="multi2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="toy", storage=storage).trials) == 4


def test_best_mark_moves_to_one_run_even_when_two_sweepers_mark_it(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from workbench.sweep.tracking import TrialRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    first, second = TrialRuns(uri, "exp", study, "m"), TrialRuns(uri, "exp", study, "m")
    run_of = {}
    for value, runs in ((0.1, first), (0.3, second), (0.2, first)):  # each sweeper marks what it sees
        trial = study.ask()
        run_of[value] = runs.start(trial, str(tmp_path), {})
        study.tell(trial, value)
        runs.finish(run_of[value], TrialState.COMPLETE, value, {})
        runs.mark_best()
    # the other sweeper's collision on MLflow's unique tag key is retried, not raised
    set_tag, calls = first.client.set_tag, []

    def collide_once(run_id, key, value):
        calls.append(key)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid")
        set_tag(run_id, key, value)

    monkeypatch.setattr(first.client, "set_tag", collide_once)
    trial = study.ask()
    run_of[0.5] = first.start(trial, str(tmp_path), {})
    study.tell(trial, 0.5)
    first.mark_best()
    best = {r.info.run_id for r in first.client.search_runs([first.experiment_id])
            if r.data.tags.get("optuna.best") == "true"}
    assert best == {run_of[0.5]} and len(calls) >= 2

    def fail(*args):
        raise MlflowException("database is locked")

    monkeypatch.setattr(first.client, "set_tag", fail)
    trial = study.ask()
    first.start(trial, str(tmp_path), {})
    study.tell(trial, 0.9)
    with pytest.raises(MlflowException, match="locked"):  # any other error is not swallowed
        first.mark_best()


def test_pruned_trial_stops_early_and_is_marked_pruned(tmp_path):
    done = _sweep(tmp_path, "method.lr=interval(1e-4, 1e-3)", "hydra.sweeper.n_trials=1", "trainer.max_steps=6",
                  "hydra.sweeper.monitor=val/accuracy", "hydra.sweeper.pruner.name=threshold",
                  "+hydra.sweeper.pruner.lower=2.0")  # accuracy is never above 2: pruned at the first report
    assert done.returncode == 0, done.stderr[-3000:]
    trial = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[0]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [2]
    (run,) = [r for r in _runs(tmp_path) if r.data.tags.get("workbench.stage") == "main"]
    assert run.data.tags["optuna.pruned_at_step"] == "2"
    assert run.data.metrics["test/accuracy"] is not None  # a pruned run still ends with its held-out evaluation
    (parent,) = [r for r in _runs(tmp_path) if r.data.tags.get("workbench.stage") == "trial"]
    assert parent.data.tags["optuna.state"] == "PRUNED"


def test_a_trial_is_never_pruned_at_its_last_step(tmp_path):
    done = _sweep(tmp_path, "method.lr=interval(1e-4, 1e-3)", "hydra.sweeper.n_trials=1", "trainer.max_steps=2",
                  "hydra.sweeper.pruner.name=threshold", "+hydra.sweeper.pruner.lower=2.0")
    assert done.returncode == 0, done.stderr[-3000:]
    trial = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[0]
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [2]  # reported, not pruned


def test_two_sweeper_processes_share_one_study(tmp_path):
    args = ["method.lr=interval(1e-4, 1e-3)", "hydra.sweeper.n_trials=4"]
    cmd = lambda name: [python(), "-m", "workbench.train", "-m", "hydra/sweeper=workbench_optuna", "method=sft", *FAST,
                        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.study_name=toy",
                        f"hydra.sweep.dir={tmp_path / name}", *args]
    env = cli_env(tmp_path)
    workers = [subprocess.Popen(cmd(f"w{i}"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    errors = [w.communicate(timeout=400)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    trials = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    # each asks while the study holds fewer than n_trials: 4, or 5 when both asked for the last one at once
    assert 4 <= len(trials) <= 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    best = [r.info.run_id for r in _runs(tmp_path) if r.data.tags.get("optuna.best") == "true"]
    assert best == [max(trials, key=lambda t: t.value).user_attrs["mlflow_run_id"]]


def test_a_killed_sweeper_resumes_and_retries_the_interrupted_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["method.lr=interval(1e-4, 1e-3)", "hydra.sweeper.n_trials=2", "trainer.max_steps=40",
            "method.val_check_interval=20"]
    cmd = [python(), "-m", "workbench.train", "-m", "hydra/sweeper=workbench_optuna", "method=sft", *FAST,
           f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=toy", f"hydra.sweep.dir={tmp_path / 'a'}", *args]
    sweeper = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running and sweeper.poll() is None:
        time.sleep(0.2)
        try:
            running = [t for t in optuna.load_study(study_name="toy", storage=storage).get_trials(states=(TrialState.RUNNING,))
                       if "mlflow_run_id" in t.user_attrs]  # owned and tracked: its job is under way
        except KeyError:  # the study does not exist yet
            pass
    assert running, "the sweeper never started a trial"
    os.killpg(sweeper.pid, signal.SIGKILL)  # the sweeper and its in-process job die mid-trial, cleanup-free
    sweeper.wait(timeout=30)
    killed = running[0]

    done = _sweep(tmp_path, *args, name="b")  # the same command again
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="toy", storage=storage).trials
    first = trials[killed.number]
    assert first.state == TrialState.FAIL and first.user_attrs["interrupted"] is True
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # the budget counts the retry, not the kill
    (run,) = [r for r in _runs(tmp_path) if r.data.tags.get("optuna.trial") == str(killed.number)
              and r.data.tags.get("workbench.stage") == "trial"]
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "INTERRUPTED"
