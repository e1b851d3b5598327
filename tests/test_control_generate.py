"""D4RL-style generated datasets (workbench/tasks/control/generate.py): one tiny generation (SAC for 3,000 updates
on small networks, a few episodes per kind) checked for the schema, the make-up of each kind, the references,
seed reproducibility, the cache, the CLI and a training run through task=pendulum_medium."""

import json
import time

import datasets
import numpy as np
import pytest

import workbench.tasks.control.generate as generate
from workbench.errors import ConfigError
from workbench.tasks.control.datasets import REQUIRED, load_transitions, normalized_score
from workbench.tasks.control.envs import env_spec
from workbench.train import run

ENV = "Pendulum-v1"
RANDOM_STEPS = 200
# small networks with larger learning rates reach about -200 (expert-like) in 3,000 updates, ~20 s at 1 thread
TINY = {"seed": 0, "sac_steps": 3000, "eval_every": 250, "eval_episodes": 5, "medium_target": 50.0, "ref_episodes": 10,
        "random_size": 1000, "medium_size": 1000, "expert_size": 1200,
        "sac": {"hidden": [64, 64], "batch_size": 64, "critic_lr": 3e-3, "actor_lr": 1e-3, "alpha_lr": 1e-3,
                "online": {"random_steps": RANDOM_STEPS}}}
# the same settings as Hydra overrides of a task config that pulls in conf/task/generator/pendulum.yaml
TINY_OVERRIDES = [f"task.dataset.generate.{k}={v}" for k, v in TINY.items() if k != "sac"] + [
    "task.dataset.generate.sac.hidden=[64,64]", "task.dataset.generate.sac.batch_size=64",
    "+task.dataset.generate.sac.critic_lr=3e-3", "+task.dataset.generate.sac.actor_lr=1e-3",
    "+task.dataset.generate.sac.alpha_lr=1e-3", f"task.dataset.generate.sac.online.random_steps={RANDOM_STEPS}"]


def read(folder):
    """The raw columns as written (actions in the environment's units), and meta.json."""
    ds = datasets.Dataset.from_parquet(str(folder / "data.parquet"))
    arrays = {k: np.asarray(v) for k, v in ds.with_format("numpy")[:].items()}
    return arrays, json.loads((folder / "meta.json").read_text())


