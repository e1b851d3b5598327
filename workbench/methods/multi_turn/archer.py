"""ArCHer (Zhou, Zanette, Pan, Levine, Kumar, ICML 2024): an off-policy utterance-level critic and a token-level
policy gradient that takes the critic's advantage of the whole utterance as its reward.

One training step is one ArCHer iteration (official ``offpolicy_train_loop`` + ``ArcherTrainer.update``):

1. play ``batch_size x group_size`` episodes with the current policy; every turn goes into a replay buffer as
   (context s, action a, reward r, done, next context s');
2. ``critic_updates`` critic steps, each on ``update_batch_size`` transitions drawn from the buffer. Twin Q and
   twin V heads share one encoder (a copy of the policy's trunk); per head i, as in the official trainer,

       Q_i(s, a) <- r + gamma (1 - done) V_i_target(s')
       V_i(s)    <- Q_i_target(s, a_pi),   a_pi ~ pi(.|s) freshly sampled from the current policy

   (each head regresses on its own target twin: no min in the targets), MSE summed over the four heads,
   then a Polyak update of the target critic, target <- (1 - tau) target + tau critic;
3. after ``critic_warmup_steps`` iterations, ``actor_updates`` policy steps: at buffer states a fresh action
   a_pi ~ pi(.|s), A = min(Q1, Q2)(s, a_pi) - min(V1, V2)(s) from the online critic, and

       L_actor = -mean_b[ A_b * sum_t log pi(a_pi,t | s_b, a_pi,<t) ]

   (REINFORCE with the utterance advantage, no clipping, no KL; the official optional token-level baseline
   head is not implemented).

Differences from the official code: the critic encoder is a copy of the policy trunk (official: RoBERTa with
MLP heads over pooled state / action embeddings); V(s) is read at the context's last token and Q(s, a) at the
action's last token of one forward pass over (s, a); minibatch losses are averaged over an update, not summed
(the same direction; only gradient clipping sees the scale). Fresh policy actions are sampled from the context
token ids with transformers' generate on the live policy, whatever ``generation.backend`` plays the episodes.
"""

from __future__ import annotations

import copy

import torch

from workbench.errors import ConfigError
from workbench.methods.multi_turn.critic import ValueModel
from workbench.methods.multi_turn.module import MultiTurnModule
from workbench.methods.multi_turn.replay import TurnReplayBuffer
from workbench.policy.logprobs import token_logprobs
from workbench.policy.sampler import Rollout, sample_ids

Q_HEADS, V_HEADS = slice(0, 2), slice(2, 4)  # the critic's four scalar heads: q1, q2, v1, v2


