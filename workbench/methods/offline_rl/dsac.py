"""DSAC-T (Duan et al., "Distributional Soft Actor-Critic with Three Refinements"; METHODS.md C14), as the official
code Jingliang-Duan/DSAC-v2 ``dsac_v2.py`` writes it (``__compute_loss_q``, ``__compute_target_q``, ``__update``).

Each of the two critics outputs a Gaussian return distribution Z_i(s, a) = N(Q_i, sigma_i^2), sigma_i = softplus(.)
(the code's ``ActionValueDistri``: no other floor or clamp). sigma_bar_i is a running mean of the batch-mean sigma_i:
the first batch's mean, then sigma_bar <- (1 - tau_b) sigma_bar + tau_b mean(sigma_i), before the loss uses it.

    twin value distribution   j = argmin_i Q'_i(s', a')  (target critics; a' ~ pi'(.|s'), the target policy)
    expected target           y_q   = r + gamma (1 - d) (Q'_j - alpha log pi'(a'|s'))
    sampled target            z'    = Q'_j + clip(eps, -3, 3) sigma'_j,  eps ~ N(0, 1)
                              y_z   = r + gamma (1 - d) (z' - alpha log pi'(a'|s'))
                              y_z^b = Q_i + clip(y_z - Q_i, -3 sigma_bar_i, 3 sigma_bar_i)  (around critic i's own Q)
    gradient scale            w_i   = clip(sigma_bar_i^2 / (sg(sigma_i)^2 + 0.1), 0.1, 10)
    critic                    sum_i mean w_i [ H(Q_i - y_q)
                                               + sigma_i (sg(sigma_i)^2 - H(sg(Q_i) - y_z^b)) / (sg(sigma_i) + 0.1) ]
                              with H the Huber loss (delta 50) and sg stop-gradient
    actor                     mean(alpha log pi(a~|s) - min_i Q_i(s, a~))  (means only), every ``policy_freq`` steps,
                              with the temperature step and the Polyak updates of the target critics and target policy.

Differences from the official code: the actor loss here sees the critic after this step's critic update (the
official code takes both gradients before stepping either), and collection is one environment step per update
(``method.online.env_steps_per_update``; the official scripts sample 8 (Pendulum) or 20 (MuJoCo) per update).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from workbench.errors import ConfigError
from workbench.methods.offline_rl.networks import Critics, TanhGaussianActor, soft_update
from workbench.methods.offline_rl.sac import SAC


def gaussian_critic(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic output [..., 2] -> (mean Q, sigma = softplus(raw)), the official ``ActionValueDistri`` head."""
    return out[..., 0], F.softplus(out[..., 1])


def sample_return(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor, noise_clip: float = 3.0) -> torch.Tensor:
    """z = mean + clip(noise, -c, c) std: a draw from N(mean, std^2) at most c standard deviations away (c = 3)."""
    return mean + noise.clamp(-noise_clip, noise_clip) * std


def twin_targets(rewards, dones, next_mean: torch.Tensor, next_sample: torch.Tensor, next_log_prob: torch.Tensor,
                 alpha, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_q, y_z) from the target critic with the smaller mean (``next_*`` are [2, B]), j = argmin_i Q'_i:
    y_q = r + gamma (1 - d) (Q'_j - alpha log pi'),  y_z = r + gamma (1 - d) (z'_j - alpha log pi')."""
    j = next_mean.argmin(0, keepdim=True)
    q_next = next_mean.gather(0, j).squeeze(0)
    z_next = next_sample.gather(0, j).squeeze(0)
    keep = gamma * (1.0 - dones)
    return rewards + keep * (q_next - alpha * next_log_prob), rewards + keep * (z_next - alpha * next_log_prob)


def bound_target(target_sample: torch.Tensor, q: torch.Tensor, sigma_bar: torch.Tensor, bound: float = 3.0) -> torch.Tensor:
    """y_z^b = Q + clip(y_z - Q, -b sigma_bar, b sigma_bar) (b = 3), centred on the critic's own (detached) mean Q."""
    td = bound * sigma_bar
    return q + torch.maximum(torch.minimum(target_sample - q, td), -td)


def gradient_scale(sigma_bar: torch.Tensor, sigma: torch.Tensor, bias: float = 0.1, lo: float = 0.1,
                   hi: float = 10.0) -> torch.Tensor:
    """w = clip(sigma_bar^2 / (sigma^2 + bias), lo, hi) on a detached sigma (variance-based gradient adjusting)."""
    return (sigma_bar**2 / (sigma.detach() ** 2 + bias)).clamp(lo, hi)


