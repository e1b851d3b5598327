"""D4RL-style datasets generated on a gymnasium control task: random, medium, medium_replay, expert, medium_expert.

One generation trains SAC online (``workbench.methods.offline_rl.sac.SAC`` with ``conf/method/sac.yaml`` merged
with the generator's ``sac`` overrides) for ``sac_steps`` updates; every ``eval_every`` updates a callback evaluates
the deterministic policy on ``eval_episodes`` episodes and keeps a copy of the actor's weights and the replay
buffer's size at that moment. Then it writes all five kinds at once, the way D4RL made its Gym-MuJoCo datasets
(Fu et al. 2020, section 5 and ``scripts/generation/mujoco/{collect_data,convert_buffer,stitch_dataset}.py``):

- ``random``: uniform random actions (D4RL's ``collect_data.py --random`` samples ``env.action_space``).
- ``medium``: rollouts of the first snapshot whose evaluated normalized score reaches ``medium_target``.
  D4RL early-stops SAC at "about 1/3 of the expert's return"; that is a statement about raw returns on
  locomotion tasks whose random return is near 0. Pendulum's returns are negative (random about -1200, expert
  about -150), so a third of the expert's return means nothing there; on the normalized scale (random 0,
  expert 100) D4RL's medium datasets sit at about 40-60 (halfcheetah ~42, hopper ~53, walker2d ~75 for BC on
  them), hence the default target 50.
- ``medium_replay``: the SAC replay buffer up to the medium snapshot, in collection order (its uniform warm-up
  steps included), like D4RL's ``convert_buffer.py`` on the medium run's buffer. Its last episode is cut by the
  snapshot (neither terminal nor timeout: the data ends there).
- ``expert``: rollouts of the final SAC policy.
- ``medium_expert``: medium then expert, concatenated (D4RL's ``stitch_dataset.py``), episode ids continued.

Rollouts sample the stochastic policy (``collect_data.py`` calls ``distr.sample()``), whole episodes until at
least the kind's size is reached (Pendulum's 200-step episodes make 50,000 exact). Reference returns, the same
for all five kinds: ``ref_min_score`` = mean return of the uniform random policy over ``ref_episodes`` episodes
(D4RL's ``generate_ref_min_score.py``: 100 episodes); ``ref_max_score`` = mean return of the final policy run
deterministically over ``ref_episodes`` episodes. The medium snapshot is picked after training, once both
references are known. Every array is in the environment's units (the loader rescales actions to [-1, 1]);
``timeouts`` mark episodes cut by the time limit, ``terminals`` true terminal states.

Cached under ``<cache_dir>/control_datasets/<env>-<hash of the settings and the merged SAC config>/<kind>/``;
the five folders are written into a temporary folder renamed at the end, so a folder that exists is complete and
a second call reuses it. The same settings and seed give identical arrays (on the same torch build and thread
count): SAC is seeded with ``seed``, and every episode family (evaluation, references, each kind's rollouts)
has its own environment seeds and its own torch/numpy seed. The caller's RNG state is restored afterwards, so a
run draws the same whether its dataset was generated in the run or found in the cache.

CLI: ``python -m workbench.tasks.control.generate --env Pendulum-v1 --seed 0 [--out DIR]`` (settings from
``conf/task/generator/<env>.yaml`` when it exists) writes the five folders and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from workbench.errors import ConfigError
from workbench.tasks.control.datasets import normalized_score, save_transitions
from workbench.tasks.control.envs import EnvSpec, env_spec, evaluate, run_episodes

KINDS = ("random", "medium", "medium_replay", "expert", "medium_expert")
VERSION = 1  # part of the cache key: bump when generation changes what it writes
FIELD = "task.dataset.generate"
DEFAULTS = {  # conf/task/generator/pendulum.yaml sets these for Pendulum-v1
    "seed": 0,
    "sac_steps": 8000,        # SAC updates (one environment step each, after sac.online.random_steps uniform steps)
    "eval_every": 250,        # snapshot + deterministic evaluation every this many updates
    "eval_episodes": 10,      # episodes per snapshot evaluation
    "medium_target": 50.0,    # normalized score (random 0, final policy 100) the medium snapshot first reaches
    "ref_episodes": 100,      # episodes for ref_min_score (uniform random) and ref_max_score (final policy)
    "random_size": 50000,     # transitions (whole episodes, at least this many)
    "medium_size": 50000,
    "expert_size": 50000,
    "sac": {},                # overrides of conf/method/sac.yaml (hidden, batch_size, online.random_steps, ...)
}
# environment seeds (gymnasium) and RNG seeds of each episode family: disjoint from each other and from the
# training runs' evaluation seeds (module.VAL_SEED / TEST_SEED + 1000 * run seed) for seeds 0..99
PURPOSES = ("eval", "ref_min", "ref_max", "random", "medium", "expert")


def _seed(purpose: str, seed: int) -> int:
    return 10_000_000 * (10 + PURPOSES.index(purpose)) + 100_000 * int(seed)



# ---- settings ------------------------------------------------------------------------------------------------
def resolve_settings(settings: dict | None) -> dict:
    """The generator settings with defaults filled in, typed, and checked (one-line ConfigError per bad field)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(settings):
        settings = OmegaConf.to_container(settings, resolve=True)
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{FIELD}.{unknown[0]}", "is not a generator setting", f"use one of {', '.join(DEFAULTS)}")
    out = {}
    for key, default in DEFAULTS.items():
        value = settings.get(key, default)
        if key == "sac":
            if value is None:
                value = {}
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            if not isinstance(value, dict):
                raise ConfigError(f"{FIELD}.sac", f"is {value!r}", "give a mapping of conf/method/sac.yaml overrides, e.g. {hidden: [64, 64]}")
            out[key] = json.loads(json.dumps(value))
            continue
        try:
            value = type(default)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{FIELD}.{key}", f"is {value!r}", f"give a number like {default}") from None
        out[key] = value
    for key in ("sac_steps", "eval_every", "eval_episodes", "ref_episodes", "random_size", "medium_size", "expert_size"):
        if out[key] < 1:
            raise ConfigError(f"{FIELD}.{key}", f"is {out[key]}", "give a positive integer")
    if out["seed"] < 0:
        raise ConfigError(f"{FIELD}.seed", f"is {out['seed']}", "give a seed >= 0")
    if not 0.0 < out["medium_target"] < 100.0:
        raise ConfigError(f"{FIELD}.medium_target", f"is {out['medium_target']}",
                          "give a normalized score strictly between 0 (random) and 100 (the final SAC policy), e.g. 50")
    return out


