"""CQL, Conservative Q-Learning (Kumar et al. 2020; official aviralkumar2907/CQL rlkit cql.py, CORL's cql.py).

SAC (tanh-Gaussian actor, automatic entropy, twin critics; sac.py) whose critic loss adds the CQL(H) penalty

    critic  sum_i [ mean (Q_i(s, a) - y)^2 + alpha' (mean_s logsumexp_j (Q_i(s, a_j) - log mu(a_j|s)) - mean Q_i(s, a)) ]
            y = r + gamma (1 - d) min_i Q'_i(s', a'),  a' ~ pi(.|s')  (no entropy term: the official
            deterministic_backup; backup_entropy=true adds - alpha log pi(a'|s'))
            a_j: N uniform actions on [-1, 1]^d (log mu = -d log 2), N from pi(.|s), N from pi(.|s') (log mu = their
            log pi), all scored at s: the importance-sampled logsumexp of min_q_version 3;
            alpha' = min_q_weight, or with Lagrange (lagrange_threshold > 0)
            alpha' = min_q_weight exp(log alpha'), where log alpha' maximizes alpha' (penalty - threshold).
    actor   SAC's: mean (alpha log pi(a~|s) - min_i Q_i(s, a~)); the first bc_steps use log pi(a_data|s) in place of Q.
Discrete actions: plain double-critic Q-learning y = r + gamma (1 - d) max_a' min_i Q'_i(s', a') with the exact
penalty alpha' (logsumexp_a Q_i(s, .) - Q_i(s, a)); the policy is argmax_a min_i Q_i(s, a).
"""

from __future__ import annotations

import copy
import math

import torch

from workbench.errors import ConfigError
from workbench.methods.offline_rl.iql import check_range, q_at
from workbench.methods.offline_rl.networks import Critics, soft_update
from workbench.methods.offline_rl.sac import SAC, sac_actor_loss, temperature_loss
from workbench.methods.offline_rl.td3_bc import critic_loss


def cql_penalty(q_data: torch.Tensor, q_random: torch.Tensor, q_current: torch.Tensor, log_pi_current: torch.Tensor,
                q_next: torch.Tensor, log_pi_next: torch.Tensor, action_dim: int, temperature: float = 1.0) -> torch.Tensor:
    """Per critic [n]: mean_s T logsumexp_j ((Q(s, a_j) - log mu(a_j|s)) / T) - mean Q(s, a_data).

    ``q_data`` [n, B]; ``q_random``, ``q_current``, ``q_next`` [n, B, N] (critics at s for uniform actions, actions
    from pi(.|s) and from pi(.|s')); ``log_pi_*`` [B, N] the sampling policy's log-densities. The uniform density on
    [-1, 1]^d is 2^-d, so its log is -d log 2 and the random terms are raised by d log 2."""
    uniform_log_density = -action_dim * math.log(2.0)
    scores = torch.cat([q_random - uniform_log_density, q_current - log_pi_current, q_next - log_pi_next], -1)
    return (temperature * torch.logsumexp(scores / temperature, -1)).mean(-1) - q_data.mean(-1)


