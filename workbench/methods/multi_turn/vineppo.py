"""VinePPO (Kazemnejad et al. 2024): PPO without a critic; every state's value is a Monte-Carlo estimate.

An episode's actions are cut into steps. ``step_split: turn``: each whole action is one step (the state before
it is the environment before the turn). ``step_split: token``: each action token is a step (the state after k
tokens of an action is the environment before the action plus those k sampled token ids as a prefix), for
single-turn tasks whose short answers have no step delimiter. For the state s_t before step t

    V(s_t) = (1/K) sum_k G_k,   G_k = sum_j gamma^j r_j  over the turns a continuation k from s_t plays,

K continuations ("vines") sampled by the current policy from a copy of the environment in s_t, with the prefix
for token steps. A continuation only collects the rewards earned after s_t: V is a return-to-go. Then

    A_t = r_t + gamma_t V(s_{t+1}) - V(s_t),   V(after the episode's last step) = 0,

with r_t the environment's reward when step t ends a turn (0 inside an action) and gamma_t = gamma at a turn's
end, 1 inside an action (discounting counts turns). Every token of step t gets A_t; the PPO-clip loss of the
family (module.py) uses them, and there is no critic.

Defaults follow the official code (McGill-NLP/VinePPO, ``MathEpisodeGeneratorWithMCAdvantages`` and
``configs/polIter_deepseekSft2_vineppo_MATH.jsonnet``): K = 9 rollouts at the sampling temperature, gamma 1,
identical states (same query text) estimated once (``dedup_states``), V of the terminal state 0, and, past
``max_step_for_value_estimation`` steps (``max_mc_steps``), values filled from the end as
V(s_t) = r_t + V(s_{t+1}) (the sampled return, so those steps get A = 0). The PPO trainer whitens the
advantages over action tokens (``whiten_advantages: true``, unbiased variance; officially per training
micro-batch, here over the whole step's tokens) and adds a KL penalty of 1e-4 (k3) to the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from workbench.errors import ConfigError, require_whole
from workbench.methods.group_rl.advantages import masked_whiten as whiten
from workbench.methods.multi_turn.credit import discounted_returns
from workbench.methods.multi_turn.module import MultiTurnModule
from workbench.methods.multi_turn.rollout import Episodes
from workbench.tasks.envs.base import TextEnv

STEP_SPLITS = ("turn", "token")


@dataclass
class Steps:
    """The steps of a batch of episodes, laid out episode after episode (then turn, then token)."""

    row: torch.Tensor  # (S,) the turn row the step belongs to
    prefix_len: torch.Tensor  # (S,) action tokens of that row taken before the step (0 for turn steps)
    rewards: torch.Tensor  # (S,) r_t: the turn's reward on the step that ends the turn, else 0
    discounts: torch.Tensor  # (S,) gamma_t: gamma on a turn's last step, 1 inside an action
    episode_end: torch.Tensor  # (S,) bool: the episode's last step (the next state is terminal, V = 0)
    index: torch.Tensor  # (S,) t: the step's position within its episode

    def __len__(self) -> int:
        return len(self.row)


def vine_steps(completion_mask: torch.Tensor, turn_rewards: torch.Tensor, episode: torch.Tensor, step_split: str,
               gamma: float = 1.0) -> Steps:
    """Turn rows (sorted by episode, then turn) -> their steps. ``completion_mask`` (N, T) covers each action's
    tokens (contiguous from position 0), ``turn_rewards`` (N,), ``episode`` (N,)."""
    mask = completion_mask.detach().cpu() > 0
    N = mask.shape[0]
    if step_split == "turn":
        rows, prefix_len = torch.arange(N), torch.zeros(N, dtype=torch.long)
        ends_turn = torch.ones(N, dtype=torch.bool)
    elif step_split == "token":
        if N and not bool(mask.any(-1).all()):
            raise ValueError("every action needs at least one token for token steps")
        rows, prefix_len = torch.nonzero(mask, as_tuple=True)  # row-major: rows ascend, positions ascend in a row
        ends_turn = torch.ones_like(rows, dtype=torch.bool)
        ends_turn[:-1] = rows[1:] != rows[:-1]
    else:
        raise ValueError(f"unknown step_split '{step_split}' ({', '.join(STEP_SPLITS)})")
    episode_of_step = episode.cpu()[rows]
    episode_end = torch.ones_like(ends_turn)
    episode_end[:-1] = episode_of_step[1:] != episode_of_step[:-1]
    rewards = torch.where(ends_turn, turn_rewards.detach().cpu().float()[rows], torch.tensor(0.0))
    discounts = torch.where(ends_turn, torch.tensor(float(gamma)), torch.tensor(1.0))
    starts = torch.ones_like(ends_turn)
    starts[1:] = episode_end[:-1]
    first_of_episode = torch.cummax(torch.where(starts, torch.arange(len(rows)), torch.tensor(0)), 0).values
    return Steps(rows, prefix_len, rewards, discounts, episode_end, torch.arange(len(rows)) - first_of_episode)


def vine_step_advantages(values: torch.Tensor, rewards: torch.Tensor, episode_end: torch.Tensor,
                         discounts: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = r_t + gamma_t V(s_{t+1}) - V(s_t) over steps laid out episode after episode; V after an episode's last
    step is 0 (terminal). A NaN value (a state left without an MC estimate) is filled from the end as
    V(s_t) = r_t + gamma_t V(s_{t+1}), as the official code fills states past ``max_step_for_value_estimation``.
    Returns (advantages, the values used)."""
    values = values.detach().float().cpu().clone()
    rewards = rewards.detach().float().cpu()
    discounts = torch.as_tensor(discounts, dtype=torch.float32).expand_as(rewards)
    advantages = torch.zeros_like(values)
    for t in range(len(values) - 1, -1, -1):
        next_value = 0.0 if bool(episode_end[t]) else float(values[t + 1])
        bootstrap = float(rewards[t]) + float(discounts[t]) * next_value
        if math.isnan(float(values[t])):
            values[t] = bootstrap
        advantages[t] = bootstrap - values[t]
    return advantages, values


