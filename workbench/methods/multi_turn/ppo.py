"""PPO with a learned critic over multi-turn episodes: token-level GAE (the baseline), POAD's action-decomposed
credit, and MA-RLHF's macro actions. One module; ``credit`` picks the estimator.

The critic (critic.py) predicts V(s, a_<t) at every action token. Rewards sit on the last token of each action
(the environment's reward for that action), optionally minus beta * KL_t(pi_old || pi_ref) on every token
(``kl_in_reward``, TRL's PPO). An episode's action tokens are laid end to end (environment tokens are not
actions: they carry no value, reward or loss) and

* ``credit: gae``, ``discount_at: token``: delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum_l (gamma lambda)^l
  delta_{t+l} (TRL / verl PPO: gamma 1, lambda 0.95; with gamma < 1 this is POAD's NTPO baseline);
* ``credit: gae``, ``discount_at: action``: POAD / BAD (Wen et al. 2024): inside an action
  delta = V(s, a_1:k) - V(s, a_1:k-1) and A = delta + lambda A' (no discount, no reward); on an action's last
  token delta = r + gamma V(s', empty) - V(s, a_1:L-1) and A = delta + gamma lambda A';
* ``credit: macro``: MA-RLHF (Chai et al. 2025): tokens grouped into macro actions (``macro_n``-token chunks
  within an action, or ``macro_n: null`` for the whole action); V(omega) = mean of its token values (equal
  weights), GAE over macro actions, every token of a macro shares its advantage, the value loss is taken on
  V(omega). ``macro_n: 1`` is token-level PPO.

Value loss: 0.5 * max((V - R)^2, (clip(V, V_old +- cliprange_value) - R)^2), scaled by ``vf_coef``; the critic
trains in the same backward pass with its own learning rate (``critic_lr``).
"""

from __future__ import annotations

import torch

from workbench.methods.group_rl.advantages import masked_whiten as whiten
from workbench.methods.multi_turn.credit import gae, macro_ids, segment_mean, token_discounts
from workbench.methods.multi_turn.critic import ValueModel
from workbench.methods.multi_turn.module import MultiTurnModule
from workbench.methods.multi_turn.rollout import Episodes

CREDITS = ("gae", "macro")
DISCOUNT_AT = ("token", "action")


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages whitened over the action tokens (biased variance), 0 elsewhere."""
    return whiten(values, mask, unbiased=False) * mask


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """Per item 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def token_credit(turns, values: torch.Tensor, token_rewards: torch.Tensor, gamma: float, lam: float,
                 credit: str = "gae", discount_at: str = "token", macro_n: int | None = 5):
    """(N, T) values and per-token rewards of turn rows -> (N, T) advantages, plus the value targets:
    (N, T) returns for ``gae``; for ``macro`` (macro returns (M,), macro id of each flat token (L,))."""
    rows, cols = turns.token_view()
    flat_values, flat_rewards = values[rows, cols], token_rewards[rows, cols]
    last_of_row = torch.zeros_like(rows, dtype=torch.bool)
    last_of_row[-1:] = True
    last_of_row[:-1] = rows[1:] != rows[:-1]
    episode_of_token = turns.episode[rows]
    episode_end = torch.zeros_like(last_of_row)
    episode_end[-1:] = True
    episode_end[:-1] = episode_of_token[1:] != episode_of_token[:-1]
    advantages = torch.zeros_like(values)
    if credit == "gae":
        adv, ret = gae(flat_rewards, flat_values, token_discounts(last_of_row, gamma, discount_at), lam, episode_end)
        returns = torch.zeros_like(values)
        advantages[rows, cols], returns[rows, cols] = adv, ret
        return advantages, returns
    if credit == "macro":
        ids = macro_ids(rows, cols, macro_n)
        M = int(ids.max()) + 1
        macro_values = segment_mean(flat_values, ids)
        macro_rewards = torch.zeros(M).index_add(0, ids, flat_rewards.float())
        macro_end = torch.zeros(M, dtype=torch.bool)
        macro_end[ids[episode_end]] = True
        adv, ret = gae(macro_rewards, macro_values, torch.full((M,), float(gamma)), lam, macro_end)
        advantages[rows, cols] = adv[ids]
        return advantages, (ret, ids)
    raise ValueError(f"unknown credit '{credit}' ({', '.join(CREDITS)})")


