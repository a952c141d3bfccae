"""The generate phase: every completion of every (model, task, protocol) to a JSONL file, resumably.

Rows are cut into chunks of `rows_per_chunk`; one chunk is one rollout (rcl.rl.rollout.RolloutRunner, the RL loop's
own protocol code) seeded by `request_seed(seed, task, chunk)`, and its lines are appended in one write. A restarted
run keeps every whole chunk already written (a line cut by the kill, and a chunk cut short, are dropped and
regenerated), so no finished sample is generated twice, and a regenerated chunk is the same request with the same
seed. The seed does not depend on the model: with one student, every teacher's student-alone samples are identical.

Each file has a `.meta.json` beside it with what its samples depend on (models and their weight files' sizes and
times, sampling, templates, rows); a run whose settings differ is refused instead of mixing samples of two settings,
or of a model and its retrained successor, in one file.

One line per (row, sample): `model`, `task`, `protocol`, `row_id`, `sample_index`, `chunk`, `seed`, `tokens` (what
the evaluated model generated: the answer, or the teacher's whole completion), `row` (the task's row), `completion`
(the scored answer), `completion_tokens` and `finish_reason`; adaptive teaching adds the student's answer alone
(`baseline_*`), the `approach` (probe), the `teacher_completion`, the `teaching` shown and its `teaching_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rcl.engines import Completion, SamplingParams
from rcl.eval.args import EvalModel, EvalRun, EvalTask, EvalTeaching, Protocol
from rcl.prompts import PromptTemplates
from rcl.rl.args import GenerationArgs, GRPOArgs
from rcl.rl.rollout import RolloutRunner, RolloutSettings
from rcl.tasks.base import Score


class EvalError(ValueError):
    """An evaluation that cannot run as configured; the message says what to change."""


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_seed(seed: int, task: str, chunk: int) -> int:
    digest = hashlib.sha256(f"{seed}/{task}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def load_rows(spec: EvalTask) -> list[tuple[str, dict]]:
    """(row id, row) of the task's evaluated problems: from the data module when one is given (with the fields the
    task reads), else the task's own rows. A row's id is its `id` field when it has one, else its position."""
    task = spec.build()
    if spec.data is not None:
        table = spec.data.rl_dataset(spec.data_split, task.fields)
        count = len(table) if spec.num_rows is None else min(spec.num_rows, len(table))
        rows = table.select(range(count)).to_list()
    else:
        rows = task.rows(spec.split, spec.num_rows, spec.seed)
    if not rows:
        raise EvalError(f"task {spec.key!r} has no rows to evaluate")
    ids = [str(row.get("id", i)) for i, row in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise EvalError(f"task {spec.key!r} has repeated row ids")
    return list(zip(ids, rows))


def chunks(rows: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def generation_path(out_dir: Path, model: str, task: str, protocol: str) -> Path:
    return out_dir / "generations" / f"{safe_name(model)}__{safe_name(task)}__{protocol}.jsonl"


def resolve_model_path(path: str) -> str:
    """A run folder (one with an `hf_model/` export and no model of its own) stands for its export."""
    folder = Path(path).expanduser()
    if (folder / "hf_model").is_dir() and not (folder / "config.json").exists():
        return str(folder / "hf_model")
    return path


def weights_signature(path: str) -> list:
    """(name, bytes, mtime) of a local model folder's config and weight files: a retrained model in the same folder
    changes it, without reading gigabytes of weights. Empty for hub ids and tiny presets."""
    folder = Path(resolve_model_path(path)).expanduser()
    if not folder.is_dir():
        return []
    files = sorted(f for f in folder.iterdir() if f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _engine_identity(model: EvalModel) -> dict:
    """What a model's samples depend on: not its URLs, timeout or key (the same model behind other servers)."""
    engine = {k: v for k, v in asdict(model.engine).items() if k not in ("urls", "api_key", "timeout_s")}
    return {"model": asdict(model.model), "engine": engine,
            "weights": weights_signature(model.model.model_name_or_path)}


def fingerprint(model: EvalModel, student: EvalModel | None, spec: EvalTask, protocol: Protocol,
                generation: GenerationArgs, teaching: EvalTeaching, templates: PromptTemplates, run: EvalRun,
                rows_sha256: str) -> dict:
    return json.loads(json.dumps({  # as it reads back from .meta.json (tuples as lists)
        "model": _engine_identity(model),
        "student": _engine_identity(student) if protocol == "adaptive_teaching" and student else None,
        "task": {"name": spec.name, "kwargs": spec.kwargs, "module": spec.module, "samples": spec.samples},
        "protocol": protocol,
        "generation": asdict(generation),
        "teaching": asdict(teaching),
        "templates": asdict(templates),
        "seed": run.seed,
        "rows_per_chunk": run.rows_per_chunk,
        "rows_sha256": rows_sha256,
    }))


