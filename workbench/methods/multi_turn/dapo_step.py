"""Step-level DAPO: Direct Advantage Policy Optimization (Liu et al. 2024, Skywork, arXiv 2412.18279).

Not ByteDance's DAPO (decoupled clip / dynamic sampling, ``conf/method/dapo.yaml``): this is an offline,
step-level actor-critic method whose critic is trained *first and on its own*, then frozen. One round:

1. Collect D: ``group_size`` episodes of ``dataset_instances`` training seeds from the reference policy
   pi_ref (the current policy when the round starts: the SFT warm start in round one), keeping a copy of the
   environment before every action. A step is a turn: s = the context the policy saw, a = its action tokens.
2. Monte-Carlo value targets: from every step state s_t, ``mc_rollouts`` (K) more episodes are played to the
   end by pi_ref from copies of the saved env; the target is the success rate of those K rollouts and of the
   row's own episode, which is one more rollout from s_t (its action was sampled from pi_ref too):
   V_MC(s_t) = (success_own + sum_k success_k) / (K + 1).
3. Critic: a copy of the policy's trunk with a zero-initialized scalar head (critic.py ``ValueModel``), read at
   the last context token, trained for ``critic_steps`` updates on those targets (``critic_loss``: mse on the
   raw head, or bce on sigmoid(head) with the soft target), then frozen.
4. Step advantages from the frozen critic: A(s_t, a_t) = V(s_{t+1}) - V(s_t); after an episode's last action
   V(s_{t+1}) is the outcome itself (1 on success, 0 otherwise: a truncated episode is a failure).
5. Policy steps: minibatches of (s, a) from D minimize the quadratic loss

       L(theta) = mean_{(s,a) in D} ( beta * log pi_theta(a|s) / pi_ref(a|s) - A(s, a) )^2,

   the log-ratio summed over the action's tokens. pi_ref's log-probs are computed once, when D is collected
   (the policy *is* pi_ref then), so no reference copy is kept. Its minimizer is log pi/pi_ref = A/beta, the
   KL-regularized improvement pi ~ pi_ref exp(A/beta) without the per-state normalizer log Z(s).
   ``refresh_every: N > 0`` is iterative DAPO: every N policy steps the current policy becomes pi_ref, D is
   collected again and the critic is trained further on the new targets (from its current weights).

What the sources confirm. The paper's method section could not be read here: the search tool's stored copy of
arxiv.org/html/2412.18279v1 returned only its abstract and the start of the introduction; the rest comes from
the OpenReview abstract ("Direct Advantage-Based Policy Optimization", papers.cool/venue/77eEDRhPkQ) and two
summaries (sciencestack.ai/paper/2412.18279, alphaxiv.org/overview/2412.18279). Confirmed:
* an offline, step-level RL algorithm whose critic predicts the reasoning accuracy (success probability) at
  each step, a dense step-level signal instead of the outcome reward alone (abstract);
* actor and critic are trained independently, the critic first, so there is no co-training instability and
  "the critic is a good estimation of true state value function" (abstract, OpenReview abstract);
* two stages: (A) data generation and critic training, (B) advantages from the pre-trained critic and policy
  optimization; the MDP's steps are reasoning steps, not whole responses (alphaxiv overview, its Figure 1);
* a quadratic loss aligning scaled advantages with log-policy ratios (sciencestack summary);
* iterating (iterative DAPO) improves further (sciencestack summary).
NOT confirmed, my choices: where beta sits (beta * log-ratio - A vs log-ratio - A / beta: the same minimizer,
the gradient scaled by beta^2, which Adam largely undoes) and its value; the log-ratio summed (not averaged)
over an action's tokens; no normalizer log Z(s) and no advantage normalization; the critic's loss (mse by
default) and its target (success of K MC rollouts plus the episode's own) and K; one sampled action per state
(not several); the critic continuing, not restarting, in later rounds.

Scope. A step is a turn and its state is the context the policy sees: with a history window (gridworld's
``history: 0``) the critic sees only the current observation, so an action that leaves it unchanged (walking
into a wall) gets A = 0 exactly, though it costs a turn. On single-turn tasks a step is the whole completion
(one state, one action: A = success - V(prompt)); splitting a completion into token- or line-level steps is
not done.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from workbench.errors import ConfigError
from workbench.methods.multi_turn.critic import ValueModel
from workbench.methods.multi_turn.module import MultiTurnModule
from workbench.policy.logprobs import token_logprobs
from workbench.tasks.envs.base import episode_rows

CRITIC_LOSSES = ("mse", "bce")
ADVANTAGE_VALUES = ("critic", "mc")
DATA_KEY = "workbench_dapo_step"


# ---- pure functions (tested on hand values) ----------------------------------------------------------------
def dapo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, dict]:
    """(B,) summed action log-probs under pi_theta and pi_ref, (B,) step advantages ->
    mean (beta * (logprobs - ref_logprobs) - advantages)^2."""
    log_ratio = logprobs - ref_logprobs
    residual = beta * log_ratio - advantages
    loss = (residual ** 2).mean()
    stats = {"log_ratio": log_ratio.mean().detach(), "log_ratio_abs": log_ratio.abs().mean().detach(),
             "residual_abs": residual.abs().mean().detach()}
    return loss, stats


def step_advantages(values: torch.Tensor, dones: torch.Tensor, success: torch.Tensor,
                    next_row: torch.Tensor) -> torch.Tensor:
    """A(s_t, a_t) = V(s_{t+1}) - V(s_t) over turn rows sorted by (episode, turn).

    ``values`` (N,) V(s_t) of each row's state; ``dones`` (N,) the episode ended after this action; ``success``
    (N,) the row's episode succeeded; ``next_row`` (N,) the index of the episode's next turn (-1 after its
    last). After the last action the next state is terminal and its value is the outcome (1 or 0)."""
    values = values.float()
    if bool((~dones & (next_row < 0)).any()):
        raise ValueError("an episode's last row is not marked done")
    following = values[next_row.clamp(min=0)]
    next_values = torch.where(dones, success.float(), following)
    return next_values - values


def mc_value_targets(states: list, own_success: torch.Tensor, play, k: int, chunk: int | None = None) -> torch.Tensor:
    """V_MC(s_i) = (own_success_i + sum of the success of ``k`` episodes played from copies of ``states[i]``)
    / (k + 1). ``play(envs) -> (len(envs),) bool`` plays the given envs to the end; at most ``chunk`` at once."""
    n = len(states)
    if k == 0 or n == 0:
        return own_success.float().clone()
    envs = [state.clone() for state in states for _ in range(k)]
    step = chunk or len(envs)
    done = [torch.as_tensor(play(envs[i:i + step])).float().cpu() for i in range(0, len(envs), step)]
    rollouts = torch.cat(done).view(n, k)
    return (own_success.float().cpu() + rollouts.sum(1)) / (k + 1)


def critic_loss(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return ((out - target) ** 2).mean()
    if kind == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(out, target)
    raise ValueError(f"unknown critic_loss '{kind}' ({', '.join(CRITIC_LOSSES)})")


def critic_value(out: torch.Tensor, kind: str) -> torch.Tensor:
    """The success probability the head's output stands for: itself (mse) or its sigmoid (bce)."""
    return torch.sigmoid(out) if kind == "bce" else out


