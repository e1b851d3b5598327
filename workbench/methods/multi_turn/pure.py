"""PURE (Cheng et al. 2025, "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs").

A process reward PR_t scores every step of a trajectory (steps = turns here; the environment's verifier gives
``turns.process_rewards`` in [-1, 1], a verifiable "PRM"). Summing PR_t into returns lets a policy farm many
mildly good steps; PURE makes the return follow the *worst* step instead, with a softmin re-weighting that the
ordinary summed-return machinery can consume:

    w_t   = softmax_t(-PR_t / T)          over the steps of one trajectory (T = 0.1; T -> 0 puts all weight on the min)
    PR'_t = w_t * PR_t                     so sum_t PR'_t -> min_t PR_t

Then RLOO with a PPO loss, on the trajectory's action tokens laid end to end. PR'_t sits on the last token of
step t. The RLOO baseline (``reward_baseline="token"``, the official script) is the *other* samples' reward per
token times the tokens of this step,

    b_t = (sum_{j != i} O_j) / (sum_{j != i} len_j) * n_t,       O_j = sum_t PR'_{j,t},  len_j = action tokens of j

the paper's remedy for the step-count bias of a per-step baseline (but see "Length" below).
``reward_baseline="step"`` (the official CLI's default) subtracts mean_{j != i}(O_j / K_j) at every step instead.
The verifiable reward (their PRM+VR; on in their script and in the config) adds coef * (VR - mean of the other
samples' VR) at the end of the trajectory; here VR is the environment's reward, put at the step where it came
(the baseline at the end).
The per-token KL to the reference is folded into the reward (beta * k1, init_kl_coef 0.001), returns are the
undiscounted reward-to-go over the tokens (gamma = 1), the tokens that carry a step reward get advantage 0 (no
loss on step separators; ``mask_step_end``), and the advantages are whitened over the batch.

Followed: ``CJReinforce/PURE`` ``openrlhf/utils/utils.py::turn_process_reward_logits_to_reward`` (the transform),
``openrlhf/trainer/ppo_utils/experience_maker.py::NaiveExperienceMaker.process_experiences`` (RLOO baselines, VR)
and ``make_experience_list`` (KL in reward, reward-to-go, zero advantage at step ends),
``openrlhf/trainer/ppo_utils/replay_buffer.py::NaiveReplayBuffer.normalize`` (whitening),
``examples/scripts/train_pure.sh`` (n 4, init_kl_coef 0.001, temperature 0.5, reward_baseline token, PRMVR with
verifiable_reward_coef 0.1). Two deliberate differences, both where the official code does something by accident:
the whitening excludes step-end tokens by their mask (the official code excludes every token whose advantage is
exactly 0, and sums the variance over the step ends too); and ``baseline_step_tokens="all"`` is offered next to
the official ``"body"``: their n_t counts a step's tokens *before* its separator / EOS while len_j counts every
token, so the baselines of one trajectory sum to avg * (len - K) rather than avg * len. With math steps of ~50
tokens that is noise; with one-word actions (a move and its EOS) it halves the baseline.
The config's default turns ``mask_step_end`` off (the official ``--nomask_separator_adv``): a turn's end token
is its EOS, and an action that is only an EOS (empty, invalid) would then have no token taking the loss, so
nothing stops the policy from drifting into them (observed on gridworld, see conf/method/pure.yaml).

Length: the min-form outcome stays in [-1, 1] however long the trajectory, while both official baselines grow with
its tokens (or steps). When a group's outcomes are negative, a longer trajectory is charged a more negative baseline
and so gains advantage (a test shows it on hand values); the sum form's outcome also grows in size with length (more
steps, more bad ones), which offsets it. On guess_number from an SFT start that wins 11 % (nearly every episode
has a bad step) min-form PURE learned to stop guessing and run out the turns (held-out 0.115 -> 0.0 in 100 steps,
with VR coef 0.1 or without); the sum form (0.12) and VR coef 1.0 (0.135) did not collapse.

``credit="sum"`` (config ``credit_form: sum``) uses PR_t unweighted (``disable_weighted_reward``): the summation form
the paper argues against. The config field is ``credit_form`` because ``method.credit`` is PPO's (gae | macro).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from workbench.errors import ConfigError, require_whole
from workbench.methods.group_rl.advantages import masked_whiten
from workbench.methods.group_rl.losses import kl_estimate
from workbench.methods.multi_turn.module import MultiTurnModule
from workbench.methods.multi_turn.rollout import Episodes

CREDITS = ("min", "sum")
BASELINES = ("token", "step")
STEP_TOKENS = ("body", "all")


# ---- pure tensor functions ------------------------------------------------------------------------------
def min_form_weights(process_rewards: torch.Tensor, step_mask: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """(E, K) step rewards of E trajectories (padded to K steps) -> softmax_t(-PR_t / T) over each row's real steps;
    padded steps get weight 0 (their logit is -inf, as ``masked_fill(~mask, inf)`` before the negation)."""
    if temperature <= 0:
        raise ValueError(f"min-form temperature must be > 0, got {temperature}")
    logits = (-process_rewards.float() / temperature).masked_fill(~step_mask, float("-inf"))
    return torch.softmax(logits, dim=-1).masked_fill(~step_mask, 0.0)


def min_form_rewards(process_rewards: torch.Tensor, step_mask: torch.Tensor, temperature: float = 0.1,
                     credit: str = "min") -> torch.Tensor:
    """PR'_t = w_t * PR_t (``credit="min"``) or PR_t itself (``"sum"``); 0 on padded steps."""
    if credit not in CREDITS:
        raise ValueError(f"unknown credit '{credit}' ({' or '.join(CREDITS)})")
    rewards = process_rewards.float().masked_fill(~step_mask, 0.0)
    if credit == "min":
        rewards = min_form_weights(process_rewards, step_mask, temperature) * rewards
    return rewards