@pytest.fixture(scope="module")
def generated(_cache_dir):
    """One tiny generation in the session cache (paths.cache_dir of the composed configs): (folder, record, seconds)."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    path = generate.generated_dataset(ENV, "medium", TINY, _cache_dir, progress=False)
    seconds = time.perf_counter() - started
    folder = path.parent
    assert path == folder / "medium" and folder.parent == _cache_dir / "control_datasets"
    return folder, json.loads((folder / "generation.json").read_text()), seconds


def test_schema_lengths_and_loading(generated):
    folder, record, _ = generated
    spec = env_spec(ENV)
    sizes = {"random": 1000, "medium": 1000, "expert": 1200, "medium_expert": 2200}
    for kind in generate.KINDS:
        arrays, meta = read(folder / kind)
        assert set(arrays) == {*REQUIRED, "episode_ids"}
        n = len(arrays["rewards"])
        assert n == sizes.get(kind, record["medium_snapshot"]["buffer_size"])
        assert arrays["observations"].shape == arrays["next_observations"].shape == (n, 3) and arrays["actions"].shape == (n, 1)
        assert arrays["observations"].dtype == arrays["actions"].dtype == arrays["rewards"].dtype == np.float32
        assert arrays["terminals"].dtype == arrays["timeouts"].dtype == bool and arrays["episode_ids"].dtype == np.int64
        assert np.abs(arrays["actions"]).max() <= 2.0 and not arrays["terminals"].any()  # Pendulum never terminates
        ids = arrays["episode_ids"]
        assert ids[0] == 0 and set(np.diff(ids)) <= {0, 1}  # contiguous episodes
        ends = np.flatnonzero(np.diff(ids))
        assert arrays["timeouts"][ends].all() and arrays["timeouts"].sum() == len(ends) + int(arrays["timeouts"][-1])
        assert np.all(np.bincount(ids)[:len(ends)] == 200)  # whole 200-step episodes cut by the time limit
        same = np.all(arrays["next_observations"][:-1] == arrays["observations"][1:], axis=1)
        assert np.array_equal(same, ~arrays["timeouts"][:-1])  # each episode is one chain of states
        assert meta["env_id"] == ENV and meta["kind"] == kind and meta["seed"] == 0 and meta["generator"]["sac_steps"] == 3000
        assert meta["transitions"] == n and meta["episodes"] == ids.max() + 1
        t = load_transitions(folder / kind, spec)  # through `datasets`, actions rescaled to [-1, 1]
        assert len(t) == n and np.allclose(t.actions * 2.0, arrays["actions"])
    random, _ = read(folder / "random")
    assert np.abs(random["actions"]).max() > 1.5  # uniform over [-2, 2], stored in the environment's units


def test_medium_expert_is_medium_then_expert(generated):
    folder = generated[0]
    medium, expert, both = (read(folder / k)[0] for k in ("medium", "expert", "medium_expert"))
    for key in REQUIRED:
        assert np.array_equal(both[key], np.concatenate([medium[key], expert[key]]))
    assert np.array_equal(both["episode_ids"], np.concatenate([medium["episode_ids"], expert["episode_ids"] + 5]))


def test_medium_replay_is_the_buffer_up_to_the_medium_snapshot(generated):
    folder, record, _ = generated
    snapshot = record["medium_snapshot"]
    # the first snapshot whose evaluated score (with the final references) reaches the target
    scores = [s["eval_score"] for s in record["snapshots"]]
    first = next(i for i, s in enumerate(scores) if s >= TINY["medium_target"])
    assert record["snapshots"][first]["step"] == snapshot["step"] and snapshot["eval_score"] >= 50
    assert [s["step"] for s in record["snapshots"]] == list(range(250, 3001, 250))
    # update k has collected the uniform warm-up steps plus one environment step for each later update
    assert snapshot["buffer_size"] == RANDOM_STEPS + snapshot["step"] - 1
    replay, meta = read(folder / "medium_replay")
    assert len(replay["rewards"]) == snapshot["buffer_size"] == meta["medium_snapshot"]["buffer_size"]
    assert not replay["timeouts"][-1]  # the snapshot cut its last episode
    assert meta["complete_episodes"] == snapshot["buffer_size"] // 200


def test_references_and_stats(generated):
    folder, record, _ = generated
    refs = {(read(folder / k)[1]["ref_min_score"], read(folder / k)[1]["ref_max_score"]) for k in generate.KINDS}
    assert refs == {(record["ref_min_score"], record["ref_max_score"])}  # one pair for all five kinds
    ref_min, ref_max = refs.pop()
    assert ref_min < ref_max and -1700 < ref_min < -800  # Pendulum's uniform random policy returns about -1200
    for kind in generate.KINDS:
        arrays, meta = read(folder / kind)
        returns = np.bincount(arrays["episode_ids"], weights=arrays["rewards"])[:meta["complete_episodes"]]
        assert meta["mean_return"] == pytest.approx(returns.mean(), rel=1e-6)
        assert meta["normalized_score"] == pytest.approx(100 * (returns.mean() - ref_min) / (ref_max - ref_min), rel=1e-6)
    stats = record["kinds"]
    assert stats["random"]["normalized_score"] < stats["medium"]["normalized_score"] < stats["expert"]["normalized_score"]
    assert abs(stats["random"]["normalized_score"]) < 25  # random data scores about 0 by construction
    assert normalized_score(ref_max, ref_min, ref_max) == 100


def test_same_seed_gives_identical_arrays(generated, tmp_path):
    folder = generated[0]
    again = tmp_path / "again"
    generate.generate_all(ENV, TINY, again, progress=False)
    for kind in generate.KINDS:
        a, b = read(folder / kind)[0], read(again / kind)[0]
        for key in a:
            assert np.array_equal(a[key], b[key]), (kind, key)
    assert generate.settings_key(ENV, generate.resolve_settings(TINY)) == folder.name
    assert generate.settings_key(ENV, generate.resolve_settings({**TINY, "seed": 1})) != folder.name


def test_cache_is_reused_without_training(generated, monkeypatch, _cache_dir):
    folder, _, first_seconds = generated
    stamp = (folder / "generation.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds this generation")

    monkeypatch.setattr(generate, "train_sac", no_training)
    started = time.perf_counter()
    for kind in generate.KINDS:
        assert generate.generated_dataset(ENV, kind, TINY, _cache_dir) == folder / kind
    assert time.perf_counter() - started < first_seconds / 5
    assert (folder / "generation.json").stat().st_mtime_ns == stamp
    assert not list(folder.parent.glob("*.partial*"))  # the temporary folder was renamed


def test_cli_prints_the_table(generated, monkeypatch, capsys):
    folder = generated[0]
    monkeypatch.setattr(generate, "train_sac", lambda *a, **k: pytest.fail("the CLI retrained a cached generation"))
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert generate.main(["--env", ENV, "--seed", "0", *[x for s in sets for x in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "cached" in out
    for kind in generate.KINDS:
        line = next(l for l in out.splitlines() if l.split()[:1] == [kind])
        assert line.split()[1] == f"{json.loads((folder / kind / 'meta.json').read_text())['transitions']:,}"
    assert generate.main(["--env", ENV, "--set", "medium_target=150"]) == 2
    assert "task.dataset.generate.medium_target" in capsys.readouterr().err


def test_run_through_the_task_config(generated, fast_cfg, monkeypatch):
    folder = generated[0]
    monkeypatch.setattr(generate, "train_sac", lambda *a, **k: pytest.fail("the task regenerated a cached generation"))
    cfg = fast_cfg("td3_bc", ["task=pendulum_medium", *TINY_OVERRIDES])
    assert cfg.task.dataset.kind == "medium" and cfg.task.dataset.generate.sac.hidden == [64, 64]
    summary = run(cfg)
    m = summary["metrics"]
    assert m["steps"] == 6 and "test/normalized_score" in m and "test_before/normalized_score" in m
    meta = json.loads((folder / "medium" / "meta.json").read_text())
    ret = m["test/return"]
    assert m["test/normalized_score"] == pytest.approx(100 * (ret - meta["ref_min_score"]) / (meta["ref_max_score"] - meta["ref_min_score"]), rel=1e-4)


def test_every_kind_has_a_task_config_with_the_generator_settings():
    from conftest import compose_cfg

    for kind, name in [("random", "pendulum_random"), ("medium", "pendulum_medium"), ("medium_replay", "pendulum_medium_replay"),
                       ("expert", "pendulum_sac_expert"), ("medium_expert", "pendulum_medium_expert")]:
        cfg = compose_cfg([f"task={name}"], output_dir=".")
        assert cfg.task.name == name and cfg.task.dataset.kind == kind and "path" not in cfg.task.dataset
        gen = generate.resolve_settings(cfg.task.dataset.generate)
        assert gen["sac_steps"] >= 5000 and gen["medium_target"] == 50 and gen["random_size"] == 50000


@pytest.mark.parametrize("settings,field", [
    ({"sac_step": 10}, "task.dataset.generate.sac_step"),
    ({"medium_target": 150}, "task.dataset.generate.medium_target"),
    ({"eval_every": 0}, "task.dataset.generate.eval_every"),
    ({"random_size": "many"}, "task.dataset.generate.random_size"),
    ({"sac": {"hiden": [8]}}, "task.dataset.generate.sac"),
])
def test_bad_settings_name_their_field(settings, field, tmp_path):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        generate.generated_dataset(ENV, "medium", settings, tmp_path)


def test_bad_kind_and_discrete_env(tmp_path):
    with pytest.raises(ConfigError, match=r"task\.dataset\.kind.*'mediocre'"):
        generate.generated_dataset(ENV, "mediocre", {}, tmp_path)
    with pytest.raises(ConfigError, match=r"task\.env_id.*discrete"):
        generate.generated_dataset("CartPole-v1", "medium", {}, tmp_path)


@pytest.mark.slow
def test_default_pendulum_generation(tmp_path):
    """The real settings (conf/task/generator/pendulum.yaml): medium near the target, expert near 100."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(OmegaConf.load(generate.generator_config_file(ENV)))
    record = generate.generate_all(ENV, settings, tmp_path / "gen", progress=False)
    s = record["kinds"]
    assert s["random"]["transitions"] == s["medium"]["transitions"] == s["expert"]["transitions"] == 50000
    assert abs(s["random"]["normalized_score"]) < 10
    assert 25 < s["medium"]["normalized_score"] < 75 and s["expert"]["normalized_score"] > 85
    assert record["seconds"] < 600