def trim(ids: torch.Tensor, mask: torch.Tensor, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns every row shares (on the left of left-padded prompts, the right of completions)."""
    used = (mask.sum(0) > 0).nonzero()
    if len(used) == 0:
        return ids[:, :1], mask[:, :1]
    if left:
        start = int(used[0])
        return ids[:, start:], mask[:, start:]
    stop = int(used[-1]) + 1
    return ids[:, :stop], mask[:, :stop]


def validate_dapo_step(method, trainer_cfg=None) -> None:
    """The method's own fields (config.py checks the family's shared ones); ConfigError names the first bad one."""
    m = method
    for key in ("dataset_instances", "critic_steps", "critic_batch_size"):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"method.{key}", f"must be a positive integer, got {value!r}", f"e.g. method.{key}=32")
    for key in ("mc_rollouts", "refresh_every"):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"method.{key}", f"must be an integer >= 0, got {value!r}", f"e.g. method.{key}=4")
    for key, why, example in (("beta", " (the target log-ratio is A / beta)", "0.5"), ("critic_lr", "", "5e-4")):
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"method.{key}", f"must be > 0{why}, got {value!r}", f"e.g. method.{key}={example}")
    if m.critic_loss not in CRITIC_LOSSES:
        raise ConfigError("method.critic_loss", f"unknown '{m.critic_loss}'", f"use one of {list(CRITIC_LOSSES)}")
    if m.advantage_values not in ADVANTAGE_VALUES:
        raise ConfigError("method.advantage_values", f"unknown '{m.advantage_values}'", f"use one of {list(ADVANTAGE_VALUES)}")
    if m.advantage_values == "mc" and int(m.mc_rollouts) == 0:
        raise ConfigError("method.advantage_values", "mc with mc_rollouts=0 makes every V(s) the episode's own outcome",
                          "set method.mc_rollouts >= 1 or method.advantage_values=critic")
    if trainer_cfg is not None and int(trainer_cfg.get("devices", 1)) * int(trainer_cfg.get("num_nodes", 1)) > 1:
        raise ConfigError("trainer.devices", "step-level DAPO collects D and trains its critic in one process",
                          "use trainer=cpu or one GPU")


class _Ticks(torch.utils.data.Dataset):
    """One item per policy step: D, not the loader, holds the data; the loader only paces the loop."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


