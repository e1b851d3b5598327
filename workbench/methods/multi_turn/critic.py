"""Learned critics on a copy of the policy's transformer trunk: token values (PPO-GAE, POAD, MA-RLHF) and
utterance-level state / state-action values (ArCHer, step-level DAPO).

The trunk starts as a copy of the policy's (so the critic begins knowing the task's language, the way PPO
critics start from a reward model or the SFT model); the scalar heads start at zero, so every first estimate
is 0 and the early advantages are plain Monte-Carlo returns.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def copy_trunk(model) -> nn.Module:
    """The policy's transformer body without its LM head (LoRA adapters merged into a plain copy)."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
        return model.base_model
    return copy.deepcopy(model.base_model)


class ValueModel(nn.Module):
    """Transformer trunk + ``heads`` linear scalar heads, reading the hidden state at chosen positions."""

    def __init__(self, policy_model, heads: int = 1):
        super().__init__()
        self.trunk = copy_trunk(policy_model)
        self.trunk.train()
        hidden = policy_model.config.hidden_size
        self.head = nn.Linear(hidden, heads)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def token_values(self, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
        """(B, T[, heads]) V(s, a_<t): the value at the position that predicts completion token t (the same
        positions ``token_logprobs`` reads), 0 on padding."""
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        T = completion_ids.shape[1]
        hidden = self.hidden_states(ids, mask)[:, -(T + 1):-1]
        values = self.head(hidden)
        values = values.masked_fill((completion_mask == 0).unsqueeze(-1), 0.0)
        return values.squeeze(-1) if values.shape[-1] == 1 else values

    def state_values(self, prompt_ids, prompt_mask) -> torch.Tensor:
        """(B[, heads]) V(s) read at the last prompt token (prompts are left-padded, so it is the last column)."""
        values = self.head(self.hidden_states(prompt_ids, prompt_mask)[:, -1])
        return values.squeeze(-1) if values.shape[-1] == 1 else values

    def state_and_action_values(self, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """One forward over (s, a): (B, heads) read at the context's last token (= ``state_values``: causal
        attention, left-padded contexts) and (B, heads) read at the action's last token."""
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        hidden = self.hidden_states(ids, mask)
        P = prompt_ids.shape[1]
        last = P + completion_mask.sum(-1).clamp(min=1) - 1
        return self.head(hidden[:, P - 1]), self.head(hidden[torch.arange(len(ids), device=ids.device), last])
