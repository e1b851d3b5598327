"""HNPG, hybrid natural policy gradient (Zhou, Sekhari, Song, Sun 2023, "Offline data enhanced on-policy policy
gradient with provable guarantees"; METHODS.md C6; official code YifeiZhou02/HNPG ``trpo.py``): on-policy
NPG/TRPO whose critic Q(s, a) is fit on both on-policy Monte-Carlo returns and a fitted-Q TD loss on offline data.

Each training step (one NPG iteration):
    collect   whole episodes with the Gaussian policy pi(a|s) = N(mu(s), exp(log_std)) until >= batch_size steps
    values    V(s) = mean over value_samples actions a ~ pi(.|s) of Q(s, a)    (official ``QValue.get_value``)
    returns   G_t = r_t + gamma G_{t+1}; at a time-limit cut G_T bootstraps with V(s_T) (a true terminal: 0)
    critic    critic_iters Adam steps on   mean (Q(s, a) - G)^2  over the online batch
                                      + w  mean (Q(s', a') - (r' + gamma (1 - d') Q(s'', a''~pi)))^2  offline
              (targets fixed during the fit, as in the official ``update_q``; w = offline_weight, official 1)
    advantage GAE(gamma, lambda) on the online batch with the refit critic's V; on offline states
              A = Q(s', a~pi) - V(s') with fresh policy actions (official ``update_params``, HYBRID)
    policy    surrogate L = -mean A exp(log pi(a|s) - log pi_old(a|s)) over online + offline states;
              x = F^-1 (-grad L) by conjugate gradient on Fisher-vector products F v = grad(grad KL . v) + damping v;
              full step x sqrt(2 delta / (x^T F x)) (the largest step with KL(pi_old || pi) ~ delta), then TRPO's
              backtracking line search (halve up to 10 times, accept when the surrogate improves by > 0.1 of
              the linear prediction).

``offline_weight = 0`` is plain NPG/TRPO with a Monte-Carlo Q critic on on-policy data only (the official
code's HYBRID = False): the on-policy baseline to compare the hybrid against under the same budget.

Adaptations to Pendulum (the official code is finite-horizon Comblock, H <= 50, one network per step h):
one stationary policy and Q network (not one per h), discount gamma = 0.99 instead of 1 with truncation
bootstrapping (Pendulum never terminates; its 200-step time limit is not part of the state), rewards scaled by
``reward_scale`` (Pendulum's rewards reach -16 per step; Q regresses on returns of hundreds otherwise), states
normalized with the dataset's mean/std as the other offline methods do.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from workbench.errors import ConfigError
from workbench.methods.offline_rl.module import ControlModule
from workbench.methods.offline_rl.networks import mlp
from workbench.tasks.control.envs import make_env, to_env_action

# ---- pure functions ----------------------------------------------------------------------------------------


def conjugate_gradient(Avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Solve A x = b for a symmetric positive-definite A given only products v -> A v (x starts at 0)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        Ap = Avp(p)
        step = rr / (p @ Ap)
        x = x + step * p
        r = r - step * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def kl_step_scale(direction: torch.Tensor, fisher_direction: torch.Tensor, max_kl: float) -> torch.Tensor:
    """sqrt(2 delta / (x^T F x)): scaling x by it gives the quadratic KL model 0.5 (s x)^T F (s x) = delta."""
    return torch.sqrt(2.0 * max_kl / (direction @ fisher_direction))


def hybrid_critic_loss(q_online: torch.Tensor, returns: torch.Tensor, q_offline: torch.Tensor | None,
                       offline_targets: torch.Tensor | None, offline_weight: float) -> torch.Tensor:
    """mean (Q(s, a) - G)^2 on online samples + w mean (Q(s', a') - y')^2 on offline samples (w = 0: MC only)."""
    loss = (q_online - returns).pow(2).mean()
    if offline_weight > 0 and q_offline is not None:
        loss = loss + offline_weight * (q_offline - offline_targets).pow(2).mean()
    return loss


def fitted_q_target(rewards: torch.Tensor, dones: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma (1 - d) Q(s', a'), a' ~ pi(.|s') (the official code samples one action)."""
    return rewards + gamma * (1.0 - dones) * next_q


def returns_and_advantages(rewards: torch.Tensor, values: torch.Tensor, last_values: torch.Tensor,
                           ends: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted returns and GAE(gamma, lambda) over consecutive episodes.

    ``ends[t]`` marks the last step of an episode; there the return and the TD error bootstrap with
    ``last_values[t]`` (V of the state after the cut) unless ``dones[t]`` (a true terminal: 0). ``values`` is
    V(s_t). Returns (G, A), both [T]."""
    r, v, last = rewards.tolist(), values.tolist(), last_values.tolist()
    end, done = ends.tolist(), dones.tolist()
    T = len(r)
    returns, advantages = [0.0] * T, [0.0] * T
    next_return = next_value = next_adv = 0.0
    for t in reversed(range(T)):
        if end[t]:
            boot = 0.0 if done[t] else float(last[t])
            next_return, next_value, next_adv = boot, boot, 0.0
        returns[t] = r[t] + gamma * next_return
        advantages[t] = r[t] + gamma * next_value - v[t] + gamma * lam * next_adv
        next_return, next_value, next_adv = returns[t], v[t], advantages[t]
    returns, advantages = torch.tensor(returns), torch.tensor(advantages)
    return returns, advantages


def surrogate_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean A exp(log pi - log pi_old) (TRPO's surrogate; its gradient at pi = pi_old is the policy gradient)."""
    return -(advantages * torch.exp(log_prob - old_log_prob)).mean()


def gaussian_kl(mean_old, log_std_old, mean, log_std) -> torch.Tensor:
    """KL(N(mean_old, std_old) || N(mean, std)) summed over action dimensions, per state."""
    var_old, var = (2 * log_std_old).exp(), (2 * log_std).exp()
    return (log_std - log_std_old + (var_old + (mean_old - mean).pow(2)) / (2 * var) - 0.5).sum(-1)


# ---- networks ----------------------------------------------------------------------------------------------


class GaussianPolicy(nn.Module):
    """N(mu(s), exp(log_std)) with tanh hidden layers, a linear mean head scaled down at init and a
    state-independent log-std (the official ``Policy``). Samples are unbounded; the environment clips them."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], init_log_std: float = 0.0):
        super().__init__()
        self.net = mlp([obs_dim, *hidden, action_dim], activation=nn.Tanh)
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        return (-(actions - mean).pow(2) / (2 * (2 * log_std).exp()) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        return mean + log_std.exp() * torch.randn_like(mean)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return (self(obs)[0] if deterministic else self.sample(obs)).clamp(-1.0, 1.0)


class QNet(nn.Module):
    """Q(s, a) -> [B], tanh hidden layers, small output layer (the official ``QValue``)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([obs_dim + action_dim, *hidden, 1], activation=nn.Tanh)
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], -1)).squeeze(-1)


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.data.reshape(-1) for p in module.parameters()])


