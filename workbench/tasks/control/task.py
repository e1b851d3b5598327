"""A control task: a gymnasium environment, optionally an offline dataset, and the reference returns that turn
evaluation returns into D4RL normalized scores (random policy = 0, expert = 100)."""

from __future__ import annotations

from pathlib import Path

from workbench.errors import ConfigError
from workbench.tasks.control.datasets import Transitions, load_transitions, normalized_score
from workbench.tasks.control.envs import env_spec


class ControlTask:
    control = True
    pairs = False

    def __init__(self, name: str, env_id: str, action_space: str, dataset: dict | None = None,
                 reference_scores: dict | None = None, eval_episodes: int = 10, cache_dir: str | None = None,
                 control: bool = True, control_model_suffix: str = ""):
        self.name = name
        self.env_id = env_id
        self.spec = env_spec(env_id)
        declared = "discrete" if self.spec.discrete else "continuous"
        if action_space != declared:
            raise ConfigError("task.action_space", f"'{action_space}' but {env_id} has {declared} actions", f"set task.action_space={declared}")
        self.eval_episodes = int(eval_episodes)
        self.dataset: Transitions | None = None
        dataset = dataset or {}
        path = dataset.get("path")
        if dataset.get("kind") and not path:
            from workbench.tasks.control.generate import generated_dataset

            if cache_dir is None:
                raise ConfigError("task.cache_dir", "unset; generated datasets are cached there", "set task.cache_dir=${paths.cache_dir}")
            path = generated_dataset(env_id, dataset["kind"], dataset.get("generate") or {}, Path(cache_dir))
        if path:
            self.dataset = load_transitions(path, self.spec)
        refs = dict(reference_scores or {})
        meta = self.dataset.meta if self.dataset is not None else {}
        self.ref_min_score = refs.get("min", meta.get("ref_min_score"))
        self.ref_max_score = refs.get("max", meta.get("ref_max_score"))
        if self.ref_min_score is None or self.ref_max_score is None or not self.ref_max_score > self.ref_min_score:
            raise ConfigError("task.reference_scores", f"need min < max returns, got min={self.ref_min_score} max={self.ref_max_score}",
                              "set task.reference_scores={min: <random policy return>, max: <expert return>} or use a dataset with meta.json")

    def normalized_score(self, returns):
        return normalized_score(returns, self.ref_min_score, self.ref_max_score)
