"""DAPO dynamic sampling and rollout stacking, on hand-made batches."""

from __future__ import annotations

import torch

from workbench.methods.base import pass_at_k
from workbench.methods.group_rl.rollouts import GroupBatch, collect_with_dynamic_sampling, varied_groups
from workbench.policy.sampler import Rollout

PAD = 0


def make_batch(rewards: list[list[float]], prompt_width: int = 3, completion_width: int = 2, tag: str = "p") -> GroupBatch:
    P, G = len(rewards), len(rewards[0])
    n = P * G
    rollout = Rollout(
        prompt_ids=torch.arange(n * prompt_width).view(n, prompt_width) + 1,
        prompt_mask=torch.ones(n, prompt_width, dtype=torch.long),
        completion_ids=torch.full((n, completion_width), 7),
        completion_mask=torch.ones(n, completion_width, dtype=torch.long),
        texts=[f"{tag}{i}" for i in range(n)],
        truncated=torch.zeros(n, dtype=torch.bool),
    )
    flat = torch.tensor(rewards, dtype=torch.float32).flatten()
    return GroupBatch(rollout, flat, {"correctness": flat.clone()}, flat.clone(), {"answer": [f"{tag}{i // G}" for i in range(n)]}, G)


def test_varied_groups_hand_example():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.25])
    assert varied_groups(rewards, 2) == [1, 3]


def test_rollout_cat_pads_prompts_left_and_completions_right():
    a = make_batch([[1, 0]], prompt_width=2, completion_width=3).rollout
    b = make_batch([[1, 0]], prompt_width=4, completion_width=1).rollout
    out = Rollout.cat([a, b], PAD)
    assert out.prompt_ids.shape == (4, 4) and out.completion_ids.shape == (4, 3)
    assert out.prompt_mask[0].tolist() == [0, 0, 1, 1] and out.prompt_ids[0, :2].tolist() == [PAD, PAD]
    assert out.completion_mask[2].tolist() == [1, 0, 0] and out.completion_ids[2, 1:].tolist() == [PAD, PAD]
    assert out.texts == a.texts + b.texts


def test_dynamic_sampling_fills_batch_with_informative_groups():
    # batch of 3 prompts; round 0 has one informative group, round 1 two more (one extra is dropped)
    rounds = iter([
        make_batch([[1, 1], [0, 1], [0, 0]], tag="a"),
        make_batch([[1, 0], [1, 1], [0, 1]], tag="b"),
    ])
    out = collect_with_dynamic_sampling({"prompt": ["x", "y", "z"]}, lambda batch: next(rounds),
                                        lambda: {"prompt": ["u", "v", "w"]}, max_rounds=4, pad_id=PAD)
    assert out.num_groups == 3
    assert out.rollout.texts == ["a2", "a3", "b0", "b1", "b4", "b5"]
    assert out.fields["answer"] == ["a1", "a1", "b0", "b0", "b2", "b2"]
    assert out.stats == {"resample_rounds": 1.0, "fill_frac": 1.0, "groups_sampled": 6.0}


def test_dynamic_sampling_stops_at_the_cap_and_reports_fill():
    calls = []

    def sample(batch):
        calls.append(batch)
        return make_batch([[0, 0], [1, 0]], tag=str(len(calls)))

    out = collect_with_dynamic_sampling({"prompt": ["x", "y"]}, sample, lambda: {"prompt": ["u", "v"]}, max_rounds=1, pad_id=PAD)
    assert len(calls) == 2  # the batch itself + one resample round
    assert out.num_groups == 2 and out.stats["fill_frac"] == 1.0

    out = collect_with_dynamic_sampling({"prompt": ["x", "y", "z"]}, lambda b: make_batch([[0, 0], [1, 0], [1, 1]]),
                                        lambda: {"prompt": ["u", "v", "w"]}, max_rounds=1, pad_id=PAD)
    assert out.num_groups == 2 and abs(out.stats["fill_frac"] - 2 / 3) < 1e-9 and out.stats["resample_rounds"] == 1.0


def test_dynamic_sampling_with_nothing_informative_trains_on_the_last_batch():
    out = collect_with_dynamic_sampling({"prompt": ["x"]}, lambda b: make_batch([[1, 1]]), lambda: {"prompt": ["u"]},
                                        max_rounds=2, pad_id=PAD)
    assert out.num_groups == 1 and out.stats["fill_frac"] == 0.0 and out.stats["resample_rounds"] == 2.0


def test_pass_at_k_matches_the_combinatorial_formula():
    # n=4 samples, c=1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; c=3: pass@2 = 1 (n-c < k)
    values = pass_at_k(torch.tensor([1, 3, 0]), n=4, k=2)
    assert torch.allclose(values, torch.tensor([0.5, 1.0, 0.0]))
    assert torch.allclose(pass_at_k(torch.tensor([1]), n=4, k=1), torch.tensor([0.25]))
