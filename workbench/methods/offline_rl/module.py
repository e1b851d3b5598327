"""The shared LightningModule of the control algorithms (offline, online and hybrid RL on gymnasium tasks).

What every algorithm gets from here, so a file such as ``td3_bc.py`` holds only its networks and its update:
- a replay buffer holding the task's dataset (and, online, the transitions the policy collects), sampled
  uniformly each step with states normalized by the dataset's mean/std and rewards transformed once here;
- by-hand optimization: ``self.optimize(name, loss)`` steps one of the optimizers named in
  ``optimizers_spec()``; Lightning counts one step per ``training_step`` whatever the algorithm steps;
- online phases (``method.online``): pure online (SAC, DSAC-T; no dataset) or offline-to-online (``start_step``
  > 0): ``env_steps_per_update`` environment steps per update, after ``random_steps`` uniform actions;
- evaluation: ``task.eval_episodes`` deterministic episodes on the real environment every
  ``method.val_check_interval`` steps, logged as return and D4RL normalized score (random 0, expert 100);
- metrics every ``method.log_every`` steps (logging each step would cost more than a small update).
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

from workbench.errors import ConfigError, NonFiniteLossError
from workbench.methods.rng import rng_state, set_rng_state
from workbench.methods.timing import StepTimes
from workbench.tasks.control.datasets import Transitions
from workbench.tasks.control.envs import evaluate, make_env, to_env_action
from workbench.tasks.control.task import ControlTask

VAL_SEED, TEST_SEED = 1_000_000, 2_000_000  # evaluation episodes never share seeds with training or each other


class ReplayBuffer:
    """Transitions in preallocated tensors; a ring once full (online), the dataset alone when offline."""

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, discrete: bool):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = torch.zeros(capacity, obs_dim)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, dtype=torch.long) if discrete else torch.zeros(capacity, action_dim)
        self.rewards = torch.zeros(capacity)
        self.dones = torch.zeros(capacity)  # true terminals only: a time-limit cut still bootstraps

    def add_dataset(self, data: Transitions) -> None:
        n = len(data)
        if n > self.capacity:
            raise ValueError(f"dataset of {n} transitions exceeds the buffer's {self.capacity}")
        self.obs[:n] = torch.from_numpy(data.observations)
        self.next_obs[:n] = torch.from_numpy(data.next_observations)
        self.actions[:n] = torch.from_numpy(data.actions)
        self.rewards[:n] = torch.from_numpy(data.rewards)
        self.dones[:n] = torch.from_numpy(data.terminals.astype(np.float32))
        self.size = self.pos = n

    def add(self, obs, action, reward: float, next_obs, terminal: bool) -> None:
        i = self.pos
        self.obs[i] = torch.as_tensor(obs)
        self.next_obs[i] = torch.as_tensor(next_obs)
        self.actions[i] = torch.as_tensor(action)
        self.rewards[i] = float(reward)
        self.dones[i] = float(terminal)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,))
        return {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": self.rewards[idx],
                "next_obs": self.next_obs[idx], "dones": self.dones[idx]}

    def state_dict(self) -> dict:
        n = self.size
        return {"size": n, "pos": self.pos, "obs": self.obs[:n].clone(), "next_obs": self.next_obs[:n].clone(),
                "actions": self.actions[:n].clone(), "rewards": self.rewards[:n].clone(), "dones": self.dones[:n].clone()}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        for key in ("obs", "next_obs", "actions", "rewards", "dones"):
            getattr(self, key)[:n] = state[key]
        self.size, self.pos = n, int(state["pos"])


class _Steps(IterableDataset):
    """One item per training step: the module samples its own batch (online data arrives during the run)."""

    def __iter__(self):
        while True:
            yield 0


def reward_transform(data: Transitions | None, mode: str, scale: float, bias: float) -> tuple[float, float]:
    """(multiplier, shift) applied to every reward: ``returns_range`` divides by the spread of episode returns and
    multiplies by 1000 (IQL's and CORL's D4RL locomotion setting), then ``scale`` and ``bias``."""
    mult = 1.0
    if mode == "returns_range":
        if data is None:
            raise ConfigError("method.reward_normalization", "returns_range needs a dataset", "use none for online-only tasks")
        returns = data.episode_returns()
        spread = float(returns.max() - returns.min())
        mult = 1000.0 / spread if spread > 0 else 1.0
    elif mode != "none":
        raise ConfigError("method.reward_normalization", f"unknown '{mode}'", "use none or returns_range")
    return mult * scale, bias


class ControlModule(StepTimes, L.LightningModule):
    family = "offline_rl"
    action_spaces: tuple[str, ...] = ("continuous",)

    def __init__(self, task: ControlTask, method: DictConfig, trainer_cfg: DictConfig | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.task, self.cfg, self.spec = task, method, task.spec
        self.total_steps = int(trainer_cfg.max_steps) if trainer_cfg is not None else 1000
        self.eval_prefix = "test"
        kind = "discrete" if self.spec.discrete else "continuous"
        if kind not in self.action_spaces:
            raise ConfigError("method", f"{method.name} handles {' and '.join(self.action_spaces)} actions; "
                                        f"{self.spec.env_id} has {kind} actions", "pick a task with matching actions")
        data = task.dataset
        online = method.get("online") or {}
        self.online = bool(online.get("enabled", False))
        if data is None and not self.online:
            raise ConfigError("task", f"'{task.name}' has no dataset and {method.name} is not set to collect online data",
                              "use a task with a dataset (e.g. task=pendulum_expert) or method.online.enabled=true")
        self.online_start = int(online.get("start_step", 0)) if self.online else None
        capacity = (len(data) if data is not None else 0) + (int(online.get("buffer_size", 0)) if self.online else 0)
        self.buffer = ReplayBuffer(self.spec.obs_dim, self.spec.action_dim, max(capacity, 1), self.spec.discrete)
        if data is not None:
            self.buffer.add_dataset(data)
        mean, std = torch.zeros(self.spec.obs_dim), torch.ones(self.spec.obs_dim)
        if method.get("normalize_states") and data is not None:
            mean = torch.from_numpy(data.observations.mean(0))
            std = torch.from_numpy(data.observations.std(0)) + 1e-3
        self.register_buffer("obs_mean", mean)
        self.register_buffer("obs_std", std)
        self.reward_scale, self.reward_bias = reward_transform(
            data, method.get("reward_normalization", "none"), float(method.get("reward_scale", 1.0)), float(method.get("reward_bias", 0.0)))
        self.best_score = float("-inf")
        self.run_seed = 0  # the run's seed (set by the runner): evaluation and collection seeds derive from it
        self._env = None
        self._times: dict[str, float] = {}
        self._stats: dict[str, torch.Tensor | float] = {}
        self._episode_return, self._episode_returns = 0.0, []
        self.build()

    # ---- what an algorithm defines ------------------------------------------------------------------
    def build(self) -> None:
        """Create the networks (and target copies) as attributes."""
        raise NotImplementedError

    def optimizers_spec(self) -> list[tuple[str, list, float]]:
        """[(name, parameters, lr), ...]; Adam for each, stepped with ``self.optimize(name, loss)``."""
        raise NotImplementedError

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One gradient update on a sampled batch (normalized states, transformed rewards); returns stats to log."""
        raise NotImplementedError

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions in [-1, 1] (or integers) for normalized states; the evaluation policy when deterministic."""
        return self.actor.act(obs, deterministic)

    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """The behaviour policy when collecting online data (default: sample the stochastic policy)."""
        return self.act(obs, deterministic=False)

    # ---- helpers for the algorithms ---------------------------------------------------------------------
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad, backward, clip (``method.max_grad_norm``), step of the optimizer ``name``."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"{name} loss became {loss.item()} at step {self.global_step}; stopped, last good "
                                     f"checkpoint kept (try a lower learning rate)")
        opt = self._optimizer(name)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.get("max_grad_norm"):
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, float(self.cfg.max_grad_norm))
        if self._counted:
            opt.optimizer.step()  # bypass the Lightning wrapper: it would count this as another training step
        else:
            opt.step()
            self._counted = True

    def _optimizer(self, name: str):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return opts[self._optimizer_names.index(name)]

    # ---- Lightning ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        spec = self.optimizers_spec()
        self._optimizer_names = [name for name, _, _ in spec]
        return [torch.optim.Adam(params, lr=float(lr)) for _, params, lr in spec]

    def train_dataloader(self):
        return DataLoader(_Steps(), batch_size=None)

    def val_dataloader(self):
        return DataLoader([0], batch_size=None)

    def test_dataloader(self):
        return DataLoader([0], batch_size=None)

    def is_online_step(self) -> bool:
        return self.online and self.global_step >= self.online_start

    def training_step(self, _, batch_idx):
        started = time.perf_counter()
        self._counted = False
        if self.online and self.online_start and self.global_step == self.online_start:
            self._log_offline_end()
        if self.is_online_step():
            with self._timed("env"):
                self.collect()
        batch = self.buffer.sample(int(self.cfg.batch_size))
        batch["obs"], batch["next_obs"] = self.normalize(batch["obs"]), self.normalize(batch["next_obs"])
        batch["rewards"] = batch["rewards"] * self.reward_scale + self.reward_bias
        with self._timed("update"):
            stats = self.update(batch)
        if not self._counted:  # an update that stepped nothing still is one training step
            self._optimizer(self._optimizer_names[0]).step()
        self.log_train(stats, started)

    def log_train(self, stats: dict, started: float, buffer_size: bool = True) -> None:
        """Every ``log_every`` steps: the update's stats (the last value of any it skipped, e.g. a delayed actor),
        step time and its breakdown, mean return of the episodes collected since, the buffer size online."""
        self._stats.update(stats)
        step = self.global_step
        if step % int(self.cfg.get("log_every", 100)) == 0 or step == self.total_steps:
            logged = {f"train/{k}": float(v) for k, v in self._stats.items()}
            logged["train/step_time"] = time.perf_counter() - started
            logged.update({f"train/time_{k}": v for k, v in self._times.items()})
            if self._episode_returns:
                logged["train/episode_return"] = float(np.mean(self._episode_returns))
                logged["train/episode_normalized_score"] = float(self.task.normalized_score(np.mean(self._episode_returns)))
                self._episode_returns = []
            if self.online and buffer_size:
                logged["train/buffer_size"] = float(self.buffer.size)
            if self.logger is not None:  # straight to the logger: self.log would re-send these values every step
                self.logger.log_metrics(logged, step=step)
        self._times = {}

    # ---- online data ---------------------------------------------------------------------------------
    def collect(self) -> None:
        online = self.cfg.online
        if self._env is None:
            self._env = make_env(self.spec.env_id, seed=int(self.run_seed) + 7919 * self.global_step)
            self._obs = self._env.reset()[0]
            self._collected = getattr(self, "_resumed_collected", 0)  # a resumed run starts a fresh episode
        steps = int(online.get("env_steps_per_update", 1))
        random_steps = int(online.get("random_steps", 0))
        if self._collected < random_steps:
            steps = max(steps, random_steps - self._collected)
        for _ in range(steps):
            if self._collected < random_steps:
                action = (np.random.randint(self.spec.num_actions) if self.spec.discrete
                          else np.random.uniform(-1, 1, self.spec.action_dim).astype(np.float32))
            else:
                with torch.no_grad():
                    obs = self.normalize(torch.as_tensor(self._obs, dtype=torch.float32).unsqueeze(0))
                    action = self.explore(obs)[0].cpu().numpy()
            next_obs, reward, terminated, truncated, _ = self._env.step(to_env_action(self.spec, action))
            self.buffer.add(self._obs, action, reward, next_obs, terminated)
            self._collected += 1
            self._episode_return += float(reward)
            self._obs = next_obs
            if terminated or truncated:
                self._episode_returns.append(self._episode_return)
                self._episode_return = 0.0
                self._obs = self._env.reset()[0]

    # ---- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_policy(self, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        was_training = self.training
        self.eval()

        def act(obs: np.ndarray) -> np.ndarray:
            return self.act(self.normalize(torch.as_tensor(obs, device=self.device)), deterministic=True).cpu().numpy()

        returns, lengths = evaluate(act, self.spec, episodes, seed)
        self.train(was_training)
        return returns, lengths

    def _log_eval(self, prefix: str, seed: int) -> None:
        started = time.perf_counter()
        returns, lengths = self.evaluate_policy(int(self.task.eval_episodes), seed)
        scores = self.task.normalized_score(returns)
        metrics = {"return": returns.mean(), "return_std": returns.std(), "normalized_score": scores.mean(),
                   "normalized_score_std": scores.std(), "episode_length": lengths.mean(),
                   "eval_time_s": time.perf_counter() - started}
        if prefix == "val":
            self.best_score = max(self.best_score, float(scores.mean()))
            metrics["best_normalized_score"] = self.best_score
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in metrics.items()}, batch_size=1)

    def _log_offline_end(self) -> None:
        """Offline-to-online: the policy's score when the offline phase ends (what fine-tuning must improve on),
        on the held-out evaluation seeds, logged once as offline_end/*."""
        returns, _ = self.evaluate_policy(int(self.task.eval_episodes), TEST_SEED + 1000 * int(self.run_seed))
        metrics = {"offline_end/normalized_score": float(self.task.normalized_score(returns).mean()),
                   "offline_end/return": float(returns.mean())}
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
        for key, value in metrics.items():  # into the run's summary next to test/normalized_score
            self.trainer.callback_metrics[key] = torch.tensor(value)

    def validation_step(self, _, batch_idx):
        self._log_eval("val", VAL_SEED + 1000 * int(self.run_seed))

    def test_step(self, _, batch_idx):
        self._log_eval(self.eval_prefix, TEST_SEED + 1000 * int(self.run_seed))

    # ---- checkpoints: RNG state, best score and (online) the replay buffer travel with them ----------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["workbench_rng"] = rng_state()
        checkpoint["workbench_best_score"] = self.best_score
        if self.online:
            checkpoint["workbench_buffer"] = self.buffer.state_dict()
            checkpoint["workbench_collected"] = getattr(self, "_collected", 0)

    def on_load_checkpoint(self, checkpoint):
        set_rng_state(checkpoint.get("workbench_rng"))
        self.best_score = float(checkpoint.get("workbench_best_score", float("-inf")))
        if "workbench_buffer" in checkpoint:
            self.buffer.load_state_dict(checkpoint["workbench_buffer"])
            self._resumed_collected = int(checkpoint.get("workbench_collected", 0))
