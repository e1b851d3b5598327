"""SAC (Haarnoja et al. 2018) with automatic temperature, as in the DSAC-v2 code's SAC (METHODS.md C14).

    target  y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
    critic  sum_i mean (Q_i(s, a) - y)^2
    actor   mean (alpha log pi(a~|s) - min_i Q_i(s, a~)),  a~ ~ pi(.|s) reparameterized
    alpha   -mean log_alpha (log pi(a~|s) + H_target),  H_target = -action_dim;  then Polyak targets.
"""

from __future__ import annotations

import copy

import torch

from workbench.methods.offline_rl.module import ControlModule
from workbench.methods.offline_rl.networks import Critics, TanhGaussianActor, soft_update
from workbench.methods.offline_rl.td3_bc import critic_loss


def soft_q_target(rewards, dones, next_q: torch.Tensor, next_log_prob: torch.Tensor, alpha, gamma: float) -> torch.Tensor:
    """r + gamma (1 - d) (min over critics of Q'(s', a') - alpha log pi(a'|s')); ``next_q`` is [n_critics, B]."""
    return rewards + gamma * (1.0 - dones) * (next_q.min(0).values - alpha * next_log_prob)


def sac_actor_loss(q_pi: torch.Tensor, log_prob: torch.Tensor, alpha) -> torch.Tensor:
    """mean(alpha log pi - min_i Q_i); ``q_pi`` is [n_critics, B]."""
    return (alpha * log_prob - q_pi.min(0).values).mean()


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


class SAC(ControlModule):
    def build(self) -> None:
        hidden = list(self.cfg.hidden)
        self.actor = TanhGaussianActor(self.spec.obs_dim, self.spec.action_dim, hidden)
        self.critic = self.make_critic(hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(self.cfg.init_alpha)).log())
        self.target_entropy = -float(self.spec.action_dim) if self.cfg.get("target_entropy") is None else float(self.cfg.target_entropy)

    def make_critic(self, hidden):
        return Critics(self.spec.obs_dim, self.spec.action_dim, hidden, n=2)

    def optimizers_spec(self):
        spec = [("critic", self.critic.parameters(), self.cfg.critic_lr), ("actor", self.actor.parameters(), self.cfg.actor_lr)]
        if self.cfg.autotune_alpha:
            spec.append(("alpha", [self.log_alpha], self.cfg.alpha_lr))
        return spec

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def critic_update(self, batch) -> dict:
        with torch.no_grad():
            next_a, next_log_prob = self.actor.sample(batch["next_obs"])
            target = soft_q_target(batch["rewards"], batch["dones"], self.critic_target(batch["next_obs"], next_a),
                                   next_log_prob, self.alpha, self.cfg.gamma)
        q = self.critic(batch["obs"], batch["actions"])
        loss = critic_loss(q, target)
        self.optimize("critic", loss)
        return {"critic_loss": loss.detach(), "q_mean": q.detach().mean()}

    def policy_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[n_critics, B] action values the actor maximizes (distributional critics: their means)."""
        return self.critic(obs, actions)

    def actor_update(self, batch) -> dict:
        a, log_prob = self.actor.sample(batch["obs"])
        loss = sac_actor_loss(self.policy_q(batch["obs"], a), log_prob, self.alpha)
        self.optimize("actor", loss)
        stats = {"actor_loss": loss.detach(), "entropy": -log_prob.detach().mean(), "alpha": self.alpha}
        if self.cfg.autotune_alpha:
            self.optimize("alpha", temperature_loss(self.log_alpha, log_prob, self.target_entropy))
        return stats

    def update(self, batch):
        stats = self.critic_update(batch)
        if self.global_step % int(self.cfg.get("policy_freq", 1)) == 0:
            stats.update(self.actor_update(batch))
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return stats