def read_jsonl(path: Path, tolerate_cut_end: bool = False) -> list[dict]:
    """Lines of a JSONL file. With `tolerate_cut_end`, an unparseable *last* line (a write cut by a kill) is left
    out; any other bad line raises with its file and line number."""
    lines = path.read_text().splitlines() if path.exists() else []
    out = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as err:
            if tolerate_cut_end and number == len(lines):
                break
            raise EvalError(f"{path}:{number}: not a JSON line ({err.msg})") from None
    return out


def kept_chunks(path: Path, expected: dict[int, int]) -> dict[int, list[dict]]:
    """The whole chunks already in `path` (chunk -> its lines, `expected` giving each chunk's line count). Lines of
    cut chunks are removed from the file, so what follows is appended to whole chunks only."""
    if not path.exists():
        return {}
    lines = read_jsonl(path, tolerate_cut_end=True)
    by_chunk: dict[int, list[dict]] = {}
    for line in lines:
        by_chunk.setdefault(line["chunk"], []).append(line)
    whole = {c: ls for c, ls in by_chunk.items() if len(ls) == expected.get(c)}
    if sum(len(ls) for ls in whole.values()) != len(lines) or len(path.read_bytes().splitlines()) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for c in sorted(whole) for line in whole[c]))
        os.replace(tmp, path)
    return whole


def append_lines(path: Path, lines: list[dict]) -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


class RecordingEngine:
    """Passes `generate` through and keeps each call's completions: the rollout keeps the student's texts but not
    their token counts and finish reasons, which evaluation reports."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.calls: list[list[list[Completion]]] = []

    def generate(self, prompts, params: SamplingParams) -> list[list[Completion]]:
        out = self.engine.generate(prompts, params)
        self.calls.append(out)
        return out


class Unscored:
    """The task as the generate phase needs it: its prompts and fields, not its verifier. The rollout would score
    every answer (for code tasks, run its tests in the sandbox) only for the score phase to score it again from the
    stored text; the score phase's verdict is the one reported, so the generate phase skips its own."""

    def __init__(self, task: Any):
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def score(self, completion: str, row: dict) -> Score:
        return Score(0.0, False, {"outcome": "unscored"})

    def score_batch(self, completions: Sequence[str], rows: Sequence[dict]) -> list[Score]:
        return [self.score(c, r) for c, r in zip(completions, rows)]


def rollout_settings(protocol: Protocol, samples: int, generation: GenerationArgs, teaching: EvalTeaching
                     ) -> RolloutSettings:
    """Evaluation as a rollout (built by the RL loop's own `rollout_settings`): `samples` answers per problem
    (direct), or `samples` student-alone solutions and `samples` teachings with one student solution each (adaptive
    teaching)."""
    from rcl.rl.loop import rollout_settings as loop_settings

    grpo = GRPOArgs(protocol=protocol, num_generations=samples, baseline_samples=samples, student_samples=1,
                    max_probe_tokens=teaching.max_probe_tokens, missing_teaching=teaching.missing_teaching)
    return loop_settings(grpo, generation)


