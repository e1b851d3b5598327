"""IQL, Implicit Q-Learning (Kostrikov et al. 2021; official ikostrikov/implicit_q_learning, CORL's iql.py).

    value   L_tau(min_i Q'_i(s, a) - V(s)),  L_tau(u) = |tau - 1[u < 0]| u^2  (expectile regression, tau = expectile)
    critic  sum_i mean (Q_i(s, a) - (r + gamma (1 - d) V(s')))^2
    actor   -mean min(exp(beta (min_i Q'_i(s, a) - V(s))), max_weight) log pi(a|s)  (advantage-weighted regression)
            then Polyak update of the target critics.
Only dataset actions are ever evaluated by Q: no out-of-distribution action is queried. As in the official code
the value is updated first, and the actor and critic use the updated V. Discrete actions: Q(s) is a vector over
actions (the taken action's entry is used) and the actor is categorical.
"""

from __future__ import annotations

import copy
import math

import torch

from workbench.errors import ConfigError
from workbench.methods.offline_rl.module import ControlModule
from workbench.methods.offline_rl.networks import (CategoricalActor, Critics, DeterministicActor, GaussianActor, ValueNet,
                                                   soft_update)
from workbench.methods.offline_rl.td3_bc import critic_loss


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau - 1[u < 0]| u^2 with u = Q - V: tau > 0.5 weighs V below Q less, so V tracks an upper expectile."""
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff ** 2).mean()


def iql_q_target(rewards, dones, next_v: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + gamma (1 - d) V(s'): the critic bootstraps from V, never from an action the policy picks."""
    return rewards + gamma * (1.0 - dones) * next_v


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """min(exp(beta A), max_weight), detached (advantage-weighted regression's per-sample weights)."""
    return torch.exp(beta * advantage.detach()).clamp(max=max_weight)


def weighted_nll(weights: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """-mean w log pi(a|s): the AWR / AWAC actor loss."""
    return -(weights * log_prob).mean()


def q_at(critic: Critics, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q_i(s, a) as [n_critics, B] for continuous actions, or the taken action's entry of Q_i(s) for discrete ones."""
    if not critic.discrete:
        return critic(obs, actions)
    q_all = critic(obs)
    index = actions.long().view(1, -1, 1).expand(q_all.shape[0], -1, 1)
    return q_all.gather(-1, index).squeeze(-1)


def check_range(cfg, key: str, low: float, high: float, fix: str, open_high: bool = True) -> float:
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low < value and (value < high if open_high else value <= high)
    if not ok:
        interval = f"({low}, {high}{')' if open_high else ']'}"
        raise ConfigError(f"method.{key}", f"must be in {interval}, got {value!r}", fix)
    return float(value)


class IQL(ControlModule):
    action_spaces = ("continuous", "discrete")

    def build(self) -> None:
        cfg, spec = self.cfg, self.spec
        check_range(cfg, "expectile", 0.0, 1.0, "e.g. method.expectile=0.7 (MuJoCo) or 0.9 (AntMaze); 0.5 is plain SARSA")
        check_range(cfg, "beta", 0.0, math.inf, "e.g. method.beta=3.0; small beta -> behaviour cloning")
        check_range(cfg, "max_weight", 0.0, math.inf, "e.g. method.max_weight=100 (the official clip)")
        if cfg.actor not in ("gaussian", "deterministic"):
            raise ConfigError("method.actor", f"unknown '{cfg.actor}'", "use gaussian (the paper's) or deterministic")
        if cfg.actor_lr_schedule not in ("constant", "cosine"):
            raise ConfigError("method.actor_lr_schedule", f"unknown '{cfg.actor_lr_schedule}'", "use cosine (official) or constant")
        hidden = list(cfg.hidden)
        if spec.discrete:
            self.actor = CategoricalActor(spec.obs_dim, spec.num_actions, hidden)
        elif cfg.actor == "deterministic":
            self.actor = DeterministicActor(spec.obs_dim, spec.action_dim, hidden)
        else:
            self.actor = GaussianActor(spec.obs_dim, spec.action_dim, hidden)
        self.critic = Critics(spec.obs_dim, spec.action_dim, hidden, n=2, num_actions=spec.num_actions)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(spec.obs_dim, hidden)

    def optimizers_spec(self):
        return [("value", self.value.parameters(), self.cfg.value_lr), ("critic", self.critic.parameters(), self.cfg.critic_lr),
                ("actor", self.actor.parameters(), self.cfg.actor_lr)]

    def actor_log_likelihood(self, obs, actions) -> torch.Tensor:
        """log pi(a|s); the deterministic variant's stand-in is -||pi(s) - a||^2 (CORL's iql_deterministic)."""
        if isinstance(self.actor, DeterministicActor):
            return -((self.actor(obs) - actions) ** 2).sum(-1)
        return self.actor.log_prob(obs, actions)

    def set_actor_lr(self) -> None:
        """Cosine decay of the actor's learning rate to 0 over the run (official opt_decay_schedule='cosine')."""
        if self.cfg.actor_lr_schedule == "cosine":
            lr = float(self.cfg.actor_lr) * 0.5 * (1 + math.cos(math.pi * min(self.global_step / self.total_steps, 1.0)))
            for group in self._optimizer("actor").param_groups:
                group["lr"] = lr

    def update(self, batch):
        cfg = self.cfg
        obs, actions = batch["obs"], batch["actions"]
        with torch.no_grad():
            q_target = q_at(self.critic_target, obs, actions).min(0).values
        v = self.value(obs)
        loss_v = expectile_loss(q_target - v, cfg.expectile)
        self.optimize("value", loss_v)

        with torch.no_grad():
            advantage = q_target - self.value(obs)
            target = iql_q_target(batch["rewards"], batch["dones"], self.value(batch["next_obs"]), cfg.gamma)
        weights = awr_weights(advantage, cfg.beta, cfg.max_weight)
        loss_pi = weighted_nll(weights, self.actor_log_likelihood(obs, actions))
        self.set_actor_lr()
        self.optimize("actor", loss_pi)

        q = q_at(self.critic, obs, actions)
        loss_q = critic_loss(q, target)
        self.optimize("critic", loss_q)
        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"value_loss": loss_v.detach(), "critic_loss": loss_q.detach(), "actor_loss": loss_pi.detach(),
                "q_mean": q.detach().mean(), "v_mean": v.detach().mean(), "advantage_mean": advantage.mean(),
                "weight_mean": weights.mean(), "weight_clipped": (weights >= cfg.max_weight).float().mean()}
