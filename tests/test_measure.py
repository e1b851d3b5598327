"""workbench.measure.shared_prefix: the Prefix Grouper measurement a claim runs (same gradients, timed paths)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from workbench.errors import ConfigError
from workbench.measure.shared_prefix import make_batch, measure

TINY = {"group_size": 4, "prompt_length": 32, "completion_length": 8, "repeats": 2, "attn_implementation": "sdpa",
        "model": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128}}


def test_the_two_paths_give_the_same_logprobs_and_gradients():
    m = measure(OmegaConf.create(TINY), seed=0)
    assert m["measure/logprob_max_abs_diff"] < 1e-5 and m["measure/grad_max_rel_diff"] < 1e-4
    assert m["measure/naive_s"] > 0 and m["measure/shared_s"] > 0
    assert m["measure/speedup"] == pytest.approx(m["measure/naive_s"] / m["measure/shared_s"])
    assert m["measure/parameters"] > 0


def test_the_batch_is_one_group_with_a_shared_prompt_and_ragged_completions():
    prompt_ids, prompt_mask, completion_ids, completion_mask = make_batch(4, 16, 8, 64, seed=1)
    assert (prompt_ids == prompt_ids[0]).all() and prompt_mask.all()
    assert completion_mask[0].all() and completion_mask.sum(1).min() >= 4  # lengths in [T/2, T], the first full
    assert (completion_ids[completion_mask == 0] == 0).all()


def test_a_bad_size_names_the_field():
    with pytest.raises(ConfigError, match="measure.group_size"):
        measure(OmegaConf.create({**TINY, "group_size": 0}), seed=0)