def generate_chunk(policy: Any, student: Any | None, templates: PromptTemplates, task: Any,
                   rows: list[tuple[str, dict]], seed: int, settings: RolloutSettings) -> list[dict]:
    """One rollout over `rows`; one line per (row, sample), without the model/task/chunk labels."""
    student_rec = RecordingEngine(student) if student is not None else None
    runner = RolloutRunner(policy, student_rec, templates, {}, {}, task)
    rollout = runner.run([row for _, row in rows], seed, settings)
    n = settings.num_generations
    out = []
    for j, (interaction, completion) in enumerate(zip(rollout.interactions, rollout.completions)):
        row_id, row = rows[j // n]
        line = {"row_id": row_id, "sample_index": j % n, "seed": seed, "row": row,
                "tokens": len(completion.token_ids)}
        if settings.protocol == "direct":
            line.update(completion=completion.text, completion_tokens=len(completion.token_ids),
                        finish_reason=completion.finish_reason)
        out.append(line)
    if settings.protocol == "adaptive_teaching":
        _add_student_answers(out, rollout, student_rec, n)
    return out


def _add_student_answers(lines: list[dict], rollout, recorder: RecordingEngine, n: int) -> None:
    # The rollout's student calls are, in order: baseline (n per problem), probe (1), with teaching (1 per teaching).
    if len(recorder.calls) != 3:
        raise RuntimeError(f"expected 3 student calls in an adaptive rollout, saw {len(recorder.calls)}")
    baseline, _, with_teaching = recorder.calls
    for j, (line, interaction) in enumerate(zip(lines, rollout.interactions)):
        alone, answer = baseline[j // n][j % n], with_teaching[j][0]
        if alone.text != interaction.baseline_responses[j % n] or answer.text != interaction.with_teaching_responses[0]:
            raise RuntimeError("the rollout's student calls are not in the order evaluation reads them in")
        line.update(
            completion=answer.text, completion_tokens=len(answer.token_ids), finish_reason=answer.finish_reason,
            baseline_completion=alone.text, baseline_tokens=len(alone.token_ids),
            baseline_finish_reason=alone.finish_reason, approach=interaction.approach,
            probe_tokens=interaction.probe_tokens, teacher_completion=interaction.policy_completion,
            teaching=interaction.teaching, teaching_tokens=interaction.teaching_tokens,
            has_teaching_tags=interaction.has_teaching_tags,
        )


@dataclass
class Job:
    """One generations file: a (model, task, protocol), its rows, and the chunks it still lacks."""

    model: EvalModel
    spec: EvalTask
    protocol: Protocol
    rows: list[tuple[str, dict]]
    path: Path
    meta: dict
    chunk_sizes: dict[int, int]
    """chunk -> its lines (rows x samples)."""
    missing: list[int]

    @property
    def missing_samples(self) -> int:
        return sum(self.chunk_sizes[c] for c in self.missing)


def plan(models: list[EvalModel], student: EvalModel | None, tasks: list[EvalTask], generation: GenerationArgs,
         teaching: EvalTeaching, templates: PromptTemplates, run: EvalRun) -> list[Job]:
    """Every (model, task, protocol) with the chunks its file still lacks; refuses files written with other
    settings."""
    out_dir = Path(run.out_dir)
    rows_of = {spec.key: load_rows(spec) for spec in tasks}
    jobs = []
    for model in models:
        for protocol in model.protocols:
            if protocol == "adaptive_teaching" and student is None:
                raise EvalError(f"model {model.name!r} is evaluated with adaptive_teaching, which needs `student:`")
            for spec in tasks:
                rows = rows_of[spec.key]
                path = generation_path(out_dir, model.name, spec.key, protocol)
                meta = fingerprint(model, student, spec, protocol, generation, teaching, templates, run,
                                   rows_sha256(rows))
                meta_path = path.with_suffix(".meta.json")
                if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
                    raise EvalError(f"{path} was generated with other settings (see {meta_path}); delete it, or "
                                    "choose another out_dir")
                if path.exists() and not meta_path.exists():
                    raise EvalError(f"{path} has no {meta_path.name} beside it, so what made it is unknown; delete it")
                sizes = {c: len(part) * spec.samples for c, part in enumerate(chunks(rows, run.rows_per_chunk))}
                done = kept_chunks(path, sizes)
                jobs.append(Job(model, spec, protocol, rows, path, meta, sizes, [c for c in sizes if c not in done]))
    return jobs


def rows_sha256(rows: list[tuple[str, dict]]) -> str:
    return sha256_json([[row_id, row] for row_id, row in rows])


def run_jobs(jobs: list[Job], student: EvalModel | None, templates: PromptTemplates, generation: GenerationArgs,
             teaching: EvalTeaching, run: EvalRun, load_engine: Callable[[EvalModel], Any],
             on_samples: Callable[[int], None] = lambda n: None) -> int:
    """Generate every missing chunk, one model loaded at a time (the student once). Returns the samples generated."""
    generated = 0
    student_engine = None
    for model_name in dict.fromkeys(job.model.name for job in jobs if job.missing):
        todo = [job for job in jobs if job.model.name == model_name and job.missing]
        engine = load_engine(todo[0].model)
        try:
            for job in todo:
                if job.protocol == "adaptive_teaching" and student_engine is None:
                    student_engine = load_engine(student)
                task = Unscored(job.spec.build())
                settings = rollout_settings(job.protocol, job.spec.samples, generation, teaching)
                job.path.parent.mkdir(parents=True, exist_ok=True)
                job.path.with_suffix(".meta.json").write_text(json.dumps(job.meta, indent=1, sort_keys=True))
                parts = chunks(job.rows, run.rows_per_chunk)
                for c in list(job.missing):
                    seed = request_seed(run.seed, job.spec.key, c)
                    lines = generate_chunk(engine, student_engine if job.protocol == "adaptive_teaching" else None,
                                           templates, task, parts[c], seed, settings)
                    labels = {"model": job.model.name, "task": job.spec.key, "protocol": job.protocol, "chunk": c}
                    if job.protocol == "adaptive_teaching":
                        labels["student"] = student.name
                    append_lines(job.path, [{**labels, **line} for line in lines])
                    job.missing.remove(c)
                    generated += len(lines)
                    on_samples(len(lines))
        finally:
            _close(engine)
    _close(student_engine)
    return generated


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if callable(close):
        close()


def iter_generations(jobs: list[Job]) -> Iterator[tuple[Job, list[dict]]]:
    """Each job's lines in row order; refuses files that still lack chunks."""
    for job in jobs:
        if job.missing:
            raise EvalError(f"{job.path} lacks {job.missing_samples} samples: run the generate phase "
                            "(--run.phase generate or all) to finish it")
        lines = read_jsonl(job.path)
        order = {row_id: i for i, (row_id, _) in enumerate(job.rows)}
        yield job, sorted(lines, key=lambda line: (order[line["row_id"]], line["sample_index"]))
