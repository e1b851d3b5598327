"""gymnasium environments for the control tasks: what the networks need to know about them, and evaluation.

Continuous actions are handled in [-1, 1] everywhere inside workbench (datasets are scaled on load, actions are
scaled back to the environment's bounds on ``step``), so every algorithm's noise, clipping and constraint
settings mean the same on Pendulum ([-2, 2]) as on MuJoCo ([-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from workbench.errors import ConfigError

MUJOCO_ENVS = ("Hopper", "HalfCheetah", "Walker2d", "Ant", "Humanoid", "Swimmer", "Reacher", "InvertedPendulum",
               "InvertedDoublePendulum")


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_dim: int
    action_dim: int          # continuous: the action vector's size; discrete: 1 (one integer per step)
    num_actions: int | None  # discrete: how many actions; None for continuous
    action_scale: float      # continuous: env action = scale * action in [-1, 1]
    max_episode_steps: int

    @property
    def discrete(self) -> bool:
        return self.num_actions is not None


def make_env(env_id: str, seed: int | None = None, field: str = "task.env_id"):
    try:
        import gymnasium as gym
    except ImportError:
        raise ConfigError(field, "gymnasium is not installed", "pip install gymnasium (it is a workbench dependency)") from None
    try:
        env = gym.make(env_id)
    except Exception as e:  # noqa: BLE001 - unknown ids, missing mujoco, ... all become the same one-line error
        hint = "pip install 'workbench[mujoco]' (the mujoco package)" if env_id.split("-")[0] in MUJOCO_ENVS \
            else "use a gymnasium id such as Pendulum-v1, CartPole-v1 or MountainCarContinuous-v0"
        raise ConfigError(field, f"cannot make '{env_id}' ({type(e).__name__}: {str(e).splitlines()[0][:160]})", hint) from None
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_spec(env_id: str, field: str = "task.env_id") -> EnvSpec:
    from gymnasium import spaces

    env = make_env(env_id, field=field)
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, spaces.Box) or len(obs.shape) != 1:
        raise ConfigError(field, f"'{env_id}' has observations {obs}, not a flat vector", "use an environment with Box(n,) observations")
    steps = env.spec.max_episode_steps or 1000
    env.close()
    if isinstance(act, spaces.Discrete):
        return EnvSpec(env_id, obs.shape[0], 1, int(act.n), 1.0, steps)
    if isinstance(act, spaces.Box) and len(act.shape) == 1:
        if not np.allclose(act.low, -act.high) or not np.allclose(act.high, act.high[0]):
            raise ConfigError(field, f"'{env_id}' has asymmetric or per-dimension action bounds {act.low}..{act.high}",
                              "wrap the environment to rescale its actions to [-1, 1]")
        return EnvSpec(env_id, obs.shape[0], act.shape[0], None, float(act.high[0]), steps)
    raise ConfigError(field, f"'{env_id}' has actions {act}", "use an environment with Discrete or Box(n,) actions")


def to_env_action(spec: EnvSpec, action: np.ndarray):
    """One action from the network's space ([-1, 1] or an integer) to the environment's."""
    if spec.discrete:
        return int(np.asarray(action).reshape(-1)[0])
    return np.clip(np.asarray(action, dtype=np.float32).reshape(spec.action_dim), -1.0, 1.0) * spec.action_scale


TRANSITION_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def run_episodes(act: Callable[[np.ndarray], np.ndarray], spec: EnvSpec, episodes: int, seed: int,
                 record: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict[str, list]] | None]:
    """Run ``episodes`` episodes (environment seeds ``seed``, ``seed+1``, ...) in lockstep, one batched ``act``
    call per step: the one episode runner of evaluation and of the dataset generator.

    ``act`` maps a (n, obs_dim) float32 array to n actions in the network's space. Returns per-episode returns,
    lengths, and with ``record`` each episode's transitions (D4RL keys, actions in the environment's units)."""
    envs = [make_env(spec.env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    recorded = [{k: [] for k in TRANSITION_KEYS} for _ in range(episodes)] if record else None
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = act(obs[idx])
        for j, i in enumerate(idx):
            action = to_env_action(spec, actions[j])
            o, r, terminated, truncated, _ = envs[i].step(action)
            if record:
                ep = recorded[i]
                ep["observations"].append(obs[i].copy())
                ep["actions"].append(np.asarray(action, dtype=np.float32))
                ep["rewards"].append(r)
                ep["next_observations"].append(np.asarray(o, dtype=np.float32))
                ep["terminals"].append(bool(terminated))
                ep["timeouts"].append(bool(truncated and not terminated))
            obs[i] = o
            returns[i] += r
            lengths[i] += 1
            if terminated or truncated:
                alive[i] = False
    for env in envs:
        env.close()
    return returns, lengths, recorded


def evaluate(act: Callable[[np.ndarray], np.ndarray], spec: EnvSpec, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode returns and lengths of ``episodes`` lockstep episodes (see ``run_episodes``)."""
    returns, lengths, _ = run_episodes(act, spec, episodes, seed)
    return returns, lengths
