"""Critique-RL (Xi et al. 2025): RL for a critic whose critiques help a frozen actor refine its answer.

The trained model (``self.model``) is the critic. The actor is a frozen copy of the warm start; it writes the first
attempt and the refinement. One step, P problems and n = ``group_size`` critiques per first attempt:

    y1 ~ actor(x)                                     one first attempt per problem (actor_temperature)
    c_j ~ critic(x, y1),  j = 1..n                    the critiques that are trained (temperature)
    v_j = verdict(c_j) in {correct, wrong, none}      the first 'correct' / 'wrong' word of the critique
    y2_j ~ actor(x, y1, c_j)                          stage II only: one refinement per critique (refine_temperature)

Reward of critique j (``RL/Critique-RL/reward/reward_func.py`` of the official code):

    stage I  (global_step < stage1_steps), discrimination:
        r_j = +1 if v_j matches the correctness of y1, else -1 (a wrong or missing verdict)
    stage II, helpfulness with a discrimination term:
        h_j = r_refine: 1[y2 correct]
              r_correct: c->c 0.2, c->i 0, i->c 1, i->i 0
              r_delta:   c->c 0,   c->i -1, i->c 1, i->i 0
        r_j = h_j + 0.2   if v_j is right
        r_j = -1          if v_j is wrong or missing (it REPLACES h_j: ``s + d if d != -1.0 else d``)

Advantage: RLOO over the n critiques of the same first attempt, A_j = r_j - mean_{k != j} r_k (the official scripts
run OpenRLHF with ``--advantage_estimator rloo --n_samples_per_prompt 4``). Update: the group-RL clipped surrogate
on the critique tokens plus beta * KL(critic || warm-start critic) in the loss (``_backward_rollout``).

Option, not in the paper (``balance_classes``, default false = the paper): every critique group shares one first
attempt, so a step's gradient is a sum of "call it correct" pushes from right first attempts and "call it wrong"
pushes from wrong ones, in proportion to how often the actor is right. A critic that cannot yet tell them apart
then learns the majority verdict (all "correct" for a strong actor, all "wrong" for a weak one). With the option each
critique's advantage is scaled by N / (2 · N_class), N_class the step's critiques of first attempts of its class (right
or wrong), so the two classes carry equal weight (the gradient of balanced verdict accuracy in stage I); a step with one
class only keeps weight 1.

Defaults from ``examples/step2-Critique-RL-stage1.sh`` / ``step3-...stage2.sh``: n = 4, critic temperature 0.7,
greedy refinement (``refinement_temperature=0``), first attempts sampled at 0.7 (``step1-inference.sh``),
``rf_mode="r_refine"``, ``init_kl_coef=0.01``. Deviations, kept on purpose: (1) OpenRLHF adds the KL (k1) to the
per-token reward and takes 2 PPO epochs per rollout; here the KL is a loss term as in the rest of the family and
``inner_iterations`` defaults to 1. (2) The official stage II is a second run started from the stage-I critic, so its
KL anchor is that critic; here one run switches stage at ``stage1_steps`` and the anchor stays the warm start.
(3) The official first attempts are a fixed, pre-sampled data set; here they are sampled online from the frozen actor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from workbench.errors import ConfigError, require_whole
from workbench.methods.group_rl.advantages import ADVANTAGES
from workbench.methods.self_correction.metrics import self_correction_metrics
from workbench.methods.self_correction.module import SelfCorrectionModule, TwoAttempts
from workbench.methods.self_correction.protocol import parse_verdict
from workbench.policy.logprobs import Reference
from workbench.policy.sampler import Rollout, sample
from workbench.tasks.base import normalize_number

REFINE_REWARDS = ("r_refine", "r_correct", "r_delta")
NO_VERDICT = -1  # verdict code of a critique with neither 'correct' nor 'wrong'
STAGE1_RIGHT = 1.0  # DiscriminationRewardFunc(discimination_correct_score=1.0) in reward_with_discrimination.py
STAGE2_RIGHT = 0.2  # RefineRewardFunc builds its discrimination term with discimination_correct_score=0.2
WRONG_VERDICT = -1.0  # both stages: a wrong or missing verdict


# ---- rewards: pure functions of (first correct, refinement correct, verdict) -----------------------------------
def parse_verdicts(critiques: list[str]) -> torch.Tensor:
    """(N,) long: 1 the critique says 'correct', 0 it says 'wrong', -1 (NO_VERDICT) it says neither."""
    codes = [NO_VERDICT if v is None else int(v) for v in map(parse_verdict, critiques)]
    return torch.tensor(codes, dtype=torch.long)


def discrimination_reward(first_correct: torch.Tensor, verdict: torch.Tensor, right: float = STAGE1_RIGHT) -> torch.Tensor:
    """``right`` where the verdict matches y1's correctness, -1 where it is wrong or missing."""
    matches = verdict.long() == first_correct.long()  # NO_VERDICT = -1 never equals 0 / 1
    return torch.where(matches, torch.tensor(float(right)), torch.tensor(WRONG_VERDICT))


