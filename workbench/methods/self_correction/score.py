"""SCoRe (Kumar et al. 2024): two-stage multi-turn RL for intrinsic self-correction, and the paper's naive
multi-turn RL baseline (``train_first_attempt: false``, ``stage1_steps: 0``, ``alpha: 0``: REINFORCE on the second
attempt's reward only).

One step samples G two-attempt trajectories per problem (attempt 1 -> instruction -> attempt 2) and takes a
REINFORCE step on both attempts with a leave-one-out baseline over the group (RLOO, the paper's estimator) and a
KL(π ‖ π_ref) penalty per attempt, π_ref being the warm start. Each attempt is credited with its own reward only
(the paper's γ = 0, App. A.4):

    stage I  (global_step < stage1_steps):  max E[r(y2)] − β2·KL_attempt1   (+ the default β1·KL on both)
             reward of attempt 1: none (it is only pinned to the base); of attempt 2: r(y2)
    stage II:                               max E[r(y1) + r̂(y2)] − β1·(KL_attempt1 + KL_attempt2)
             r̂(y2) = r(y2) + α·(r(y2) − r(y1)), the progress bonus on attempt 2 only

Stage I decouples the attempts: attempt 2 learns to answer well after the base's own first attempts, which stay
put, so the model does not learn "answer well once, then copy". Stage II's bonus pays for fixing a mistake
(+α) and charges for breaking a correct answer (−α), which copying never earns. Paper defaults (MATH, Table 8):
α = 10, β1 = 0.01, β2 = 0.1, temperature 1.
"""

from __future__ import annotations

import torch

from workbench.errors import ConfigError, require_whole
from workbench.methods.group_rl.advantages import ADVANTAGES
from workbench.methods.self_correction.module import SelfCorrectionModule


def shaped_second_reward(r1: torch.Tensor, r2: torch.Tensor, alpha: float) -> torch.Tensor:
    """r̂(y2) = r(y2) + α·(r(y2) − r(y1)): SCoRe's stage-II progress bonus."""
    return r2 + alpha * (r2 - r1)


def turn_rewards(r1: torch.Tensor, r2: torch.Tensor, stage: int, alpha: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The reward each attempt's tokens are credited with (γ = 0); None: attempt 1 gets no policy gradient."""
    if stage == 1:
        return None, r2
    return r1, shaped_second_reward(r1, r2, alpha)


def turn_kl_coefficients(stage: int, beta1: float, beta2: float) -> tuple[float, float]:
    """(KL coefficient of attempt 1, of attempt 2): stage I adds the strong β2 on attempt 1 to the default β1."""
    return (beta1 + beta2, beta1) if stage == 1 else (beta1, beta1)


def validate_score(m) -> None:
    for key in ("alpha", "beta1", "beta2"):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"method.{key}", f"must be a number >= 0, got {value!r}", f"e.g. method.{key}=1.0")
    if not isinstance(m.get("train_first_attempt", True), bool):
        raise ConfigError("method.train_first_attempt", f"must be true or false, got {m.get('train_first_attempt')!r}",
                          "false trains the second attempt only (the naive multi-turn RL baseline)")
    require_whole(m, "stage1_steps", 0, "e.g. method.stage1_steps=60 (0 skips stage I)")


class SCoReModule(SelfCorrectionModule):
    def stage(self) -> int:
        return 1 if self.global_step < int(self.cfg.stage1_steps) else 2

    def training_step(self, batch, batch_idx):
        cfg, G = self.cfg, self.cfg.group_size
        self._times = {}
        with self._timed("generation"):
            data = self.two_attempts(batch, G, cfg.temperature)
            self.score_attempts(data)
        stage = self.stage()
        r1, r2 = data.first_rewards, data.second_rewards
        rewards = turn_rewards(r1, r2, stage, float(cfg.alpha))
        kl_coefs = turn_kl_coefficients(stage, float(cfg.beta1), float(cfg.beta2))
        turns = [(1, data.first, rewards[0], kl_coefs[0]), (2, data.second, rewards[1], kl_coefs[1])]
        if not cfg.get("train_first_attempt", True):
            turns = turns[1:]
        fn = self._logprob_fn()
        with self._timed("logprobs"), torch.no_grad():
            refs = [self._reference_logprobs(rollout, self._chunks(len(rollout)), fn) for _, rollout, _, _ in turns]
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        with self._timed("update"):
            opt.zero_grad()
            for (t, rollout, reward, beta), ref in zip(turns, refs):
                mask = rollout.completion_mask.float()
                if reward is None:  # stage I's first attempt: the KL term alone (zero advantages)
                    advantages = torch.zeros(len(rollout), device=self.device)
                else:
                    advantages = ADVANTAGES[cfg.advantage](reward.view(-1, G), **dict(cfg.get("advantage_params") or {})).reshape(-1)
                kwargs = self._loss_kwargs(cfg.max_new_tokens, mask, beta=beta)
                self._backward_rollout(rollout, self._chunks(len(rollout)), fn, advantages, mask, mask, kwargs, totals,
                                       ref=ref, prefix=f"turn{t}/")
                totals[f"turn{t}/advantage_abs"] = float(advantages.abs().mean())
            self._optimizer_step(opt, sched)
            self.generator.sync(self.model)
        self.log_attempts(data, totals, {"stage": stage, "reward_t1": r1.mean(), "reward_t2": r2.mean(),
                                         "shaped_reward_t2": rewards[1].mean()})
