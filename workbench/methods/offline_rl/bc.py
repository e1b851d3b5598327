"""Behaviour cloning: regress the policy onto the dataset's actions.

Continuous: a deterministic actor, loss = mean (pi(s) - a)^2 (CORL's BC). Discrete: cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.methods.offline_rl.module import ControlModule
from workbench.methods.offline_rl.networks import CategoricalActor, DeterministicActor


def bc_loss(predicted: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch and action dimensions."""
    return F.mse_loss(predicted, actions)


def bc_discrete_loss(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, actions.long())


class BC(ControlModule):
    action_spaces = ("continuous", "discrete")

    def build(self) -> None:
        hidden = list(self.cfg.hidden)
        if self.spec.discrete:
            self.actor = CategoricalActor(self.spec.obs_dim, self.spec.num_actions, hidden)
        else:
            self.actor = DeterministicActor(self.spec.obs_dim, self.spec.action_dim, hidden)

    def optimizers_spec(self):
        return [("actor", self.actor.parameters(), self.cfg.actor_lr)]

    def update(self, batch):
        if self.spec.discrete:
            loss = bc_discrete_loss(self.actor.net(batch["obs"]), batch["actions"])
        else:
            loss = bc_loss(self.actor(batch["obs"]), batch["actions"])
        self.optimize("actor", loss)
        return {"actor_loss": loss.detach()}
