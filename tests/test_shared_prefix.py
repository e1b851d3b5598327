"""Shared-prefix log-probs equal the naive per-row forward, values and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from workbench.policy.logprobs import token_logprobs
from workbench.policy.shared_prefix import shared_prefix_token_logprobs

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def tiny_model(arch: str, attn: str):
    torch.manual_seed(0)
    config_cls, model_cls = ARCHS[arch]
    return model_cls(config_cls(**TINY, attn_implementation=attn)).float()


def group_batch(n_groups: int, G: int, P: int = 9, T: int = 7, seed: int = 1):
    """Left-padded prompts of different lengths per group (repeated G times), right-padded completions."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(1, 64, (n_groups, P), generator=g)
    prompt_mask = torch.ones(n_groups, P, dtype=torch.long)
    for i in range(n_groups):
        prompt_mask[i, : (i * 3) % (P - 1)] = 0  # group 0 unpadded, others padded by varying amounts
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, 0)
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0)
    B = n_groups * G
    completion_ids = torch.randint(1, 64, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("G", [2, 4])
def test_matches_naive_values_and_gradients(arch, attn, G):
    model = tiny_model(arch, attn)
    batch = group_batch(n_groups=3, G=G)
    weights = torch.randn(batch[2].shape, generator=torch.Generator().manual_seed(2))

    def run(fn, **kw):
        model.zero_grad()
        lp, ent = fn(model, *batch, temperature=0.7, with_entropy=True, **kw)
        (lp * weights).sum().backward()
        return lp.detach(), ent, {k: p.grad.clone() for k, p in model.named_parameters()}

    lp_naive, ent_naive, grad_naive = run(token_logprobs)
    lp_shared, ent_shared, grad_shared = run(shared_prefix_token_logprobs, group_size=G)

    assert lp_shared.shape == lp_naive.shape and ent_shared.shape == ent_naive.shape
    torch.testing.assert_close(lp_shared, lp_naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_shared, ent_naive, atol=1e-5, rtol=0)
    assert (lp_shared[batch[3] == 0] == 0).all() and (ent_shared[batch[3] == 0] == 0).all()
    for name, g in grad_naive.items():
        # measured worst case ~2e-6 with gradients up to ~13 in magnitude, so no relative term is needed
        torch.testing.assert_close(grad_shared[name], g, atol=1e-5, rtol=0, msg=name)


def test_no_entropy_and_temperature_one():
    model = tiny_model("llama", "sdpa")
    batch = group_batch(n_groups=2, G=2)
    with torch.no_grad():
        lp_naive, _ = token_logprobs(model, *batch)
        lp_shared, ent = shared_prefix_token_logprobs(model, *batch, group_size=2)
    assert ent is None
    torch.testing.assert_close(lp_shared, lp_naive, atol=1e-5, rtol=0)


def test_mismatched_prompts_in_group_raise():
    model = tiny_model("llama", "sdpa")
    prompt_ids, prompt_mask, completion_ids, completion_mask = group_batch(n_groups=2, G=2)
    prompt_ids = prompt_ids.clone()
    prompt_ids[3, -1] = prompt_ids[2, -1] % 63 + 1  # rows 2 and 3 form group 1; the last column is never padding
    with pytest.raises(ValueError, match="same prompt"):
        shared_prefix_token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size=2)


def test_batch_not_divisible_by_group_raises():
    model = tiny_model("llama", "sdpa")
    batch = group_batch(n_groups=2, G=3)
    with pytest.raises(ValueError, match="divisible"):
        shared_prefix_token_logprobs(model, *batch, group_size=4)


def test_lora_wrapped_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("qwen2", "sdpa"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                   init_lora_weights=False, task_type="CAUSAL_LM"))
    batch = group_batch(n_groups=2, G=4)
    with torch.no_grad():
        lp_naive, _ = token_logprobs(model, *batch, temperature=0.9)
        lp_shared, _ = shared_prefix_token_logprobs(model, *batch, group_size=4, temperature=0.9)
    torch.testing.assert_close(lp_shared, lp_naive, atol=1e-5, rtol=0)
