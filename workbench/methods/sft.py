"""Supervised fine-tuning: maximize log pi(target | prompt) on the task's reference completions.

loss = - sum_t m_t log pi(y_t | x, y_<t) / sum_t m_t   (token mean over completion tokens, EOS included)

Under DDP the token count is the global batch's (distributed.rank_share), so the run trains and logs the token
mean of the whole global batch, as one process would.
"""

from __future__ import annotations

import torch

from workbench.methods.base import PolicyModule
from workbench.methods.distributed import global_mean, rank_share
from workbench.policy.logprobs import token_logprobs
from workbench.policy.sampler import encode_prompts


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean NLL; ``tokens`` replaces the local token count as the denominator (the rank's share of the
    global count under DDP)."""
    return -(logprobs * mask).sum() / (mask.sum() if tokens is None else tokens).clamp(min=1)


class SFTModule(PolicyModule):
    family = "sft"

    def train_collate(self, rows):
        tok = self.tokenizer
        prompt_ids, prompt_mask = encode_prompts(tok, self.formatted([r["prompt"] for r in rows]), "cpu")
        targets = [self.policy.completion_text(r["target"]) + tok.eos_token for r in rows]
        enc = tok(targets, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": enc["input_ids"],
            "completion_mask": enc["attention_mask"],
        }

    def training_step(self, batch, batch_idx):
        logprobs, _ = token_logprobs(
            self.model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]
        )
        mask = batch["completion_mask"].float()
        # ranks hold different token counts: per-rank token means, averaged by DDP, would overweight short ranks
        loss = sft_loss(logprobs, mask, tokens=rank_share(mask.sum()))
        self.check_finite(loss)
        n = batch["completion_ids"].shape[0]
        self.log("train/loss", global_mean(loss.detach()), on_step=True, prog_bar=True, batch_size=n)
        self.log("train/completion_length", mask.sum(-1).mean(), on_step=True, batch_size=n)
        tokens = int(batch["prompt_mask"].sum() + mask.sum())
        self.count_tokens(tokens)
        return loss
