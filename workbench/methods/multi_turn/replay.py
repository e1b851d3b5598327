"""A turn-level replay buffer for off-policy multi-turn methods (ArCHer): one transition per turn row.

A transition is (context s, action a, reward r, done, next context s'): the token ids the policy saw before
acting, the tokens it wrote (EOS included when it came), the environment's reward, whether the episode ended,
and the context of the same episode's next turn. Token ids are stored unpadded (contexts grow with the
transcript) and padded per sampled batch: contexts left (the sampler's layout), actions right. A transition
that ended its episode has no next context; its own context stands in, so every stored sequence is non-empty
(an all-padding row can give NaN attention), and ``done`` masks its value out of the target.

Full buffers overwrite the oldest transition first (FIFO, the official ring buffer). Sampling is uniform with
replacement, drawn from the buffer's own ``torch.Generator``; the generator state travels with the
transitions in ``state_dict()``, which holds tensors and ints only (checkpoints load with weights_only=True).
"""

from __future__ import annotations

import torch

from workbench.methods.multi_turn.rollout import Episodes
from workbench.policy.sampler import left_pad, right_pad


class TurnReplayBuffer:
    FIELDS = ("context", "action", "next_context")

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.context: list[torch.Tensor] = []
        self.action: list[torch.Tensor] = []
        self.next_context: list[torch.Tensor] = []
        self.rewards: list[float] = []
        self.dones: list[bool] = []
        self.position = 0  # where the next transition goes once the buffer is full (the oldest one)
        self.added = 0  # transitions ever added

    def __len__(self) -> int:
        return len(self.context)

    # ---- filling -------------------------------------------------------------------------------------------
    def add(self, episodes: Episodes) -> int:
        """Every turn row of ``episodes`` as a transition; returns how many were added."""
        turns = episodes.turns
        r = turns.rollout
        contexts = [ids[m > 0].cpu() for ids, m in zip(r.prompt_ids, r.prompt_mask)]
        actions = [ids[m > 0].cpu() for ids, m in zip(r.completion_ids, r.completion_mask)]
        nxt = turns.next_row()
        for i in range(len(turns)):
            done = bool(turns.dones[i])
            if not done and int(nxt[i]) < 0:
                raise ValueError(f"turn row {i} is not done but its episode has no next turn")
            following = contexts[i] if done else contexts[int(nxt[i])]
            self._put(contexts[i], actions[i], float(turns.rewards[i]), done, following)
        return len(turns)

    def _put(self, context, action, reward: float, done: bool, next_context) -> None:
        if len(self) < self.capacity:
            self.context.append(context)
            self.action.append(action)
            self.next_context.append(next_context)
            self.rewards.append(reward)
            self.dones.append(done)
        else:
            k = self.position
            self.context[k], self.action[k], self.next_context[k] = context, action, next_context
            self.rewards[k] = reward
            self.dones[k] = done
            self.position = (k + 1) % self.capacity
        self.added += 1

    # ---- sampling ------------------------------------------------------------------------------------------
    def sample_indices(self, n: int) -> torch.Tensor:
        if len(self) == 0:
            raise ValueError("sampling from an empty replay buffer")
        return torch.randint(0, len(self), (n,), generator=self.generator)

    def batch(self, index: torch.Tensor, pad_id: int, device) -> dict[str, torch.Tensor]:
        """The transitions at ``index`` as padded tensors on ``device``."""
        idx = index.tolist()
        context_ids, context_mask = left_pad([self.context[i] for i in idx], pad_id, device)
        next_ids, next_mask = left_pad([self.next_context[i] for i in idx], pad_id, device)
        action_ids, action_mask = right_pad([self.action[i] for i in idx], pad_id, device)
        return {
            "context_ids": context_ids, "context_mask": context_mask,
            "action_ids": action_ids, "action_mask": action_mask,
            "next_ids": next_ids, "next_mask": next_mask,
            "rewards": torch.tensor([self.rewards[i] for i in idx], dtype=torch.float32, device=device),
            "dones": torch.tensor([self.dones[i] for i in idx], dtype=torch.bool, device=device),
        }

    def sample(self, n: int, pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
        return self.batch(self.sample_indices(n), pad_id, device)

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and ints only; each token field as one flat tensor plus per-transition lengths."""
        state = {"capacity": self.capacity, "position": self.position, "added": self.added,
                 "generator": self.generator.get_state(),
                 "rewards": torch.tensor(self.rewards, dtype=torch.float32),
                 "dones": torch.tensor(self.dones, dtype=torch.bool)}
        for key in self.FIELDS:
            seqs = getattr(self, key)
            state[f"{key}_flat"] = torch.cat(seqs) if seqs else torch.zeros(0, dtype=torch.long)
            state[f"{key}_lengths"] = torch.tensor([len(x) for x in seqs], dtype=torch.long)
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"checkpointed replay capacity {state['capacity']} != configured {self.capacity} "
                             f"(keep method.buffer_capacity when resuming)")
        self.position, self.added = int(state["position"]), int(state["added"])
        self.generator.set_state(state["generator"])
        for key in self.FIELDS:
            setattr(self, key, list(torch.split(state[f"{key}_flat"], state[f"{key}_lengths"].tolist())))
        self.rewards, self.dones = state["rewards"].tolist(), state["dones"].tolist()
