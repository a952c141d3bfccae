"""Dataset schemas: the canonical fields each one needs, the user's column mapping, and type checks.

`canonicalize` renames the mapped columns to the canonical names, drops the rest and checks every value's type, so the
formatting code downstream only ever sees canonical, well-typed rows.
"""

from __future__ import annotations

from typing import Literal

import datasets

from data_modules.sources import DataError

Schema = Literal["atlas_sft", "atlas_rl", "generic", "messages", "messages_rl", "task"]

REQUIRED: dict[str, tuple[str, ...]] = {
    "atlas_sft": ("problem_text", "student_approach", "teacher_diagnosis", "teacher_teaching"),
    "atlas_rl": ("prompt", "ground_truth"),
    "generic": ("question", "solution"),
    "messages": ("messages",),
    "messages_rl": ("messages", "ground_truth"),
    "task": ("question",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "atlas_sft": (),
    "atlas_rl": (),
    "generic": ("answer", "reasoning_trace", "teaching", "approach"),
    "messages": (),
    "messages_rl": (),
    "task": ("ground_truth",),
}


def _column_for(field: str, columns: dict[str, str]) -> str:
    return columns.get(field, field)


def canonicalize(
    table: datasets.Dataset, schema: Schema, columns: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> datasets.Dataset:
    """Keep and rename the columns `schema` uses (required ones must exist; optional ones are kept when present),
    plus the `extra` fields a task reads and any other field `columns` maps (required, kept with their own types,
    e.g. a list of tests)."""
    columns = dict(columns or {})
    own = (*REQUIRED[schema], *OPTIONAL[schema])
    extra = tuple(dict.fromkeys(f for f in (*extra, *columns) if f not in own))
    claimed: dict[str, str] = {}
    for field, column in columns.items():
        if column in claimed:
            raise DataError(f"column {column!r} is mapped to both {claimed[column]!r} and {field!r}; map each field to "
                            "its own column")
        claimed[column] = field
    present = table.column_names
    rename: dict[str, str] = {}
    for field in (*REQUIRED[schema], *extra):
        column = _column_for(field, columns)
        if column not in present:
            owner = f"of schema {schema}" if field in REQUIRED[schema] else "that the task reads"
            raise DataError(
                f"missing column {column!r} (field {field!r} {owner}); columns present: {', '.join(present)}"
            )
        if column in rename:
            raise DataError(f"column {column!r} is mapped to {rename[column]!r}, so field {field!r} needs a column of "
                            f"its own: add it to the columns mapping")
        rename[column] = field
    for field in OPTIONAL[schema]:
        column = _column_for(field, columns)
        if column in rename:  # the user mapped this column to another field, e.g. {"solution": "answer"}
            continue
        if column in present:
            rename[column] = field
        elif field in columns:
            raise DataError(f"missing column {column!r} (mapped to {field!r}); columns present: {', '.join(present)}")
    table = table.select_columns(list(rename)).rename_columns({c: f for c, f in rename.items() if c != f})
    for field in table.column_names:
        if field not in extra:
            check_column_type(table, field, required=field in REQUIRED[schema], original=_column_for(field, columns))
    return table


def _is_message_list(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def check_column_type(table: datasets.Dataset, field: str, required: bool, original: str) -> None:
    """Raise DataError for the first row whose value has the wrong type (None is allowed only in optional fields)."""
    feature = table.features[field]
    if field != "messages" and isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        if not required:
            return
        bad = [i for i, v in enumerate(table[field]) if v is None]
        if bad:
            raise DataError(f"column {original!r} row {bad[0]}: expected a string, got None")
        return
    for i, value in enumerate(table[field]):
        if value is None and not required:
            continue
        if field == "messages":
            if not _is_message_list(value):
                raise DataError(
                    f"column {original!r} row {i}: expected a list of {{role, content}} strings, got {_describe(value)}"
                )
        elif not isinstance(value, str):
            raise DataError(f"column {original!r} row {i}: expected a string, got {_describe(value)}")


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
