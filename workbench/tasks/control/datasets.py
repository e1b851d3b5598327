"""D4RL-style transition datasets: loading (parquet through `datasets`, or .npz), checks, normalized scores.

Schema (N transitions): ``observations`` float32 [N, obs_dim], ``actions`` float32 [N, action_dim] (continuous,
in the environment's units) or int [N] (discrete), ``rewards`` float32 [N], ``next_observations`` float32
[N, obs_dim], ``terminals`` bool [N] (the episode ended in a true terminal state: no bootstrapping),
``timeouts`` bool [N] (the episode was cut by the time limit: bootstrap, but a new episode starts next);
optional ``episode_ids`` int [N]. A workbench dataset is a folder with ``data.parquet`` (those columns) and
``meta.json``: ``env_id``, ``ref_min_score`` (the random policy's mean return, normalized score 0),
``ref_max_score`` (the expert's mean return, normalized score 100), and how it was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.errors import ConfigError
from workbench.tasks.control.envs import EnvSpec

REQUIRED = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
FIXES = {
    "observations": "store the state before each action as a float array [N, obs_dim]",
    "actions": "store one action per transition",
    "rewards": "store one float reward per transition",
    "next_observations": "store the state after each action as a float array [N, obs_dim]",
    "terminals": "store a bool per transition, True where the episode really ended (no bootstrap)",
    "timeouts": "store a bool per transition, True where the time limit cut the episode (all False if none)",
}


@dataclass
class Transitions:
    observations: np.ndarray       # float32 [N, obs_dim]
    actions: np.ndarray            # float32 [N, action_dim] in [-1, 1] (continuous) or int64 [N] (discrete)
    rewards: np.ndarray            # float32 [N]
    next_observations: np.ndarray  # float32 [N, obs_dim]
    terminals: np.ndarray          # bool [N]
    timeouts: np.ndarray           # bool [N]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    def episode_ends(self) -> np.ndarray:
        """Index of the last transition of each episode (terminal, timeout, a break in the chain, or the end)."""
        ends = self.terminals | self.timeouts
        chained = np.zeros(len(self), dtype=bool)
        chained[:-1] = np.all(self.next_observations[:-1] == self.observations[1:], axis=1)
        ends = ends | ~chained
        ends[-1] = True
        return np.flatnonzero(ends)

    def episode_returns(self) -> np.ndarray:
        ends = self.episode_ends()
        sums = np.cumsum(self.rewards, dtype=np.float64)[ends]
        return np.diff(np.concatenate([[0.0], sums]))


def normalized_score(returns, ref_min: float, ref_max: float):
    """D4RL's normalized score: 100 * (return - random) / (expert - random)."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def _read(path: Path, field_name: str) -> tuple[dict[str, np.ndarray], dict]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise ConfigError(field_name, f"'{path}' has no .parquet file", "point it at a workbench dataset folder or a .npz file")
        import datasets

        ds = datasets.Dataset.from_parquet([str(f) for f in files])
        arrays = {k: np.asarray(v) for k, v in ds.with_format("numpy")[:].items()}
        meta_file = path / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        return arrays, meta
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta_file = path.with_suffix(".json")
        return arrays, json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if not path.exists():
        raise ConfigError(field_name, f"'{path}' does not exist", "give a workbench dataset folder or a .npz file")
    raise ConfigError(field_name, f"'{path}' is neither a dataset folder nor a .npz file",
                      "convert it to a .npz with the arrays " + ", ".join(REQUIRED))


