"""Online preference policy gradients: Nash-MD, P3O, CoPG and f-DPG, one module (``method.pg_loss`` picks).

One step: prompts -> sample ``samples_per_prompt`` completions each from the *current* policy with the shared
sampler -> label them with the judge (``Judge.prefer`` for Nash-MD, ``Judge.score`` for the others) -> per-token
log-probs with ``token_logprobs`` and the frozen reference with ``Reference`` -> the method's pure loss
(workbench/methods/preference/pg_losses.py, losses.py::fdpg_loss) -> ``inner_iterations`` updates on that batch.

* ``nash_md``: y ~ pi_theta and y' ~ the geometric mixture pi_theta^(1-c) pi_ref^c sampled token by token
  (``mixture_coef`` c, TRL's GeometricMixtureWrapper), P = judge.prefer(y, y'), TRL's NashMD loss.
* ``p3o``: pairs (y1, y2) of the same prompt, reward difference with the KL penalty folded into each reward,
  PPO-style clipped trajectory ratios against the sampling policy (``clip``: separate | joint).
* ``copg``: pairs (y, y') of the same prompt, contrastive regularized-reward weight (on-policy pairs).
* ``fdpg``: proposal q = the sampling policy (pi_theta before this step's updates), target
  p(y|x) ~ pi_ref(y|x) exp(r/beta) with Z(x) estimated from the prompt's samples, divergence kl | reverse_kl | js |
  tv, and a moving-average baseline of the pseudo-reward over the last ``baseline_window`` samples (disco's).

Held-out evaluation is PreferenceModule's, so these report what the offline preference methods report:
val/test ``reward_accuracy`` on held-out pairs (implicit reward beta log pi/pi_ref), and with the judge
``judge_reward``, ``sample_accuracy`` (task verifier), ``win_rate`` against the reference's samples, sampled ``kl``.
"""

from __future__ import annotations

import contextlib
from collections import deque

import torch

from workbench.errors import ConfigError
from workbench.methods.base import PolicyModule, prompt_collate
from workbench.methods.preference.losses import F_DIVERGENCE_GRADIENTS, fdpg_loss
from workbench.methods.preference.module import PairEncoder, PreferenceModule
from workbench.methods.preference.pg_losses import P3O_CLIPS, copg_loss, nash_md_loss, p3o_loss
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.sampler import Rollout, encode_prompts, finish_rollout, sample_ids
from workbench.rewards.judges import build_judge

PG_LOSSES = ("nash_md", "p3o", "copg", "fdpg")
PAIRED = ("p3o", "copg")  # losses on (y1, y2) pairs of the same prompt: samples_per_prompt must be even


# ---- config checks (called from workbench/config.py before the SFT warm start) --------------------------------
def _int(m, key: str, low: int) -> int:
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"method.{key}", f"must be a whole number >= {low}, got {value!r}", f"set method.{key}={max(low, 1)} or more")
    return value


def _number(m, key: str, low: float, high: float | None = None, low_open: bool = False) -> float:
    value = m.get(key)
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
    if not bad:
        bad = (value <= low if low_open else value < low) or (high is not None and value > high)
    if bad:
        span = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
        raise ConfigError(f"method.{key}", f"must be a number in {span}, got {value!r}", f"set method.{key} inside {span}")
    return float(value)


def validate_pairwise_pg(m) -> None:
    """The fields this module introduces; ConfigError naming the first bad one."""
    name = m.get("pg_loss")
    if name not in PG_LOSSES:
        raise ConfigError("method.pg_loss", f"unknown '{name}'", f"use one of {list(PG_LOSSES)}")
    if not m.get("judge"):
        raise ConfigError("method.judge", f"{name} labels its samples with a judge, and none is set",
                          "set method.judge={name: oracle} (synthetic task), {name: reward, reward: correctness} "
                          "or {name: reward_model, path: ...}")
    n = _int(m, "samples_per_prompt", 2 if name in PAIRED or name == "fdpg" else 1)
    if name in PAIRED and n % 2:
        raise ConfigError("method.samples_per_prompt", f"{name} trains on pairs of samples of the same prompt, got {n}",
                          "use an even number, e.g. 2")
    _int(m, "inner_iterations", 1)
    _number(m, "beta", 0.0, low_open=True)
    _number(m, "temperature", 0.0, low_open=True)
    top_p = m.get("top_p", 1.0)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError("method.top_p", f"must be in (0, 1], got {top_p!r}", "set method.top_p=1.0")
    if name == "nash_md":
        _number(m, "mixture_coef", 0.0, 1.0)
    if name == "p3o":
        _number(m, "clip_eps", 0.0)
        if m.get("clip") not in P3O_CLIPS:
            raise ConfigError("method.clip", f"unknown '{m.get('clip')}'", f"use one of {list(P3O_CLIPS)}")
    if name == "fdpg":
        if m.get("divergence") not in F_DIVERGENCE_GRADIENTS:
            raise ConfigError("method.divergence", f"unknown '{m.get('divergence')}'", f"use one of {sorted(F_DIVERGENCE_GRADIENTS)}")
        _int(m, "baseline_window", 0)
    if m.get("reference", "live") != "live":
        raise ConfigError("method.reference", f"'{m.get('reference')}': online methods score fresh samples each step",
                          "use method.reference=live")


