"""Where rows come from: a hub dataset, a local file or folder, read through `datasets`, with one-line errors.

`datasets` reports a broken JSONL line as a long traceback without the line number, so local JSONL is checked here first.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import datasets

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DataFiles = str | list[str] | dict[str, str | list[str]] | None


class DataError(ValueError):
    """A user mistake in the data or its configuration; the message is one line that names the problem."""


def _json_type(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def json_lines(path: str | Path, error: type[Exception] = DataError) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; `error` names the file and line of one that is not JSON."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path} line {number}: not valid JSON ({e.msg})") from None


def check_jsonl(path: str | Path) -> int:
    """Raise DataError naming the file and line of the first line that is not a JSON object, or whose field has another
    JSON type than in earlier lines (`datasets` fails on both with a traceback). Blank lines are fine. Returns the
    number of rows."""
    first_type: dict[str, tuple[str, int]] = {}
    rows = 0
    for number, value in json_lines(path):
        if not isinstance(value, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {_json_type(value)}")
        rows += 1
        for key, item in value.items():
            kind = _json_type(item)
            if kind is None:
                continue
            expected, seen_at = first_type.setdefault(key, (kind, number))
            if kind != expected:
                raise DataError(
                    f"{path} line {number}: column {key!r} expected {expected} (as on line {seen_at}), got {kind}"
                )
    return rows


def check_json_file(path: str | Path) -> None:
    """A .json file may hold one JSON document or JSON lines; reject anything else with its line number."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        check_jsonl(path)


def _local_data_files(root: Path, data_files: DataFiles) -> list[Path]:
    if data_files is None:  # the files a folder load reads: data files, not hidden ones such as .gitkeep
        if not root.is_dir():
            return [root]
        return [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FILE_BUILDERS
                and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if isinstance(data_files, str):
        names = [data_files]
    elif isinstance(data_files, dict):
        names = [n for v in data_files.values() for n in ([v] if isinstance(v, str) else v)]
    else:
        names = list(data_files)
    return [root / n for n in names if (root / n).is_file()]


def _check_local(paths: list[Path]) -> None:
    for path in paths:
        suffix = path.suffix.lower()
        if path.stat().st_size == 0 or (suffix == ".jsonl" and check_jsonl(path) == 0):
            raise DataError(f"dataset {str(path)!r} is empty")
        if suffix == ".json":
            check_json_file(path)


def is_local(dataset: str) -> bool:
    """A path that exists, or a name that can only be meant as a file (a data-file extension or a path prefix)."""
    path = Path(dataset).expanduser()
    return path.exists() or path.suffix.lower() in FILE_BUILDERS or dataset.startswith(("./", "../", "/", "~"))


def load_rows(
    dataset: str, config: str | None = None, split: str = "train", data_files: DataFiles = None
) -> datasets.Dataset:
    """Load one split of `dataset`: a local .jsonl/.json/.parquet/.csv file, a local folder, or a hub dataset id."""
    try:
        if is_local(dataset):
            table = _load_local(Path(dataset).expanduser(), config, split, data_files)
        else:
            table = datasets.load_dataset(dataset, config, split=split, data_files=data_files)
    except DataError:
        raise
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"cannot load dataset {dataset!r}: {str(e).splitlines()[0]}") from None
    if len(table) == 0:
        raise DataError(f"dataset {dataset!r} (split {split!r}) is empty")
    return table


def _load_local(path: Path, config: str | None, split: str, data_files: DataFiles) -> datasets.Dataset:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        _check_local(_local_data_files(path, data_files))
        return datasets.load_dataset(str(path), config, split=split, data_files=data_files)
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"unsupported data file extension {path.suffix!r} ({path}); use one of {sorted(FILE_BUILDERS)}")
    _check_local([path])
    kwargs = {"features": _csv_text_features(path)} if builder == "csv" else {}
    # A single file is one split whatever `split` says: `datasets` names it "train".
    return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)


def _csv_text_features(path: Path) -> datasets.Features:
    """CSV has no types: read every column as text, so an answer column of digits stays a string."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return datasets.Features({name: datasets.Value("string") for name in header})
