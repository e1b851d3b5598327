"""PRDC, Policy Regularization with Dataset Constraint (Ran et al., ICML 2023; METHODS.md C4; official code
LAMDA-RL/PRDC ``prdc.py``): TD3+BC with the behaviour action replaced by the nearest dataset action.

    key     (beta s, pi(s));  the dataset is indexed once as points (beta s', a') in a KD-tree
    target  a* = the action of the k-th nearest dataset point to the key (k = 1: the nearest)
    actor   -lambda mean Q_1(s, pi(s)) + mean (pi(s) - a*)^2,  lambda = alpha / mean|Q_1(s, pi(s))| (detached)
    critic  TD3's (twin Q, target policy smoothing, delayed actor, Polyak targets), as in td3_bc.py.

The nearest pair is looked up over the *whole* dataset, not the action stored with s: a policy may pick any
action the data shows near (s, pi(s)), which is softer than behaviour cloning and still stays on the data. beta
weighs states against actions in the distance: a large beta makes the lookup find the nearest state first (BC's
target when states are distinct), beta -> 0 makes it the nearest action regardless of state (no constraint).

States are indexed normalized, as the actor sees them (TD3+BC's mean/std normalization, as in the official
code, whose replay buffer normalizes before the tree is built; d3rlpy's PRDC also fits on scaled observations).
Actions are in [-1, 1] (workbench's network units), as the official code's max_action = 1 D4RL actions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from workbench.errors import ConfigError
from workbench.methods.offline_rl.td3_bc import TD3BC


def dataset_keys(obs: np.ndarray, actions: np.ndarray, beta: float) -> np.ndarray:
    """The points the KD-tree indexes: [beta s', a'] for every dataset pair (``obs`` already normalized)."""
    return np.concatenate([beta * np.asarray(obs, dtype=np.float64), np.asarray(actions, dtype=np.float64)], axis=1)


def nearest_dataset_actions(tree: cKDTree, actions: np.ndarray, obs: torch.Tensor, pi: torch.Tensor, beta: float,
                            k: int = 1) -> torch.Tensor:
    """a*: the dataset action of the k-th nearest point [beta s', a'] to each query [beta s, pi(s)].

    ``tree`` indexes ``dataset_keys(dataset_obs, actions, beta)`` (the same beta); ``obs`` [B, obs_dim] and
    ``pi`` [B, action_dim] are the batch's normalized states and the policy's actions. Returns a constant
    tensor [B, action_dim] (no gradient flows through the lookup), on ``pi``'s device and dtype."""
    query = torch.cat([beta * obs, pi], dim=1).detach().cpu().double().numpy()
    _, idx = tree.query(query, k=[k])  # [k]: the k-th neighbour only (the official code's k=[self.k])
    return torch.as_tensor(actions[idx[:, 0]], dtype=pi.dtype, device=pi.device)


def prdc_actor_loss(q_pi: torch.Tensor, pi: torch.Tensor, nearest_actions: torch.Tensor, alpha: float) -> torch.Tensor:
    """-lambda mean Q + mean (pi - a*)^2 with lambda = alpha / mean|Q| detached; ``q_pi`` [B], ``pi``/``a*`` [B, A]."""
    lmbda = alpha / q_pi.abs().mean().detach()
    return -lmbda * q_pi.mean() + F.mse_loss(pi, nearest_actions.detach())


class PRDC(TD3BC):
    def build(self) -> None:
        cfg = self.cfg
        if not float(cfg.alpha) > 0:
            raise ConfigError("method.alpha", f"must be > 0, got {cfg.alpha}", "use 2.5 (the paper's hopper/walker value)")
        if not float(cfg.beta) > 0:
            raise ConfigError("method.beta", f"must be > 0, got {cfg.beta}", "use 2.0 (the paper's default)")
        if int(cfg.k) < 1 or int(cfg.k) != float(cfg.k):
            raise ConfigError("method.k", f"must be an integer >= 1, got {cfg.k}", "use 1 (the nearest neighbour)")
        if self.task.dataset is None or self.online:
            raise ConfigError("method", "PRDC is offline: it constrains the policy to a fixed dataset",
                              "use a task with a dataset (e.g. task=pendulum_expert) and method.online.enabled=false")
        super().build()
        data = self.task.dataset
        obs = self.normalize(torch.from_numpy(data.observations)).numpy()
        self.dataset_actions = np.asarray(data.actions, dtype=np.float32).reshape(len(data), -1)
        self.tree = cKDTree(dataset_keys(obs, self.dataset_actions, float(cfg.beta)))

    def actor_loss(self, obs, actions) -> torch.Tensor:
        pi = self.actor(obs)
        target = nearest_dataset_actions(self.tree, self.dataset_actions, obs, pi, float(self.cfg.beta), int(self.cfg.k))
        loss = prdc_actor_loss(self.critic(obs, pi)[0], pi, target, float(self.cfg.alpha))
        self._stats["dc_distance"] = (pi.detach() - target).pow(2).sum(-1).sqrt().mean()
        return loss