def dsac_critic_loss(q: torch.Tensor, sigma: torch.Tensor, target_q: torch.Tensor, target_bound: torch.Tensor,
                     sigma_bar: torch.Tensor, delta: float = 50.0, bias: float = 0.1,
                     scale_clip: tuple[float, float] = (0.1, 10.0)) -> torch.Tensor:
    """Sum over critics of  mean_B w [ H(Q - y_q) + sigma (sg(sigma)^2 - H(sg(Q) - y_z^b)) / (sg(sigma) + bias) ].

    ``q``, ``sigma``: [n, B]; ``target_q`` (y_q), ``target_bound`` (y_z^b): [n, B] or [B]; ``sigma_bar``: [n].
    H is the Huber loss with ``delta`` (0.5 x^2 for |x| <= delta, delta (|x| - delta / 2) beyond); w is
    ``gradient_scale``. So dL/dQ = w H'(Q - y_q) / B and dL/dsigma = w (sigma^2 - H(Q - y_z^b)) / ((sigma + bias) B).
    """
    sigma_d, q_d = sigma.detach().clamp(min=0.0), q.detach()
    w = gradient_scale(sigma_bar.unsqueeze(-1), sigma_d, bias, *scale_clip)
    mean_term = F.huber_loss(q, target_q.expand_as(q), delta=delta, reduction="none")
    sample_err = F.huber_loss(q_d, target_bound.expand_as(q), delta=delta, reduction="none")
    std_term = sigma * (sigma_d**2 - sample_err) / (sigma_d + bias)
    return (w * (mean_term + std_term)).mean(-1).sum()


class DSACT(SAC):
    def build(self) -> None:
        cfg = self.cfg
        for field, ok, problem, fix in (
            ("tau_b", 0.0 < float(cfg.tau_b) <= 1.0, "must be in (0, 1]", "use e.g. 0.005 (the official default: tau)"),
            ("huber_delta", float(cfg.huber_delta) > 0, "must be > 0", "use 50 (official)"),
            ("td_bound", float(cfg.td_bound) > 0, "must be > 0", "use 3 (official)"),
            ("noise_clip", float(cfg.noise_clip) > 0, "must be > 0", "use 3 (official)"),
            ("policy_freq", int(cfg.policy_freq) >= 1, "must be >= 1", "use 2 (official delay_update)"),
            ("variance_bias", float(cfg.variance_bias) > 0, "must be > 0", "use 0.1 (official)"),
            ("scale_clip", len(cfg.scale_clip) == 2 and 0 < float(cfg.scale_clip[0]) <= float(cfg.scale_clip[1]),
             "must be [lo, hi] with 0 < lo <= hi", "use [0.1, 10] (official)"),
        ):
            if not ok:
                raise ConfigError(f"method.{field}", f"{cfg[field]} {problem}", fix)
        super().build()
        hidden = list(cfg.hidden)
        self.actor = TanhGaussianActor(self.spec.obs_dim, self.spec.action_dim, hidden,
                                       log_std_max=float(cfg.policy_log_std_max))
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.register_buffer("sigma_bar", torch.full((2,), -1.0))  # -1: not yet set (the first batch sets it)

    def make_critic(self, hidden):
        return Critics(self.spec.obs_dim, self.spec.action_dim, hidden, n=2, out_dim=2)

    def distribution(self, critic, obs, actions) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_critic(critic(obs, actions))

    @torch.no_grad()
    def update_sigma_bar(self, sigma: torch.Tensor) -> None:
        batch_mean = sigma.mean(-1)
        tau_b = float(self.cfg.tau_b)
        self.sigma_bar.copy_(torch.where(self.sigma_bar < 0, batch_mean, (1 - tau_b) * self.sigma_bar + tau_b * batch_mean))

    def critic_update(self, batch) -> dict:
        cfg = self.cfg
        q, sigma = self.distribution(self.critic, batch["obs"], batch["actions"])
        self.update_sigma_bar(sigma)
        with torch.no_grad():
            next_a, next_log_prob = self.actor_target.sample(batch["next_obs"])
            next_mean, next_sigma = self.distribution(self.critic_target, batch["next_obs"], next_a)
            next_sample = sample_return(next_mean, next_sigma, torch.randn_like(next_mean), float(cfg.noise_clip))
            target_q, target_z = twin_targets(batch["rewards"], batch["dones"], next_mean, next_sample, next_log_prob,
                                              self.alpha, float(cfg.gamma))
            target_bound = bound_target(target_z.unsqueeze(0), q.detach(), self.sigma_bar.unsqueeze(-1), float(cfg.td_bound))
        loss = dsac_critic_loss(q, sigma, target_q, target_bound, self.sigma_bar, float(cfg.huber_delta),
                                float(cfg.variance_bias), (float(cfg.scale_clip[0]), float(cfg.scale_clip[1])))
        self.optimize("critic", loss)
        return {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "sigma_mean": sigma.detach().mean(),
                "sigma_bar": self.sigma_bar.mean()}

    def policy_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.distribution(self.critic, obs, actions)[0]

    def update(self, batch):
        stats = self.critic_update(batch)
        if self.global_step % int(self.cfg.policy_freq) == 0:  # official: actor, temperature and targets together
            stats.update(self.actor_update(batch))
            soft_update(self.critic_target, self.critic, float(self.cfg.tau))
            soft_update(self.actor_target, self.actor, float(self.cfg.tau))
        return stats