def sac_config(settings: dict):
    """conf/method/sac.yaml merged with the generator's ``sac`` overrides; the buffer never wraps (medium_replay
    is the buffer in collection order) and max_steps is ``sac_steps``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from workbench import ROOT

    base = OmegaConf.load(ROOT / "conf" / "method" / "sac.yaml")
    OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, settings["sac"])
    except OmegaConfBaseException as e:
        raise ConfigError(f"{FIELD}.sac", f"does not fit conf/method/sac.yaml ({str(e).splitlines()[0]})",
                          "override only keys that sac.yaml has (hidden, batch_size, actor_lr, online.random_steps, ...)") from None
    OmegaConf.set_struct(cfg, False)
    online = cfg.online
    cfg.online.buffer_size = int(online.random_steps) + int(settings["sac_steps"]) * int(online.env_steps_per_update)
    cfg.max_steps = int(settings["sac_steps"])
    return cfg


def settings_key(env_id: str, settings: dict) -> str:
    """``<env>-<12 hex digits>``: a hash of the env, the settings, the merged SAC config and VERSION."""
    from omegaconf import OmegaConf

    sac = OmegaConf.to_container(sac_config(settings), resolve=True)
    for key in ("log_every", "val_check_interval"):  # bookkeeping only: no effect on the data
        sac.pop(key, None)
    blob = json.dumps({"env_id": env_id, "settings": {k: v for k, v in settings.items() if k != "sac"}, "sac": sac,
                       "version": VERSION}, sort_keys=True)
    return f"{env_id}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    from workbench import ROOT

    return Path(os.environ.get("WORKBENCH_CACHE", str(ROOT / ".cache")))


def generator_config_file(env_id: str) -> Path:
    """conf/task/generator/<env name in lower case, version dropped>.yaml, e.g. pendulum.yaml for Pendulum-v1."""
    from workbench import ROOT

    return ROOT / "conf" / "task" / "generator" / f"{env_id.split('-')[0].lower()}.yaml"


# ---- the entry the task uses ------------------------------------------------------------------------------------
def generated_dataset(env_id: str, kind: str, settings: dict | None, cache_dir: Path, progress: bool = True) -> Path:
    """The folder of one generated dataset kind, generating (and caching) all five first if needed."""
    if kind not in KINDS:
        raise ConfigError("task.dataset.kind", f"'{kind}' is not a generated dataset kind", f"use one of {', '.join(KINDS)}")
    settings = resolve_settings(settings)
    folder = Path(cache_dir).expanduser() / "control_datasets" / settings_key(env_id, settings)
    if not (folder / "generation.json").is_file():
        generate_all(env_id, settings, folder, progress=progress)
    return folder / kind


# ---- generation ---------------------------------------------------------------------------------------------------
class Snapshots(L.Callback):
    """Every ``every`` updates (and after the last): the deterministic policy's evaluation returns, a copy of the
    actor's weights and the replay buffer's size; log lines (or a rich progress bar on a terminal) meanwhile."""

    def __init__(self, every: int, episodes: int, seed: int, total: int, progress: bool):
        self.every, self.episodes, self.seed, self.total = every, episodes, seed, total
        self.snapshots: list[dict] = []
        self.started = time.perf_counter()
        self.bar = None
        if progress and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("SAC"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"), transient=True)
            self.bar_task = self.bar.add_task("", total=total)
            self.bar.start()
        self.log = progress and self.bar is None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0 or step == self.total:
            returns, _ = module.evaluate_policy(self.episodes, self.seed)
            self.snapshots.append({"step": step, "buffer_size": int(module.buffer.size), "eval_return": float(returns.mean()),
                                   "actor": copy.deepcopy(module.actor.state_dict())})
            text = f"update {step}/{self.total}  eval return {returns.mean():.1f}  buffer {module.buffer.size}"
            if self.bar is not None:
                self.bar.update(self.bar_task, description=text)
            elif self.log:
                print(f"[generate] SAC {text}  {time.perf_counter() - self.started:.0f} s", file=sys.stderr, flush=True)
        if self.bar is not None:
            self.bar.update(self.bar_task, completed=step)

    def on_train_end(self, trainer, module):
        if self.bar is not None:
            self.bar.stop()


def train_sac(env_id: str, settings: dict, ref_min: float, progress: bool = True):
    """SAC trained online from ``settings['seed']``: (module, snapshots). Snapshot returns are raw returns."""
    from omegaconf import OmegaConf

    from workbench.methods.offline_rl.sac import SAC
    from workbench.tasks.control.task import ControlTask

    cfg = sac_config(settings)
    L.seed_everything(settings["seed"], workers=True, verbose=False)
    # the module needs references for its own (unused here) logging; the real ones are known only after training
    task = ControlTask(name=f"{env_id}-generator", env_id=env_id, action_space="continuous",
                       reference_scores={"min": ref_min, "max": ref_min + 1.0}, eval_episodes=settings["eval_episodes"])
    module = SAC(task, cfg, OmegaConf.create({"max_steps": settings["sac_steps"]}))
    module.run_seed = settings["seed"]
    snapshots = Snapshots(settings["eval_every"], settings["eval_episodes"], _seed("eval", settings["seed"]),
                           settings["sac_steps"], progress)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=settings["sac_steps"], max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[snapshots])
    trainer.fit(module)
    return module, snapshots.snapshots


def rollouts(spec: EnvSpec, size: int, seed: int, policy=None) -> dict[str, np.ndarray]:
    """Whole episodes until at least ``size`` transitions: ``policy`` (a batch of observations -> actions in
    [-1, 1]) or uniform random actions; episodes run in lockstep, one batched policy call per step. Environment
    seeds ``seed, seed+1, ...``; the random actions come from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    act = policy if policy is not None else (lambda obs: rng.uniform(-1.0, 1.0, (len(obs), spec.action_dim)))
    episodes: list[dict[str, list]] = []
    total, next_seed = 0, seed
    while total < size:
        n = max(1, math.ceil((size - total) / spec.max_episode_steps))
        _, lengths, recorded = run_episodes(act, spec, n, next_seed, record=True)
        next_seed += n
        episodes.extend(recorded)
        total += int(lengths.sum())
    out = {k: np.concatenate([np.asarray(ep[k]) for ep in episodes]) for k in episodes[0]}
    out["episode_ids"] = np.concatenate([np.full(len(ep["rewards"]), i, dtype=np.int64) for i, ep in enumerate(episodes)])
    return _typed(out)


