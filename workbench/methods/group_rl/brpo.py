"""BRPO: Budget Relative Policy Optimization (AnytimeReasoner, Qi et al. 2025, arXiv:2505.13438).

One step, for P prompts, G thinking trajectories each, S budgets b_1 < ... < b_S and A summaries per split:

1. Thinking: sample G completions per prompt of at most b_S tokens (``method.budgets[-1]``; the method's
   ``max_new_tokens`` is not used for the thinking).
2. Summaries: for every trajectory g and budget j keep its first k_{g,j} = min(b_j, n_g) thinking tokens, where
   n_g is its length without the EOS (a trajectory that stopped earlier is kept whole, its EOS stripped), append
   the cue ``method.summary_prompt`` and sample A summaries of at most ``method.summary_max_new_tokens`` tokens
   from  prompt + thinking[:k] + cue  (built from token ids, so the summary sees exactly the sampled tokens).
   Each summary is scored by the method's RewardSet on the task answer; ``method.score_on`` chooses the text:
   ``summary`` (the summary tokens only, as the official code, which parses the answer after its cue) or
   ``full`` (thinking[:k] + cue + summary: the tiny arithmetic model writes its answer as the "thinking", so an
   empty cue means "continue and answer" and the answer is read from the whole text).
   r_{g,j,a} is that reward and  r̄_{g,j} = (1/A) sum_a r_{g,j,a}.
3. Thinking advantages (``advantages.brpo_advantage``; official ``compute_cot_advantage``), p the budget prior:
       return_{g,s} = sum_{j>=s} p_j r̄_{g,j}
       V2_s         = mean_g return_{g,s}
       V1_{g,s}     = [sum_{k<s} 2^k r̄_{g,k} / sum_{k<s} 2^k] * sum_{j>=s} p_j        (0 at s = 0)
       A_{g,s}      = return_{g,s} - (s V1_{g,s} + (S - s) V2_s) / S      (s 0-based; ``variance_reduction``)
   Thinking token t (0-based, EOS included, nothing after it) lies in segment s when b_{s-1} <= t < b_s and
   gets A_{g,s} (official ``compute_token_level_advantage``: split s trains tokens [len_{s-1}, len_s)).
   Prior ``method.budget_prior`` (official ``set_training_split_plan``): uniform p_j = 1/S,
   linear p_j = b_j / sum_k b_k, base p = (0, ..., 0, 1).
4. Summary advantages (official ``compute_summary_advantage``, SUMMARY_METHOD "brpo"): r_{g,j,a} - baseline,
   ``method.summary_baseline``:
     ``trajectory`` (official): the mean of the A summaries of the same trajectory at the same split; with A = 1
                    the official code falls back to the group mean at that split, and so does this.
     ``group``:     the mean of all G*A summaries of the prompt at that split (METHODS.md B7's wording).
   Optionally divided by that set's std + 1e-4 (``method.summary_std_scale``, default false; official: no std).
5. Loss: L = L_clip(thinking, A_think) + w * L_clip(summaries, A_summary), ``w = method.summary_loss_weight``,
   L_clip = ``losses.grpo_loss`` (clipped surrogate, ``method.loss_agg``, k3/k1 KL to the reference when beta > 0)
   on each rollout; a summary's "prompt" is prompt + thinking[:k] + cue and its completion the summary tokens.
   One optimizer step per rollout (``inner_iterations`` must be 1, so the ratio is 1 and pi_old = pi).

Source: ``verl/verl/trainer/ppo/brpo.py`` (``sample_partial_cot``, ``compute_reward_and_correct_answer``,
``compute_token_level_advantage``, ``compute_cot_advantage``, ``compute_summary_advantage``) and the vLLM
rollout override in that file, read from the fork ``wjurayj/AnytimeReasoner`` (commit 068a38bb) in the code
index. Differences from it: the official code appends "...\\n\\n...\\n\\n</think>" before its cue when it cut the
thinking and just the cue when the model closed </think> itself (here: one cue, the trajectory's EOS is
stripped); its summaries share the thinking's KV "tree" (here: separate sequences, same gradients); it scores 0
for malformed outputs (no </think> token here).

Generation: the thinking goes through the configured backend (``method.generation``); the summaries are sampled
with transformers ``generate`` on the live policy from token-id prompts (``sampler.sample_ids``), whatever the backend.

Logged each step: train/reward (mean reward of all summaries at the largest budget, the "final answer"
reward), train/brpo/score_at_<b> per budget, train/accuracy (verifier at the largest budget), reward_std and
frac_zero_std_groups (of r̄_{g,S} within groups), advantage_abs / summary_advantage_abs, completion_length
(thinking), summary_length, truncated_frac, loss / loss_thinking / loss_summary, entropy, clip and KL stats
(summary ones prefixed summary_), reward parts at the largest budget, and time_{generation,summaries,scoring,
logprobs,update}.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from workbench.errors import ConfigError
from workbench.methods.group_rl.advantages import brpo_advantage
from workbench.methods.group_rl.module import GroupRLModule
from workbench.policy.logprobs import token_logprobs
from workbench.policy.sampler import Rollout, left_pad, sample_ids
from workbench.policy.shared_prefix import shared_prefix_token_logprobs

BUDGET_PRIORS = ("uniform", "linear", "base")
SUMMARY_BASELINES = ("trajectory", "group")
SCORE_ON = ("summary", "full")
VARIANCE_REDUCTIONS = ("brpo", "v1only", "v2only", "none")


# ---- pure pieces (tested on hand values) -------------------------------------------------------------
def budget_prior(budgets: list[int], name: str) -> torch.Tensor:
    """p_j over the budgets (official ``set_training_split_plan``)."""
    S = len(budgets)
    if name == "uniform":
        return torch.full((S,), 1.0 / S)
    if name == "linear":
        b = torch.tensor(budgets, dtype=torch.float32)
        return b / b.sum()
    if name == "base":
        p = torch.zeros(S)
        p[-1] = 1.0
        return p
    raise ConfigError("method.budget_prior", f"unknown prior '{name}'", f"choose from {list(BUDGET_PRIORS)}")


def thinking_token_advantages(split_adv: torch.Tensor, completion_mask: torch.Tensor, budgets: list[int]) -> torch.Tensor:
    """(B, S) split advantages -> (B, T) per-token: token t gets A_s for b_{s-1} <= t < b_s, 0 off the mask."""
    T = completion_mask.shape[1]
    positions = torch.arange(T, device=completion_mask.device)
    bounds = torch.tensor(budgets, device=completion_mask.device)
    segment = torch.bucketize(positions, bounds, right=True).clamp(max=len(budgets) - 1)  # number of b_s <= t
    per_token = split_adv.to(completion_mask.device)[:, segment]
    return per_token * completion_mask.to(per_token.dtype)


def summary_prefixes(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
    truncated: torch.Tensor, budgets: list[int], cue_ids: list[int],
) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids of prompt + thinking[:k] + cue for every row and budget, row-major ((row, budget) order).

    k = min(b_j, n) with n the row's thinking length without its EOS (rows that hit the limit have no EOS).
    Returns the prefixes (B*S lists) and k as a (B, S) tensor.
    """
    lengths = completion_mask.sum(-1) - (~truncated).long()  # thinking tokens, EOS stripped
    prefixes, kept = [], []
    for i in range(prompt_ids.shape[0]):
        prompt = prompt_ids[i][prompt_mask[i].bool()].tolist()
        thinking = completion_ids[i].tolist()
        row = []
        for b in budgets:
            k = min(int(b), int(lengths[i]))
            prefixes.append(prompt + thinking[:k] + list(cue_ids))
            row.append(k)
        kept.append(row)
    return prefixes, torch.tensor(kept, dtype=torch.long)


