"""Text environments (gridworld, guess the number, calculator): seeding, experts, invalid actions, truncation,
process rewards, state keys, safe calculator parsing, task splits / SFT rows, config errors and the Hydra configs."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR
from workbench.errors import ConfigError
from workbench.policy.tokenizer import train_tokenizer
from workbench.tasks import build_task
from workbench.tasks.envs.base import EnvTask
from workbench.tasks.envs.calculator import Calculator, CalculatorTask, evaluate
from workbench.tasks.envs.gridworld import GridWorld, GridWorldTask
from workbench.tasks.envs.guess_number import GuessNumber, GuessNumberTask

ENVS = {"gridworld": GridWorld, "guess_number": GuessNumber, "calculator": Calculator}
TASKS = {"gridworld": GridWorldTask, "guess_number": GuessNumberTask, "calculator": CalculatorTask}
SMALL = dict(train_size=20, val_size=5, test_size=5, sft_episodes=10)


def hidden(env) -> tuple:
    """What a seed decides, per env."""
    if isinstance(env, GridWorld):
        return env.agent, env.goal, tuple(sorted(env.walls))
    if isinstance(env, GuessNumber):
        return (env.number,)
    return env.problem, env.value


def run_expert(env, seed: int):
    env.reset(seed)
    result = None
    while not env.done:
        result = env.step(env.expert_action())
    return result


def seed_where(env, predicate) -> int:
    for seed in range(10_000):
        env.reset(seed)
        if predicate(env):
            return seed
    raise AssertionError("no seed satisfies the predicate")


# ---- seeding ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ENVS))
def test_seeded_reset_is_reproducible(name):
    env = ENVS[name]()
    first = [(env.reset(s), hidden(env)) for s in range(30)]
    again = [(env.reset(s), hidden(env)) for s in range(30)]
    assert first == again
    assert len({h for _, h in first}) > 3  # seeds actually vary the episode


# ---- experts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gridworld", "guess_number"])
def test_expert_solves_every_seed(name):
    env = ENVS[name]()
    results = [run_expert(env, s) for s in range(200)]
    assert all(r.info["success"] and r.reward == 1.0 and not r.info["truncated"] for r in results)


def test_guess_number_expert_binary_searches():
    env = GuessNumber()
    for seed in range(200):
        run_expert(env, seed)
        assert env.turn == 4  # 3 questions halve 8 candidates to 1, then the guess
        assert [m["content"][0] for m in env.messages[1::2]] == [">", ">", ">", "="]


def test_guess_number_expert_guesses_the_middle_when_turns_run_out():
    env = GuessNumber(max_turns=2)
    wins = 0
    for seed in range(200):
        wins += run_expert(env, seed).info["success"]
        assert [m["content"][0] for m in env.messages[1::2]] == [">", "="]
    assert 0.15 < wins / 200 < 0.35  # one question leaves 4 candidates, the guess hits 1 in 4
    env = GuessNumber(max_turns=1)
    env.reset(0)
    assert env.expert_action() == "= 4"


def test_calculator_expert_always_calls_once_then_answers():
    env = Calculator()
    results = [run_expert(env, s) for s in range(200)]
    assert all(r.info["success"] and r.info["tool_calls"] == 1 for r in results)
    assert all(r.reward == pytest.approx(math.cos(math.pi / 4)) for r in results)  # 0.71 at tool_smooth 2
    assert results[0].reward == pytest.approx(0.7071, abs=1e-4)
    env = Calculator(max_turns=1)  # no turn for the call: answer at once, full reward
    assert all(run_expert(env, s).reward == 1.0 for s in range(20))


def test_calculator_reward_follows_otc_over_calls():
    env = Calculator(tool_smooth=2.0)
    env.reset(0)
    assert env.step(f"answer {env.value}").reward == 1.0
    env.reset(0)
    env.step("calc 1+1")
    env.step("calc 2+2")
    last = env.step(f"answer {env.value}")
    assert last.reward == pytest.approx(math.cos(2 * math.pi / 6)) and last.info["tool_calls"] == 2
    env.reset(0)
    wrong = env.step(f"answer {env.value + 1}")
    assert wrong.done and wrong.reward == 0.0 and not wrong.info["success"] and wrong.observation == "wrong"


def test_calculator_problem_mix():
    env = Calculator(hard_frac=0.5)
    kinds = []
    for seed in range(400):
        env.reset(seed)
        kinds.append(env.hard)
        a, op, b = env.problem.partition("*" if env.hard else "+")
        digits = 2 if env.hard else 1
        assert op and len(a) == len(b) == digits and env.value == (int(a) * int(b) if env.hard else int(a) + int(b))
    assert 0.4 < sum(kinds) / 400 < 0.6
    for frac, expected in ((0.0, False), (1.0, True)):
        env = Calculator(hard_frac=frac)
        for seed in range(50):
            env.reset(seed)
            assert env.hard is expected


# ---- invalid actions -------------------------------------------------------------------------------------------
INVALID = {
    "gridworld": ["", "?", "go up", "UPP", "north", "\x00", "é" * 50, "up up"],
    "guess_number": ["", "?", "> 0", "> 9", "= 0", "= 99", "< 3", "> x", "4", ">= 4", "> 4.5", "> " + "9" * 5000],
    "calculator": ["", "?", "calc", "calc 2**3", "calc 1/2", "calc -3", "calc __import__('os')", "answer",
                   "answer five", "answer 3.5", "calc 1+" * 30, "solve 3+4", "answer " + "9" * 5000],
}


@pytest.mark.parametrize("name", list(ENVS))
def test_invalid_actions_are_penalised_and_explained(name):
    env = ENVS[name](invalid_penalty=0.25)
    for action in INVALID[name]:
        obs0 = env.reset(3)
        result = env.step(action)
        assert result.reward == -0.25 and not result.done, action
        assert result.info["valid"] is False and result.info["process_reward"] == -1.0
        assert result.observation.startswith("invalid: ") and len(result.observation) > len("invalid: ") + 10
        assert env.invalid_actions == 1
        if name == "gridworld":
            assert result.observation.endswith(obs0)  # the hint repeats the grid
    env.reset(3)
    while not env.done:  # a whole episode of garbage ends by truncation, never by a crash
        result = env.step("?")
    assert result.info["truncated"] and env.invalid_actions == env.max_turns


# ---- truncation ------------------------------------------------------------------------------------------------
def test_max_turns_truncation():
    env = GuessNumber(max_turns=5)
    env.reset(0)
    results = [env.step("> 1") for _ in range(5)]
    assert [r.done for r in results] == [False] * 4 + [True]
    assert results[-1].info["truncated"] and not results[-1].info["success"] and results[-1].reward == 0.0
    with pytest.raises(RuntimeError):
        env.step("= 1")

    env = Calculator(max_turns=3)
    env.reset(0)
    results = [env.step(f"calc {env.problem}") for _ in range(3)]
    assert results[-1].done and results[-1].info["truncated"] and results[-1].reward == 0.0
    assert results[-1].info["tool_calls"] == 3

    env = GridWorld(max_turns=10)
    seed_where(env, lambda e: e.agent[0] == 0)
    results = [env.step("up") for _ in range(10)]  # into the edge every turn
    assert [r.done for r in results] == [False] * 9 + [True] and results[-1].info["truncated"]


def test_guessing_right_on_the_last_turn_is_not_truncation():
    env = GuessNumber(max_turns=1)
    seed_where(env, lambda e: e.number == 3)
    result = env.step("= 3")
    assert result.done and result.info["success"] and not result.info["truncated"] and result.reward == 1.0


# ---- process rewards -------------------------------------------------------------------------------------------
def test_guess_number_process_rewards():
    env = GuessNumber(max_turns=6)
    seed_where(env, lambda e: e.number == 6)
    # candidates 1..8 -> 5..8 -> 5..8 (below lo) -> 5..8 (k = hi splits nothing off) -> 5..6 -> 5..6 (k = hi again)
    steps = [("> 4", "yes", 1.0), ("> 2", "yes", -1.0), ("> 8", "no", -1.0), ("> 6", "no", 1.0), ("> 6", "no", -1.0),
             ("= 5", "wrong", -1.0)]
    for action, observation, process in steps:
        result = env.step(action)
        assert (result.observation, result.info["process_reward"]) == (observation, process), action
    assert result.done and result.reward == 0.0
    env.reset(env.seed)
    assert env.step("= 6").info["process_reward"] == 1.0


def test_calculator_process_rewards():
    env = Calculator()
    seed_where(env, lambda e: e.hard)
    a, b = env.problem.split("*")
    steps = [("calc 1+1", "= 2", -1.0), (f"calc {b} * {a}", f"= {env.value}", 1.0), (f"answer {env.value}", "correct", 1.0)]
    for action, observation, process in steps:
        result = env.step(action)
        assert (result.observation, result.info["process_reward"]) == (observation, process), action
    assert result.info["success"] and result.reward == pytest.approx(math.cos(2 * math.pi / 6))


def test_gridworld_process_rewards():
    env = GridWorld(size=4, walls=1)
    env.reset(0)
    env.agent, env.goal, env.walls = (0, 0), (0, 3), {(1, 1)}  # a hand-built layout
    env.distances = env._distances_to_goal()
    steps = [("right", 1.0), ("left", -1.0), ("up", -1.0), ("?", -1.0), ("right", 1.0), ("right", 1.0), ("right", 1.0)]
    for action, process in steps:
        result = env.step(action)
        assert result.info["process_reward"] == process, action
    assert result.done and result.info["success"] and result.observation == "goal reached"


# ---- state keys ------------------------------------------------------------------------------------------------
def test_gridworld_wall_bump_keeps_the_state_key():
    env = GridWorld()
    seed_where(env, lambda e: e.agent[0] == 0 and e.expert_action() != "up")
    key = env.state_key()
    env.step("up")  # into the edge: nothing moves
    assert env.state_key() == key
    env.step(env.expert_action())
    assert env.state_key() != key


def test_guess_number_state_key_groups_identical_knowledge():
    env = GuessNumber()
    seed = seed_where(env, lambda e: e.number == 7)
    assert env.state_key() == "1..8 turn 0"
    for action in ("> 4", "> 6"):
        env.step(action)
    key_a = env.state_key()
    env.reset(seed)
    for action in ("> 6", "> 2"):  # a different (wasteful) transcript, the same knowledge
        env.step(action)
    assert env.state_key() == key_a == "7..8 turn 2"
    assert env.prompt() == env.messages and len(env.messages) == 5  # history None: the whole transcript


def test_calculator_state_key_counts_calls():
    env = Calculator()
    seed = seed_where(env, lambda e: e.hard)
    a, b = env.problem.split("*")
    env.step(f"calc {a}*{b}")
    key_a = env.state_key()
    env.reset(seed)
    env.step(f"calc {b}*{a}")
    assert env.state_key() == key_a == f"= {env.value} | calls 1"
    env.step(f"calc {a}*{b}")
    assert env.state_key() != key_a


# ---- safe calculator -------------------------------------------------------------------------------------------
def test_calculator_evaluates_only_sums_of_products():
    assert evaluate("2+3*4") == 14
    assert evaluate(" 37 * 58 ") == 2146
    assert evaluate("10-2*3-1") == 3
    assert evaluate("7") == 7
    for bad in ("__import__('os')", "2**99999", "2*" * 30 + "2", "1/2", "-3", "1e9", "(1+2)", "3+", "", "1 2",
                "9999999*2", "os.system('ls')", "True+1", "0x10"):
        assert evaluate(bad) is None, bad
    env = Calculator()
    env.reset(0)
    for attack in ("calc __import__('os')", "calc 2**99999"):
        result = env.step(attack)
        assert not result.info["valid"] and env.calls == 0


# ---- tasks -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TASKS))
def test_task_splits_are_disjoint_seed_ranges(name):
    task = TASKS[name](**SMALL)
    seeds = {split: set(task.episodes(split)["seed"]) for split in ("train", "validation", "test")}
    assert [len(s) for s in seeds.values()] == [20, 5, 5]
    assert not (seeds["train"] & seeds["validation"] or seeds["train"] & seeds["test"] or seeds["validation"] & seeds["test"])
    for i, split in enumerate(("train", "validation", "test")):
        assert all(i * EnvTask.SEED_STRIDE <= s < (i + 1) * EnvTask.SEED_STRIDE for s in seeds[split])
    assert TASKS[name](**SMALL).episodes("test")["seed"] == task.episodes("test")["seed"]  # seeded
    with pytest.raises(ConfigError, match="split"):
        task.episodes("dev")


@pytest.mark.parametrize("name", list(TASKS))
def test_sft_rows_are_message_lists_and_actions(name):
    task = TASKS[name](**SMALL)
    rows = list(task.split("train"))
    assert len(rows) >= SMALL["sft_episodes"]  # at least one turn per episode
    for row in rows:
        prompt = row["prompt"]
        assert isinstance(prompt, list) and prompt and prompt[0]["role"] == "user" and prompt[-1]["role"] == "user"
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]
        assert isinstance(row["target"], str) and row["target"] and row["answer"] == row["target"]
    if name == "gridworld":
        assert {len(r["prompt"]) for r in rows} == {1}  # history 0: the current grid only
    else:
        assert max(len(r["prompt"]) for r in rows) > 1  # history None: the transcript grows
    assert task.verify(" " + rows[0]["target"] + " ", rows[0]["answer"])


def test_noise_free_sft_rows_are_the_expert_episodes():
    task = GuessNumberTask(**{**SMALL, "expert_noise": 0.0})
    env = task.make_env()
    expected = []
    for seed in task.episodes("train")["seed"][:SMALL["sft_episodes"]]:  # the SFT episodes are the first train seeds
        run_expert(env, seed)
        expected += [m["content"] for m in env.messages[1::2]]
    assert [r["target"] for r in task.split("train")] == expected
    assert len(expected) == 4 * SMALL["sft_episodes"] and expected[0] == "> 4"


BAD = [
    (GuessNumberTask, {"max_number": 1}, "task.max_number"),
    (GuessNumberTask, {"max_number": "8"}, "task.max_number"),
    (GuessNumberTask, {"max_turns": 0}, "task.max_turns"),
    (GuessNumberTask, {"history": -1}, "task.history"),
    (GuessNumberTask, {"invalid_penalty": -0.1}, "task.invalid_penalty"),
    (CalculatorTask, {"hard_frac": 1.5}, "task.hard_frac"),
    (CalculatorTask, {"tool_smooth": 0}, "task.tool_smooth"),
    (CalculatorTask, {"max_turns": 0}, "task.max_turns"),
    (CalculatorTask, {"history": "all"}, "task.history"),
    (CalculatorTask, {"invalid_penalty": True}, "task.invalid_penalty"),
    (GridWorldTask, {"size": 1}, "task.size"),
    (GridWorldTask, {"walls": 20}, "task.walls"),
    (GridWorldTask, {"max_turns": 0}, "task.max_turns"),
    (GuessNumberTask, {"train_size": 0}, "task.train_size"),
    (CalculatorTask, {"expert_noise": 2.0}, "task.expert_noise"),
]


@pytest.mark.parametrize("cls,params,field", BAD, ids=[f"{c.name}-{f}" for c, _, f in BAD])
def test_bad_params_raise_config_error_naming_the_field(cls, params, field):
    with pytest.raises(ConfigError) as error:
        cls(**{**SMALL, **params})
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")


# ---- Hydra configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gridworld", "guess_number", "calculator"])
def test_config_instantiates_and_actions_fit_max_new_tokens(name):
    """The shipped config composes, builds its task, and every SFT action + EOS fits the sampling budget when
    tokenized by the tokenizer a tiny model trains on that task's text."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"task={name}"])
    task = build_task(cfg.task)
    assert isinstance(task, TASKS[name]) and task.name == name
    assert task.sizes == {"train": 2000, "validation": 100, "test": 200} and task.expert_noise == 0.3
    env = task.env_for(task.episodes("test")[0])
    assert env.messages[0]["content"] and not env.done
    tokenizer = train_tokenizer(task.corpus(), vocab_size=cfg.model.tokenizer.vocab_size)
    longest = max(len(tokenizer(a + tokenizer.eos_token, add_special_tokens=False).input_ids)
                  for a in set(task.split("train")["target"]))
    assert longest <= task.max_new_tokens