def refinement_reward(first_correct: torch.Tensor, refined_correct: torch.Tensor, mode: str) -> torch.Tensor:
    """The helpfulness reward h of one refinement (``reward_score_func(origin, refine, rf_mode)``)."""
    c1, c2 = first_correct.bool(), refined_correct.bool()
    if mode == "r_refine":
        return c2.float()
    if mode == "r_correct":  # a fixed mistake pays 1, a kept correct answer 0.2, the rest 0
        return torch.where(c1, 0.2 * c2.float(), c2.float())
    if mode == "r_delta":  # the change in correctness: +1 fixed, -1 broken, 0 unchanged
        return c2.float() - c1.float()
    raise ValueError(f"unknown refine_reward '{mode}' (one of {', '.join(REFINE_REWARDS)})")


def stage2_reward(first_correct: torch.Tensor, refined_correct: torch.Tensor, verdict: torch.Tensor, mode: str) -> torch.Tensor:
    """h + 0.2 with a right verdict; -1 in place of h with a wrong or missing one."""
    d = discrimination_reward(first_correct, verdict, right=STAGE2_RIGHT)
    return torch.where(d == WRONG_VERDICT, d, refinement_reward(first_correct, refined_correct, mode) + d)


def critique_rewards(stage: int, first_correct: torch.Tensor, verdict: torch.Tensor,
                     refined_correct: torch.Tensor | None = None, mode: str = "r_refine") -> torch.Tensor:
    """The reward of each critique: stage I discrimination, stage II refinement + discrimination."""
    if stage == 1:
        return discrimination_reward(first_correct, verdict)
    if refined_correct is None:
        raise ValueError("stage II rewards need the actor's refinements")
    return stage2_reward(first_correct, refined_correct, verdict, mode)


def critique_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "rloo", mask=None, **params) -> torch.Tensor:
    """(N,) rewards, rows i*n..i*n+n-1 the critiques of first attempt i -> advantages over each group of n
    (RLOO: A_j = r_j - mean_{k != j} r_k); (N, T) for the per-token estimators."""
    n = len(rewards)
    adv = ADVANTAGES[estimator](rewards.view(-1, group_size), mask=mask, **params)
    return adv.reshape(n) if adv.dim() == 2 else adv.reshape(n, -1)


def class_balance_weights(first_correct: torch.Tensor) -> torch.Tensor:
    """(N,) 0/1 correctness of the first attempt each critique judges -> (N,) weights N / (2 · N_class), so right
    and wrong first attempts weigh half of the step each; all ones when the step has one class only."""
    right = first_correct.bool()
    n_right, n = int(right.sum()), len(right)
    if n_right in (0, n):
        return torch.ones(n)
    return torch.where(right, torch.tensor(n / (2 * n_right)), torch.tensor(n / (2 * (n - n_right))))


def answers_differ(task, firsts: list[str], seconds: list[str]) -> torch.Tensor:
    """True where the refinement's answer differs from the first attempt's (text when no answer parses)."""
    def key(text):
        raw = task.extract_answer(text)
        return normalize_number(raw) or (raw.strip() if raw else text.strip())

    return torch.tensor([key(a) != key(b) for a, b in zip(firsts, seconds)])


def validate_critique_rl(m) -> None:
    """Critique-RL's own fields, checked before the warm start trains."""
    if m.get("refine_reward") not in REFINE_REWARDS:
        raise ConfigError("method.refine_reward", f"unknown '{m.get('refine_reward')}'",
                          f"use one of {list(REFINE_REWARDS)} (the official stage II uses r_refine)")
    require_whole(m, "stage1_steps", 0, "e.g. method.stage1_steps=40 (0 skips the discrimination-only stage)")
    feedback = (m.get("protocol") or {}).get("feedback")
    if feedback != "critique":
        raise ConfigError("method.protocol.feedback", f"is '{feedback}', but Critique-RL trains a critic",
                          "set method.protocol.feedback=critique")
    require_whole(m, "critique_max_new_tokens", 1, "e.g. method.critique_max_new_tokens=16")
    if not isinstance(m.get("balance_classes", False), bool):
        raise ConfigError("method.balance_classes", f"must be true or false, got {m.get('balance_classes')!r}",
                          "false is the paper; true weighs right and wrong first attempts equally")
    for key in ("actor_temperature", "refine_temperature"):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"method.{key}", f"must be a number >= 0 (0 = greedy), got {value!r}", f"e.g. method.{key}=0.7")


