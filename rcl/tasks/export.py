"""Write a task's own rows (or verified SFT examples) to a JSONL file that the data modules read.

    python -m rcl.tasks.export deduction data/code/sft.jsonl --split train --num 2000 --sft true
    python -m rcl.tasks.export sat data/sat/test.jsonl --split test --num 200

With `--sft true` each line is a generic-schema SFT row, {"question", "solution"}, whose solution is the task's gold
completion after the task's own verifier accepted it (rcl.tasks.labels): one wrong label stops the export.
Otherwise each line is a full task row (question plus the fields the task scores with), for RL or `rcl score`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rcl.tasks import get_task
from rcl.tasks.labels import verified_sft_rows


def export(
    task: str,
    out: str,
    split: str = "train",
    num: int | None = None,
    seed: int = 0,
    kwargs: dict[str, Any] | None = None,
    sft: bool = False,
) -> int:
    """Write `num` rows of `task` for `split` to `out` (JSONL); returns the number written.

    Args:
        task: A registered task with built-in rows: code, deduction, abduction, sat.
        out: The JSONL file to write (its folder is created).
        split: Which split's rows (train, val, test; HumanEval has only test).
        num: How many rows (the task's default when unset).
        seed: The generators' seed.
        kwargs: Keyword arguments of the task, e.g. {"dataset": "programs"} for code.
        sft: Write verified {question, solution} SFT rows instead of task rows.
    """
    built = get_task(task, **(kwargs or {}))
    rows = built.rows(split, num, seed)
    if sft:
        rows = [{"question": row["question"], "solution": row["label"]} for row in verified_sft_rows(built, rows)]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    count = CLI(export, args=argv)
    print(f"wrote {count} rows")


if __name__ == "__main__":
    main()
