"""Deterministic GSM8K-style word problems: short stories with one to three arithmetic steps, answers as `… #### N`.

Each problem is a dict in the shape of `data_modules.synthetic`'s problems (question, answer, difficulty, teaching,
diagnosis), plus `solution` (the worked steps, with GSM8K's `<<a+b=c>>` calculator notes, ending in `#### N`) and
`ground_truth` (that same solution: the form GSM8K's `answer` column has). Difficulty is the number of steps. The
teaching names the first step, which is what a student who does not know where to start needs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Femi", "Grace", "Hiro", "Ines", "Jonah", "Kira", "Liam", "Maya",
         "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq")
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "books", "cards", "beads")
BAKED = ("muffins", "rolls", "cookies", "buns", "bagels")
_Template = Callable[[random.Random], tuple[str, list[tuple[str, int]], int]]


def _step(a: int, op: str, b: int) -> tuple[str, int]:
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a} {op} {b} = <<{a}{op}{b}={value}>>{value}", value


def _gain(rng: random.Random):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    text, total = _step(a, "+", b)
    question = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
    return question, [(f"{name} has {text} {item}.", total)], total


def _change(rng: random.Random):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    price, count = rng.randint(1, 9), rng.randint(2, 9)
    bill = next(b for b in (10, 20, 50, 100) if b > price * count)
    cost_text, cost = _step(price, "*", count)
    change_text, change = _step(bill, "-", cost)
    question = (f"A shop sells {item} for ${price} each. {name} buys {count} {item} and pays with a ${bill} bill. "
                f"How many dollars of change does {name} get?")
    return question, [(f"The {item} cost {cost_text} dollars.", cost), (f"The change is {change_text} dollars.",
                                                                           change)], change


def _rows_of_chairs(rng: random.Random):
    rows, per_row = rng.randint(2, 12), rng.randint(2, 12)
    broken = rng.randint(1, rows * per_row - 1)
    total_text, total = _step(rows, "*", per_row)
    left_text, left = _step(total, "-", broken)
    question = (f"A hall has {rows} rows of chairs with {per_row} chairs in each row. {broken} of the chairs are "
                "broken. How many chairs can be used?")
    return question, [(f"There are {total_text} chairs.", total), (f"{left_text} chairs can be used.", left)], left


def _wages(rng: random.Random):
    name = rng.choice(NAMES)
    wage, hours, weeks = rng.randint(5, 20), rng.randint(2, 10), rng.randint(2, 4)
    week_text, week = _step(wage, "*", hours)
    total_text, total = _step(week, "*", weeks)
    question = (f"{name} earns ${wage} an hour and works {hours} hours a week. How many dollars does {name} earn in "
                f"{weeks} weeks?")
    return question, [(f"In a week {name} earns {week_text} dollars.", week),
                      (f"In {weeks} weeks {name} earns {total_text} dollars.", total)], total


def _boxes(rng: random.Random):
    item = rng.choice(BAKED)
    per_box, boxes, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 30)
    baked = per_box * boxes
    total_text, total = _step(baked, "+", extra)
    box_text, filled = _step(total - total % per_box, "/", per_box)
    question = (f"A baker packs {item} into boxes of {per_box}. The baker made {baked} {item} in the morning and "
                f"{extra} more in the afternoon. How many boxes can the baker fill completely?")
    steps = [(f"The baker made {total_text} {item}.", total)]
    if total % per_box:
        steps.append((f"Only {total - total % per_box} of them fill whole boxes.", total - total % per_box))
    steps.append((f"That fills {box_text} boxes.", filled))
    return question, steps, filled


def _reading(rng: random.Random):
    name = rng.choice(NAMES)
    pages, days, last = rng.randint(5, 30), rng.randint(2, 7), rng.randint(1, 30)
    daily_text, daily = _step(pages, "*", days)
    total_text, total = _step(daily, "+", last)
    question = (f"{name} reads {pages} pages a day for {days} days and then {last} pages on the last day. How many "
                f"pages does {name} read in all?")
    return question, [(f"In {days} days {name} reads {daily_text} pages.", daily),
                      (f"In all {name} reads {total_text} pages.", total)], total


def _shared(rng: random.Random):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends = rng.randint(2, 6)
    each = rng.randint(2, 12)
    start = friends * each + rng.randint(1, 15)
    given_text, given = _step(friends, "*", each)
    left_text, left = _step(start, "-", given)
    question = (f"{name} had {start} {item} and gave {each} to each of {friends} friends. How many {item} "
                f"does {name} have left?")
    return question, [(f"{name} gave away {given_text} {item}.", given),
                      (f"{name} has {left_text} {item} left.", left)], left


TEMPLATES: tuple[_Template, ...] = (_gain, _change, _rows_of_chairs, _wages, _boxes, _reading, _shared)


def make_word_problem(rng: random.Random) -> dict:
    question, steps, answer = rng.choice(TEMPLATES)(rng)
    solution = "\n".join(text for text, _ in steps) + f"\n#### {answer}"
    first = steps[0][0]
    return {
        "question": question,
        "answer": str(answer),
        "solution": solution,
        "ground_truth": solution,
        "difficulty": len(steps),
        "teaching": f"start with: {first}" if len(steps) > 1 else "add the two amounts",
        "diagnosis": "multi-step" if len(steps) > 1 else "one step",
    }


def generate_word_problems(num: int, seed: int = 0) -> list[dict]:
    """`num` problems with distinct questions, deterministic in `seed` (the first k do not depend on `num`)."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    rng = random.Random(seed)
    seen: set[str] = set()
    problems = []
    while len(problems) < num:
        problem = make_word_problem(rng)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    return problems


def to_rl_rows(problems: list[dict]) -> list[dict]:
    """Task rows: question and the GSM8K-style ground truth (`… #### N`)."""
    return [{"question": p["question"], "ground_truth": p["ground_truth"]} for p in problems]
