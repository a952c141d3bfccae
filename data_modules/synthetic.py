"""Deterministic synthetic arithmetic problems in both Arc-ATLAS-Teach schemas.

The embedded pipeline (tiny tokenizer, tiny models, quickstarts, tests) runs on these rows, so nothing is downloaded.
Difficulty is the operand width: level 1 is one-digit addition, level 2 two-digit, level 3 three-digit. A tiny student
learns level 1 at once and level 2-3 only partially, which gives strong and weak students. The teaching names the ones
column and its carry: easy to produce (a one-digit sum) and useful to a student who struggles with the carry.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Sequence

APPROACH_GOOD = "add the ones, then the tens"
APPROACH_UNSURE = "not sure"
_APPROACHES = (APPROACH_GOOD, APPROACH_UNSURE)


def make_problem(a: int, b: int) -> dict:
    """One addition problem with its answer, difficulty and the teaching a good teacher gives."""
    ones = a % 10 + b % 10
    carry = ones // 10
    difficulty = max(len(str(a)), len(str(b)))
    teaching = f"ones {a % 10}+{b % 10}={ones}, carry {carry}"
    diagnosis = "carry" if carry else "no carry"
    return {
        "question": f"What is {a}+{b}?",
        "answer": str(a + b),
        "difficulty": difficulty,
        "teaching": teaching,
        "diagnosis": diagnosis,
    }


def generate_problems(num: int, seed: int = 0, levels: Sequence[int] = (1, 2, 3)) -> list[dict]:
    """`num` distinct problems, levels drawn uniformly, deterministic in `seed`."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if not levels or any(level not in (1, 2, 3) for level in levels):
        raise ValueError(f"levels must be a non-empty subset of (1, 2, 3), got {tuple(levels)}")
    capacity = sum(pair_count(level) for level in set(levels))
    if num > capacity:
        raise ValueError(f"only {capacity} distinct problems exist at levels {tuple(levels)}, asked for {num}")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    problems = []
    while len(problems) < num:
        level = rng.choice(list(levels))
        low, high = (0, 9) if level == 1 else (10 ** (level - 1), 10**level - 1)
        pair = (rng.randint(low, high), rng.randint(low, high))
        if pair in seen:
            continue
        seen.add(pair)
        problems.append(make_problem(*pair))
    return problems


def pair_count(level: int) -> int:
    width = 10 if level == 1 else 9 * 10 ** (level - 1)
    return width * width


def to_sft_rows(problems: Iterable[dict], seed: int = 0) -> list[dict]:
    """Arc-ATLAS-Teach SFT schema: problem_text, student_approach, teacher_diagnosis, teacher_teaching."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        approach = rng.choice(_APPROACHES)
        rows.append(
            {
                "problem_text": p["question"],
                "student_approach": approach,
                "teacher_diagnosis": p["diagnosis"],
                "teacher_teaching": p["teaching"],
            }
        )
    return rows


def to_rl_rows(problems: Iterable[dict]) -> list[dict]:
    """Arc-ATLAS-Teach RL schema: prompt, ground_truth (a problem's own `ground_truth` when it has one, as the word
    problems' `… #### N` solutions)."""
    return [{"prompt": p["question"], "ground_truth": p.get("ground_truth", p["answer"])} for p in problems]


def to_task_rows(problems: Iterable[dict]) -> list[dict]:
    """Task schema: question, ground_truth."""
    return [{"question": p["question"], "ground_truth": p.get("ground_truth", p["answer"])} for p in problems]


def tagged_solution(problem: dict) -> str:
    """The target a student is trained to write: the problem's worked `solution` when it has one, else the answer in
    the `<solution>` tags students are asked for."""
    return problem.get("solution", f"<solution>{problem['answer']}</solution>")


def student_approach(problem: dict) -> str:
    """The student's probe answer: unsure exactly when the ones column carries, the step a weak student gets wrong."""
    return APPROACH_UNSURE if problem["diagnosis"] == "carry" else APPROACH_GOOD


def to_generic_rows(problems: Iterable[dict]) -> list[dict]:
    """Generic schema: question, solution (in the `<solution>` form students are asked for), answer, plus the teaching
    a good teacher gives and the student's approach, so student SFT can build with-teaching and probe examples."""
    return [
        {
            "question": p["question"],
            "solution": tagged_solution(p),
            "answer": p["answer"],
            "teaching": p["teaching"],
            "approach": student_approach(p),
        }
        for p in problems
    ]


def to_messages_rows(problems: Iterable[dict]) -> list[dict]:
    """Chat schema: a user question and the assistant's tagged answer."""
    return [
        {
            "messages": [
                {"role": "user", "content": p["question"]},
                {"role": "assistant", "content": tagged_solution(p)},
            ]
        }
        for p in problems
    ]


def to_messages_rl_rows(problems: Iterable[dict]) -> list[dict]:
    """Chat RL schema: the user turn as `messages`, and `ground_truth`."""
    return [{"messages": [{"role": "user", "content": row["question"]}], "ground_truth": row["ground_truth"]}
            for row in to_task_rows(problems)]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_synthetic_dataset(out_dir: str | Path, num: int = 2000, seed: int = 0) -> dict[str, Path]:
    """Write sft.jsonl, rl.jsonl and generic.jsonl for the same problems into `out_dir`."""
    problems = generate_problems(num, seed)
    out = Path(out_dir)
    return {
        "sft": write_jsonl(to_sft_rows(problems, seed), out / "sft.jsonl"),
        "rl": write_jsonl(to_rl_rows(problems), out / "rl.jsonl"),
        "generic": write_jsonl(to_generic_rows(problems), out / "generic.jsonl"),
    }
