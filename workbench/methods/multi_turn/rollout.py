"""The multi-turn rollout engine: batched episodes on the shared sampler, one training row per turn.

Every live episode's next prompt (its transcript, rendered by the policy) is sampled in one batch; each env
steps on its action text; finished episodes drop out; repeat until all are done. A turn is one row of a
``Rollout``: its prompt is the whole context the policy saw (earlier actions and the environment's observations
included), its completion is the action's tokens. So environment tokens are always on the prompt side: the
completion mask, the only mask any loss reads, covers the policy's own tokens and nothing else. Rows are sorted
by (episode, turn); ``Turns.token_view`` lays an episode's action tokens end to end for token-level credit
(GAE, POAD, macro actions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.policy.sampler import Rollout, encode_prompts, finish_rollout, left_pad, sample_ids
from workbench.tasks.envs.base import TextEnv


@dataclass
class Turns:
    """All turns of a batch of episodes, one row each, sorted by (episode, turn)."""

    rollout: Rollout  # prompt = the context, completion = the action (EOS included when it came)
    episode: torch.Tensor  # (N,) long: which episode
    step: torch.Tensor  # (N,) long: turn number within the episode
    rewards: torch.Tensor  # (N,) the environment's reward for this action
    process_rewards: torch.Tensor  # (N,) the environment's step verdict in [-1, 1] (a verifier PRM, for PURE)
    dones: torch.Tensor  # (N,) bool: the episode ended after this action
    valid: torch.Tensor  # (N,) bool: the environment could act on the action
    state_keys: list[str]  # the state the action was taken in (GiGPO's anchor states)
    states: list[TextEnv] | None = None  # copies of the env before each action (keep_states=True)

    def __len__(self) -> int:
        return len(self.rollout)

    def next_row(self) -> torch.Tensor:
        """(N,) index of the same episode's next turn, -1 after its last."""
        nxt = torch.arange(1, len(self) + 1)
        same = torch.zeros(len(self), dtype=torch.bool)
        same[:-1] = self.episode[1:] == self.episode[:-1]
        return torch.where(same, nxt, torch.full_like(nxt, -1))

    def token_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Flatten the action tokens: (rows, cols) of every masked token in (episode, turn, position) order, so one
        episode's tokens are contiguous. ``values[rows, cols]`` gives the flat sequence, ``out[rows, cols] = flat``
        puts it back."""
        rows, cols = torch.nonzero(self.rollout.completion_mask.cpu() > 0, as_tuple=True)
        return rows, cols  # nonzero is row-major: rows ascend, positions ascend within a row


@dataclass
class Episodes:
    turns: Turns
    group: torch.Tensor  # (E,) the episode row (env seed / prompt) it played: a group's episodes share a start
    returns: torch.Tensor  # (E,) sum of rewards
    success: torch.Tensor  # (E,) bool
    num_turns: torch.Tensor  # (E,)
    truncated: torch.Tensor  # (E,) bool: ended by max_turns
    invalid: torch.Tensor  # (E,) number of invalid actions

    def __len__(self) -> int:
        return len(self.returns)

    def per_turn(self, values: torch.Tensor) -> torch.Tensor:
        """An (E,) per-episode quantity broadcast to the (N,) turn rows."""
        return values[self.turns.episode.to(values.device)]

    def stats(self) -> dict[str, float]:
        return {
            "return": float(self.returns.mean()),
            "success_rate": float(self.success.float().mean()),
            "turns": float(self.num_turns.float().mean()),
            "invalid_frac": float(self.invalid.sum() / self.num_turns.sum().clamp(min=1)),
            "truncated_frac": float(self.truncated.float().mean()),
        }


@torch.no_grad()
def sample_after_prefix(model, tokenizer, prompts: list[str], prefixes: list[list[int]], max_new_tokens: int,
                        temperature: float, top_p: float = 1.0) -> Rollout:
    """Continue each prompt after the given action-prefix token ids; the completion is prefix + continuation.

    VinePPO's intermediate states inside an action: the prefix ids are the exact sampled tokens (not re-encoded
    text), and the budget counts them, so a continued action is never longer than a fresh one."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    contexts = [ids[m > 0].tolist() + list(pre) for ids, m, pre in zip(prompt_ids.cpu(), prompt_mask.cpu(), prefixes)]
    ids, mask = left_pad(contexts, tokenizer.pad_token_id, device)
    budget = max(1, max_new_tokens - min(len(p) for p in prefixes))
    cont = sample_ids(model, tokenizer, ids, mask, 1, budget, temperature, top_p)
    width = max_new_tokens
    completion = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    for i, pre in enumerate(prefixes):
        tail = cont.completion_ids[i][: width - len(pre)]
        completion[i, : len(pre)] = torch.tensor(pre, dtype=torch.long, device=device)
        completion[i, len(pre): len(pre) + len(tail)] = tail
    return finish_rollout(tokenizer, prompt_ids, prompt_mask, completion)


def run_episodes(envs: list[TextEnv], group: list[int], render, generate, pad_id: int, keep_states: bool = False,
                 prefixes: list[list[int]] | None = None) -> Episodes:
    """Play every env to the end. ``render(prompt) -> text``; ``generate(texts, prefixes) -> Rollout`` (one sample
    per text, ``prefixes`` None or the action-prefix ids of the first turn). ``envs`` must already be reset."""
    rollouts: list[Rollout] = []
    meta: list[tuple] = []  # (episode, step, reward, process_reward, done, valid, state_key, state)
    active = [i for i, env in enumerate(envs) if not env.done]
    first = True
    while active:
        texts = [render(envs[i].prompt()) for i in active]
        rollout = generate(texts, [prefixes[i] for i in active] if (first and prefixes is not None) else None)
        first = False
        rollouts.append(rollout)
        for j, i in enumerate(active):
            env = envs[i]
            state = env.clone() if keep_states else None
            key = env.state_key()
            step = env.turn
            result = env.step(rollout.texts[j])
            meta.append((i, step, result.reward, result.info["process_reward"], result.done, result.info["valid"], key, state))
        active = [i for i in active if not envs[i].done]
    return _assemble(envs, group, rollouts, meta, pad_id, keep_states)


def _assemble(envs, group, rollouts, meta, pad_id, keep_states) -> Episodes:
    merged = Rollout.cat(rollouts, pad_id)
    order = sorted(range(len(meta)), key=lambda k: (meta[k][0], meta[k][1]))
    merged = merged.select(order)
    col = list(zip(*[meta[k] for k in order]))
    turns = Turns(
        rollout=merged,
        episode=torch.tensor(col[0], dtype=torch.long),
        step=torch.tensor(col[1], dtype=torch.long),
        rewards=torch.tensor(col[2], dtype=torch.float32),
        process_rewards=torch.tensor(col[3], dtype=torch.float32),
        dones=torch.tensor(col[4], dtype=torch.bool),
        valid=torch.tensor(col[5], dtype=torch.bool),
        state_keys=list(col[6]),
        states=list(col[7]) if keep_states else None,
    )
    E = len(envs)
    returns = torch.zeros(E).index_add_(0, turns.episode, turns.rewards)
    num_turns = torch.bincount(turns.episode, minlength=E)
    invalid = torch.zeros(E, dtype=torch.long).index_add_(0, turns.episode, (~turns.valid).long())
    success = torch.tensor([env.succeeded for env in envs])
    truncated = torch.tensor([env.truncated for env in envs])
    return Episodes(turns, torch.tensor(group, dtype=torch.long), returns, success, num_turns, truncated, invalid)
