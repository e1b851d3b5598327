"""Offline preference optimization: one step = pairs -> one forward -> pure loss by name -> update.

Each batch holds B pairs (x, y_w, y_l). Chosen and rejected go through ONE forward of 2B rows, laid out
(x1, y_w1), (x1, y_l1), (x2, y_w2), ... so that with ``shared_prefix`` each prompt is encoded once for both
completions (the group-RL shared-prefix path with groups of 2). The loss is ``method.loss_type``, one name
or a list combined with ``method.loss_weights`` (workbench/methods/preference/losses.py). The reference's
log-probs come from the frozen model each step (``reference: live``) or are computed once for the whole
training split before the first step and cached on disk (``reference: precomputed``).

KTO (``loss_type: kto``) unpairs each pair into a desirable (y_w) and an undesirable (y_l) example, and
estimates its reference point z0 from mismatched (x_i, y_{i+1}) completions, as TRL does for paired data.

Validation and test report reward accuracy on held-out pairs (the loss's implicit reward ranks y_w above
y_l); with a judge (``method.judge``) they also sample the policy and the reference on held-out prompts and
report the judge's reward, the win rate against the reference and the sampled KL to the reference.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from workbench.methods.base import PolicyModule, prompt_collate
from workbench.methods.distributed import global_mean, rank_share
from workbench.methods.preference.losses import (REFERENCE_FREE, PairLogps, combined_loss, implicit_rewards,
                                                  kto_kl_baseline, kto_loss)
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.shared_prefix import check_shared_prefix_support, shared_prefix_token_logprobs
from workbench.rewards.judges import build_judge

log = logging.getLogger(__name__)


def loss_types_of(method) -> list[str]:
    value = method.loss_type
    return [value] if isinstance(value, str) else list(value)


class PairEncoder:
    """Rows with prompt/chosen/rejected (strings, or TRL conversational message lists) -> token tensors."""

    def __init__(self, policy, max_prompt_length: int, max_completion_length: int):
        self.policy, self.tok = policy, policy.tokenizer
        self.max_prompt_length, self.max_completion_length = max_prompt_length, max_completion_length

    def prompt_text(self, prompt) -> str:
        return self.policy.prompt_text(prompt)

    def completion_text(self, completion) -> str:
        return self.policy.completion_text(completion)

    def prompts(self, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.tok(self.prompt_text(p), add_special_tokens=False)["input_ids"][-self.max_prompt_length:] for p in prompts]
        return _pad(ids, self.tok.pad_token_id, left=True)

    def completions(self, completions: list) -> tuple[torch.Tensor, torch.Tensor]:
        eos = [self.tok.eos_token_id]
        ids = [(self.tok(self.completion_text(c), add_special_tokens=False)["input_ids"] + eos)[:self.max_completion_length]
               for c in completions]
        return _pad(ids, self.tok.pad_token_id, left=False)

    def pairs(self, rows: list[dict]) -> dict:
        """Prompts repeated twice and completions interleaved: row 2i is (x_i, y_w,i), row 2i+1 is (x_i, y_l,i)."""
        prompt_ids, prompt_mask = self.prompts([r["prompt"] for r in rows])
        interleaved = [c for r in rows for c in (r["chosen"], r["rejected"])]
        completion_ids, completion_mask = self.completions(interleaved)
        return {
            "prompt_ids": prompt_ids.repeat_interleave(2, 0),
            "prompt_mask": prompt_mask.repeat_interleave(2, 0),
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
        }


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if left:
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
        else:
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask


class PreferenceModule(PolicyModule):
    family = "preference"

    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.loss_types = loss_types_of(method)
        self.loss_weights = list(method.get("loss_weights") or [1.0] * len(self.loss_types))
        self.loss_params = {"beta": float(method.beta), **dict(method.get("loss_params") or {})}
        self.encoder = PairEncoder(policy, int(method.max_prompt_length), int(method.max_completion_length))
        needs_ref = any(n not in REFERENCE_FREE for n in self.loss_types)
        self.reference = None
        if needs_ref or method.get("log_kl", True):
            self.reference = Reference(self.model, use_adapters_off=hasattr(self.model, "disable_adapter"))
        self.precomputed: dict[str, torch.Tensor] = {}
        if method.get("shared_prefix", False):
            check_shared_prefix_support(self.model)
        self.judge = build_judge(method.judge, task) if method.get("judge") else None

    # ---- data: pairs for training and held-out reward accuracy -----------------------------------------
    def train_collate(self, rows):
        batch = self.encoder.pairs(rows)
        batch["row_index"] = torch.tensor([r["row_index"] for r in rows])
        batch["rows"] = rows
        return batch

    def train_dataloader(self):
        world = self.trainer.world_size if self._trainer is not None else 1
        data = self.task.split("train")
        data = data.add_column("row_index", list(range(len(data))))
        return DataLoader(data, batch_size=self.cfg.batch_size // world, shuffle=True, drop_last=True,
                          collate_fn=self.train_collate)

    def _eval_loader(self, split: str):
        return DataLoader(self.task.split(split), batch_size=self.cfg.eval.batch_size, collate_fn=prompt_collate)

    # ---- log-probs ------------------------------------------------------------------------------------
    def _logprob_fn(self):
        if self.cfg.get("shared_prefix", False):
            return lambda model, *args, **kw: shared_prefix_token_logprobs(model, *args, group_size=2, **kw)
        return token_logprobs

    def _sequence_logps(self, model_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (model_logps * mask).sum(-1), mask.sum(-1)

    def _policy_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lp, _ = self._logprob_fn()(self.model, batch["prompt_ids"], batch["prompt_mask"],
                                   batch["completion_ids"], batch["completion_mask"])
        mask = batch["completion_mask"].to(lp.dtype)
        sums, tokens = self._sequence_logps(lp, mask)
        return sums, tokens, lp

    def _reference_logps(self, batch) -> torch.Tensor | None:
        if self.reference is None:
            return None
        if self.precomputed:
            idx = batch["row_index"].cpu()
            return torch.stack([self.precomputed["chosen"][idx], self.precomputed["rejected"][idx]], 1).flatten().to(self.device)
        lp = self.reference.logprobs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                     batch["completion_mask"], fn=self._logprob_fn())
        return (lp * batch["completion_mask"]).sum(-1)

    def pair_logps(self, batch) -> tuple[PairLogps, torch.Tensor]:
        sums, tokens, token_lp = self._policy_logps(batch)
        ref = self._reference_logps(batch)
        lp = PairLogps(sums[0::2], sums[1::2], tokens[0::2], tokens[1::2],
                       None if ref is None else ref[0::2], None if ref is None else ref[1::2])
        return lp, token_lp

    # ---- reference log-probs computed once ----------------------------------------------------------------
    def on_fit_start(self):
        if self.reference is None:
            return
        self.reference.to(self.device)
        if self.cfg.get("reference", "live") == "precomputed":
            self.precomputed = self._precompute_reference()

    def _reference_cache_path(self, data) -> Path:
        key = hashlib.sha256()
        key.update(data._fingerprint.encode())
        for p in self.reference._model.parameters():  # the weights the log-probs come from (adapters off: the base)
            key.update(p.detach().float().cpu().numpy().tobytes())
        key.update(f"{self.cfg.max_prompt_length}/{self.cfg.max_completion_length}/{self.cfg.get('shared_prefix')}".encode())
        return Path(self.cfg.reference_cache_dir) / f"{key.hexdigest()[:16]}.pt"

    @torch.no_grad()
    def _precompute_reference(self) -> dict[str, torch.Tensor]:
        data = self.task.split("train")
        path = self._reference_cache_path(data)
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if len(cached["chosen"]) == len(data):
                log.info("reference log-probs: reusing %s", path)
                return cached
        out = {"chosen": torch.empty(len(data)), "rejected": torch.empty(len(data))}
        loader = DataLoader(data.add_column("row_index", list(range(len(data)))), batch_size=self.cfg.eval.batch_size,
                            collate_fn=self.train_collate)
        from rich.progress import track

        for batch in track(loader, description="reference log-probs (once)", disable=not self.cfg.get("progress", True)):
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            lp = self.reference.logprobs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                         batch["completion_mask"], fn=self._logprob_fn())
            sums = (lp * batch["completion_mask"]).sum(-1).cpu()
            idx = batch["row_index"].cpu()
            out["chosen"][idx], out["rejected"][idx] = sums[0::2], sums[1::2]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(out, tmp)
        tmp.replace(path)
        return out

    # ---- training ----------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        lp, token_lp = self.pair_logps(batch)
        if self.loss_types == ["kto"]:
            loss, parts = self._kto_loss(batch, lp)
        else:
            params = self.loss_params
            if "sft" in self.loss_types:
                # its token mean divides by the chosen tokens; under DDP those of the global batch (ranks differ)
                params = {**params, "sft_tokens": rank_share(lp.chosen_tokens.sum())}
            loss, parts = combined_loss(lp, self.loss_types, self.loss_weights, params)
        self.check_finite(loss)
        self._log_pairs("train", lp, len(lp.chosen), on_step=True)
        # per-pair means over equal pairs per rank: their average over ranks is the global batch's loss
        self.log("train/loss", global_mean(loss.detach()), on_step=True, prog_bar=True, batch_size=len(lp.chosen))
        if len(parts) > 1:
            for name, value in parts.items():
                self.log(f"train/loss_{name}", global_mean(value), on_step=True, batch_size=len(lp.chosen))
        self.count_tokens(int(batch["prompt_mask"].sum() + batch["completion_mask"].sum()))
        return loss

    def _kto_loss(self, batch, lp: PairLogps) -> tuple[torch.Tensor, dict]:
        """Unpaired KTO on the 2B examples of the batch; z0 from (x_i, y_{i+1}) mismatched completions."""
        p = self.loss_params
        logps = torch.cat([lp.chosen, lp.rejected])
        ref = torch.cat([lp.ref_chosen, lp.ref_rejected])
        desirable = torch.cat([torch.ones_like(lp.chosen), torch.zeros_like(lp.rejected)])
        with torch.no_grad():
            shifted = torch.roll(torch.arange(batch["completion_ids"].shape[0], device=self.device), 2)
            args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"][shifted], batch["completion_mask"][shifted])
            kl_lp, _ = token_logprobs(self.model, *args)
            kl_ref = self.reference.logprobs(*args)
            mask = args[3].to(kl_lp.dtype)
            z0 = kto_kl_baseline((kl_lp * mask).sum(-1), (kl_ref * mask).sum(-1), reduce=global_mean)
        losses = kto_loss(logps, ref, desirable, z0, p["beta"], p.get("desirable_weight", 1.0), p.get("undesirable_weight", 1.0))
        self.log("train/kto_z0", z0, on_step=True, batch_size=len(logps))
        return losses.mean(), {"kto": losses.mean().detach()}

    def _log_pairs(self, prefix: str, lp: PairLogps, n: int, on_step: bool) -> None:
        beta = self.loss_params["beta"]
        chosen, rejected = implicit_rewards(lp, self.loss_types, beta)
        kw = dict(on_step=on_step, on_epoch=not on_step, batch_size=n, sync_dist=not on_step)
        # a tie (policy == reference at the start) counts as a coin flip, so chance level reads 0.5
        accuracy = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
        self.log(f"{prefix}/reward_accuracy", accuracy.mean(), prog_bar=prefix != "train", **kw)
        self.log(f"{prefix}/rewards_chosen", chosen.detach().mean(), **kw)
        self.log(f"{prefix}/rewards_rejected", rejected.detach().mean(), **kw)
        self.log(f"{prefix}/reward_margin", (chosen - rejected).detach().mean(), **kw)
        if lp.ref_chosen is not None and lp.ref_rejected is not None:
            # the raw log-ratio gap h(y_w) - h(y_l) in nats, whatever the loss (IPO regresses it to 1/(2 beta), DPO has no bound)
            self.log(f"{prefix}/logratio_margin", lp.margin().detach().mean(), **kw)
        self.log(f"{prefix}/logps_chosen", lp.chosen.detach().mean(), **kw)
        self.log(f"{prefix}/logps_rejected", lp.rejected.detach().mean(), **kw)
        self.log(f"{prefix}/length_chosen", lp.chosen_tokens.float().mean(), **kw)
        self.log(f"{prefix}/length_rejected", lp.rejected_tokens.float().mean(), **kw)

    # ---- held-out evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, rows: dict, prefix: str) -> None:
        examples = [dict(zip(rows, values)) for values in zip(*rows.values())]
        batch = {k: v.to(self.device) for k, v in self.encoder.pairs(examples).items()}
        sums, tokens, _ = self._policy_logps(batch)
        ref = None
        if self.reference is not None:
            ref_lp = self.reference.logprobs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                             batch["completion_mask"], fn=self._logprob_fn())
            ref = (ref_lp * batch["completion_mask"]).sum(-1)
        lp = PairLogps(sums[0::2], sums[1::2], tokens[0::2], tokens[1::2],
                       None if ref is None else ref[0::2], None if ref is None else ref[1::2])
        self._log_pairs(prefix, lp, len(examples), on_step=False)
        if self.judge is not None:
            self.judge_samples(rows, prefix)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.eval_prefix)
