"""Small generated stdin/stdout programs: the shared source of the deduction, abduction and tiny code tasks.

Each family draws its parameters from a seeded RNG and yields a `Program`: a description (what to write), a reference
Python program (what the sandbox runs), an input generator, and `solve`, the same computation done here in Python.
Expected outputs come from `solve`; the sandbox then checks labels by running the real program (see
rcl.tasks.labels), so a reference program and its `solve` that disagree are caught, not trained on.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    family: str
    description: str
    code: str
    make_input: Callable[[random.Random], str]
    solve: Callable[[str], str]


def _ints(rng: random.Random, low: int = -20, high: int = 50, count: tuple[int, int] = (3, 8)) -> str:
    return " ".join(str(rng.randint(low, high)) for _ in range(rng.randint(*count))) + "\n"


def _words(rng: random.Random, count: tuple[int, int] = (2, 6)) -> str:
    letters = string.ascii_lowercase
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(*count))]
    return " ".join(words) + "\n"


def sum_divisible(rng: random.Random) -> Program:
    k = rng.randint(2, 5)
    return Program(
        "sum_divisible",
        f"Read integers separated by spaces from one line. Print the sum of those that are divisible by {k}.",
        f"nums = list(map(int, input().split()))\nprint(sum(n for n in nums if n % {k} == 0))\n",
        lambda r: _ints(r),
        lambda text: str(sum(n for n in map(int, text.split()) if n % k == 0)),
    )


def count_letter(rng: random.Random) -> Program:
    letter = rng.choice("aeiou")
    return Program(
        "count_letter",
        f"Read one line of text. Print how many times the letter '{letter}' appears in it.",
        f"text = input()\nprint(text.count({letter!r}))\n",
        lambda r: _words(r),
        lambda text: str(text.rstrip("\n").count(letter)),
    )


def reverse_words(rng: random.Random) -> Program:
    sep = rng.choice([" ", ","])
    shown = "a comma" if sep == "," else "a single space"
    return Program(
        "reverse_words",
        f"Read one line of words separated by spaces. Print the words in reverse order, separated by {shown}.",
        f"words = input().split()\nprint({sep!r}.join(reversed(words)))\n",
        lambda r: _words(r),
        lambda text: sep.join(reversed(text.split())),
    )


def spread(rng: random.Random) -> Program:
    scale = rng.randint(1, 3)
    return Program(
        "spread",
        f"The first line holds a count N, the second line N integers. Print (largest - smallest) * {scale}.",
        f"n = int(input())\nnums = list(map(int, input().split()))[:n]\nprint((max(nums) - min(nums)) * {scale})\n",
        lambda r: (lambda nums: f"{len(nums.split())}\n{nums}")(_ints(r)),
        lambda text: (lambda nums: str((max(nums) - min(nums)) * scale))(
            list(map(int, text.split("\n")[1].split()))[: int(text.split("\n")[0])]
        ),
    )


def running_total(rng: random.Random) -> Program:
    start = rng.randint(0, 10)
    return Program(
        "running_total",
        f"Read integers separated by spaces from one line. Starting from {start}, add them one at a time and print "
        "each running total, separated by spaces.",
        f"total = {start}\nout = []\nfor n in map(int, input().split()):\n    total += n\n    out.append(str(total))\n"
        "print(' '.join(out))\n",
        lambda r: _ints(r, -9, 9),
        lambda text: " ".join(str(start + sum(map(int, text.split()[: i + 1]))) for i in range(len(text.split()))),
    )


def shift_letters(rng: random.Random) -> Program:
    k = rng.randint(1, 25)
    return Program(
        "shift_letters",
        f"Read one lowercase word. Shift every letter {k} places forward in the alphabet (z wraps to a) and print "
        "the result.",
        f"word = input().strip()\nprint(''.join(chr((ord(c) - 97 + {k}) % 26 + 97) for c in word))\n",
        lambda r: "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(3, 8))) + "\n",
        lambda text: "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in text.strip()),
    )


def quadratic(rng: random.Random) -> Program:
    a, b, c = rng.randint(1, 3), rng.randint(-5, 5), rng.randint(-9, 9)
    return Program(
        "quadratic",
        f"Read an integer x. Print {a}*x*x + ({b})*x + ({c}).",
        f"x = int(input())\nprint({a} * x * x + {b} * x + {c})\n",
        lambda r: f"{r.randint(-10, 10)}\n",
        lambda text: str(a * int(text) ** 2 + b * int(text) + c),
    )


def digit_sum(rng: random.Random) -> Program:
    k = rng.randint(1, 4)
    return Program(
        "digit_sum",
        f"Read a non-negative integer. Print the sum of its decimal digits, times {k}.",
        f"n = input().strip()\nprint(sum(int(d) for d in n) * {k})\n",
        lambda r: f"{r.randint(0, 10**6)}\n",
        lambda text: str(sum(int(d) for d in text.strip()) * k),
    )


def sort_numbers(rng: random.Random) -> Program:
    descending = rng.random() < 0.5
    order = "decreasing" if descending else "increasing"
    return Program(
        "sort_numbers",
        f"Read integers separated by spaces from one line. Print them in {order} order, separated by spaces.",
        f"nums = sorted(map(int, input().split()), reverse={descending})\nprint(' '.join(map(str, nums)))\n",
        lambda r: _ints(r),
        lambda text: " ".join(map(str, sorted(map(int, text.split()), reverse=descending))),
    )


def remove_letters(rng: random.Random) -> Program:
    letters = "".join(sorted(rng.sample("aeiou", 2)))
    return Program(
        "remove_letters",
        f"Read one line of text. Print it with every '{letters[0]}' and '{letters[1]}' removed.",
        f"text = input()\nprint(''.join(c for c in text if c not in {letters!r}))\n",
        lambda r: _words(r),
        lambda text: "".join(c for c in text.rstrip("\n") if c not in letters),
    )


FAMILIES: dict[str, Callable[[random.Random], Program]] = {
    family.__name__: family
    for family in (sum_divisible, count_letter, reverse_words, spread, running_total, shift_letters, quadratic,
                   digit_sum, sort_numbers, remove_letters)
}


def generate(split: str, num: int, seed: int, families: list[str] | None = None) -> list[tuple[Program, random.Random]]:
    """`num` programs for `split`, each with the RNG that drew it (for drawing its inputs). Deterministic in
    (split, seed); different splits draw from different streams."""
    names = families or sorted(FAMILIES)
    unknown = set(names) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown program families {sorted(unknown)}; available: {sorted(FAMILIES)}")
    out = []
    for index in range(num):
        rng = random.Random(f"{split}/{seed}/{index}")
        out.append((FAMILIES[rng.choice(names)](rng), rng))
    return out


STDIO_INSTRUCTIONS = (
    "Write a Python program that reads standard input and prints the answer to standard output. Reply with the "
    "program in a ```python code block."
)


def stdio_rows(
    split: str, num: int, seed: int, tests_per_problem: int = 5, families: list[str] | None = None
) -> list[dict]:
    """Write-the-program rows: question (description + instructions), tests ({"input", "output"} cases with distinct
    inputs), solution (the reference program) and family."""
    rows = []
    for program, rng in generate(split, num, seed, families):
        inputs: list[str] = []
        for _ in range(tests_per_problem * 10):
            candidate = program.make_input(rng)
            if candidate not in inputs:
                inputs.append(candidate)
            if len(inputs) == tests_per_problem:
                break
        rows.append({
            "question": f"{program.description}\n\n{STDIO_INSTRUCTIONS}",
            "tests": [{"input": text, "output": program.solve(text)} for text in inputs],
            "solution": program.code,
            "family": program.family,
        })
    return rows