def summary_advantages(scores: torch.Tensor, baseline: str = "trajectory", std_scale: bool = False) -> torch.Tensor:
    """(P, G, S, A) summary rewards -> advantages r - mean (/ (std + 1e-4)) over the comparison set.

    ``trajectory``: the A summaries of the same trajectory and split (official; with A = 1 the G trajectories'
    summaries at that split); ``group``: all G*A summaries of the prompt at that split.
    """
    P, G, S, A = scores.shape
    if baseline == "trajectory" and A > 1:
        dims = (-1,)
    elif baseline in ("trajectory", "group"):
        dims = (1, 3)
    else:
        raise ValueError(f"unknown summary baseline '{baseline}' ({', '.join(SUMMARY_BASELINES)})")
    mean = scores.mean(dim=dims, keepdim=True)
    adv = scores - mean
    if std_scale:
        count = 1
        for d in dims:
            count *= scores.shape[d]
        std = scores.std(dim=dims, keepdim=True) if count > 1 else torch.zeros_like(mean)
        adv = adv / (std + 1e-4)
    return adv


# ---- config ------------------------------------------------------------------------------------------
def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_brpo(method: DictConfig) -> dict:
    """Check the BRPO fields; raise ConfigError naming the field and the fix. Returns the parsed settings."""
    budgets = method.get("budgets")
    if budgets is None or isinstance(budgets, (str, int)) or not hasattr(budgets, "__len__") or len(budgets) == 0:
        raise ConfigError("method.budgets", f"must be a non-empty list of token counts, got {budgets!r}",
                          "e.g. method.budgets=[2,4,6] (increasing, the last is the thinking length)")
    budgets = list(budgets)
    if not all(_whole(b) and b > 0 for b in budgets):
        raise ConfigError("method.budgets", f"every budget must be a positive whole number of tokens, got {budgets}",
                          "e.g. method.budgets=[2,4,6]")
    if any(b <= a for a, b in zip(budgets, budgets[1:])):
        raise ConfigError("method.budgets", f"must be strictly increasing, got {budgets}", "sort them and drop repeats")
    prior = method.get("budget_prior", "uniform")
    if prior not in BUDGET_PRIORS:
        raise ConfigError("method.budget_prior", f"unknown prior {prior!r}", f"choose from {list(BUDGET_PRIORS)}")
    A = method.get("summaries_per_split", 4)
    if not _whole(A) or A < 1:
        raise ConfigError("method.summaries_per_split", f"must be a whole number >= 1, got {A!r}", "e.g. method.summaries_per_split=4")
    max_summary = method.get("summary_max_new_tokens")
    if not _whole(max_summary) or max_summary < 1:
        raise ConfigError("method.summary_max_new_tokens", f"must be a whole number >= 1, got {max_summary!r}",
                          "e.g. method.summary_max_new_tokens=8")
    cue = method.get("summary_prompt", "")
    if not isinstance(cue, str):
        raise ConfigError("method.summary_prompt", f"must be a string, got {cue!r}", "e.g. method.summary_prompt='' (continue and answer)")
    weight = method.get("summary_loss_weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ConfigError("method.summary_loss_weight", f"must be a number >= 0, got {weight!r}", "e.g. method.summary_loss_weight=1.0")
    for field, choices, default in (("summary_baseline", SUMMARY_BASELINES, "trajectory"), ("score_on", SCORE_ON, "summary"),
                                    ("variance_reduction", VARIANCE_REDUCTIONS, "brpo")):
        if method.get(field, default) not in choices:
            raise ConfigError(f"method.{field}", f"unknown {method.get(field)!r}", f"choose from {list(choices)}")
    std_scale = method.get("summary_std_scale", False)
    if not isinstance(std_scale, bool):
        raise ConfigError("method.summary_std_scale", f"must be true or false, got {std_scale!r}", "set method.summary_std_scale=false")
    if method.get("inner_iterations", 1) != 1:
        raise ConfigError("method.inner_iterations", f"BRPO does one optimizer step per rollout, got {method.inner_iterations}",
                          "set method.inner_iterations=1")
    if method.get("policy_loss", "clipped") != "clipped":
        raise ConfigError("method.policy_loss", f"BRPO trains with the clipped surrogate, got {method.policy_loss!r}",
                          "set method.policy_loss=clipped")
    if (method.get("dynamic_sampling") or {}).get("enabled", False):
        raise ConfigError("method.dynamic_sampling.enabled", "not supported by BRPO (its groups are scored per budget)",
                          "set method.dynamic_sampling.enabled=false")
    for field, why in (("kl_in_reward", "the KL goes into the loss"), ("mask_truncated", "cut thinking is the point of BRPO")):
        if method.get(field, False):
            raise ConfigError(f"method.{field}", f"not supported by BRPO ({why})", f"set method.{field}=false")
    return dict(budgets=[int(b) for b in budgets], prior=prior, A=int(A), max_summary=int(max_summary), cue=cue,
                weight=float(weight), summary_baseline=method.get("summary_baseline", "trajectory"),
                score_on=method.get("score_on", "summary"), variance_reduction=method.get("variance_reduction", "brpo"),
                std_scale=std_scale)


class BRPOModule(GroupRLModule):
    """Group RL with budget-truncated thinking, sampled summaries and BRPO's split advantages (see module doc)."""

    validate_config = staticmethod(validate_brpo)  # for a config-time check (workbench/config.py does not call it yet)

    def __init__(self, policy, task, method, trainer_cfg=None):
        settings = validate_brpo(method)  # before the reference copy and anything else: fail fast
        super().__init__(policy, task, method, trainer_cfg)
        self.budgets: list[int] = settings["budgets"]
        self.brpo = settings
        self.budget_probs = budget_prior(self.budgets, settings["prior"])
        self.cue_ids: list[int] = self.tokenizer(settings["cue"], add_special_tokens=False)["input_ids"] if settings["cue"] else []

    # ---- rollouts ---------------------------------------------------------------------------------
    def _thinking(self, batch: dict) -> Rollout:
        cfg = self.cfg
        return self.generator(self.model, self.tokenizer, self.formatted(batch["prompt"]), n=cfg.group_size,
                              max_new_tokens=self.budgets[-1], temperature=cfg.temperature, top_p=cfg.top_p)

    def _summaries(self, think: Rollout) -> tuple[Rollout, torch.Tensor]:
        prefixes, kept = summary_prefixes(think.prompt_ids, think.prompt_mask, think.completion_ids, think.completion_mask,
                                          think.truncated, self.budgets, self.cue_ids)
        ids, mask = left_pad(prefixes, self.tokenizer.pad_token_id, self.device)
        rollout = sample_ids(self.model, self.tokenizer, ids, mask, n=self.brpo["A"], max_new_tokens=self.brpo["max_summary"],
                             temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        return rollout, kept

    def _score_summaries(self, batch: dict, think: Rollout, summ: Rollout, kept: torch.Tensor):
        """Rewards and verifier verdicts of every summary, (P, G, S, A), plus the reward parts."""
        G, S, A = self.cfg.group_size, len(self.budgets), self.brpo["A"]
        P = len(batch["prompt"])
        per_prompt = G * S * A
        if self.brpo["score_on"] == "full":
            texts = []
            for idx in range(len(summ)):
                row, j = divmod(idx // A, S)
                ids = think.completion_ids[row, : int(kept[row, j])].tolist() + self.cue_ids
                ids += summ.completion_ids[idx][summ.completion_mask[idx].bool()].tolist()
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
            lengths = kept.view(-1).repeat_interleave(A) + len(self.cue_ids) + summ.lengths.cpu()
        else:
            texts, lengths = summ.texts, summ.lengths.cpu()
        fields = {k: [v for v in vals for _ in range(per_prompt)] for k, vals in batch.items()}
        prompts = fields.pop("prompt")
        rewards, parts = self.rewards(prompts, texts, group_size=per_prompt, completion_lengths=lengths.tolist(), **fields)
        correct = torch.tensor([float(self.task.verify(t, a)) for t, a in zip(texts, fields["answer"])])
        shape = (P, G, S, A)
        return rewards.view(shape), {k: v.view(shape) for k, v in parts.items()}, correct.view(shape)

    # ---- log-probs ----------------------------------------------------------------------------------
    def _summary_logprob_fn(self):
        if self.cfg.get("shared_prefix", False):  # the A summaries of one (trajectory, budget) share their prefix
            A = self.brpo["A"]
            return lambda model, *args, **kw: shared_prefix_token_logprobs(model, *args, group_size=A, **kw)
        return token_logprobs

    # ---- the step ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cfg, G, S = self.cfg, self.cfg.group_size, len(self.budgets)
        self._times = {}
        with self._timed("generation"):
            think = self._thinking(batch)
        with self._timed("summaries"):
            summ, kept = self._summaries(think)
        with self._timed("scoring"):
            scores, parts, correct = self._score_summaries(batch, think, summ, kept)
        P = scores.shape[0]

        # advantages
        split_adv = brpo_advantage(scores, self.budget_probs, variance_reduction=self.brpo["variance_reduction"])  # (P, G, S)
        think_mask = think.completion_mask.float()
        think_adv = thinking_token_advantages(split_adv.reshape(P * G, S).to(self.device), think_mask, self.budgets)
        summ_adv = summary_advantages(scores, self.brpo["summary_baseline"], self.brpo["std_scale"]).reshape(-1).to(self.device)
        summ_mask = summ.completion_mask.float()

        rollouts = [  # name, rollout, mask, advantages, log-prob fn, chunks, loss length constant, loss weight
            ("thinking", think, think_mask, think_adv, self._logprob_fn(), self._chunks(len(think)), self.budgets[-1], 1.0),
            ("summary", summ, summ_mask, summ_adv, self._summary_logprob_fn(), self._chunks(len(summ), whole=self.brpo["A"]),
             self.brpo["max_summary"], self.brpo["weight"]),
        ]
        with self._timed("logprobs"), torch.no_grad():
            refs = {name: self._reference_logprobs(r, chunks, fn) for name, r, _, _, fn, chunks, _, _ in rollouts}

        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        with self._timed("update"):
            opt.zero_grad()  # one update per rollout: pi_old == pi, so old log-probs are the detached live ones
            for name, r, mask, adv, fn, chunks, max_length, weight in rollouts:
                self._backward_rollout(r, chunks, fn, adv, mask, mask, self._loss_kwargs(max_length, mask, cfg.beta), totals,
                                       ref=refs[name], scale=weight, prefix="" if name == "thinking" else "summary_")
            totals["loss_thinking"] = totals["loss"]
            totals["loss_summary"] = totals.pop("summary_loss")
            totals["loss"] = totals["loss_thinking"] + self.brpo["weight"] * totals["loss_summary"]
            self._optimizer_step(opt, sched)
            self.generator.sync(self.model)
        self._log_brpo(think, summ, scores, parts, correct, think_adv, think_mask, summ_adv, summ_mask, totals)

    def _log_brpo(self, think, summ, scores, parts, correct, think_adv, think_mask, summ_adv, summ_mask, totals) -> None:
        P = scores.shape[0]
        final = scores[:, :, -1, :]  # (P, G, A): the answers after the full thinking budget
        per_traj = final.mean(-1)  # r̄_{g,S}
        lengths = think.lengths.float().cpu()
        traj_correct = (correct[:, :, -1, :].mean(-1) >= 0.5).reshape(-1)  # majority of its final summaries
        log = dict(
            accuracy=correct[:, :, -1, :].mean(),
            reward_std=per_traj.std(-1).mean() if per_traj.shape[1] > 1 else torch.tensor(0.0),
            frac_zero_std_groups=(per_traj.max(-1).values == per_traj.min(-1).values).float().mean(),
            advantage_abs=(think_adv.abs() * think_mask).sum() / think_mask.sum().clamp(min=1),
            summary_advantage_abs=summ_adv.abs().mean(),
            completion_length=lengths.mean(), truncated_frac=think.truncated.float().mean(),
            summary_length=summ.lengths.float().mean(), summary_truncated_frac=summ.truncated.float().mean(),
            **{k: v for k, v in totals.items() if not k.endswith("kl") or self.reference is not None},
            **{f"time_{k}": v for k, v in self._times.items()},
        )
        for j, b in enumerate(self.budgets):
            log[f"brpo/score_at_{b}"] = scores[:, :, j, :].mean()
        if traj_correct.any():
            log["completion_length_correct"] = lengths[traj_correct].mean()
        if (~traj_correct).any():
            log["completion_length_incorrect"] = lengths[~traj_correct].mean()
        if len(parts) > 1:
            for name, values in parts.items():
                log[f"reward/{name}"] = values[:, :, -1, :].mean()
        self.log("train/reward", final.mean(), prog_bar=True, on_step=True, batch_size=P)
        self.log_dict({f"train/{k}": float(v) for k, v in log.items()}, on_step=True, batch_size=P)
        tokens = int(think.prompt_mask.sum() + think_mask.sum() + summ.prompt_mask.sum() + summ_mask.sum()) * 2  # sampled + trained
        self.count_tokens(tokens)