# ---- the losses, as pure functions ----------------------------------------------------------------------------
def critic_targets(rewards: torch.Tensor, dones: torch.Tensor, next_v_target: torch.Tensor, pi_q_target: torch.Tensor,
                   gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,), (B,), (B, 2), (B, 2) -> Q targets r + gamma (1 - done) V_i_target(s') and V targets Q_i_target(s, a_pi),
    both (B, 2): head i of each twin pair learns from target head i."""
    not_done = 1.0 - dones.float()
    q_target = rewards.unsqueeze(-1) + gamma * not_done.unsqueeze(-1) * next_v_target
    return q_target, pi_q_target


def critic_loss(q: torch.Tensor, v: torch.Tensor, q_target: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Sum over the four heads of the batch-mean squared error (the official q1 + q2 + v1 + v2 MSE losses)."""
    return ((q - q_target.detach()) ** 2).mean(0).sum() + ((v - v_target.detach()) ** 2).mean(0).sum()


def archer_advantages(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 2) Q(s, a), (B, 2) V(s) -> (B,) min(Q1, Q2) - min(V1, V2): pessimistic on both twins."""
    return q.min(-1).values - v.min(-1).values


def actor_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean over utterances of A * log pi(utterance): (B, T) token log-probs, (B, T) mask, (B,) advantages."""
    return -(advantages.detach() * (logprobs * mask).sum(-1)).mean()


@torch.no_grad()
def soft_update(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """Polyak averaging, parameter by parameter: target <- (1 - tau) target + tau online."""
    for t, p in zip(target.parameters(), online.parameters()):
        t.mul_(1.0 - tau).add_(p.detach(), alpha=tau)


def q_and_v(critic: ValueModel, context_ids, context_mask, action_ids, action_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over (s, a): Q(s, a) (B, 2) at the action's last token and V(s) (B, 2) at the context's last
    token (contexts are left-padded), where causal attention makes it the value of a forward over s alone."""
    at_state, at_action = critic.state_and_action_values(context_ids, context_mask, action_ids, action_mask)
    return at_action[:, Q_HEADS], at_state[:, V_HEADS]


def _count(m, key: str, minimum: int) -> int:
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"method.{key}", f"must be an integer >= {minimum}, got {value!r}", f"set method.{key}")
    return value


def validate_archer(m, trainer_cfg=None) -> None:
    """ArCHer's own fields (and its single-process limit), each failing with the field's name and a fix."""
    _count(m, "critic_updates", 1)  # >= 1: the first critic step is the iteration's counted training step
    for key in ("actor_updates", "critic_warmup_steps"):
        _count(m, key, 0)
    for key in ("update_batch_size", "buffer_capacity", "group_size"):
        _count(m, key, 1)
    if m.get("minibatch_size") is not None:
        _count(m, "minibatch_size", 1)
    for key, lo_open, official in (("gamma", False, "0.95"), ("tau", True, "0.1")):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 or (lo_open and value == 0):
            raise ConfigError(f"method.{key}", f"must be in {'(0' if lo_open else '[0'}, 1], got {value!r}",
                              f"set method.{key} (official {official})")
    critic_lr = m.get("critic_lr")
    if isinstance(critic_lr, bool) or not isinstance(critic_lr, (int, float)) or not 0 < critic_lr < float("inf"):
        raise ConfigError("method.critic_lr", f"must be > 0, got {critic_lr!r}", "set method.critic_lr, e.g. 1e-3")
    devices = trainer_cfg.get("devices", 1) if trainer_cfg is not None else 1
    if isinstance(devices, int) and devices * int(trainer_cfg.get("num_nodes", 1) or 1) > 1:
        raise ConfigError("trainer.devices", "ArCHer keeps one replay buffer and steps its critic and policy "
                          "separately, on one process", "use trainer=cpu or trainer=gpu (devices=1)")


class ArcherModule(MultiTurnModule):
    def __init__(self, policy, task, method, trainer_cfg=None):
        validate_archer(method, trainer_cfg)
        super().__init__(policy, task, method, trainer_cfg)
        self.critic_updates, self.actor_updates = int(method.critic_updates), int(method.actor_updates)
        self.critic_warmup_steps, self.update_batch_size = int(method.critic_warmup_steps), int(method.update_batch_size)
        self.critic = ValueModel(self.model, heads=4)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # the buffer's sampling seed comes from the run's seeded global RNG; its state then lives in checkpoints
        self.buffer = TurnReplayBuffer(int(method.buffer_capacity), seed=int(torch.randint(0, 2**31 - 1, (1,))))

    # ---- optimizers: the policy's (with the base scheduler) and the critic's ---------------------------------
    def configure_optimizers(self):
        conf = super().configure_optimizers()
        critic_opt = torch.optim.Adam(self.critic.parameters(), lr=float(self.cfg.critic_lr),
                                      betas=tuple(self.cfg.adam_betas))
        return [conf["optimizer"], critic_opt], [conf["lr_scheduler"]]

    def _step(self, opt, params) -> None:
        """Clip, then step. Lightning counts every wrapped optimizer step as a training step, so only the first
        step of an iteration goes through the wrapper; the others step the bare optimizer."""
        if self.cfg.get("max_grad_norm"):
            torch.nn.utils.clip_grad_norm_(params, float(self.cfg.max_grad_norm))
        if self._counted:
            opt.optimizer.step()
        else:
            opt.step()
            self._counted = True

    # ---- pieces of an iteration ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(self, context_ids, context_mask) -> Rollout:
        """a_pi ~ pi(.|s) from the current policy at buffer contexts (the exact token ids it saw when playing)."""
        return sample_ids(self.model, self.tokenizer, context_ids, context_mask, 1, int(self.cfg.max_new_tokens),
                          float(self.cfg.temperature), float(self.cfg.top_p))

    def critic_update(self, opt) -> dict[str, float]:
        b = self.buffer.sample(self.update_batch_size, self.tokenizer.pad_token_id, self.device)
        n = self.update_batch_size
        opt.zero_grad(set_to_none=True)
        stats = {"critic_loss": 0.0, "q_mean": 0.0, "v_mean": 0.0, "q_target_mean": 0.0, "v_target_mean": 0.0}
        for c in self._chunks(n):
            ctx, ctx_mask = b["context_ids"][c], b["context_mask"][c]
            with torch.no_grad():
                pi = self.sample_actions(ctx, ctx_mask)
                pi_q_target, _ = q_and_v(self.target_critic, ctx, ctx_mask, pi.completion_ids, pi.completion_mask)
                next_v_target = self.target_critic.state_values(b["next_ids"][c], b["next_mask"][c])[:, V_HEADS]
                q_target, v_target = critic_targets(b["rewards"][c], b["dones"][c], next_v_target, pi_q_target,
                                                    float(self.cfg.gamma))
            q, v = q_and_v(self.critic, ctx, ctx_mask, b["action_ids"][c], b["action_mask"][c])
            self._tokens += int(2 * ctx_mask.sum() + b["action_mask"][c].sum() + pi.completion_mask.sum()
                                + b["next_mask"][c].sum())  # online and target (s, a) passes, target V(s')
            loss = critic_loss(q, v, q_target, v_target)
            self.check_finite(loss, "critic loss")
            share = (c.stop - c.start) / n
            self.manual_backward(loss * share)
            for key, value in (("critic_loss", loss), ("q_mean", q.mean()), ("v_mean", v.mean()),
                               ("q_target_mean", q_target.mean()), ("v_target_mean", v_target.mean())):
                stats[key] += float(value.detach()) * share
        self._step(opt, list(self.critic.parameters()))
        soft_update(self.target_critic, self.critic, float(self.cfg.tau))
        return stats

    def actor_update(self, opt) -> dict[str, float]:
        b = self.buffer.sample(self.update_batch_size, self.tokenizer.pad_token_id, self.device)
        n = self.update_batch_size
        opt.zero_grad(set_to_none=True)
        stats = {"policy_loss": 0.0, "advantage_abs": 0.0, "advantage_mean": 0.0, "entropy": 0.0, "pi_action_length": 0.0}
        for c in self._chunks(n):
            ctx, ctx_mask = b["context_ids"][c], b["context_mask"][c]
            with torch.no_grad():
                pi = self.sample_actions(ctx, ctx_mask)
                q, v = q_and_v(self.critic, ctx, ctx_mask, pi.completion_ids, pi.completion_mask)
                advantages = archer_advantages(q, v)
            mask = pi.completion_mask.float()
            logprobs, entropy = token_logprobs(self.model, ctx, ctx_mask, pi.completion_ids, pi.completion_mask,
                                               temperature=float(self.cfg.temperature), with_entropy=True)
            self._tokens += int(2 * (ctx_mask.sum() + mask.sum()))  # the critic's and the policy's passes
            loss = actor_loss(logprobs, mask, advantages)
            self.check_finite(loss, "actor loss")
            share = (c.stop - c.start) / n
            self.manual_backward(loss * share)
            for key, value in (("policy_loss", loss.detach()), ("advantage_abs", advantages.abs().mean()),
                               ("advantage_mean", advantages.mean()),
                               ("entropy", (entropy * mask).sum() / mask.sum().clamp(min=1)),
                               ("pi_action_length", mask.sum(-1).mean())):
                stats[key] += float(value) * share
        self._step(opt, [p for p in self.model.parameters() if p.requires_grad])
        return stats

    # ---- one ArCHer iteration ------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cfg = self.cfg
        self._times = {}
        self._counted = False
        self._tokens = 0
        iteration = self.global_step  # read before any step: the first wrapped step increments it
        with self._timed("generation"):
            episodes = self.play(self.rows(batch), cfg.group_size)
        self.buffer.add(episodes)
        policy_opt, critic_opt = self.optimizers()
        totals: dict[str, float] = {}

        def accumulate(stats: dict, times: int) -> None:
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / times

        with self._timed("critic"):
            for _ in range(self.critic_updates):
                accumulate(self.critic_update(critic_opt), self.critic_updates)
        actor_on = iteration >= self.critic_warmup_steps and self.actor_updates > 0
        if actor_on:
            with self._timed("actor"):
                for _ in range(self.actor_updates):
                    accumulate(self.actor_update(policy_opt), self.actor_updates)
            self.generator.sync(self.model)
            self.lr_schedulers().step()  # the policy's schedule advances once per iteration that trains it
        totals["actor_active"] = float(actor_on)
        self.log_iteration(episodes, totals)

    def log_iteration(self, episodes, totals: dict) -> None:
        r = episodes.turns.rollout
        E = len(episodes)
        log = {**episodes.stats(), **totals, "buffer_size": float(len(self.buffer)),
               "action_length": float(r.lengths.float().mean()), "rows": float(len(r)),
               **{f"time_{k}": v for k, v in self._times.items()}}
        self.log("train/reward", episodes.returns.mean(), prog_bar=True, on_step=True, batch_size=E)
        self.log_dict({f"train/{k}": float(v) for k, v in log.items()}, on_step=True, batch_size=E)
        # the episodes' tokens and the updates' forward passes (fresh-action sampling counted once, padding not)
        self.count_tokens(int(r.prompt_mask.sum() + r.completion_mask.sum()) + self._tokens)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)  # step time, tokens/s, the policy's lr
        self.log("train/critic_lr", self.optimizers()[1].param_groups[0]["lr"], on_step=True, batch_size=1)

    # ---- the replay buffer travels with checkpoints, so a resumed run keeps its off-policy data -------------
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["archer_replay"] = self.buffer.state_dict()

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if "archer_replay" in checkpoint:
            self.buffer.load_state_dict(checkpoint["archer_replay"])
