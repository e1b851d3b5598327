"""R³: reverse curriculum RL (Xi et al. 2024, "Training LLMs for Reasoning through Reverse Curriculum RL").

Start RL episodes from states along a correct demonstration instead of only from the problem: the prompt is
the problem plus the first k demonstration steps, the policy writes the rest, and the outcome reward of the
whole solution (prefix + completion) then tells how well the policy does from step k on. With k near the end
the reward is dense (few steps left to get right); sliding k back to 0 ends at the real task.

    steps      = demonstration_steps(target)                 # L steps, "".join(steps) == target
    k          = start_step(curriculum, L, step, S, T, u)    # steps of the demonstration kept as the prompt
    prompt'    = format(prompt) + "".join(steps[:k])
    y_1..y_G   ~ pi_theta(. | prompt')                        # one start state per problem, shared by its group
    r_i        = rewards(prefix + y_i)                        # the verifier sees the whole solution
    A_i        = (r_i - mean_j r_j) / (std_j r_j + eps)       # GRPO group baseline (method.advantage)
    loss       = GRPO clipped surrogate + beta * KL on the tokens of y_i only (the prefix is prompt)

Schedules (``method.curriculum``):
  staged: S = ``num_stages`` stages of equal length over the run's T optimizer steps; stage s = 1..S is
          s = min(S, floor(step * S / T) + 1), and k = max(L - s, 0) for s < S, k = 0 in the last stage, so
          stage 1 leaves only the last step to the policy and the final stage is always the full problem.
  mix:    k ~ Uniform{0, ..., L-1} per problem (the released code's R3_mix: start states of every stage,
          full problem included, shuffled together).

Deviation from the paper: R³ trains with PPO and a critic (official GSM8K script: GAE with gamma=1,
lambda=0.95, vf_coef 5, KL 0.05). Here the advantage is the group baseline of GRPO over G samples from the
same start state, so no value model is trained; everything after the rollout is the parent's GRPO update.
Evaluation is the parent's greedy accuracy from the full problem (k = 0).
"""

from __future__ import annotations

import re

import torch

from workbench.errors import ConfigError
from workbench.methods.group_rl.module import GroupRLModule
from workbench.methods.group_rl.rollouts import GroupBatch

CURRICULA = ("staged", "mix")

# Single-line fallback: a new step starts at every binary operator that follows an operand or a space
# ("3*7+25" -> "3", "*7", "+25"); a leading sign or an operator after "(" or another operator stays inside
# its step, and a piece without a letter or digit (a lone space before a sign) joins the next piece.
OPERATOR_BOUNDARY = re.compile(r"(?<=[\w)\s])(?=[-+*/=])")
WORD = re.compile(r"\w")
DIGIT = re.compile(r"\d")


def demonstration_steps(target: str) -> list[str]:
    """Split a reference solution into demonstration steps; ``"".join(steps) == target`` always.

    * Several lines (GSM8K rationales, the paper's split): one step per line, each keeping its newline.
      A blank line is no reasoning step, so it joins the step before it.
    * One line with operators (countdown's ' 3*7+25'): a step per operator term, see OPERATOR_BOUNDARY.
    * One bare number (arithmetic's '95'): a step per digit, the sign or any leading text going with the
      first digit ('-12' -> '-1', '2'). Why digits: a one-step demonstration gives no start state but the full
      problem, so R³ would reduce to GRPO; digits are the only task-agnostic pieces a bare answer has, and the
      tiny tokenizer keeps digits as single tokens, so a digit prefix is a token prefix of the SFT target.
    * Nothing to split (a single character, or no digit): one step; the empty target has none.
    """
    if not target:
        return []
    lines = target.splitlines(keepends=True)
    if len(lines) > 1:
        steps: list[str] = []
        for line in lines:
            if steps and not line.strip():
                steps[-1] += line
            else:
                steps.append(line)
        if len(steps) > 1:
            return steps
    pieces: list[str] = []
    carry = ""
    for piece in OPERATOR_BOUNDARY.split(target):
        if WORD.search(piece):
            pieces.append(carry + piece)
            carry = ""
        else:
            carry += piece
    if carry:  # trailing text without an operand ends the last step
        pieces = pieces[:-1] + [pieces[-1] + carry] if pieces else [carry]
    if len(pieces) > 1:
        return pieces
    digits = [m.start() for m in DIGIT.finditer(target)]
    if len(digits) > 1:
        cuts = digits[1:] + [len(target)]
        return [target[: cuts[0]]] + [target[a:b] for a, b in zip(cuts, cuts[1:])]
    return [target]


