"""Train/val/test splits of a task's own generated rows, by a hash of the question.

A row's split depends on its question alone, so the splits never share a question, whatever `num` or generator size
is asked for, and a generator whose first n problems do not depend on how many it makes gives `rows(split, k)` as a
prefix of `rows(split, n)` for k < n.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

SPLIT_BUCKETS = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}
DEFAULT_POOL = 5000


def bucket(question: str) -> int:
    return int(hashlib.sha256(question.encode("utf-8")).hexdigest(), 16) % 100


def take_split(generate: Callable[[int], list[dict]], split: str, num: int | None) -> list[dict]:
    """`num` rows of `split` (all of a default pool of DEFAULT_POOL generated rows when None) from `generate(n)`,
    which makes n rows (or as many as exist)."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_BUCKETS)}, got {split!r}")
    if num is not None and num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    share = len(SPLIT_BUCKETS[split]) / 100
    pool = generate(DEFAULT_POOL if num is None else int(num / share * 1.2) + 100)
    rows = [row for row in pool if bucket(row["question"]) in SPLIT_BUCKETS[split]]
    if num is None:
        return rows
    if len(rows) < num:
        raise ValueError(f"only {len(rows)} distinct {split} rows exist, asked for {num}")
    return rows[:num]
