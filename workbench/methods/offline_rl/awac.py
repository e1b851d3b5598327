"""AWAC, Advantage-Weighted Actor-Critic (Nair et al. 2020); reference CORL's awac.py.

    critic  y = r + gamma (1 - d) min_i Q'_i(s', a'),  a' ~ pi(.|s');  loss sum_i mean (Q_i(s, a) - y)^2
    actor   -mean min(exp(A / lambda), exp_adv_max) log pi(a|s),  A = min_i Q_i(s, a) - min_i Q_i(s, a_pi),
            a_pi ~ pi(.|s) (a one-sample estimate of V(s)); then Polyak update of the target critics.
Unlike IQL the critic evaluates policy actions (an off-policy SARSA backup on pi); the actor stays on dataset
actions. Discrete actions: the expectations over pi are exact sums, V(s) = sum_a pi(a|s) min_i Q_i(s, a).
"""

from __future__ import annotations

import copy
import math

import torch

from workbench.methods.offline_rl.iql import awr_weights, check_range, q_at, weighted_nll
from workbench.methods.offline_rl.module import ControlModule
from workbench.methods.offline_rl.networks import CategoricalActor, Critics, GaussianActor, soft_update
from workbench.methods.offline_rl.td3_bc import critic_loss, td3_target


def awac_weights(q_data: torch.Tensor, v_pi: torch.Tensor, awac_lambda: float, exp_adv_max: float = 100.0) -> torch.Tensor:
    """min(exp((Q(s, a) - V_pi(s)) / lambda), exp_adv_max) from min-over-critics values [B]."""
    return awr_weights(q_data - v_pi, 1.0 / awac_lambda, exp_adv_max)


class AWAC(ControlModule):
    action_spaces = ("continuous", "discrete")

    def build(self) -> None:
        cfg, spec = self.cfg, self.spec
        check_range(cfg, "awac_lambda", 0.0, math.inf, "e.g. method.awac_lambda=1.0 (CORL); larger -> closer to behaviour cloning")
        check_range(cfg, "exp_adv_max", 0.0, math.inf, "e.g. method.exp_adv_max=100")
        hidden = list(cfg.hidden)
        if spec.discrete:
            self.actor = CategoricalActor(spec.obs_dim, spec.num_actions, hidden)
        else:
            self.actor = GaussianActor(spec.obs_dim, spec.action_dim, hidden)
        self.critic = Critics(spec.obs_dim, spec.action_dim, hidden, n=2, num_actions=spec.num_actions)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)

    def optimizers_spec(self):
        return [("critic", self.critic.parameters(), self.cfg.critic_lr), ("actor", self.actor.parameters(), self.cfg.actor_lr)]

    def policy_value(self, critic: Critics, obs: torch.Tensor) -> torch.Tensor:
        """E_{a ~ pi(.|s)} min_i Q_i(s, a) as [1, B]: one sample (continuous) or the exact sum (discrete)."""
        if critic.discrete:
            probs = self.actor.distribution(obs).probs
            return (probs * critic(obs).min(0).values).sum(-1, keepdim=True).T
        action = self.actor.distribution(obs).sample().clamp(-1.0, 1.0)
        return critic(obs, action).min(0, keepdim=True).values

    def update(self, batch):
        cfg = self.cfg
        obs, actions = batch["obs"], batch["actions"]
        with torch.no_grad():
            target = td3_target(batch["rewards"], batch["dones"], self.policy_value(self.critic_target, batch["next_obs"]), cfg.gamma)
        q = q_at(self.critic, obs, actions)
        loss_q = critic_loss(q, target)
        self.optimize("critic", loss_q)

        with torch.no_grad():
            weights = awac_weights(q_at(self.critic, obs, actions).min(0).values, self.policy_value(self.critic, obs)[0],
                                   cfg.awac_lambda, cfg.exp_adv_max)
        loss_pi = weighted_nll(weights, self.actor.log_prob(obs, actions))
        self.optimize("actor", loss_pi)
        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"critic_loss": loss_q.detach(), "actor_loss": loss_pi.detach(), "q_mean": q.detach().mean(),
                "weight_mean": weights.mean(), "weight_clipped": (weights >= cfg.exp_adv_max).float().mean()}