def discrete_cql_penalty(q_all: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per critic [n]: mean_s logsumexp_a Q(s, a) - mean Q(s, a_data), ``q_all`` [n, B, num_actions]."""
    q_data = q_all.gather(-1, actions.long().view(1, -1, 1).expand(q_all.shape[0], -1, 1)).squeeze(-1)
    return torch.logsumexp(q_all, -1).mean(-1) - q_data.mean(-1)


def lagrange_loss(log_alpha_prime: torch.Tensor, penalty: torch.Tensor, min_q_weight: float, threshold: float) -> torch.Tensor:
    """-alpha' min_q_weight mean_i (penalty_i - threshold): raises alpha' while the gap exceeds the threshold."""
    alpha_prime = log_alpha_prime.exp().clamp(0.0, 1e6)
    return -(alpha_prime * min_q_weight * (penalty.detach() - threshold)).mean()


class CQL(SAC):
    action_spaces = ("continuous", "discrete")

    def build(self) -> None:
        cfg = self.cfg
        check_range(cfg, "min_q_weight", 0.0, math.inf, "e.g. method.min_q_weight=5.0 (or 10.0, the official values)")
        check_range(cfg, "cql_temperature", 0.0, math.inf, "e.g. method.cql_temperature=1.0")
        if isinstance(cfg.num_sampled_actions, bool) or not isinstance(cfg.num_sampled_actions, int) or cfg.num_sampled_actions < 1:
            raise ConfigError("method.num_sampled_actions", f"must be a positive count, got {cfg.num_sampled_actions!r}",
                              "e.g. method.num_sampled_actions=10 (official)")
        if self.spec.discrete:
            self.critic = Critics(self.spec.obs_dim, self.spec.action_dim, list(cfg.hidden), n=2, num_actions=self.spec.num_actions)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        else:
            super().build()
        self.lagrange = cfg.lagrange_threshold is not None and float(cfg.lagrange_threshold) > 0
        self.log_alpha_prime = torch.nn.Parameter(torch.zeros(()))  # alpha' = 1 at the start (CORL; rlkit starts at 0)

    def optimizers_spec(self):
        if self.spec.discrete:
            spec = [("critic", self.critic.parameters(), self.cfg.critic_lr)]
        else:
            spec = super().optimizers_spec()
        if self.lagrange:
            spec.append(("alpha_prime", [self.log_alpha_prime], self.cfg.critic_lr))
        return spec

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if self.spec.discrete:
            return self.critic(obs).min(0).values.argmax(-1)
        return super().act(obs, deterministic)

    def conservative_weight(self) -> torch.Tensor | float:
        """alpha': min_q_weight, times the Lagrange multiplier exp(log alpha') when a threshold is set."""
        if self.lagrange:
            return float(self.cfg.min_q_weight) * self.log_alpha_prime.detach().exp().clamp(0.0, 1e6)
        return float(self.cfg.min_q_weight)

    def sampled_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Critics at each state for N actions per state: obs [B, obs_dim], actions [B, N, d] -> [n, B, N]."""
        return self.critic(obs.unsqueeze(1).expand(-1, actions.shape[1], -1), actions)

    def discrete_update(self, batch) -> dict:
        cfg = self.cfg
        with torch.no_grad():
            next_q = self.critic_target(batch["next_obs"]).min(0).values.max(-1).values
            target = batch["rewards"] + cfg.gamma * (1.0 - batch["dones"]) * next_q
        q_all = self.critic(batch["obs"])
        penalty = discrete_cql_penalty(q_all, batch["actions"])
        q = q_at(self.critic, batch["obs"], batch["actions"])
        loss = critic_loss(q, target) + (self.conservative_weight() * penalty).sum()
        self.optimize("critic", loss)
        if self.lagrange:
            self.optimize("alpha_prime", lagrange_loss(self.log_alpha_prime, penalty, cfg.min_q_weight, cfg.lagrange_threshold))
        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "cql_penalty": penalty.detach().mean()}

    def update(self, batch):
        if self.spec.discrete:
            return self.discrete_update(batch)
        cfg, n = self.cfg, int(self.cfg.num_sampled_actions)
        obs, next_obs = batch["obs"], batch["next_obs"]
        # actor and temperature first, on the critics before this step's update (CORL's order)
        a, log_pi = self.actor.sample(obs)
        if self.global_step < int(cfg.bc_steps):  # behaviour-cloning warm start (official policy_eval_start)
            loss_pi = (self.alpha * log_pi - self.actor.log_prob(obs, batch["actions"])).mean()
        else:
            loss_pi = sac_actor_loss(self.critic(obs, a), log_pi, self.alpha)
        self.optimize("actor", loss_pi)
        if cfg.autotune_alpha:
            self.optimize("alpha", temperature_loss(self.log_alpha, log_pi, self.target_entropy))

        with torch.no_grad():
            next_a, next_log_pi = self.actor.sample(next_obs)
            next_v = self.critic_target(next_obs, next_a).min(0).values
            if cfg.backup_entropy:
                next_v = next_v - self.alpha * next_log_pi
            target = batch["rewards"] + cfg.gamma * (1.0 - batch["dones"]) * next_v
            repeat = lambda x: x.unsqueeze(1).expand(-1, n, -1)  # noqa: E731  [B, dim] -> [B, n, dim]
            a_current, log_pi_current = self.actor.sample(repeat(obs))
            a_next, log_pi_next = self.actor.sample(repeat(next_obs))
            a_random = torch.rand_like(a_current) * 2 - 1
        q = self.critic(obs, batch["actions"])
        q_random, q_current, q_next = self.sampled_q(obs, torch.cat([a_random, a_current, a_next], 1)).split(n, -1)
        penalty = cql_penalty(q, q_random, q_current, log_pi_current, q_next, log_pi_next, self.spec.action_dim,
                              cfg.cql_temperature)
        loss_q = critic_loss(q, target) + (self.conservative_weight() * penalty).sum()
        self.optimize("critic", loss_q)
        if self.lagrange:
            self.optimize("alpha_prime", lagrange_loss(self.log_alpha_prime, penalty, cfg.min_q_weight, cfg.lagrange_threshold))
        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"critic_loss": loss_q.detach(), "actor_loss": loss_pi.detach(), "q_mean": q.detach().mean(),
                "cql_penalty": penalty.detach().mean(), "entropy": -log_pi.detach().mean(), "alpha": self.alpha,
                "alpha_prime": torch.as_tensor(self.conservative_weight())}
