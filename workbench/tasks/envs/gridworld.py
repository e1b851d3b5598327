"""A text gridworld: walk the agent (A) to the goal (G) around walls (#) with up / down / left / right.

The observation is the grid itself, one text row per grid row; by default the policy sees only the current grid
(``history: 0``), a Markov state, so the same state recurs across the episodes of one layout: GiGPO's anchor
states. Walking into a wall or the edge leaves the state unchanged (a wasted turn). Reward 1 on reaching the goal
(sparse, final); an unparsable action gets a penalty and an observation that repeats the grid. The process reward
(for PURE) is +1 when a move shortens the shortest-path distance to the goal, -1 otherwise.
Layouts (agent, goal, walls) are drawn from the episode seed and always solvable.
"""

from __future__ import annotations

import random
from collections import deque

from workbench.errors import ConfigError
from workbench.tasks.envs.base import EnvTask, StepResult, TextEnv

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


class GridWorld(TextEnv):
    def __init__(self, size: int = 4, walls: int = 2, max_turns: int = 10, history: int | None = 0,
                 invalid_penalty: float = 0.1):
        self.size, self.num_walls = size, walls
        self.max_turns, self.history, self.invalid_penalty = max_turns, history, invalid_penalty

    def _reset(self, rng: random.Random) -> str:
        cells = [(r, c) for r in range(self.size) for c in range(self.size)]
        while True:
            picked = rng.sample(cells, self.num_walls + 2)
            self.agent, self.goal, self.walls = picked[0], picked[1], set(picked[2:])
            self.distances = self._distances_to_goal()
            if self.agent in self.distances and self.distances[self.agent] > 0:
                return self.render()

    def _distances_to_goal(self) -> dict[tuple[int, int], int]:
        dist = {self.goal: 0}
        queue = deque([self.goal])
        while queue:
            cell = queue.popleft()
            for dr, dc in MOVES.values():
                nxt = (cell[0] + dr, cell[1] + dc)
                if self._free(nxt) and nxt not in dist:
                    dist[nxt] = dist[cell] + 1
                    queue.append(nxt)
        return dist

    def _free(self, cell) -> bool:
        return 0 <= cell[0] < self.size and 0 <= cell[1] < self.size and cell not in self.walls

    def render(self) -> str:
        def char(cell):
            return "A" if cell == self.agent else "G" if cell == self.goal else "#" if cell in self.walls else "."

        return "\n".join("".join(char((r, c)) for c in range(self.size)) for r in range(self.size))

    def state_key(self) -> str:
        return self.render()

    def _step(self, action: str) -> StepResult:
        move = MOVES.get(action.strip().lower())
        if move is None:
            return StepResult(f"invalid: say up, down, left or right\n{self.render()}", -self.invalid_penalty, False,
                              {"valid": False, "process_reward": -1.0})
        before = self.distances[self.agent]
        target = (self.agent[0] + move[0], self.agent[1] + move[1])
        if self._free(target):
            self.agent = target
        closer = self.distances[self.agent] < before
        if self.agent == self.goal:
            return StepResult("goal reached", 1.0, True, {"success": True, "process_reward": 1.0})
        return StepResult(self.render(), 0.0, False, {"process_reward": 1.0 if closer else -1.0})

    def expert_action(self) -> str:
        """A shortest-path move (the first in up, down, left, right order among the best)."""
        best = None
        for name, (dr, dc) in MOVES.items():
            nxt = (self.agent[0] + dr, self.agent[1] + dc)
            if self._free(nxt) and (best is None or self.distances[nxt] < best[0]):
                best = (self.distances[nxt], name)
        return best[1]

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(list(MOVES))


class GridWorldTask(EnvTask):
    name = "gridworld"

    def __init__(self, size: int = 4, walls: int = 2, max_turns: int = 10, history: int | None = 0,
                 invalid_penalty: float = 0.1, **kwargs):
        if not isinstance(size, int) or size < 2:
            raise ConfigError("task.size", f"must be an integer >= 2, got {size!r}", "set task.size=4")
        if not isinstance(walls, int) or not 0 <= walls <= size * size - 3:
            raise ConfigError("task.walls", f"must be in 0..{size * size - 3}, got {walls!r}", "set task.walls=2")
        if not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError("task.max_turns", f"must be a positive integer, got {max_turns!r}", "set task.max_turns=10")
        self.env_args = dict(size=size, walls=walls, max_turns=max_turns, history=history, invalid_penalty=invalid_penalty)
        super().__init__(**kwargs)

    def make_env(self) -> GridWorld:
        return GridWorld(**self.env_args)