@dataclass
class CritiqueBatch:
    """One step's rollouts; critique row i*n+j is the j-th critique of first attempt i."""

    first: Rollout  # (P,) the actor's first attempts
    first_correct: torch.Tensor  # (P,) float 0/1
    critiques: Rollout  # (P*n,) the critic's critiques: the rollout that is trained
    verdicts: torch.Tensor  # (P*n,) long 1 / 0 / NO_VERDICT
    group_size: int
    refined: Rollout | None = None  # (P*n,) stage II: the actor's refinement after each critique
    refined_correct: torch.Tensor | None = None

    @property
    def first_correct_per_critique(self) -> torch.Tensor:
        return self.first_correct.repeat_interleave(self.group_size)


class CritiqueRLModule(SelfCorrectionModule):
    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        # The actor: the warm start, frozen. A Reference is a plain object (not an nn.Module attribute), so Lightning
        # does not register it: the optimizer, the checkpoint and the module's .to() never see it. When the KL reference
        # exists it is that same frozen copy of the warm start, so it is shared rather than copied a second time.
        adapters_off = hasattr(self.model, "disable_adapter")  # LoRA: the actor is the model with adapters off
        self.actor = self.reference if self.reference is not None else Reference(self.model, use_adapters_off=adapters_off)

    def stage(self) -> int:
        return 1 if self.global_step < int(self.cfg.stage1_steps) else 2

    def on_fit_start(self):
        super().on_fit_start()
        self.actor.to(self.device)

    # ---- the actor writes both attempts; the critic writes the critiques -------------------------------------
    @property
    def attempt_model(self):
        return self.actor._model

    def sample_texts(self, conversations: list, n: int, temperature: float, max_new_tokens: int, model=None) -> Rollout:
        if model is not None:  # an explicit model (the critic): the spine's path, the configured generation backend
            return super().sample_texts(conversations, n, temperature, max_new_tokens, model=model)
        # The actor always samples through transformers' generate: a vLLM backend holds the critic's weights (synced
        # after each step). The actor is not a registered submodule, so Lightning does not move it: we do, lazily
        # (evaluation before training runs before on_fit_start).
        if not self.actor.use_adapters_off and next(self.actor._model.parameters()).device != self.device:
            self.actor.to(self.device)
        ctx = self.actor._model.disable_adapter() if self.actor.use_adapters_off else contextlib.nullcontext()
        with ctx:
            return sample(self.actor._model, self.tokenizer, self.formatted(conversations), n=n,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=self.cfg.top_p)

    def sample_critiques(self, prompts: list, firsts: list[str], n: int, temperature: float) -> Rollout:
        conversations = [self.protocol.critique_prompt(p, y1) for p, y1 in zip(prompts, firsts)]
        return super().sample_texts(conversations, n, temperature, int(self.cfg.critique_max_new_tokens), model=self.model)

    def critiques(self, prompts: list, firsts: list[str], greedy: bool) -> list[str]:
        temperature = 0.0 if greedy else float(self.cfg.temperature)
        return [t.strip() for t in self.sample_critiques(prompts, firsts, 1, temperature).texts]

    def rollout(self, batch: dict, refine: bool) -> CritiqueBatch:
        cfg, n = self.cfg, int(self.cfg.group_size)
        first = self.sample_texts(batch["prompt"], 1, float(cfg.actor_temperature), cfg.max_new_tokens)
        c1 = self.verify(first.texts, batch["answer"])
        critiques = self.sample_critiques(batch["prompt"], first.texts, n, float(cfg.temperature))
        texts = [t.strip() for t in critiques.texts]
        data = CritiqueBatch(first, c1, critiques, parse_verdicts(texts), n)
        if refine:
            prompts = [p for p in batch["prompt"] for _ in range(n)]
            firsts = [y1 for y1 in first.texts for _ in range(n)]
            seconds = [self.protocol.second(p, y1, c) for p, y1, c in zip(prompts, firsts, texts)]
            data.refined = self.sample_texts(seconds, 1, float(cfg.refine_temperature), cfg.max_new_tokens)
            data.refined_correct = self.verify(data.refined.texts, [a for a in batch["answer"] for _ in range(n)])
        return data

    # ---- the step ---------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cfg, n = self.cfg, int(self.cfg.group_size)
        self._times = {}
        stage = self.stage()
        with self._timed("generation"):
            data = self.rollout(batch, refine=stage == 2)
        c1 = data.first_correct_per_critique
        rewards = critique_rewards(stage, c1, data.verdicts, data.refined_correct, str(cfg.refine_reward)).to(self.device)
        r = data.critiques
        mask = r.completion_mask.float()
        advantages = critique_advantages(rewards, n, cfg.advantage, mask=mask, **dict(cfg.get("advantage_params") or {}))
        if cfg.get("balance_classes", False):
            weights = class_balance_weights(c1).to(self.device)
            advantages = advantages * (weights if advantages.dim() == 1 else weights.unsqueeze(-1))
        fn, chunks = self._logprob_fn(), self._chunks(len(r))
        with self._timed("logprobs"), torch.no_grad():
            # with one update per rollout pi_old == pi: the ratio is 1 and the live log-probs serve
            old = (torch.cat([self._rollout_logprobs(self.model, r, c, fn)[0] for c in chunks])
                   if cfg.inner_iterations > 1 else None)
            ref = self._reference_logprobs(r, chunks, fn)
        kwargs = self._loss_kwargs(int(cfg.critique_max_new_tokens), mask, beta=float(cfg.beta))
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        with self._timed("update"):
            for _ in range(cfg.inner_iterations):
                opt.zero_grad()
                self._backward_rollout(r, chunks, fn, advantages, mask, mask, kwargs, totals, old=old, ref=ref,
                                       share=1 / cfg.inner_iterations)
                self._optimizer_step(opt, sched)
            self.generator.sync(self.model)
        self.log_critique_step(data, stage, rewards, advantages, totals)

    def log_critique_step(self, data: CritiqueBatch, stage: int, rewards, advantages, totals: dict) -> None:
        n, c1 = data.group_size, data.first_correct_per_critique
        groups = rewards.view(-1, n)
        log = dict(
            stage=stage, reward_std=groups.std(-1).mean(), frac_zero_std_groups=(groups.std(-1) == 0).float().mean(),
            advantage_abs=advantages.abs().mean(), accuracy_t1=data.first_correct.mean(),
            **verdict_metrics(data.verdicts, c1),
            critique_length=data.critiques.lengths.float().mean(), critique_truncated_frac=data.critiques.truncated.float().mean(),
            completion_length=data.first.lengths.float().mean(),
            **totals, **{f"time_{k}": v for k, v in self._times.items()},
        )
        tokens = sum(int(x.prompt_mask.sum() + x.completion_mask.sum()) for x in (data.first, data.critiques))
        if data.refined is not None:  # stage II: how the critiques moved the actor (SCoRe's metrics over critiques)
            firsts = [y for y in data.first.texts for _ in range(n)]
            log.update(self_correction_metrics(c1, data.refined_correct, answers_differ(self.task, firsts, data.refined.texts)))
            log["accuracy_t1"] = data.first_correct.mean()
            tokens += int(data.refined.prompt_mask.sum() + data.refined.completion_mask.sum())
        P = len(data.first)
        self.log("train/reward", rewards.mean(), prog_bar=True, on_step=True, batch_size=P)
        self.log_dict({f"train/{k}": float(v) for k, v in log.items()}, on_step=True, batch_size=P)
        self.count_tokens(tokens + int(data.critiques.completion_mask.sum()) * (1 + int(self.cfg.inner_iterations)))

    # ---- evaluation: the spine's greedy actor -> critic -> actor, plus the critic's discrimination -------------
    def extra_eval_metrics(self, data: TwoAttempts) -> dict[str, float]:
        return {k: float(v) for k, v in verdict_metrics(parse_verdicts(data.feedback), data.first_correct).items()}


def verdict_metrics(verdicts: torch.Tensor, first_correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """The critic's discrimination, each a fraction of all critiques (so they average across batches):
    verdict_accuracy (the verdict matches y1), verdict_missing, verdict_caught (y1 wrong and called wrong),
    verdict_false_alarm (y1 correct and called wrong)."""
    v, c1 = verdicts.long().cpu(), first_correct.long().cpu()
    return dict(
        verdict_accuracy=(v == c1).float().mean(),
        verdict_missing=(v == NO_VERDICT).float().mean(),
        verdict_caught=((v == 0) & (c1 == 0)).float().mean(),
        verdict_false_alarm=((v == 0) & (c1 == 1)).float().mean(),
    )