# ---- the module ----------------------------------------------------------------------------------------------
class DapoStepModule(MultiTurnModule):
    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.reference = None  # pi_ref's log-probs are taken once, when D is collected
        validate_dapo_step(method, trainer_cfg)
        self.critic = ValueModel(self.model, heads=1)
        self.critic.requires_grad_(False)  # trained only in the critic phase, by its own optimizer
        self.data: dict[str, torch.Tensor] | None = None
        self.built_at = -1  # the global step D was collected at
        self.critic_updates = 0

    def train_dataloader(self):
        return DataLoader(_Ticks(max(1, self.total_steps)), batch_size=1)

    # ---- stage A: D, Monte-Carlo targets, the critic ---------------------------------------------------------
    def _due(self) -> bool:
        every = int(self.cfg.refresh_every)
        step = self.global_step
        return self.data is None or (every > 0 and step % every == 0 and step != self.built_at)

    @torch.no_grad()
    def collect(self) -> dict[str, torch.Tensor]:
        """Episodes of pi_ref on training seeds, MC value targets per step state, pi_ref's action log-probs."""
        cfg = self.cfg
        rows = episode_rows(self.task, "train")
        picked = torch.randperm(len(rows))[: int(cfg.dataset_instances)].tolist()
        with self._timed("collect"):
            episodes = self.play([rows[i] for i in picked], int(cfg.group_size), keep_states=True)
        turns = episodes.turns
        success = episodes.per_turn(episodes.success.float())

        def play(envs):
            return self.play_envs(envs, list(range(len(envs)))).success

        with self._timed("mc_rollouts"):
            targets = mc_value_targets(turns.states, success, play, int(cfg.mc_rollouts), cfg.get("mc_chunk"))
        r = turns.rollout
        with self._timed("ref_logprobs"):
            ref = torch.cat([token_logprobs(self.model, r.prompt_ids[c], r.prompt_mask[c], r.completion_ids[c],
                                            r.completion_mask[c], temperature=cfg.temperature)[0].sum(-1)
                             for c in self._chunks(len(r))])
        self._collect_stats = {"data_rows": float(len(r)), "data_episodes": float(len(episodes)),
                               "data_success_rate": float(episodes.success.float().mean()),
                               "data_turns": float(episodes.num_turns.float().mean()),
                               "value_target_mean": float(targets.mean())}
        return {
            "prompt_ids": r.prompt_ids.cpu(), "prompt_mask": r.prompt_mask.cpu(),
            "completion_ids": r.completion_ids.cpu(), "completion_mask": r.completion_mask.cpu(),
            "ref_logprobs": ref.float().cpu(), "value_targets": targets.float(),
            "dones": turns.dones.cpu(), "success": success.cpu(), "next_row": turns.next_row().cpu(),
        }

    def _state_values(self, data: dict, rows: torch.Tensor) -> torch.Tensor:
        ids, mask = trim(data["prompt_ids"][rows], data["prompt_mask"][rows], left=True)
        return self.critic.state_values(ids.to(self.device), mask.to(self.device))

    def fit_critic(self, data: dict) -> dict[str, float]:
        """``critic_steps`` updates on the MC targets (minibatches cycle through shuffled D), then freeze."""
        cfg = self.cfg
        n = len(data["value_targets"])
        size = min(int(cfg.critic_batch_size), n)
        self.critic.requires_grad_(True)
        params = [p for p in self.critic.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(cfg.critic_lr), weight_decay=0.0)
        order, at, losses = torch.randperm(n), 0, []
        for _ in range(int(cfg.critic_steps)):
            if at + size > n:
                order, at = torch.randperm(n), 0
            rows = order[at: at + size]
            at += size
            out = self._state_values(data, rows)
            loss = critic_loss(out, data["value_targets"][rows].to(out.device), cfg.critic_loss)
            self.check_finite(loss, "critic loss")
            opt.zero_grad()
            loss.backward()  # the critic's own optimizer, outside Lightning's (the policy's) optimizer
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, float(cfg.max_grad_norm))
            opt.step()
            losses.append(float(loss.detach()))
            if self.logger is not None:  # the curve, at the critic's own update count
                self.logger.log_metrics({"train/critic_loss": losses[-1]}, step=self.critic_updates)
            self.critic_updates += 1
        self.critic.requires_grad_(False)
        tail = losses[-max(1, len(losses) // 10):]
        return {"critic_loss_first": losses[0], "critic_loss_final": sum(tail) / len(tail)}

    @torch.no_grad()
    def critic_values(self, data: dict) -> torch.Tensor:
        n = len(data["value_targets"])
        mb = int(self.cfg.critic_batch_size)
        out = torch.cat([self._state_values(data, torch.arange(i, min(i + mb, n))).float().cpu() for i in range(0, n, mb)])
        return critic_value(out, self.cfg.critic_loss)

    def build_round(self) -> dict[str, float]:
        data = self.collect()
        with self._timed("critic"):
            stats = self.fit_critic(data)
            values = self.critic_values(data)
        targets = data["value_targets"]
        stats["critic_explained_variance"] = float(1 - (targets - values).var() / targets.var().clamp(min=1e-8))
        stats["critic_value_mean"] = float(values.mean())
        source = values if self.cfg.advantage_values == "critic" else targets
        data["advantages"] = step_advantages(source, data["dones"], data["success"], data["next_row"])
        # under pi_ref, E[V(s') - V(s)] = 0: a mean far from 0 says the critic is off
        stats.update(data_advantage_mean=float(data["advantages"].mean()), data_advantage_abs=float(data["advantages"].abs().mean()))
        self.data, self.built_at = data, self.global_step
        return {**self._collect_stats, **stats}

    # ---- stage B: the quadratic loss on minibatches of D -------------------------------------------------------
    def _batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.data
        p_ids, p_mask = trim(d["prompt_ids"][rows], d["prompt_mask"][rows], left=True)
        c_ids, c_mask = trim(d["completion_ids"][rows], d["completion_mask"][rows], left=False)
        dev = self.device
        return p_ids.to(dev), p_mask.to(dev), c_ids.to(dev), c_mask.to(dev)

    def training_step(self, batch, batch_idx):
        cfg = self.cfg
        self._times = {}
        if self._due():
            built = self.build_round()
            built.update({f"time_{k}": v for k, v in self._times.items()})
            self._times = {}
            # once per round, straight to the logger: self.log would repeat the last value at every later step
            if self.logger is not None:
                self.logger.log_metrics({f"train/{k}": v for k, v in built.items()}, step=self.global_step)
        age = self.global_step - self.built_at  # read before opt.step() advances global_step
        d = self.data
        n = len(d["advantages"])
        rows = torch.randperm(n)[: int(cfg.batch_size)]
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        totals: dict[str, float] = {}
        tokens = 0
        with self._timed("update"):
            for c in self._chunks(len(rows)):
                part = rows[c]
                p_ids, p_mask, c_ids, c_mask = self._batch(part)
                logprobs, _ = token_logprobs(self.model, p_ids, p_mask, c_ids, c_mask, temperature=cfg.temperature)
                adv = d["advantages"][part].to(self.device)
                loss, stats = dapo_loss(logprobs.sum(-1), d["ref_logprobs"][part].to(self.device), adv, float(cfg.beta))
                share = len(part) / len(rows)
                self.check_finite(loss)
                self.manual_backward(loss * share)
                stats.update(dapo_loss=loss.detach(), advantage_mean=adv.mean(), advantage_abs=adv.abs().mean())
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value) * share
                tokens += int(p_mask.sum() + c_mask.sum())
            if cfg.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
            self.generator.sync(self.model)
        log = {**totals, "data_age": float(age),
               **{f"time_{k}": v for k, v in self._times.items()}}
        self.log_dict({f"train/{k}": float(v) for k, v in log.items()}, on_step=True, batch_size=len(rows))
        self.count_tokens(tokens)

    # ---- D travels with checkpoints (plain tensors: they load with weights_only=True) --------------------------
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        if self.data is not None:
            checkpoint[DATA_KEY] = {"data": {k: v.cpu() for k, v in self.data.items()}, "built_at": self.built_at,
                                    "critic_updates": self.critic_updates}

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(DATA_KEY)
        if saved is not None:
            self.data, self.built_at = dict(saved["data"]), int(saved["built_at"])
            self.critic_updates = int(saved["critic_updates"])