def stage_of(step: int, num_stages: int, total_steps: int) -> int:
    """Stage s in 1..S of optimizer step ``step`` (0-based) when S equal stages split ``total_steps``."""
    return min(num_stages, step * num_stages // max(1, total_steps) + 1)


def start_step(curriculum: str, num_steps: int, step: int = 0, num_stages: int = 1, total_steps: int = 1,
               generator: torch.Generator | None = None) -> int:
    """k: how many of the ``num_steps`` demonstration steps are given as prompt.

    staged: k = max(L - s, 0) in stage s < S, k = 0 in the last stage; mix: k ~ Uniform{0..L-1}.
    """
    if num_steps <= 0:
        return 0
    if curriculum == "staged":
        s = stage_of(step, num_stages, total_steps)
        return 0 if s == num_stages else max(num_steps - s, 0)
    if curriculum == "mix":
        return int(torch.randint(num_steps, (1,), generator=generator))
    raise ValueError(f"unknown curriculum {curriculum!r}; use one of {list(CURRICULA)}")


def prefixed_prompts(formatted: list[str], targets: list[str], ks: list[int]) -> tuple[list[str], list[str]]:
    """(prompt texts the policy continues, demonstration prefixes): formatted prompt + first k steps."""
    prefixes = ["".join(demonstration_steps(t)[:k]) for t, k in zip(targets, ks)]
    return [p + x for p, x in zip(formatted, prefixes)], prefixes


def validate_r3(m) -> None:
    """R³'s own fields: ``curriculum`` in CURRICULA, ``num_stages`` a whole number >= 1."""
    curriculum = m.get("curriculum")
    if curriculum not in CURRICULA:
        raise ConfigError("method.curriculum", f"unknown '{curriculum}'", f"use one of {list(CURRICULA)}")
    stages = m.get("num_stages")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ConfigError("method.num_stages", f"must be a whole number >= 1, got {stages!r}",
                          "e.g. method.num_stages=4 (stages of the staged curriculum)")


class ReverseCurriculumModule(GroupRLModule):
    """GRPO from reverse-curriculum start states; only the rollout collection (``_score``) differs."""

    family = "group_rl"

    def __init__(self, policy, task, method, trainer_cfg=None):
        validate_r3(method)
        super().__init__(policy, task, method, trainer_cfg)
        self._start_stats: dict[str, float] = {}
        self._draw = (-1, 0)  # (optimizer step, start-state draws in it): dynamic sampling draws again per round

    def start_steps(self, targets: list[str]) -> list[int]:
        """One k per problem for the current optimizer step."""
        cfg = self.cfg
        # mix draws from its own generator, a function of (seed, step, rank): a resumed run draws the same
        # start states and the sampler's random stream stays the one GRPO would see
        step = self.global_step
        self._draw = (step, self._draw[1] + 1 if self._draw[0] == step else 0)
        gen = torch.Generator().manual_seed(torch.initial_seed() % 2**31 * 1_000_003 + step * 9_973 + self._draw[1] * 101
                                            + self.global_rank)
        return [start_step(cfg.curriculum, len(demonstration_steps(t)), step, int(cfg.num_stages),
                           self.total_steps, gen) for t in targets]

    def _score(self, batch: dict) -> GroupBatch:
        cfg, G = self.cfg, self.cfg.group_size
        targets = batch["target"]
        ks = self.start_steps(targets)
        texts, prefixes = prefixed_prompts(self.formatted(batch["prompt"]), targets, ks)
        rollout = self.generator(self.model, self.tokenizer, texts, n=G, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, top_p=cfg.top_p)
        fields = {k: [v for v in vals for _ in range(G)] for k, vals in batch.items()}
        prompts = fields.pop("prompt")
        prefix_rows = [p for p in prefixes for _ in range(G)]
        solutions = [p + c for p, c in zip(prefix_rows, rollout.texts)]
        # length rewards count the whole solution too: the prefix's tokens plus the sampled ones
        prefix_tokens = [len(ids) for ids in self.tokenizer(prefixes, add_special_tokens=False)["input_ids"]]
        lengths = [prefix_tokens[i // G] + int(n) for i, n in enumerate(rollout.lengths.tolist())]
        rewards, parts = self.rewards(prompts, solutions, group_size=G, completion_lengths=lengths, **fields)
        correct = parts.get("correctness")
        if correct is None:
            correct = torch.tensor([float(self.task.verify(s, a)) for s, a in zip(solutions, fields["answer"])])
        self._note_start_states(ks, targets, correct.view(-1, G))
        return GroupBatch(rollout, rewards, parts, correct, {"prompt": prompts, **fields}, G)

    def _note_start_states(self, ks: list[int], targets: list[str], correct: torch.Tensor) -> None:
        """Where this step's episodes started (every sampling round of it): mean k, k / L, the share of
        full-problem starts and the accuracy from them, and the stage of the staged schedule."""
        step = self.global_step
        if getattr(self, "_starts_step", None) != step:
            self._starts_step, self._starts = step, {"k": [], "L": [], "correct": []}
        self._starts["k"] += ks
        self._starts["L"] += [len(demonstration_steps(t)) for t in targets]
        self._starts["correct"].append(correct.float())
        k = torch.tensor(self._starts["k"], dtype=torch.float32)
        L = torch.tensor(self._starts["L"], dtype=torch.float32)
        accuracy = torch.cat(self._starts["correct"]).mean(-1)  # per problem: the share of its G samples right
        full = k == 0
        stats = {"start_step": k.mean().item(), "start_frac_of_demo": (k / L.clamp(min=1)).mean().item(),
                 "full_problem_frac": full.float().mean().item()}
        if full.any():
            stats["accuracy_full_problem"] = accuracy[full].mean().item()
        if self.cfg.curriculum == "staged":
            stats["stage"] = float(stage_of(step, int(self.cfg.num_stages), self.total_steps))
        self._start_stats = stats

    def _log_step(self, data: GroupBatch, rewards, advantages, totals, mask) -> None:
        super()._log_step(data, rewards, advantages, totals, mask)
        self.log_dict({f"train/r3/{k}": v for k, v in self._start_stats.items()}, on_step=True,
                      batch_size=data.num_groups)