def spread_to_tokens(step_advantages: torch.Tensor, steps: Steps, completion_mask: torch.Tensor,
                     step_split: str) -> torch.Tensor:
    """(S,) step advantages -> (N, T): every token of step t carries A_t, 0 off the action tokens."""
    mask = completion_mask.detach().cpu().float()
    out = torch.zeros_like(mask)
    if step_split == "turn":
        out[steps.row] = step_advantages[:, None] * mask[steps.row]
    else:
        out[steps.row, steps.prefix_len] = step_advantages
    return out


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) * rsqrt(var + eps) over the masked entries, unbiased variance (treetune ``masked_whiten`` with
    ``unbiased_variance=True``, as VinePPO's PPO trainer calls it); 0 off the mask."""
    return whiten(values, mask, eps, unbiased=True) * mask


def mc_state_values(states: list[TextEnv], prefixes: list[list[int]], keys: list, K: int, gamma: float,
                    play: Callable[[list[TextEnv], list[list[int]] | None], Episodes],
                    batch_size: int | None = None) -> tuple[torch.Tensor, int]:
    """V(s) = mean return-to-go of K continuations from each state (an env copy plus an action prefix).

    States with equal ``keys`` are estimated once and share the value. ``play(envs, prefixes)`` plays every env to
    its end (the prefixes continue the first action; None when all are empty) and returns their Episodes; envs
    are laid out state by state, K copies each, in calls of at most ``batch_size`` envs (None: one call).
    Returns ((S,) values, number of continuations played)."""
    unique: dict = {}
    slot = [unique.setdefault(key, len(unique)) for key in keys]
    first = {}
    for i, s in enumerate(slot):
        first.setdefault(s, i)
    order = [first[s] for s in range(len(unique))]
    envs = [states[i].clone() for i in order for _ in range(K)]
    pres = [list(prefixes[i]) for i in order for _ in range(K)]
    step = batch_size or max(1, len(envs))
    returns = []
    for lo in range(0, len(envs), step):
        chunk_prefixes = pres[lo: lo + step]
        episodes = play(envs[lo: lo + step], chunk_prefixes if any(chunk_prefixes) else None)
        turns = episodes.turns
        to_go = discounted_returns(turns.rewards, turns.episode, gamma)
        starts = torch.ones(len(turns), dtype=torch.bool)
        starts[1:] = turns.episode[1:] != turns.episode[:-1]
        per_episode = torch.zeros(len(episodes))
        per_episode[turns.episode[starts]] = to_go[starts]  # G from the state: the continuation's first turn on
        returns.append(per_episode)
    unique_values = torch.cat(returns).view(len(unique), K).mean(-1) if envs else torch.zeros(0)
    return unique_values[torch.tensor(slot, dtype=torch.long)], len(envs)


def state_key(group: int, env: TextEnv, prefix: list[int]) -> tuple:
    """Two states are the same when they start from the same episode row and have the same transcript, turn count
    and action prefix: every environment here is deterministic given its seed and the actions taken."""
    transcript = tuple((m["role"], m["content"]) for m in env.messages)
    return group, env.turn, transcript, tuple(prefix)


def check_config(cfg) -> None:
    """VinePPO's own fields, one-line errors before anything is built."""
    if cfg.get("step_split", "turn") not in STEP_SPLITS:
        raise ConfigError("method.step_split", f"must be one of {STEP_SPLITS}, got {cfg.get('step_split')!r}",
                          "set method.step_split=turn (whole actions) or token (single-turn answers)")
    require_whole(cfg, "mc_rollouts", 1, "set method.mc_rollouts=9 (official) or fewer on CPU")
    gamma = cfg.get("gamma", 1.0)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError("method.gamma", f"must be in [0, 1], got {gamma!r}", "set method.gamma=1.0")
    for key, low in (("max_mc_steps", 0), ("mc_batch_size", 1)):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"method.{key}", f"must be null or an integer >= {low}, got {value!r}",
                              f"set method.{key}=null")


