"""GiGPO (Feng et al., NeurIPS 2025) and multi-turn GRPO: critic-free advantages for agents.

G episodes start from the same environment instance (a group). Every turn row gets

    A = A_episode(tau) + omega * A_step(s_t, a_t)

A_episode compares the episode's return with its group's (GRPO on whole episodes); A_step compares the
discounted return-to-go from turn t with those of the other turns, in the group's other episodes (or the same
one), taken in the identical state s_t (an anchor state). omega = 0 is multi-turn GRPO, the baseline GiGPO
is compared against. Defaults follow verl-agent's ``core_gigpo.py``: mode ``mean_norm`` (no std division),
omega 1, episode statistics over turn rows, gamma 0.95 for the step returns.
"""

from __future__ import annotations

import torch

from workbench.methods.multi_turn.credit import discounted_returns, gigpo_advantages
from workbench.methods.multi_turn.module import MultiTurnModule
from workbench.methods.multi_turn.rollout import Episodes


class GiGPOModule(MultiTurnModule):
    def advantages(self, episodes: Episodes) -> torch.Tensor:
        cfg, turns = self.cfg, episodes.turns
        step_returns = discounted_returns(turns.rewards, turns.episode, float(cfg.gamma))
        adv, a_step = gigpo_advantages(
            episodes.per_turn(episodes.returns), step_returns, episodes.per_turn(episodes.group), turns.episode,
            turns.state_keys, omega=float(cfg.omega), mode=cfg.mode, episode_stats=cfg.episode_stats,
        )
        keys = {(int(g), k) for g, k in zip(episodes.per_turn(episodes.group), turns.state_keys)}
        self._extra_stats = {"anchor_groups_per_row": len(keys) / max(1, len(turns)),
                             "step_advantage_abs": float(a_step.abs().mean())}
        return adv