def _typed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: np.asarray(arrays[k], dtype=np.float32) for k in ("observations", "actions", "rewards", "next_observations")}
    out["terminals"] = np.asarray(arrays["terminals"], dtype=bool)
    out["timeouts"] = np.asarray(arrays["timeouts"], dtype=bool)
    out["episode_ids"] = np.asarray(arrays["episode_ids"], dtype=np.int64)
    return out


def buffer_transitions(module, size: int, spec: EnvSpec) -> dict[str, np.ndarray]:
    """The first ``size`` transitions of the SAC replay buffer (collection order, actions in env units). The
    buffer keeps true terminals only; an episode ends at a terminal or after ``max_episode_steps`` steps (the
    TimeLimit truncation: a timeout), and the chain of states is checked to break exactly there."""
    buf = module.buffer
    obs, next_obs = buf.obs[:size].numpy(), buf.next_obs[:size].numpy()
    terminals = buf.dones[:size].numpy() > 0.5
    timeouts = np.zeros(size, dtype=bool)
    episode_ids = np.zeros(size, dtype=np.int64)
    episode, t = 0, 0
    for i in range(size):
        episode_ids[i] = episode
        t += 1
        if terminals[i] or t == spec.max_episode_steps:
            timeouts[i] = not terminals[i]
            episode, t = episode + 1, 0
    ends = terminals | timeouts
    chained = np.all(next_obs[:-1] == obs[1:], axis=1)
    if np.any(chained == ends[:-1]):
        raise RuntimeError("replay buffer episodes do not follow max_episode_steps; cannot recover episode ends")
    actions = np.clip(buf.actions[:size].numpy().reshape(size, spec.action_dim), -1.0, 1.0) * spec.action_scale
    return _typed({"observations": obs, "actions": actions, "rewards": buf.rewards[:size].numpy(),
                   "next_observations": next_obs, "terminals": terminals, "timeouts": timeouts, "episode_ids": episode_ids})


