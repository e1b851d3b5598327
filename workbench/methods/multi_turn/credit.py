"""Credit assignment for multi-turn episodes as pure tensor functions, each tested on hand-built trajectories.

Two layouts: per turn (rows sorted by episode then turn, ``episode`` ids (N,)) and per token (an episode's
action tokens end to end, ``Turns.token_view``; ``episode_end`` marks each episode's last token).

* ``discounted_returns``: G_t = r_t + gamma * G_{t+1} within an episode (GiGPO's step returns, Eq. 5).
* ``gae``: delta_t = r_t + gamma_t V_{t+1} - V_t, A_t = delta_t + gamma_t lambda_t A_{t+1}, with a discount per
  token, so one function serves token-level PPO (gamma_t = gamma on every token; TRL's PPO with gamma = 1),
  POAD / BAD (gamma_t = 1 inside an action, gamma on its last token: Bellman backups within an action carry no
  discount, Wen et al. 2024) and, on macro-action sequences, MA-RLHF (Chai et al. 2025).
* ``token_discounts``: those gamma_t per token for ``discount_at`` = token | action.
* ``macro_ids``: which macro action each token belongs to (fixed n-gram or whole-turn termination).
* ``gigpo_advantages``: GiGPO's episode-relative plus anchor-state step-relative advantage.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def discounted_returns(rewards: torch.Tensor, episode: torch.Tensor, gamma: float) -> torch.Tensor:
    """(N,) per-turn rewards of episodes laid out turn after turn -> (N,) discounted return-to-go."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        if t == len(rewards) - 1 or episode[t + 1] != episode[t]:
            running = 0.0
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, gammas: torch.Tensor, lam: float,
        episode_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over flat sequences (tokens or macro actions) of several episodes.

    All inputs (L,). The next value after an episode's last item is 0 (the episode is over). Returns
    (advantages, returns = advantages + values)."""
    rewards, values, gammas = rewards.float(), values.float(), gammas.float()
    adv = torch.zeros_like(values)
    running = 0.0
    for t in range(len(values) - 1, -1, -1):
        last = bool(episode_end[t])
        next_value = 0.0 if last else float(values[t + 1])
        if last:
            running = 0.0
        delta = float(rewards[t]) + float(gammas[t]) * next_value - float(values[t])
        running = delta + float(gammas[t]) * lam * running
        adv[t] = running
    return adv, adv + values


def token_discounts(is_action_end: torch.Tensor, gamma: float, discount_at: str = "token") -> torch.Tensor:
    """Per-token gamma_t: ``token`` discounts every token (token-level PPO, POAD's NTPO baseline); ``action``
    only the last token of each action (POAD), so credit flows undiscounted within an utterance."""
    if discount_at == "token":
        return torch.full(is_action_end.shape, float(gamma))
    if discount_at == "action":
        return torch.where(is_action_end, torch.tensor(float(gamma)), torch.tensor(1.0))
    raise ValueError(f"unknown discount_at '{discount_at}' (token or action)")


def macro_ids(turn_of_token: torch.Tensor, position: torch.Tensor, n: int | None) -> torch.Tensor:
    """(L,) macro-action id of each flat token: consecutive ``n``-token chunks that never cross a turn
    (MA-RLHF's fixed n-gram termination; ``n=None``: the whole turn is one macro; ``n=1``: every token, i.e.
    plain token-level PPO). Ids are 0, 1, 2, ... in order."""
    chunk = position if n is None else position // n
    key = turn_of_token * 1_000_000 + (0 if n is None else chunk)
    change = torch.ones_like(key, dtype=torch.bool)
    change[1:] = key[1:] != key[:-1]
    return torch.cumsum(change.long(), 0) - 1


def segment_mean(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` within each id (ids 0..K-1) -> (K,). Differentiable in ``values``."""
    K = int(ids.max()) + 1 if len(ids) else 0
    sums = torch.zeros(K, dtype=values.dtype, device=values.device).index_add(0, ids, values)
    counts = torch.zeros(K, dtype=values.dtype, device=values.device).index_add(0, ids, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def gigpo_advantages(episode_returns: torch.Tensor, step_returns: torch.Tensor, groups: torch.Tensor,
                     trajectories: torch.Tensor, state_keys: list, omega: float = 1.0, mode: str = "mean_norm",
                     episode_stats: str = "steps", eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """GiGPO (Feng et al. 2025), per turn row: A = A_episode + omega * A_step.

    ``episode_returns`` (N,): the return of the row's episode; ``step_returns`` (N,): discounted return-to-go from
    the row's turn; ``groups`` (N,): the episode group (same task instance and start state); ``trajectories`` (N,):
    the episode id; ``state_keys``: the state each action was taken in.
    A_episode = R(tau) - mean over the group (Eq. 3), divided by the group's std too with mode="mean_std_norm".
    ``episode_stats="steps"`` takes mean/std over the group's turn rows (verl-agent's default
    ``compute_mean_std_cross_steps``: longer episodes weigh more); "trajectories" over one value per episode.
    A_step: rows of one group whose ``state_keys`` are identical form an anchor-state group (Eq. 6); the step
    advantage is the row's step return minus the anchor group's mean (/ std for mean_std_norm) (Eq. 7). A
    singleton anchor group gets 0. Groups of one row (or one episode) get A_episode = 0. Returns (A, A_step).
    """
    if mode not in ("mean_norm", "mean_std_norm"):
        raise ValueError(f"unknown GiGPO mode '{mode}' (mean_norm or mean_std_norm)")
    if episode_stats not in ("steps", "trajectories"):
        raise ValueError(f"unknown episode_stats '{episode_stats}' (steps or trajectories)")
    N = len(episode_returns)
    a_episode = torch.zeros(N)
    a_step = torch.zeros(N)
    by_group: dict[int, list[int]] = defaultdict(list)
    for i in range(N):
        by_group[int(groups[i])].append(i)
    for rows in by_group.values():
        if episode_stats == "steps":
            pool = episode_returns[rows].float()
        else:
            first = {}
            for i in rows:
                first.setdefault(int(trajectories[i]), i)
            pool = episode_returns[list(first.values())].float()
        if len(pool) > 1:
            mean, std = pool.mean(), pool.std()
            for i in rows:
                centered = episode_returns[i] - mean
                a_episode[i] = centered if mode == "mean_norm" else centered / (std + eps)
        anchors: dict = defaultdict(list)
        for i in rows:
            anchors[state_keys[i]].append(i)
        for members in anchors.values():
            if len(members) == 1:
                continue
            values = step_returns[members].float()
            mean, std = values.mean(), values.std()
            for i in members:
                centered = step_returns[i] - mean
                a_step[i] = centered if mode == "mean_norm" else centered / (std + eps)
    return a_episode + omega * a_step, a_step
