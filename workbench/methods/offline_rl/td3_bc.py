"""TD3+BC (Fujimoto & Gu 2021): TD3 with a behaviour-cloning term in the actor loss; official code sfujim/TD3_BC.

    target  y = r + gamma (1 - d) min_i Q'_i(s', clip(pi'(s') + clip(N(0, sigma), -c, c), -1, 1))
    critic  sum_i mean (Q_i(s, a) - y)^2
    actor   -lambda mean Q_1(s, pi(s)) + mean (pi(s) - a)^2,  lambda = alpha / mean|Q_1(s, pi(s))| (detached)
            every policy_freq steps, followed by Polyak updates of both targets.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from workbench.methods.offline_rl.module import ControlModule
from workbench.methods.offline_rl.networks import Critics, DeterministicActor, soft_update


def td3_target(rewards, dones, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + gamma (1 - d) min over critics; ``next_q`` is [n_critics, B]."""
    return rewards + gamma * (1.0 - dones) * next_q.min(0).values


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over critics of the mean squared TD error; ``q`` is [n_critics, B]."""
    return ((q - target.unsqueeze(0)) ** 2).mean(-1).sum()


def td3_bc_actor_loss(q_pi: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor, alpha: float) -> torch.Tensor:
    lmbda = alpha / q_pi.abs().mean().detach()
    return -lmbda * q_pi.mean() + F.mse_loss(pi, actions)


def smoothed_target_action(actor_target, next_obs, policy_noise: float, noise_clip: float) -> torch.Tensor:
    next_a = actor_target(next_obs)
    noise = (torch.randn_like(next_a) * policy_noise).clamp(-noise_clip, noise_clip)
    return (next_a + noise).clamp(-1.0, 1.0)


class TD3BC(ControlModule):
    def build(self) -> None:
        hidden = list(self.cfg.hidden)
        self.actor = DeterministicActor(self.spec.obs_dim, self.spec.action_dim, hidden)
        self.critic = Critics(self.spec.obs_dim, self.spec.action_dim, hidden, n=2)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_target.requires_grad_(False)
        self.critic_target.requires_grad_(False)

    def optimizers_spec(self):
        return [("critic", self.critic.parameters(), self.cfg.critic_lr), ("actor", self.actor.parameters(), self.cfg.actor_lr)]

    def actor_loss(self, obs, actions) -> torch.Tensor:
        pi = self.actor(obs)
        return td3_bc_actor_loss(self.critic(obs, pi)[0], pi, actions, float(self.cfg.alpha))

    def update(self, batch):
        cfg, step = self.cfg, self.global_step
        with torch.no_grad():
            next_a = smoothed_target_action(self.actor_target, batch["next_obs"], cfg.policy_noise, cfg.noise_clip)
            target = td3_target(batch["rewards"], batch["dones"], self.critic_target(batch["next_obs"], next_a), cfg.gamma)
        q = self.critic(batch["obs"], batch["actions"])
        loss_q = critic_loss(q, target)
        self.optimize("critic", loss_q)
        stats = {"critic_loss": loss_q.detach(), "q_mean": q.detach().mean()}
        if step % int(cfg.policy_freq) == 0:
            loss_pi = self.actor_loss(batch["obs"], batch["actions"])
            self.optimize("actor", loss_pi)
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            stats["actor_loss"] = loss_pi.detach()
        return stats
