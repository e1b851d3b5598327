"""Countdown: reach a target number from given numbers with + - * / (seeded, synthetic).

'Using the numbers [3, 7, 25], make 46. Answer with an expression.' -> ' 3*7+25'.
Every problem is generated from an expression over *all* its numbers, so it is solvable; a
completion may use each given number at most once (as many times as it is given) and is checked
with exact fraction arithmetic, so '7/2*2' is 7 and no float rounding can sneak in a wrong answer.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections import Counter
from fractions import Fraction

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import Task, check_operators, check_positive_sizes

OPERATORS = ("+", "-", "*", "/")
AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
MAX_EXPRESSION_CHARS = 200  # a longer "expression" is not an answer; also bounds the parser's work
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
DEFAULT_TEMPLATE = "Using the numbers {numbers}, make {target}. Answer with an expression.\nAnswer:"


def parse_answer(answer: str) -> tuple[list[int], int]:
    """The ``answer`` column is JSON ``{"numbers": [...], "target": n}``: what the verifier needs."""
    data = json.loads(answer)
    return [int(n) for n in data["numbers"]], int(data["target"])


def evaluate(expression: str, allowed_ops: tuple[str, ...] = OPERATORS) -> tuple[Fraction, Counter] | None:
    """Exact value and multiset of number literals of an arithmetic expression, or None.

    Only non-negative integer literals, the binary operators in ``allowed_ops`` and parentheses are
    accepted (the AST is walked, never ``eval``-ed): names, calls, attributes, unary minus, powers,
    floats and division by zero all give None.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: Counter = Counter()

    def walk(node) -> Fraction:
        if isinstance(node, ast.BinOp) and AST_OPS.get(type(node.op)) in allowed_ops:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ZeroDivisionError
            return left / right
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            used[node.value] += 1
            return Fraction(node.value)
        raise ValueError(f"not allowed: {ast.dump(node)[:40]}")

    try:
        return walk(tree.body), used
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


class CountdownTask(Task):
    name = "countdown"

    def __init__(self, min_numbers: int = 3, max_numbers: int = 4, max_number: int = 25, max_target: int = 100,
                 operators: tuple[str, ...] = OPERATORS, train_size: int = 5000, val_size: int = 200, test_size: int = 500,
                 prompt_template: str = DEFAULT_TEMPLATE, seed: int = 1234, **_unused):
        for field, value in (("min_numbers", min_numbers), ("max_numbers", max_numbers), ("max_number", max_number),
                             ("max_target", max_target), ("train_size", train_size), ("val_size", val_size),
                             ("test_size", test_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"task.{field}", f"must be a whole number, got {value!r}", f"set task.{field} to an integer")
        if min_numbers < 2:
            raise ConfigError("task.min_numbers", f"must be >= 2, got {min_numbers}", "set task.min_numbers=2 or more")
        if max_numbers < min_numbers or max_numbers > 6:
            raise ConfigError("task.max_numbers", f"need min_numbers <= max_numbers <= 6, got {min_numbers}..{max_numbers}",
                              "set task.max_numbers between task.min_numbers and 6")
        if max_number < 2:
            raise ConfigError("task.max_number", f"must be >= 2, got {max_number}", "set task.max_number to e.g. 25")
        if max_target < 1:
            raise ConfigError("task.max_target", f"must be >= 1, got {max_target}", "set task.max_target to e.g. 100")
        operators = tuple([operators] if isinstance(operators, str) else operators)
        check_operators(operators, OPERATORS)
        check_positive_sizes(train_size=train_size, val_size=val_size, test_size=test_size)
        if "{numbers}" not in prompt_template or "{target}" not in prompt_template:
            raise ConfigError("task.prompt_template", "must contain '{numbers}' and '{target}'", "see conf/task/countdown.yaml")
        self.operators = operators
        self.prompt_template = prompt_template

        rng = random.Random(seed)
        seen: set[tuple] = set()  # (sorted numbers, target): a problem, whatever its number order
        total = train_size + val_size + test_size
        budget = 50 * total + 10_000  # failed draws allowed before the knobs are declared too tight
        splits = {}
        # held-out splits first, so the train split never contains a held-out problem
        for split, size in (("test", test_size), ("validation", val_size), ("train", train_size)):
            rows = []
            while len(rows) < size:
                if budget <= 0:
                    raise ConfigError("task.train_size", f"could not draw {total} distinct solvable problems "
                                      f"with numbers 1..{max_number} and targets 1..{max_target}",
                                      "raise task.max_number / task.max_target or lower the sizes")
                problem = self._draw(rng, min_numbers, max_numbers, max_number, max_target)
                if problem is None or problem[2] in seen:
                    budget -= 1
                    continue
                numbers, target, key, expression = problem
                seen.add(key)
                rows.append({
                    "prompt": prompt_template.format(numbers=numbers, target=target),
                    "target": " " + expression,
                    "answer": json.dumps({"numbers": numbers, "target": target}),
                })
            splits[split] = Dataset.from_list(rows)
        self.splits = DatasetDict(train=splits["train"], validation=splits["validation"], test=splits["test"])

    def _draw(self, rng: random.Random, min_numbers, max_numbers, max_number, max_target):
        """Random numbers, combined in a random order with random operators into one expression;
        kept when its value is a whole number in 1..max_target that is not one of the numbers."""
        numbers = [rng.randint(1, max_number) for _ in range(rng.randint(min_numbers, max_numbers))]
        terms = [(str(n), Fraction(n)) for n in numbers]
        while len(terms) > 1:  # merge two random sub-expressions until one is left: a random tree
            a = terms.pop(rng.randrange(len(terms)))
            b = terms.pop(rng.randrange(len(terms)))
            op = rng.choice(self.operators)
            if op == "/" and b[1] == 0:
                return None
            value = {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1], "/": a[1] / b[1] if b[1] else None}[op]
            terms.append((f"({a[0]}{op}{b[0]})", value))
        text, value = terms[0]
        if value.denominator != 1 or not 1 <= value <= max_target or value in numbers:
            return None
        expression = _strip_outer(text)
        return numbers, int(value), (tuple(sorted(numbers)), int(value)), expression

    def extract_answer(self, completion: str) -> str | None:
        """The expression: inside <answer>...</answer> if present, else the first non-empty line;
        a trailing '= <number>' is dropped (the value is recomputed, never trusted)."""
        tagged = ANSWER_TAG.search(completion)
        text = tagged.group(1) if tagged else next((line for line in completion.splitlines() if line.strip()), "")
        text = text.strip()
        if "=" in text:
            text = text.split("=", 1)[0].strip()
        return text or None

    def verify(self, completion: str, answer: str) -> bool:
        expression = self.extract_answer(completion)
        if expression is None:
            return False
        numbers, target = parse_answer(answer)
        result = evaluate(expression, self.operators)
        if result is None:
            return False
        value, used = result
        return value == target and not (used - Counter(numbers))  # nothing used more often than given


def _strip_outer(text: str) -> str:
    """'((3*7)+25)' -> '(3*7)+25': drop the outermost pair the tree builder always adds."""
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text