def check_transitions(arrays: dict[str, np.ndarray], spec: EnvSpec, name: str) -> Transitions:
    """The arrays as Transitions (continuous actions scaled to [-1, 1]), or a one-line error naming the bad array."""
    for key in REQUIRED:
        if key not in arrays:
            raise ConfigError(name, f"missing array '{key}' (has {sorted(arrays)})", f"add it: {FIXES[key]}")
    n = len(arrays["observations"])
    for key in REQUIRED:
        if len(arrays[key]) != n:
            raise ConfigError(name, f"array '{key}' has {len(arrays[key])} rows but 'observations' has {n}",
                              "every array needs one row per transition")
    if n < 2:
        raise ConfigError(name, f"has {n} transitions", "give at least a few episodes of transitions")
    out = {}
    for key in ("observations", "next_observations"):
        a = np.asarray(arrays[key])
        if a.ndim != 2 or a.shape[1] != spec.obs_dim:
            raise ConfigError(name, f"array '{key}' has shape {a.shape} but {spec.env_id} observes {spec.obs_dim} numbers",
                              f"store {key} as [N, {spec.obs_dim}] for this environment, or pick the task whose env made the data")
        out[key] = a.astype(np.float32)
    for key in ("observations", "next_observations", "rewards"):
        a = np.asarray(arrays[key], dtype=np.float64)
        bad = ~np.isfinite(a)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ConfigError(name, f"array '{key}' has {int(bad.sum())} NaN/inf values (first in row {row})",
                              "drop or repair those transitions")
    rewards = np.asarray(arrays["rewards"])
    if rewards.ndim != 1 and not (rewards.ndim == 2 and rewards.shape[1] == 1):
        raise ConfigError(name, f"array 'rewards' has shape {rewards.shape}", "store one scalar reward per transition: [N]")
    out["rewards"] = rewards.reshape(n).astype(np.float32)
    actions = np.asarray(arrays["actions"])
    if spec.discrete:
        flat = actions.reshape(n, -1) if actions.ndim > 1 else actions
        if flat.ndim != 1 and flat.shape[1] != 1:
            raise ConfigError(name, f"array 'actions' has shape {actions.shape} but {spec.env_id} takes one integer action",
                              f"store actions as [N] integers in 0..{spec.num_actions - 1}")
        flat = flat.reshape(n)
        if not np.all(np.isfinite(flat.astype(np.float64))) or np.any(flat != np.round(flat)) \
                or flat.min() < 0 or flat.max() >= spec.num_actions:
            raise ConfigError(name, f"array 'actions' holds values outside the integers 0..{spec.num_actions - 1} of {spec.env_id}",
                              "store the index of the discrete action taken")
        out["actions"] = flat.astype(np.int64)
    else:
        a = actions.reshape(n, 1) if actions.ndim == 1 else actions
        if a.ndim != 2 or a.shape[1] != spec.action_dim:
            raise ConfigError(name, f"array 'actions' has shape {actions.shape} but {spec.env_id} takes "
                                    f"{spec.action_dim}-dimensional actions",
                              f"store actions as [N, {spec.action_dim}], or pick the task whose env made the data")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            row = int(np.argwhere(~np.isfinite(a))[0][0])
            raise ConfigError(name, f"array 'actions' has NaN/inf values (first in row {row})", "drop or repair those transitions")
        if np.abs(a).max() > spec.action_scale * (1 + 1e-4):
            raise ConfigError(name, f"array 'actions' reaches {np.abs(a).max():.4g}, outside {spec.env_id}'s bounds "
                                    f"[-{spec.action_scale:g}, {spec.action_scale:g}]",
                              "store actions in the environment's units (clip them to its bounds)")
        out["actions"] = np.clip(a / spec.action_scale, -1.0, 1.0).astype(np.float32)
    for key in ("terminals", "timeouts"):
        a = np.asarray(arrays[key])
        if a.ndim != 1 or not np.isin(a.astype(np.float64), (0.0, 1.0)).all():
            raise ConfigError(name, f"array '{key}' must be [N] booleans, got dtype {a.dtype} shape {a.shape}", FIXES[key])
        out[key] = a.astype(bool)
    return Transitions(**out)


def load_transitions(path: str | Path, spec: EnvSpec, field_name: str = "task.dataset.path") -> Transitions:
    path = Path(path).expanduser()
    arrays, meta = _read(path, field_name)
    t = check_transitions(arrays, spec, f"{field_name} ({path.name})")
    env = meta.get("env_id")
    if env and env.split("-")[0] != spec.env_id.split("-")[0]:
        raise ConfigError(field_name, f"'{path.name}' was recorded on {env}, not {spec.env_id}", f"set task.env_id={env} or use a {spec.env_id} dataset")
    t.meta = meta
    return t


def save_transitions(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write a workbench dataset folder (data.parquet + meta.json) atomically: a temporary folder, then a rename."""
    import shutil

    import datasets

    n = len(arrays["rewards"])
    features, columns = {}, {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.ndim == 2:
            features[key] = datasets.Sequence(datasets.Value(str(value.dtype)), length=value.shape[1])
        else:
            features[key] = datasets.Value("bool" if value.dtype == bool else str(value.dtype))
        columns[key] = value
        assert len(value) == n, key
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(tmp / "data.parquet"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