class PPOModule(MultiTurnModule):
    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        from workbench.errors import ConfigError

        if method.credit not in CREDITS:
            raise ConfigError("method.credit", f"unknown '{method.credit}'", f"use one of {list(CREDITS)}")
        if method.discount_at not in DISCOUNT_AT:
            raise ConfigError("method.discount_at", f"unknown '{method.discount_at}'", f"use one of {list(DISCOUNT_AT)}")
        for key in ("gamma", "lam"):
            if not 0.0 <= float(method[key]) <= 1.0:
                raise ConfigError(f"method.{key}", f"must be in [0, 1], got {method[key]}", f"e.g. method.{key}=0.95")
        n = method.get("macro_n")
        if method.credit == "macro" and n is not None and (not isinstance(n, int) or n < 1):
            raise ConfigError("method.macro_n", f"must be a positive integer or null (whole action), got {n!r}",
                              "e.g. method.macro_n=5")
        self.critic = ValueModel(self.model, heads=1)

    def param_groups(self):
        return [*super().param_groups(), {"params": list(self.critic.parameters()), "lr": float(self.cfg.critic_lr)}]

    def _values(self, r, c: slice) -> torch.Tensor:
        return self.critic.token_values(r.prompt_ids[c], r.prompt_mask[c], r.completion_ids[c], r.completion_mask[c])

    def advantages(self, episodes: Episodes) -> torch.Tensor:
        cfg, turns = self.cfg, episodes.turns
        r = turns.rollout
        mask = r.completion_mask.float()
        with torch.no_grad():
            self.old_values = torch.cat([self._values(r, c) for c in self._chunks(len(r))]).cpu()
        token_rewards = torch.zeros_like(mask.cpu())
        last = (r.completion_mask.sum(-1) - 1).clamp(min=0).cpu()
        token_rewards[torch.arange(len(r)), last] = turns.rewards
        if cfg.get("kl_in_reward", False) and self.ref_logprobs is not None:
            kl = (self.old_logprobs - self.ref_logprobs).cpu() * mask.cpu()  # k1 per token, TRL's non-score reward
            token_rewards = token_rewards - float(cfg.beta) * kl
        adv, self.value_targets = token_credit(turns, self.old_values, token_rewards, float(cfg.gamma), float(cfg.lam),
                                               cfg.credit, cfg.discount_at, cfg.get("macro_n"))
        self._extra_stats = {"value_mean": float((self.old_values * mask.cpu()).sum() / mask.sum().clamp(min=1))}
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, mask.cpu())
        return adv

    def auxiliary_loss(self, episodes: Episodes, c: slice):
        cfg, turns = self.cfg, episodes.turns
        r = turns.rollout
        values = self._values(r, c)
        mask = r.completion_mask[c].float()
        clip = float(cfg.cliprange_value)
        old = self.old_values[c].to(values.device)
        if cfg.credit == "gae":
            per_token = clipped_value_loss(values, old, self.value_targets[c].to(values.device), clip)
            total_tokens = r.completion_mask.sum().clamp(min=1)
            loss = (per_token * mask).sum() / total_tokens
        else:  # value loss on the macro values V(omega) = mean of their token values
            macro_returns, ids = self.value_targets
            rows, cols = turns.token_view()
            inside = (rows >= c.start) & (rows < c.stop)
            local_ids = ids[inside]
            first = int(local_ids.min())
            local_ids = (local_ids - first).to(values.device)
            tok_rows = (rows[inside] - c.start).to(values.device)
            tok_cols = cols[inside].to(values.device)
            v_macro = segment_mean(values[tok_rows, tok_cols], local_ids)
            old_macro = segment_mean(old[tok_rows, tok_cols], local_ids)
            target = macro_returns[first: first + len(v_macro)].to(values.device)
            loss = clipped_value_loss(v_macro, old_macro, target, clip).sum() / len(macro_returns)
        return float(cfg.vf_coef) * loss, {"value_loss": loss.detach()}