def concatenate(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: np.concatenate([first[k], second[k]]) for k in first if k != "episode_ids"}
    out["episode_ids"] = np.concatenate([first["episode_ids"], second["episode_ids"] + first["episode_ids"].max() + 1])
    return out


def dataset_stats(arrays: dict[str, np.ndarray], ref_min: float, ref_max: float) -> dict:
    """Transitions, episodes, and the mean return / normalized score of the complete episodes (those ending in a
    terminal or a timeout; medium_replay's last one is cut by the snapshot)."""
    ids = arrays["episode_ids"]
    sums = np.bincount(ids, weights=arrays["rewards"].astype(np.float64))
    ended = np.zeros(len(sums), dtype=bool)
    ended[ids[arrays["terminals"] | arrays["timeouts"]]] = True
    returns = sums[ended] if ended.any() else sums
    mean = float(returns.mean())
    return {"transitions": int(len(ids)), "episodes": int(len(sums)), "complete_episodes": int(ended.sum()),
            "mean_return": mean, "normalized_score": float(normalized_score(mean, ref_min, ref_max))}


def _actor_policy(module, state: dict):
    actor = copy.deepcopy(module.actor)
    actor.load_state_dict(state)
    actor.eval()

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        return actor.act(module.normalize(torch.as_tensor(obs)), deterministic=False).numpy()

    return act


