"""Per-token log-probabilities of completions given prompts: the one path every method trains through."""

from __future__ import annotations

import contextlib

import torch


def token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (B, T) log pi(completion_t | prompt, completion_<t), zero where ``completion_mask`` is 0.

    Position ids follow the attention mask, so a left-padded prompt sees the same positions as in
    generation. Logits are divided by the sampling temperature, so the log-probs are those of the
    distribution the completions were drawn from.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # only the positions that predict completion tokens go through the LM head (the vocabulary
    # projection dominates memory for real vocabularies and long prompts)
    T = completion_ids.shape[1]
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
        logits_to_keep=T + 1,
    ).logits
    return completion_logprobs(logits[:, -(T + 1) : -1], completion_ids, completion_mask, temperature, with_entropy)


def completion_logprobs(
    logits: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T, V) logits predicting each completion token -> (B, T) log-probs (+ entropy), zero on padding."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    chosen = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    padding = completion_mask == 0
    logprobs = (chosen - log_z).masked_fill(padding, 0.0)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = (log_z - (probs * logits).sum(-1)).masked_fill(padding, 0.0)
    return logprobs, entropy


class Reference:
    """The frozen reference policy: the base model with LoRA adapters off, or a frozen copy."""

    def __init__(self, model, use_adapters_off: bool):
        self.use_adapters_off = use_adapters_off
        if use_adapters_off:
            self._model = model  # shares weights with the policy; no second copy in memory
        else:
            import copy

            self._model = copy.deepcopy(model).eval()
            for p in self._model.parameters():
                p.requires_grad_(False)

    def to(self, device):
        if not self.use_adapters_off:
            self._model.to(device)
        return self

    @torch.no_grad()
    def logprobs(self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float = 1.0, fn=None):
        """``fn`` is the log-prob function of the policy (``token_logprobs`` or the shared-prefix one)."""
        ctx = self._model.disable_adapter() if self.use_adapters_off else contextlib.nullcontext()
        with ctx:
            lp, _ = (fn or token_logprobs)(self._model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=temperature)
        return lp