class VineModule(MultiTurnModule):
    keep_states = True  # the env before every action: where the vines start

    def __init__(self, policy, task, method, trainer_cfg=None):
        check_config(method)
        super().__init__(policy, task, method, trainer_cfg)

    def _play_vines(self, envs: list[TextEnv], prefixes: list[list[int]] | None) -> Episodes:
        return self.play_envs(envs, list(range(len(envs))), temperature=self.cfg.temperature, prefixes=prefixes)

    def advantages(self, episodes: Episodes) -> torch.Tensor:
        cfg, turns = self.cfg, episodes.turns
        split, gamma = cfg.get("step_split", "turn"), float(cfg.get("gamma", 1.0))
        mask = turns.rollout.completion_mask.cpu()
        ids = turns.rollout.completion_ids.cpu()
        steps = vine_steps(mask, turns.rewards, turns.episode, split, gamma)
        limit = cfg.get("max_mc_steps")
        # official: V(s_0) .. V(s_M) by MC with M = max_step_for_value_estimation, later states filled from the end
        estimated = torch.ones(len(steps), dtype=torch.bool) if limit is None else steps.index <= int(limit)
        chosen = torch.nonzero(estimated).flatten().tolist()
        group_of_row = episodes.per_turn(episodes.group)
        states = [turns.states[int(steps.row[s])] for s in chosen]
        prefixes = [ids[int(steps.row[s]), : int(steps.prefix_len[s])].tolist() for s in chosen]
        if cfg.get("dedup_states", True):
            keys = [state_key(int(group_of_row[steps.row[s]]), env, pre) for s, env, pre in zip(chosen, states, prefixes)]
        else:
            keys = list(range(len(chosen)))
        with torch.no_grad():
            mc, n_rollouts = mc_state_values(states, prefixes, keys, int(cfg.mc_rollouts), gamma, self._play_vines,
                                             cfg.get("mc_batch_size"))
        values = torch.full((len(steps),), float("nan"))
        values[estimated] = mc
        step_adv, values = vine_step_advantages(values, steps.rewards, steps.episode_end, steps.discounts)
        advantages = spread_to_tokens(step_adv, steps, mask, split)
        if cfg.get("whiten_advantages", True):
            advantages = masked_whiten(advantages, mask.float())
        self._extra_stats = {"mc_rollouts": float(n_rollouts), "mc_states": float(len(set(keys))),
                             "steps": float(len(steps)), "value_mean": float(mc.mean()) if len(mc) else 0.0,
                             "step_advantage_abs": float(step_adv.abs().mean())}
        return advantages
