"""Collecting a group-RL batch: sample G completions per prompt, score them, and (DAPO) keep only
groups whose rewards differ, resampling fresh prompts until the batch is full or a cap is hit."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.policy.sampler import Rollout


@dataclass
class GroupBatch:
    rollout: Rollout
    rewards: torch.Tensor  # (P*G,)
    parts: dict[str, torch.Tensor]  # reward components, (P*G,) each
    correct: torch.Tensor  # (P*G,) the task verifier's verdict, whatever the reward is
    fields: dict[str, list]  # task fields, one entry per row
    group_size: int
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return len(self.rollout) // self.group_size

    def groups(self, keep: list[int]) -> "GroupBatch":
        G = self.group_size
        rows = [g * G + j for g in keep for j in range(G)]
        return GroupBatch(self.rollout.select(rows), self.rewards[rows], {k: v[rows] for k, v in self.parts.items()},
                          self.correct[rows], {k: [v[r] for r in rows] for k, v in self.fields.items()}, G, dict(self.stats))

    @staticmethod
    def cat(parts: list["GroupBatch"], pad_id: int) -> "GroupBatch":
        first = parts[0]
        return GroupBatch(
            Rollout.cat([p.rollout for p in parts], pad_id),
            torch.cat([p.rewards for p in parts]),
            {k: torch.cat([p.parts[k] for p in parts]) for k in first.parts},
            torch.cat([p.correct for p in parts]),
            {k: [x for p in parts for x in p.fields[k]] for k in first.fields},
            first.group_size,
            dict(first.stats),
        )


def varied_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of groups whose rewards are not all equal (the only ones with a GRPO gradient)."""
    groups = rewards.view(-1, group_size)
    return torch.nonzero(groups.max(-1).values > groups.min(-1).values).flatten().tolist()


def collect_with_dynamic_sampling(first_batch: dict, sample_groups, next_prompts, max_rounds: int, pad_id: int) -> GroupBatch:
    """DAPO dynamic sampling: over-sample until the batch holds ``len(first_batch)`` informative groups.

    ``sample_groups(batch) -> GroupBatch`` and ``next_prompts() -> batch`` are supplied by the module.
    After ``max_rounds`` extra rounds the step trains on what it has (logged as ``fill_frac``), so a
    hopeless batch cannot stall training.
    """
    wanted = len(first_batch["prompt"])
    kept: list[GroupBatch] = []
    have, rounds, sampled = 0, 0, 0
    batch = first_batch
    while True:
        scored = sample_groups(batch)
        sampled += scored.num_groups
        informative = varied_groups(scored.rewards, scored.group_size)[: wanted - have]
        if informative:
            kept.append(scored.groups(informative))
            have += len(informative)
        if have >= wanted or rounds >= max_rounds:
            break
        rounds += 1
        batch = next_prompts()
    if not kept:  # nothing informative at all: train on the last batch (zero advantages, zero policy gradient)
        kept, have = [scored], 0
    out = GroupBatch.cat(kept, pad_id)
    out.stats.update(resample_rounds=float(rounds), fill_frac=have / wanted, groups_sampled=float(sampled))
    return out
