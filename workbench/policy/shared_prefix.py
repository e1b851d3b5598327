"""Shared-prefix ("Prefix Grouper", Liu et al. 2025) per-token log-probs for group rollouts.

In a group rollout the G completions of a prompt are scored by ``token_logprobs`` as G rows that each
re-encode the same prompt. Here each group becomes ONE packed row, so the prompt goes through the model
once::

    columns:  [ prompt (left-padded, width P) | completion 1 (width T) | ... | completion G (width T) ]
    segment:  [ 0 ...                         | 1 ...                  | ... | G ...                  ]

and a 4-D mask ``allowed[q, k] = (k <= q) and valid[k] and (segment[k] == 0 or segment[k] == segment[q])``
lets prompt tokens attend causally among themselves and each completion token attend to the real prompt
tokens plus its own earlier real tokens.

Why this equals the naive forward exactly (up to float summation order): a decoder layer mixes tokens
only in attention. Every real token sees the same set of keys as in the naive row (its prompt, its own
prefix; never another completion, never padding), and carries the same position id (prompt positions from
the prompt mask's cumsum, completion j's continuing from the prompt length), so RoPE rotates queries
and keys identically and every hidden state, hence every logit, matches. The prompt's hidden states
are shared by the G completions, so the backward pass sums their G gradient contributions into the
one copy, which is what the naive backward sums over the G copies.

Because each completion has a fixed width T, the positions whose logits are needed (the last prompt
column, then each completion's columns but its last) are the same columns in every packed row, so one
1-D ``logits_to_keep`` index tensor keeps the LM head off the prompt.

Supported: models whose attention takes a user-passed 4-D mask as-is (transformers 5 Llama / Qwen2 and
their peft wrappers) with the ``sdpa`` (boolean mask) or ``eager`` (additive float mask) attention
implementation; no sliding-window attention (the window would count packed columns, not positions).
The mask is dense, (B/G, 1, L, L) with L = P + G*T: bool for sdpa, float for eager, and attention runs
over all L keys, the cross-completion blocks included (masked, not skipped), so the saving comes from
the per-token work (projections, MLP) on G-1 prompt copies; it grows with P / (G*T).
"""

from __future__ import annotations

import torch

from workbench.policy.logprobs import completion_logprobs

SUPPORTED_ATTENTION = ("sdpa", "eager")


def check_shared_prefix_support(model) -> None:
    """ConfigError on method.shared_prefix when this model's attention cannot take the packed 4-D mask."""
    from workbench.errors import ConfigError

    config = model.config
    impl = getattr(config, "_attn_implementation", None)
    sliding = getattr(config, "use_sliding_window", False) or "sliding_attention" in (getattr(config, "layer_types", None) or ())
    if impl not in SUPPORTED_ATTENTION or sliding:
        why = "sliding-window attention" if sliding else f"attention implementation {impl!r}"
        raise ConfigError("method.shared_prefix", f"this model's {why} cannot take the packed 4-D mask",
                          f"set method.shared_prefix=false (or load the model with attn_implementation in {list(SUPPORTED_ATTENTION)})")


def _check_inputs(model, prompt_ids, prompt_mask, completion_ids, group_size: int) -> None:
    B = prompt_ids.shape[0]
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"batch size {B} is not divisible by group_size {group_size}")
    if completion_ids.shape[0] != B:
        raise ValueError(f"prompt batch {B} != completion batch {completion_ids.shape[0]}")
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(f"shared-prefix log-probs need attn_implementation in {SUPPORTED_ATTENTION}, got {impl!r}")
    if getattr(model.config, "use_sliding_window", False) or "sliding_attention" in (
        getattr(model.config, "layer_types", None) or ()
    ):
        raise ValueError("shared-prefix log-probs do not support sliding-window attention")
    ids = prompt_ids.masked_fill(prompt_mask == 0, 0).view(B // group_size, group_size, -1)
    mask = prompt_mask.view(B // group_size, group_size, -1)
    same = (ids == ids[:, :1]).all(-1).all(-1) & (mask == mask[:, :1]).all(-1).all(-1)
    if not bool(same.all()):
        bad = torch.nonzero(~same).flatten().tolist()
        raise ValueError(
            f"rows within a group must share the same prompt (ids and mask); groups {bad[:5]} of size "
            f"{group_size} do not (rows must be grouped contiguously, e.g. repeat_interleave)"
        )


def shared_prefix_token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same result as ``token_logprobs`` (shapes, zeros on padding), encoding each group's prompt once.

    Rows ``[g*G:(g+1)*G]`` must share an identical (left-padded) prompt; completions are right-padded.
    """
    _check_inputs(model, prompt_ids, prompt_mask, completion_ids, group_size)
    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    G, n = group_size, B // group_size
    L = P + G * T
    device = prompt_ids.device

    prompt_ids, prompt_mask = prompt_ids[::G], prompt_mask[::G]
    input_ids = torch.cat([prompt_ids, completion_ids.reshape(n, G * T)], dim=1)
    valid = torch.cat([prompt_mask, completion_mask.reshape(n, G * T)], dim=1).bool()

    # positions exactly as the naive row would have them: cumsum of its own 2-D mask
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_len = prompt_mask.sum(-1, keepdim=True).repeat_interleave(G, 0)
    completion_pos = (prompt_len + completion_mask.cumsum(-1) - 1).clamp(min=0).reshape(n, G * T)
    position_ids = torch.cat([prompt_pos, completion_pos], dim=1)

    segment = torch.cat([torch.zeros(P, dtype=torch.long, device=device),
                         torch.arange(1, G + 1, device=device).repeat_interleave(T)])
    col = torch.arange(L, device=device)
    structure = (col[None, :] <= col[:, None]) & ((segment[None, :] == 0) | (segment[None, :] == segment[:, None]))
    # a padding query keeps its own key, so no softmax row is empty (an all-masked row gives NaNs that
    # would reach real tokens through 0 * NaN in the next layer)
    allowed = (structure[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=device)[None]
    allowed = allowed[:, None]  # (n, 1, L, L)
    if model.config._attn_implementation == "eager":
        # eager adds the mask to the scores, so it must be additive in the compute dtype
        dtype = model.get_input_embeddings().weight.dtype
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)

    # logits at column c predict column c + 1; completion j's first token is predicted by the last prompt column
    keep = (P + torch.arange(G, device=device)[:, None] * T + torch.arange(T, device=device)[None, :] - 1)
    keep[:, 0] = P - 1
    logits = model(
        input_ids=input_ids, attention_mask=allowed, position_ids=position_ids, use_cache=False,
        logits_to_keep=keep.flatten(),
    ).logits  # (n, G*T, V)
    return completion_logprobs(logits.reshape(B, T, -1), completion_ids, completion_mask, temperature, with_entropy)