def set_flat_params(module: nn.Module, flat: torch.Tensor) -> None:
    i = 0
    for p in module.parameters():
        n = p.numel()
        p.data.copy_(flat[i:i + n].view_as(p))
        i += n


# ---- the module --------------------------------------------------------------------------------------------


class HNPG(ControlModule):
    def build(self) -> None:
        cfg = self.cfg
        checks = [
            ("method.max_kl", float(cfg.max_kl) > 0, "use 0.01 (the official default)"),
            ("method.damping", float(cfg.damping) >= 0, "use 0.1 (the official default)"),
            ("method.gae_lambda", 0 <= float(cfg.gae_lambda) <= 1, "use 0.97 (the official default)"),
            ("method.gamma", 0 < float(cfg.gamma) <= 1, "use 0.99"),
            ("method.offline_weight", float(cfg.offline_weight) >= 0, "use 1 (hybrid) or 0 (on-policy NPG)"),
            ("method.cg_iters", int(cfg.cg_iters) >= 1, "use 10 (the official default)"),
            ("method.critic_iters", int(cfg.critic_iters) >= 1, "use 30 (the official default)"),
            ("method.value_samples", int(cfg.value_samples) >= 1, "use 10 (the official default)"),
            ("method.batch_size", int(cfg.batch_size) >= 1, "use 1000 (the official default)"),
        ]
        for field, ok, fix in checks:
            if not ok:
                raise ConfigError(field, f"out of range ({cfg.get(field.split('.')[-1])})", fix)
        if not self.online:
            raise ConfigError("method.online.enabled", "false, but HNPG is on-policy: it collects episodes every step",
                              "set method.online.enabled=true")
        self.offline_weight = float(cfg.offline_weight)
        if self.offline_weight > 0 and self.task.dataset is None:
            warnings.warn(f"HNPG: task '{self.task.name}' has no dataset, so it runs as on-policy NPG (offline_weight "
                          f"{self.offline_weight} unused); use a task with a dataset (e.g. task=pendulum_expert) for the hybrid")
            self.offline_weight = 0.0
        self.actor = GaussianPolicy(self.spec.obs_dim, self.spec.action_dim, list(cfg.hidden), float(cfg.init_log_std))
        self.critic = QNet(self.spec.obs_dim, self.spec.action_dim, list(cfg.critic_hidden))
        self.env_steps = 0

    def optimizers_spec(self):
        # the critic's Adam is the counted optimizer; the policy moves by hand (natural gradient + line search)
        return [("critic", self.critic.parameters(), self.cfg.critic_lr)]

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) = E_{a ~ pi} Q(s, a), averaged over value_samples sampled actions."""
        n = int(self.cfg.value_samples)
        rep = obs.repeat(n, 1)
        return self.critic(rep, self.actor.sample(rep)).view(n, -1).mean(0)

    # ---- on-policy collection: whole episodes with the stochastic policy ----
    @torch.no_grad()
    def collect_episodes(self) -> dict[str, torch.Tensor]:
        if self._env is None:
            self._env = make_env(self.spec.env_id, seed=int(self.run_seed) + 7919 * self.global_step)
        obs_l, act_l, rew_l, next_l, end_l, done_l = [], [], [], [], [], []
        while len(rew_l) < int(self.cfg.batch_size):
            obs, _ = self._env.reset()
            ep_return = 0.0
            while True:
                o = torch.as_tensor(obs, dtype=torch.float32)
                a = self.actor.sample(self.normalize(o).unsqueeze(0))[0]
                next_obs, reward, terminated, truncated, _ = self._env.step(to_env_action(self.spec, a.numpy()))
                obs_l.append(o)
                act_l.append(a)
                rew_l.append(float(reward))
                next_l.append(torch.as_tensor(next_obs, dtype=torch.float32))
                end_l.append(bool(terminated or truncated))
                done_l.append(bool(terminated))
                ep_return += float(reward)
                obs = next_obs
                if terminated or truncated:
                    break
            self._episode_returns.append(ep_return)
        self.env_steps += len(rew_l)
        return {"obs": self.normalize(torch.stack(obs_l)), "actions": torch.stack(act_l),
                "rewards": torch.tensor(rew_l) * self.reward_scale + self.reward_bias,
                "next_obs": self.normalize(torch.stack(next_l)), "ends": torch.tensor(end_l), "dones": torch.tensor(done_l)}

    # ---- one HNPG iteration ----
    def hnpg_update(self, on: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, gamma, lam = self.cfg, float(self.cfg.gamma), float(self.cfg.gae_lambda)
        hybrid = self.offline_weight > 0
        off = None
        if hybrid:
            off = self.buffer.sample(int(cfg.get("offline_batch_size") or cfg.batch_size))
            off["obs"], off["next_obs"] = self.normalize(off["obs"]), self.normalize(off["next_obs"])
            off["rewards"] = off["rewards"] * self.reward_scale + self.reward_bias
        last_v = torch.zeros_like(on["rewards"])
        with torch.no_grad():
            ends = on["ends"] & ~on["dones"]
            if ends.any():
                last_v[ends] = self.value(on["next_obs"][ends])
            returns, _ = returns_and_advantages(on["rewards"], self.value(on["obs"]), last_v, on["ends"], on["dones"], gamma, lam)
            off_targets = None
            if hybrid:
                next_q = self.critic(off["next_obs"], self.actor.sample(off["next_obs"]))
                off_targets = fitted_q_target(off["rewards"], off["dones"], next_q, gamma)
        # critic: online Monte-Carlo regression + offline fitted-Q, targets fixed during the fit
        for _ in range(int(cfg.critic_iters)):
            q_on = self.critic(on["obs"], on["actions"])
            q_off = self.critic(off["obs"], off["actions"]) if hybrid else None
            loss_q = hybrid_critic_loss(q_on, returns, q_off, off_targets, self.offline_weight)
            self.optimize("critic", loss_q)
        stats = {"critic_loss": float(loss_q.detach()), "q_mean": float(q_on.detach().mean())}
        # advantages with the refit critic
        with torch.no_grad():
            if ends.any():
                last_v[ends] = self.value(on["next_obs"][ends])
            _, adv = returns_and_advantages(on["rewards"], self.value(on["obs"]), last_v, on["ends"], on["dones"], gamma, lam)
            states, actions = on["obs"], on["actions"]
            if hybrid and cfg.get("offline_policy_states", True):
                off_a = self.actor.sample(off["obs"])
                off_adv = self.critic(off["obs"], off_a) - self.value(off["obs"])
                states, actions = torch.cat([states, off["obs"]]), torch.cat([actions, off_a])
                adv = torch.cat([adv, off_adv])
        stats.update(self.npg_step(states, actions, adv))
        stats["advantage_abs_mean"] = float(adv.abs().mean())
        return stats

    def npg_step(self, states: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor) -> dict[str, float]:
        cfg, policy = self.cfg, self.actor
        params = list(policy.parameters())
        with torch.no_grad():
            old_log_prob = policy.log_prob(states, actions)
            mean_old, log_std_old = (t.detach() for t in policy(states))

        def loss_fn() -> torch.Tensor:
            return surrogate_loss(policy.log_prob(states, actions), old_log_prob, adv)

        loss = loss_fn()
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        damping = float(cfg.damping)

        def fvp(v: torch.Tensor) -> torch.Tensor:
            mean, log_std = policy(states)
            kl = gaussian_kl(mean_old, log_std_old, mean, log_std).mean()
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(kl, params, create_graph=True)])
            hv = torch.autograd.grad(g @ v, params)
            return torch.cat([t.reshape(-1) for t in hv]).detach() + damping * v

        direction = conjugate_gradient(fvp, -grad.detach(), int(cfg.cg_iters))
        scale = kl_step_scale(direction, fvp(direction), float(cfg.max_kl))
        full_step = scale * direction
        expected = float(-grad @ full_step)  # linear prediction of the surrogate's decrease
        old = flat_params(policy)
        loss_before, accepted, loss_after = float(loss.detach()), 0.0, float(loss.detach())
        with torch.no_grad():
            for frac in 0.5 ** np.arange(int(cfg.line_search_steps)):
                set_flat_params(policy, old + float(frac) * full_step)
                new_loss = float(loss_fn())
                improve = loss_before - new_loss
                if improve > 0 and improve / (expected * frac) > float(cfg.accept_ratio):
                    accepted, loss_after = float(frac), new_loss
                    break
            else:
                set_flat_params(policy, old)
            mean, log_std = policy(states)
            kl = float(gaussian_kl(mean_old, log_std_old, mean, log_std).mean())
        return {"surrogate_before": loss_before, "surrogate_after": loss_after, "step_fraction": accepted, "kl": kl,
                "policy_std": float(policy.log_std.detach().exp().mean())}

    # ---- Lightning: one NPG iteration per training step, ControlModule's logging and evaluation ----
    def training_step(self, _, batch_idx):
        started = time.perf_counter()
        self._counted = False
        with self._timed("env"):
            rollout = self.collect_episodes()
        with self._timed("update"):
            stats = self.hnpg_update(rollout)
        stats["env_steps"] = float(self.env_steps)
        self.log_train(stats, started, buffer_size=False)  # the buffer holds only the dataset

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint.pop("workbench_buffer", None)  # the buffer holds only the dataset: it is rebuilt from the task
        checkpoint["workbench_env_steps"] = self.env_steps

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        self.env_steps = int(checkpoint.get("workbench_env_steps", 0))
