"""Small MLP actors and critics shared by the control algorithms (actions live in [-1, 1], see tasks/control/envs.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes: list[int], layer_norm: bool = False, activation=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            if layer_norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(activation())
    return nn.Sequential(*layers)


class DeterministicActor(nn.Module):
    """a = tanh(f(s)) (TD3+BC, PRDC)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([obs_dim, *hidden, action_dim])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self(obs)


class GaussianActor(nn.Module):
    """N(tanh(f(s)), exp(log_std)) with a state-independent log-std (IQL's and AWAC's reference policies); the
    log-likelihood of dataset actions is what advantage-weighted regression maximizes."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], log_std_min: float = -20.0, log_std_max: float = 2.0):
        super().__init__()
        self.net = mlp([obs_dim, *hidden, action_dim])
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = torch.tanh(self.net(obs))
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp().expand_as(mean)
        return torch.distributions.Normal(mean, std)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.distribution(obs).log_prob(actions).sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        dist = self.distribution(obs)
        return (dist.mean if deterministic else dist.sample()).clamp(-1.0, 1.0)


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)) (SAC, CQL, DSAC-T): reparameterized samples with their log-probability."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], log_std_min: float = -20.0, log_std_max: float = 2.0):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden])
        self.trunk.append(nn.ReLU())
        self.mu = nn.Linear(hidden[-1], action_dim)
        self.log_std = nn.Linear(hidden[-1], action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def _params(self, obs):
        h = self.trunk(obs)
        return self.mu(h), self.log_std(h).clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action, log pi(action|s)) with the tanh change of variables, numerically stable form."""
        mu, log_std = self._params(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        log_prob = (-0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        mu, log_std = self._params(obs)
        u = torch.atanh(actions.clamp(-1 + eps, 1 - eps))
        log_prob = (-0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self._params(obs)[0])
        return self.sample(obs)[0]


class CategoricalActor(nn.Module):
    """Discrete actions: logits f(s)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([obs_dim, *hidden, num_actions])

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.net(obs))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.distribution(obs).log_prob(actions.long().view(-1))

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        logits = self.net(obs)
        if deterministic:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits).sample()


class Critics(nn.Module):
    """``n`` independent Q networks. Continuous: Q(s, a) -> [n, B]. Discrete: Q(s) -> [n, B, num_actions]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], n: int = 2, num_actions: int | None = None,
                 layer_norm: bool = False, out_dim: int = 1):
        super().__init__()
        self.discrete = num_actions is not None
        inp = obs_dim if self.discrete else obs_dim + action_dim
        out = num_actions if self.discrete else out_dim
        self.out_dim = out_dim
        self.nets = nn.ModuleList(mlp([inp, *hidden, out], layer_norm=layer_norm) for _ in range(n))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        if self.discrete:
            return torch.stack([net(obs) for net in self.nets])
        x = torch.cat([obs, actions], -1)
        out = torch.stack([net(x) for net in self.nets])
        return out.squeeze(-1) if self.out_dim == 1 else out


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([obs_dim, *hidden, 1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) target + tau source."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)