def _others_mean(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out mean within each group (0 for a group of one: nothing to compare with)."""
    out = torch.zeros_like(values, dtype=torch.float32)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups.tolist()):
        members[g].append(i)
    for rows in members.values():
        if len(rows) > 1:
            v = values[rows].float()
            out[rows] = (v.sum() - v) / (len(rows) - 1)
    return out


def rloo_step_baseline(rewards: torch.Tensor, step_mask: torch.Tensor, step_tokens: torch.Tensor, groups: torch.Tensor,
                       mode: str = "token", step_count: str = "body") -> torch.Tensor:
    """(E, K) per-step RLOO baselines of the (already transformed) step rewards.

    ``mode="token"``: b_t = (sum of the other samples' outcomes / sum of their action tokens) * n_t, with n_t the
    step's tokens before its end token (``step_count="body"``, official) or all of them (``"all"``).
    ``mode="step"``: b_t = mean over the other samples of outcome / number of steps, at every step.
    ``step_tokens`` (E, K): action tokens of each step including its end token. ``groups`` (E,): samples of one
    prompt (one environment instance) share a group; a group of one gets baseline 0."""
    if mode not in BASELINES:
        raise ValueError(f"unknown reward_baseline '{mode}' ({' or '.join(BASELINES)})")
    if step_count not in STEP_TOKENS:
        raise ValueError(f"unknown baseline_step_tokens '{step_count}' ({' or '.join(STEP_TOKENS)})")
    outcome = (rewards * step_mask).sum(-1)
    if mode == "step":
        per_step = outcome / step_mask.sum(-1).clamp(min=1)
        return _others_mean(per_step, groups)[:, None] * step_mask
    tokens = (step_tokens * step_mask).sum(-1).float()
    n = len(outcome)
    others_outcome = _others_mean(outcome, groups)
    others_tokens = _others_mean(tokens, groups)
    per_token = torch.where(others_tokens > 0, others_outcome / others_tokens.clamp(min=1e-8), torch.zeros(n))
    counts = (step_tokens - (1 if step_count == "body" else 0)).clamp(min=0).float() * step_mask
    return per_token[:, None] * counts


def pure_advantages(process_rewards: torch.Tensor, step_mask: torch.Tensor, step_tokens: torch.Tensor,
                    groups: torch.Tensor, *, temperature: float = 0.1, credit: str = "min",
                    reward_baseline: str = "token", baseline_step_tokens: str = "body",
                    verifiable: torch.Tensor | None = None, verifiable_coef: float = 0.1,
                    token_kl: torch.Tensor | None = None, beta: float = 0.0, mask_step_end: bool = True,
                    normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """PURE advantages of E trajectories, each laid out as its action tokens end to end (E, L).

    Step t of trajectory e covers tokens [c_t, c_t + n_t) with c_t = sum_{j<t} n_j, n_t = ``step_tokens[e, t]``;
    its reward PR'_t - b_t sits on its last token. ``verifiable`` (E, K): the environment's reward per step (VR),
    added as coef * v_t at step t and -coef * (mean of the other samples' VR totals) at the trajectory's end.
    ``token_kl`` (E, L): per-token KL estimate, -beta * kl added to every token's reward. Returns
    (advantages (E, L), loss_mask (E, L): real tokens that take the loss, parts) with the reward-to-go
    A_u = sum_{u' >= u} r_{u'}, 0 on step-end tokens when ``mask_step_end`` (the official default) and on padding,
    whitened over the loss tokens of the whole batch when ``normalize``. ``parts``: the transformed rewards,
    the baselines and each trajectory's outcome sum_t PR'_t, for logging and tests."""
    step_mask = step_mask.bool()
    step_tokens = step_tokens.long() * step_mask
    if bool(((step_tokens < 1) & step_mask).any()):
        raise ValueError("every step needs at least one token to carry its reward")
    transformed = min_form_rewards(process_rewards, step_mask, temperature, credit)
    baseline = rloo_step_baseline(transformed, step_mask, step_tokens, groups, reward_baseline, baseline_step_tokens)
    step_rewards = transformed - baseline
    E, K = step_mask.shape
    lengths = step_tokens.sum(-1)
    L = int(lengths.max()) if E else 0
    ends = torch.cumsum(step_tokens, -1) - 1  # column of each step's last token
    rewards = torch.zeros(E, L)
    is_end = torch.zeros(E, L, dtype=torch.bool)
    e_idx, k_idx = torch.nonzero(step_mask, as_tuple=True)
    rewards.index_put_((e_idx, ends[e_idx, k_idx]), step_rewards[e_idx, k_idx], accumulate=True)
    is_end[e_idx, ends[e_idx, k_idx]] = True
    if verifiable is not None:
        v = verifiable.float().masked_fill(~step_mask, 0.0)
        rewards.index_put_((e_idx, ends[e_idx, k_idx]), verifiable_coef * v[e_idx, k_idx], accumulate=True)
        vr_baseline = _others_mean(v.sum(-1), groups)
        rewards[torch.arange(E), lengths - 1] -= verifiable_coef * vr_baseline
    valid = torch.arange(L)[None, :] < lengths[:, None]
    if token_kl is not None and beta:
        rewards = rewards - beta * token_kl.float()[:, :L].masked_fill(~valid, 0.0)
    returns = rewards.flip(-1).cumsum(-1).flip(-1)
    loss_mask = valid & ~is_end if mask_step_end else valid
    adv = returns.masked_fill(~loss_mask, 0.0)
    if normalize and loss_mask.any():
        adv = masked_whiten(adv, loss_mask, unbiased=False).masked_fill(~loss_mask, 0.0)
    parts = {"transformed": transformed, "baseline": baseline, "outcome": transformed.sum(-1)}
    return adv, loss_mask, parts


# ---- the module ---------------------------------------------------------------------------------------------
class PureModule(MultiTurnModule):
    """PURE on multi-turn episodes: steps are turns, the trajectory is the episode's action tokens end to end."""

    def __init__(self, policy, task, method, trainer_cfg=None):
        for field, value, choices in (("credit_form", method.get("credit_form"), CREDITS),
                                      ("reward_baseline", method.get("reward_baseline"), BASELINES),
                                      ("baseline_step_tokens", method.get("baseline_step_tokens"), STEP_TOKENS)):
            if value not in choices:
                raise ConfigError(f"method.{field}", f"must be one of {', '.join(choices)}, got {value!r}",
                                  f"set method.{field}={choices[0]}")
        t = method.get("min_form_temperature")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise ConfigError("method.min_form_temperature", f"must be a number > 0, got {t!r}",
                              "set method.min_form_temperature=0.1 (official; smaller is closer to the min)")
        require_whole(method, "group_size", 2, "set method.group_size=4 (the official n_samples_per_prompt; "
                      "a leave-one-out baseline needs two)")
        super().__init__(policy, task, method, trainer_cfg)

    def _steps(self, episodes: Episodes):
        """Per-turn rows -> (E, K) step matrices: position of each row within its episode, and the step mask."""
        turns = episodes.turns
        E, N = len(episodes), len(turns)
        counts = torch.bincount(turns.episode, minlength=E)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(N) - starts[turns.episode]
        K = int(counts.max())
        mask = torch.zeros(E, K, dtype=torch.bool)
        mask[turns.episode, pos] = True

        def matrix(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(E, K, dtype=values.dtype)
            out[turns.episode, pos] = values
            return out

        return matrix, mask

    def advantages(self, episodes: Episodes) -> torch.Tensor:
        cfg, turns = self.cfg, episodes.turns
        r = turns.rollout
        completion_mask = r.completion_mask.cpu()
        matrix, step_mask = self._steps(episodes)
        step_tokens = matrix(completion_mask.sum(-1).long())
        # flat token order is (episode, turn, position): the column of each token in its episode's row
        rows, cols = turns.token_view()
        tok_episode = turns.episode[rows]
        per_episode = torch.bincount(tok_episode, minlength=len(episodes))
        column = torch.arange(len(rows)) - (torch.cumsum(per_episode, 0) - per_episode)[tok_episode]
        token_kl, beta = None, 0.0
        if cfg.get("kl_in_reward", False) and self.ref_logprobs is not None:
            beta = float(cfg.beta)
            kl = kl_estimate(self.old_logprobs.detach().cpu(), self.ref_logprobs.detach().cpu(),
                             cfg.get("kl_estimator", "k1"))
            token_kl = torch.zeros(len(episodes), int(per_episode.max()))
            token_kl[tok_episode, column] = kl[rows, cols].float()
        adv, _, parts = pure_advantages(
            matrix(turns.process_rewards.float()), step_mask, step_tokens, episodes.group,
            temperature=float(cfg.min_form_temperature), credit=cfg.credit_form,
            reward_baseline=cfg.reward_baseline, baseline_step_tokens=cfg.baseline_step_tokens,
            verifiable=matrix(turns.rewards.float()) if cfg.verifiable_reward else None,
            verifiable_coef=float(cfg.verifiable_reward_coef), token_kl=token_kl, beta=beta,
            mask_step_end=bool(cfg.mask_step_end), normalize=bool(cfg.normalize_advantages),
        )
        out = torch.zeros(completion_mask.shape)
        out[rows, cols] = adv[tok_episode, column]
        self._extra_stats = {"pure_outcome": float(parts["outcome"].mean()),
                             "process_reward": float(turns.process_rewards.float().mean()),
                             "pure_baseline_abs": float(parts["baseline"].abs().sum(-1).mean())}
        return out