def _stochastic_rollouts(module, state: dict, spec: EnvSpec, size: int, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return rollouts(spec, size, seed, _actor_policy(module, state))


def generate_all(env_id: str, settings: dict, folder: Path, progress: bool = True) -> dict:
    """Train SAC, write the five kinds into ``folder`` (atomically), return the generation record."""
    from workbench.methods.rng import rng_state, set_rng_state

    settings = resolve_settings(settings)
    spec = env_spec(env_id, field="task.env_id")
    if spec.discrete:
        raise ConfigError("task.env_id", f"{env_id} has discrete actions; the generator trains SAC (continuous actions)",
                          "generate datasets for a continuous-action environment such as Pendulum-v1")
    import datasets

    saved = rng_state()
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one "Creating parquet" bar per kind says nothing
    levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric")}
    started = time.perf_counter()
    try:
        for name in levels:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            record = _generate(env_id, spec, settings, folder, progress, started)
    finally:
        set_rng_state(saved)
        if bars:
            datasets.enable_progress_bars()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return record


def _generate(env_id: str, spec: EnvSpec, settings: dict, folder: Path, progress: bool, started: float) -> dict:
    seed = settings["seed"]
    rng = np.random.default_rng(_seed("ref_min", seed))
    random_returns, _ = evaluate(lambda o: rng.uniform(-1.0, 1.0, (len(o), spec.action_dim)), spec,
                                 settings["ref_episodes"], _seed("ref_min", seed))
    ref_min = float(random_returns.mean())
    module, snapshots = train_sac(env_id, settings, ref_min, progress)
    sac_seconds = time.perf_counter() - started
    final = snapshots[-1]
    module.actor.load_state_dict(final["actor"])
    expert_returns, _ = module.evaluate_policy(settings["ref_episodes"], _seed("ref_max", seed))
    ref_max = float(expert_returns.mean())
    if not ref_max > ref_min:
        raise ConfigError(f"{FIELD}.sac_steps", f"the final SAC policy returns {ref_max:.1f}, no better than the random "
                                                f"policy's {ref_min:.1f}", "train longer (raise sac_steps) or check the sac overrides")
    for snap in snapshots:
        snap["eval_score"] = float(normalized_score(snap["eval_return"], ref_min, ref_max))
    target = settings["medium_target"]
    reached = [s for s in snapshots if s["eval_score"] >= target]
    if not reached:
        best = max(s["eval_score"] for s in snapshots)
        raise ConfigError(f"{FIELD}.medium_target", f"no snapshot reached {target:g} (best {best:.1f})",
                          "lower medium_target or evaluate more often (eval_every)")
    medium = reached[0]

    data = {
        "random": rollouts(spec, settings["random_size"], _seed("random", seed)),
        "medium": _stochastic_rollouts(module, medium["actor"], spec, settings["medium_size"], _seed("medium", seed)),
        "medium_replay": buffer_transitions(module, medium["buffer_size"], spec),
        "expert": _stochastic_rollouts(module, final["actor"], spec, settings["expert_size"], _seed("expert", seed)),
    }
    data["medium_expert"] = concatenate(data["medium"], data["expert"])
    made = {
        "random": "uniform random actions",
        "medium": f"stochastic rollouts of the SAC snapshot at update {medium['step']} (evaluated normalized score "
                  f"{medium['eval_score']:.1f}, the first >= {target:g})",
        "medium_replay": f"the SAC replay buffer up to update {medium['step']} ({medium['buffer_size']} transitions)",
        "expert": f"stochastic rollouts of the final SAC policy (update {final['step']})",
        "medium_expert": "medium then expert, concatenated",
    }
    record = {
        "env_id": env_id, "seed": seed, "generator": settings, "version": VERSION,
        "ref_min_score": ref_min, "ref_max_score": ref_max, "ref_episodes": settings["ref_episodes"],
        "medium_snapshot": {"step": medium["step"], "buffer_size": medium["buffer_size"],
                            "eval_return": medium["eval_return"], "eval_score": medium["eval_score"]},
        "snapshots": [{k: s[k] for k in ("step", "buffer_size", "eval_return", "eval_score")} for s in snapshots],
        "sac_seconds": sac_seconds, "kinds": {},
    }
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for kind in KINDS:
        stats = dataset_stats(data[kind], ref_min, ref_max)
        record["kinds"][kind] = stats
        meta = {"env_id": env_id, "kind": kind, "seed": seed, "made_by": made[kind], "generator": settings,
                "ref_min_score": ref_min, "ref_max_score": ref_max, "ref_episodes": settings["ref_episodes"],
                "medium_snapshot": record["medium_snapshot"], **stats,
                "source": "workbench.tasks.control.generate (D4RL-style, Fu et al. 2020)"}
        save_transitions(tmp / kind, data[kind], meta)
    record["seconds"] = time.perf_counter() - started
    (tmp / "generation.json").write_text(json.dumps(record, indent=1))
    try:
        tmp.rename(folder)
    except OSError:
        if not (folder / "generation.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a parallel generation with the same settings finished first
        record = json.loads((folder / "generation.json").read_text())
    return record


# ---- CLI ------------------------------------------------------------------------------------------------------
def format_table(record: dict) -> str:
    rows = [("kind", "transitions", "episodes", "mean return", "normalized score")]
    for kind in KINDS:
        s = record["kinds"][kind]
        rows.append((kind, f"{s['transitions']:,}", f"{s['episodes']:,}", f"{s['mean_return']:.1f}", f"{s['normalized_score']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = record["medium_snapshot"]
    lines.append(f"references: random {record['ref_min_score']:.1f} (0), final SAC policy {record['ref_max_score']:.1f} (100), "
                 f"{record['ref_episodes']} episodes each; medium snapshot at update {m['step']} "
                 f"(evaluated score {m['eval_score']:.1f})")
    return "\n".join(lines)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.tasks.control.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium id (continuous actions)")
    parser.add_argument("--seed", type=int, default=None, help="generation seed (default: the config's)")
    parser.add_argument("--out", default=None, help="write the five folders here (default: the cache the tasks read)")
    parser.add_argument("--config", default=None, help="generator settings yaml (default: conf/task/generator/<env>.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set sac_steps=3000 or --set 'sac={\"hidden\": [64, 64]}'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        settings: dict = {}
        config = Path(args.config) if args.config else generator_config_file(args.env)
        if config.is_file():
            from omegaconf import OmegaConf

            settings = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
        elif args.config:
            raise ConfigError("--config", f"'{config}' does not exist", "give a generator settings yaml")
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError("--set", f"'{item}' is not KEY=VALUE", "e.g. --set sac_steps=3000")
            settings[key] = _parse_value(value)
        if args.seed is not None:
            settings["seed"] = args.seed
        settings = resolve_settings(settings)
        if args.out:
            folder = Path(args.out).expanduser()
            if folder.exists() and any(folder.iterdir()) and not (folder / "generation.json").is_file():
                raise ConfigError("--out", f"'{folder}' exists and is not a generated dataset folder", "give a new or empty folder")
            if folder.exists():
                shutil.rmtree(folder)
        else:
            folder = default_cache_dir() / "control_datasets" / settings_key(args.env, settings)
        cached = (folder / "generation.json").is_file()
        started = time.perf_counter()
        record = json.loads((folder / "generation.json").read_text()) if cached else generate_all(args.env, settings, folder)
    except ConfigError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2
    took = "cached" if cached else f"generated in {time.perf_counter() - started:.0f} s (SAC {record['sac_seconds']:.0f} s)"
    print(f"{args.env} seed {record['seed']}: {folder} ({took})")
    print(format_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