# ---- sampling from the geometric mixture pi^(1-c) pi_ref^c (Nash-MD) ------------------------------------------
@torch.no_grad()
def sample_geometric_mixture(model, reference: Reference, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                             mixture_coef: float, max_new_tokens: int, temperature: float = 1.0) -> Rollout:
    """Token by token from softmax(((1-c) logits_theta + c logits_ref) / temperature), both with a KV cache.

    Same mixture as TRL's ``GeometricMixtureWrapper`` (log_softmax(c * ref_logits + (1 - c) * model_logits)).
    Rows are the prompts as given (repeat them for several samples); stops when every row has emitted EOS.
    """
    was_training = model.training
    model.eval()
    ref_model = reference._model
    ref_ctx = ref_model.disable_adapter if reference.use_adapters_off else contextlib.nullcontext
    ids, mask = prompt_ids, prompt_mask
    past, ref_past = None, None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    out = []
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        step_ids, step_pos = (ids, positions) if past is None else (ids[:, -1:], positions[:, -1:])
        kw = dict(attention_mask=mask, position_ids=step_pos, use_cache=True, logits_to_keep=1)
        policy_out = model(input_ids=step_ids, past_key_values=past, **kw)
        with ref_ctx():
            ref_out = ref_model(input_ids=step_ids, past_key_values=ref_past, **kw)
        past, ref_past = policy_out.past_key_values, ref_out.past_key_values
        logits = (1 - mixture_coef) * policy_out.logits[:, -1].float() + mixture_coef * ref_out.logits[:, -1].float()
        if temperature <= 0:
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(-1)
        token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), token)
        out.append(token)
        done |= token == tokenizer.eos_token_id
        ids = torch.cat([ids, token.unsqueeze(-1)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if bool(done.all()):
            break
    if was_training:
        model.train()
    return finish_rollout(tokenizer, prompt_ids, prompt_mask, torch.stack(out, 1))


class WindowedBaseline:
    """Mean of the last ``window`` values (disco's WindowedMovingAverage); None before the first update."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=max(1, window))
        self.enabled = window > 0

    @property
    def value(self) -> float | None:
        return sum(self.values) / len(self.values) if self.enabled and self.values else None

    def update(self, values: torch.Tensor) -> None:
        if self.enabled:
            self.values.extend(float(v) for v in values.flatten().tolist())


class PairwisePGModule(PreferenceModule):
    family = "preference"

    def __init__(self, policy, task, method, trainer_cfg=None):
        validate_pairwise_pg(method)
        PolicyModule.__init__(self, policy, task, method, trainer_cfg)  # not PreferenceModule's: no loss_type here
        self.automatic_optimization = False  # inner_iterations updates per batch of samples
        self.pg_loss = method.pg_loss
        self.loss_types = [self.pg_loss]  # held-out reward accuracy ranks pairs by beta log pi/pi_ref
        self.loss_weights = [1.0]
        self.beta = float(method.beta)
        self.loss_params = {"beta": self.beta}
        self.encoder = PairEncoder(policy, int(method.max_prompt_length), int(method.max_completion_length))
        self.reference = Reference(self.model, use_adapters_off=hasattr(self.model, "disable_adapter"))
        self.precomputed = {}
        self.judge = build_judge(method.judge, task)
        self.baseline = WindowedBaseline(int(method.get("baseline_window", 0) or 0))

    # ---- data: prompts (plus their task fields) for training; held-out pairs as PreferenceModule ------------
    def train_collate(self, rows):
        return prompt_collate(rows)

    def train_dataloader(self):
        return PolicyModule.train_dataloader(self)

    def on_fit_start(self):
        self.reference.to(self.device)

    # ---- the step -------------------------------------------------------------------------------------------
    def _logprobs(self, model, r: Rollout) -> torch.Tensor:
        lp, _ = token_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                               temperature=float(self.cfg.temperature))
        return lp

    def _ref_logprobs(self, r: Rollout) -> torch.Tensor:
        return self.reference.logprobs(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                       float(self.cfg.temperature))

    def training_step(self, batch, batch_idx):
        cfg, n = self.cfg, int(self.cfg.samples_per_prompt)
        prompts = [self.encoder.prompt_text(p) for p in batch["prompt"]]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, self.device)
        kw = dict(max_new_tokens=int(cfg.max_new_tokens), temperature=float(cfg.temperature))
        rollout = sample_ids(self.model, self.tokenizer, prompt_ids, prompt_mask, n=n, top_p=float(cfg.get("top_p", 1.0)), **kw)
        raw_prompts = [p for p in batch["prompt"] for _ in range(n)]
        fields = {k: [v for v in values for _ in range(n)] for k, values in batch.items() if k != "prompt"}  # for the judge
        mask = rollout.completion_mask.float()

        with torch.no_grad():
            ref = self._ref_logprobs(rollout)
            # with one update per batch pi_old == pi: the live log-probs (detached) serve as pi_old / the proposal q
            old = self._logprobs(self.model, rollout) if cfg.inner_iterations > 1 else None
            labels = {}
            if self.pg_loss == "nash_md":
                mixture = sample_geometric_mixture(self.model, self.reference, self.tokenizer, rollout.prompt_ids,
                                                   rollout.prompt_mask, float(cfg.mixture_coef), **kw)
                labels["probability"] = self.judge.prefer(raw_prompts, rollout.texts, mixture.texts, **fields).float().to(self.device)
                labels["reward"] = labels["probability"]  # logged as train/reward: the win rate against the mixture
            else:
                labels["reward"] = self.judge.score(raw_prompts, rollout.texts, **fields).float().to(self.device)
            labels["baseline"] = self.baseline.value  # f-DPG: fixed for this batch, moved after its first use

        opt, sched = self.optimizers(), self.lr_schedulers()
        mu = int(cfg.inner_iterations)
        stats: dict[str, float] = {}
        for it in range(mu):
            logprobs = self._logprobs(self.model, rollout)
            loss, parts = self._loss(logprobs, old, ref, mask, labels, n, first=it == 0)
            self.check_finite(loss)
            opt.zero_grad()
            self.manual_backward(loss)
            if cfg.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
            if it == 0:  # sum_t log pi/pi_ref of the samples, under the policy that drew them
                stats["sampled_kl"] = float(((logprobs.detach() - ref) * mask).sum(-1).mean())
            for key, value in {"loss": loss.detach(), **parts}.items():
                stats[key] = stats.get(key, 0.0) + float(value) / mu
        self._log_step(rollout, labels, fields, stats, len(batch["prompt"]))

    def _loss(self, logprobs, old, ref, mask, labels, n: int, first: bool) -> tuple[torch.Tensor, dict]:
        seq = (logprobs * mask).sum(-1)
        ref_seq = (ref * mask).sum(-1)
        old_seq = (logprobs.detach() if old is None else old) * mask
        old_seq = old_seq.sum(-1)
        name, cfg = self.pg_loss, self.cfg
        if name == "nash_md":
            losses, stats = nash_md_loss(logprobs, ref, mask, labels["probability"], self.beta)
            return losses.mean(), stats
        if name == "p3o":
            losses, stats = p3o_loss(seq[0::2], seq[1::2], old_seq[0::2], old_seq[1::2], labels["reward"][0::2],
                                     labels["reward"][1::2], float(cfg.clip_eps), cfg.clip, ref_seq[0::2], ref_seq[1::2], self.beta)
            return losses.mean(), stats
        if name == "copg":
            losses, stats = copg_loss(seq[0::2], seq[1::2], ref_seq[0::2], ref_seq[1::2], labels["reward"][0::2],
                                      labels["reward"][1::2], self.beta)
            return losses.mean(), stats
        # fdpg: proposal q = the policy that sampled (pi before this step's updates)
        baseline = labels["baseline"]
        loss, stats = fdpg_loss(seq, old_seq, ref_seq, labels["reward"], self.beta, cfg.divergence,
                                baseline=0.0 if baseline is None else baseline, group_size=n)
        if first:  # the baseline moves once per batch of samples, after it was used (disco's order)
            self.baseline.update(stats["pseudo_rewards"])
        stats = {k: v for k, v in stats.items() if k != "pseudo_rewards"}
        stats["baseline"] = 0.0 if baseline is None else baseline
        return loss, stats

    def _log_step(self, r: Rollout, labels: dict, fields: dict, stats: dict, prompts: int) -> None:
        log = {f"train/{k}": float(v) for k, v in stats.items()}
        log["train/completion_length"] = float(r.lengths.float().mean())
        log["train/truncated_frac"] = float(r.truncated.float().mean())
        if hasattr(self.task, "verify") and "answer" in fields:
            log["train/accuracy"] = sum(float(self.task.verify(t, a)) for t, a in zip(r.texts, fields["answer"])) / len(r)
        self.log("train/reward", labels["reward"].float().mean(), prog_bar=True, on_step=True, batch_size=prompts)
        self.log_dict(log, on_step=True, batch_size=prompts)
        self.count_tokens(int(r.prompt_mask.sum() + r.completion_mask.sum()) * (2 + int(self.cfg.inner_iterations)))

    # ---- the f-DPG baseline travels with checkpoints ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["workbench_fdpg_baseline"] = list(self.baseline.values)

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        self.baseline.values.clear()
        self.baseline.values.extend(checkpoint.get("workbench_fdpg_baseline", []))
