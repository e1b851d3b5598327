"""One batched sampler for every family: left-padded prompts, KV cache, stop at EOS, masks out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class Rollout:
    """A batch of completions; row i*n..i*n+n-1 are the n samples of prompt i."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T) right-padded with pad id
    completion_mask: torch.Tensor  # (B, T) 1 on generated tokens up to and including EOS
    texts: list[str]  # decoded completions, special tokens removed
    truncated: torch.Tensor  # (B,) True where no EOS came within max_new_tokens

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> "Rollout":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_ids.device)
        return Rollout(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows],
                       [self.texts[i] for i in rows.tolist()], self.truncated[rows])

    @staticmethod
    def cat(parts: list["Rollout"], pad_id: int) -> "Rollout":
        """Stack rollouts of different widths: prompts stay left-padded, completions right-padded."""
        width_p = max(r.prompt_ids.shape[1] for r in parts)
        width_c = max(r.completion_ids.shape[1] for r in parts)

        def pad(x, width, value, left):
            extra = width - x.shape[1]
            if extra == 0:
                return x
            filler = x.new_full((x.shape[0], extra), value)
            return torch.cat([filler, x] if left else [x, filler], dim=1)

        return Rollout(
            torch.cat([pad(r.prompt_ids, width_p, pad_id, True) for r in parts]),
            torch.cat([pad(r.prompt_mask, width_p, 0, True) for r in parts]),
            torch.cat([pad(r.completion_ids, width_c, pad_id, False) for r in parts]),
            torch.cat([pad(r.completion_mask, width_c, 0, False) for r in parts]),
            [t for r in parts for t in r.texts],
            torch.cat([r.truncated for r in parts]),
        )


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def completion_mask_from_ids(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask every token up to and including the first EOS; rows without EOS are truncated."""
    is_eos = ids == eos_id
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # an EOS strictly before this position
    mask = (~seen_before).long()
    truncated = ~is_eos.any(-1)
    return mask, truncated


def _pad(sequences, pad_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(seq) for seq in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[i, cols] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def left_pad(sequences, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id prompts (lists or 1-D tensors) -> left-padded (ids, mask), the layout ``encode_prompts`` makes."""
    return _pad(sequences, pad_id, device, left=True)


def right_pad(sequences, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id completions (lists or 1-D tensors) -> right-padded (ids, mask), the layout of ``Rollout``."""
    return _pad(sequences, pad_id, device, left=False)


@torch.no_grad()
def sample(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Rollout:
    """Sample ``n`` completions per prompt; ``temperature=0`` means greedy."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, next(model.parameters()).device)
    return sample_ids(model, tokenizer, prompt_ids, prompt_mask, n, max_new_tokens, temperature, top_p)


@torch.no_grad()
def sample_ids(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Rollout:
    """``sample`` for prompts that are already left-padded token ids (e.g. a prompt plus a cut completion)."""
    if n > 1:
        prompt_ids = prompt_ids.repeat_interleave(n, 0)
        prompt_mask = prompt_mask.repeat_interleave(n, 0)
    was_training = model.training
    model.eval()
    greedy = temperature <= 0
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **kwargs,
    )
    if was_training:
        model.train()
    return finish_rollout(tokenizer, prompt_ids, prompt_mask, out[:, prompt_ids.shape[1] :])


def finish_rollout(tokenizer, prompt_ids, prompt_mask, completion_ids: torch.Tensor) -> Rollout:
    """Raw sampled ids (anything after EOS is junk) -> masks, pad after EOS, decoded texts: one rule for every backend."""
    mask, truncated = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, truncated)
