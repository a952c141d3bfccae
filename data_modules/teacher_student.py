"""TeacherStudentDataModule: one data module for the SFT phase (tokenized, completion-only batches) and the RL phase
(`rl_dataset`: question/ground_truth strings), over synthetic rows, hub datasets or local files."""

from __future__ import annotations

from functools import partial
from typing import Literal, Sequence

import datasets
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules import synthetic
from data_modules.schemas import Schema, canonicalize
from data_modules.sft_examples import (
    IGNORE_INDEX,
    StudentExample,
    atlas_sft_pair,
    collate_right_padded,
    fit_length,
    generic_pairs,
    in_share,
    messages_pair,
    tokenize_pair,
)
from data_modules.sources import DataError, DataFiles, load_rows
from rcl.prompts import PromptTemplates
from rcl.tasks.base import TaskArgs

SYNTHETIC = "synthetic"
ENVIRONMENT = "environment"
_SYNTHETIC_ROWS = {
    "atlas_sft": lambda problems, seed: synthetic.to_sft_rows(problems, seed),
    "atlas_rl": lambda problems, seed: synthetic.to_rl_rows(problems),
    "generic": lambda problems, seed: synthetic.to_generic_rows(problems),
    "messages": lambda problems, seed: synthetic.to_messages_rows(problems),
    "messages_rl": lambda problems, seed: synthetic.to_messages_rl_rows(problems),
    "task": lambda problems, seed: synthetic.to_task_rows(problems),
}
RL_SCHEMAS = ("atlas_rl", "generic", "messages_rl", "task")
SyntheticKind = Literal["arithmetic", "word_problems"]


class TeacherStudentDataModule(LightningDataModule):
    def __init__(
        self,
        dataset: str = SYNTHETIC,
        dataset_config: str | None = None,
        split: str = "train",
        data_files: DataFiles = None,
        schema: Schema = "atlas_sft",
        columns: dict[str, str] | None = None,
        synthetic_size: int = 2000,
        synthetic_seed: int = 0,
        synthetic_levels: Sequence[int] = (1, 2, 3),
        synthetic_kind: SyntheticKind = "arithmetic",
        tokenizer_name_or_path: str | None = None,
        templates: PromptTemplates = PromptTemplates(),
        max_length: int = 1024,
        overlong: Literal["truncate", "drop"] = "truncate",
        val_size: int | float = 0.1,
        seed: int = 42,
        batch_size: int = 16,
        num_workers: int = 0,
        student_examples: Sequence[StudentExample] = ("baseline",),
        baseline_share: float = 1.0,
        environment: TaskArgs | None = None,
        scripted_epsilon: float = 0.0,
    ):
        """
        Args:
            dataset: "synthetic" (generated arithmetic), "environment" (SFT episodes that the scripted policy of
                `environment` plays; `synthetic_size` episodes from `synthetic_seed`, the schema unused), a hub dataset id, a local .jsonl/.json/.parquet/.csv file,
                or a local folder.
            dataset_config: Hub dataset configuration name (ignored for local files).
            split: Split to load from a hub dataset or folder (a single local file is always one split).
            data_files: Files to read inside a hub dataset or folder, e.g. "training/sft.jsonl".
            schema: Row layout: atlas_sft (problem_text, student_approach, teacher_diagnosis, teacher_teaching),
                atlas_rl (prompt, ground_truth), generic (question, solution; optional answer, reasoning_trace,
                teaching, approach), messages (a list of {role, content} turns), messages_rl (messages holding the
                prompt, and ground_truth; RL only) or task (question, optional ground_truth; RL only). RL rows also
                carry the fields the recipe's task reads (e.g. tests), mapped through `columns` like the others.
            columns: Canonical field -> dataset column, for datasets whose columns have other names.
            synthetic_size: Number of synthetic problems.
            synthetic_seed: Seed of the synthetic generator.
            synthetic_levels: Synthetic difficulty levels to draw from (1: one-digit, 2: two-digit, 3: three-digit).
            synthetic_kind: Which synthetic problems: arithmetic (additions; the arithmetic task) or word_problems
                (GSM8K-style stories with `… #### N` solutions; the gsm8k task). Word problems ignore the levels.
            tokenizer_name_or_path: Tokenizer for SFT (hub id, folder or tiny preset); the SFT CLI links it to the
                model's path. Not needed by `rl_dataset`.
            templates: Chat prompts of every role (the same ones RL and evaluation use).
            max_length: Most tokens per SFT example (prompt + completion).
            overlong: What to do with longer examples: cut the completion's tail, or drop the example.
            val_size: Held-out share (0 < x < 1) or number of rows (>= 1); 0 for no validation set.
            seed: Seed of the train/validation split (shared by SFT and RL).
            batch_size: Examples per batch (per device).
            num_workers: DataLoader worker processes.
            student_examples: For generic rows, which student examples each row gives: baseline (question ->
                solution), with_teaching (question + teaching -> solution; needs `teaching`) and probe (question ->
                approach; needs `approach`).
            baseline_share: Share of training rows that give their baseline example (when `student_examples` has
                it), picked by a hash of the question, so the choice does not depend on row order. Fewer solved
                examples keep a small student from learning to solve alone what teaching should help it with.
                Validation rows always give every kind, so validation exact match still measures solving alone.
            environment: With dataset "environment": the multi-turn environment (name, kwargs, module, as the RL
                recipe's `task`), one with scripted policies (`optimal_action`, `random_action`: any
                `rcl.tasks.envs.base.ToyEnvironment`). Each episode becomes one example whose ids are the multi-turn
                rollout's for those actions and whose labels are the actions (environment text masked).
            scripted_epsilon: Share of turns on which the scripted expert takes a uniformly random action instead of
                the optimal one (the data then holds its mistakes too, leaving RL room to improve).
        """
        super().__init__()
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.split = split
        self.data_files = data_files
        self.schema = schema
        self.columns = columns
        self.synthetic_size = synthetic_size
        self.synthetic_seed = synthetic_seed
        self.synthetic_levels = tuple(synthetic_levels)
        self.synthetic_kind = synthetic_kind
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.templates = templates
        self.max_length = max_length
        self.overlong = overlong
        self.val_size = val_size
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.student_examples = tuple(student_examples)
        self.baseline_share = baseline_share
        self.environment = environment
        self.scripted_epsilon = scripted_epsilon
        self.tokenizer = None
        self.train_set: datasets.Dataset | None = None
        self.val_set: datasets.Dataset | None = None
        self._rows: dict[tuple[str, ...], datasets.Dataset] = {}

    # ----- rows shared by both phases -----

    def canonical_rows(self, extra: tuple[str, ...] = ()) -> datasets.Dataset:
        """All rows, with the schema's canonical column names and checked types, plus the `extra` fields."""
        if extra not in self._rows:
            self._check_settings()
            if self.dataset == ENVIRONMENT:
                self._rows[extra] = datasets.Dataset.from_list(self._episode_rows())
                return self._rows[extra]
            if self.dataset == SYNTHETIC:
                table = datasets.Dataset.from_list(_SYNTHETIC_ROWS[self.schema](self._problems(), self.synthetic_seed))
            else:
                table = load_rows(self.dataset, self.dataset_config, self.split, self.data_files)
            self._rows[extra] = canonicalize(table, self.schema, None if self.dataset == SYNTHETIC else self.columns,
                                             extra)
        return self._rows[extra]

    def _scripted_env(self):
        env = self.environment.build()
        if not all(callable(getattr(env, name, None)) for name in ("optimal_action", "random_action")):
            raise DataError(f"environment {self.environment.name!r} has no scripted policy (optimal_action and "
                            "random_action, as rcl.tasks.envs.base.ToyEnvironment has) to play SFT episodes")
        return env

    def _episode_rows(self) -> list[dict]:
        return self._scripted_env().rows("train", self.synthetic_size, self.synthetic_seed)

    def _problems(self) -> list[dict]:
        if self.synthetic_kind == "word_problems":
            from data_modules.word_problems import generate_word_problems

            return generate_word_problems(self.synthetic_size, self.synthetic_seed)
        return synthetic.generate_problems(self.synthetic_size, self.synthetic_seed, self.synthetic_levels)

    def _check_settings(self) -> None:
        # Checked here rather than in __init__: errors raised while the CLI instantiates classes come wrapped.
        if self.val_size < 0 or (isinstance(self.val_size, float) and self.val_size >= 1):
            raise DataError(f"val_size must be 0, a share in (0, 1) or a row count >= 1, got {self.val_size}")
        if self.dataset == ENVIRONMENT and self.environment is None:
            raise DataError("dataset environment needs data.init_args.environment (name, kwargs, module)")
        if not 0.0 <= self.baseline_share <= 1.0:
            raise DataError(f"baseline_share must be in [0, 1], got {self.baseline_share}")
        if not 0.0 <= self.scripted_epsilon <= 1.0:
            raise DataError(f"scripted_epsilon must be in [0, 1], got {self.scripted_epsilon}")
        if self.max_length < 1 or self.batch_size < 1:
            raise DataError(f"max_length and batch_size must be >= 1, got {self.max_length} and {self.batch_size}")

    def split_rows(self, extra: tuple[str, ...] = ()) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Seeded train/validation split of the rows (before any row is expanded into several examples); the split
        does not depend on `extra`."""
        rows = self.canonical_rows(extra)
        if self.val_size == 0:
            return rows, rows.select([])
        if isinstance(self.val_size, int) and self.val_size >= len(rows):
            raise DataError(f"val_size {self.val_size} leaves no training rows out of {len(rows)}")
        parts = rows.train_test_split(test_size=self.val_size, seed=self.seed, shuffle=True)
        return parts["train"], parts["test"]

    def rl_dataset(self, split: Literal["train", "val"], fields: Sequence[str] = ("ground_truth",)) -> datasets.Dataset:
        """The RL loop's rows (needs no tokenizer): `question`, `ground_truth` when the schema has one, and the other
        `fields` the task reads, passed through unchanged."""
        if self.schema not in RL_SCHEMAS:
            raise DataError(f"schema {self.schema} has no RL prompts; use one of {', '.join(RL_SCHEMAS)}")
        extra = tuple(f for f in fields if f not in ("question", "ground_truth"))
        rows = self.split_rows(extra)[0 if split == "train" else 1]
        if self.schema == "atlas_rl":
            rows = rows.rename_column("prompt", "question")
        elif self.schema == "messages_rl":
            rows = rows.map(lambda row: {"question": last_user_turn(row["messages"])})
        elif self.schema == "generic":
            has_answer = "answer" in rows.column_names
            rows = rows.map(lambda row: {"ground_truth": row["answer"] if has_answer and row["answer"] is not None
                                         else row["solution"]})
        if "ground_truth" in fields and "ground_truth" not in rows.column_names:
            raise DataError(f"the task reads ground_truth, which schema {self.schema}'s rows lack: add the column (and "
                            "map it in columns)")
        keep = ["question", *(["ground_truth"] if "ground_truth" in rows.column_names else []), *extra]
        return rows.select_columns(keep)

    # ----- SFT -----

    def _pairs(self, batch: dict[str, list], indices: list[int], baseline_share: float) -> list[tuple[str, str]]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        tok, templates = self.tokenizer, self.templates
        if self.schema == "atlas_sft":
            return [atlas_sft_pair(tok, templates, row) for row in rows]
        if self.schema == "generic":
            return [pair for row in rows
                    for pair in generic_pairs(tok, templates, row, self._kinds_of(row, baseline_share))]
        if self.schema == "messages":
            return [messages_pair(tok, row, i) for row, i in zip(rows, indices)]
        raise DataError(f"schema {self.schema} has no SFT target (its rows hold prompts only); use atlas_sft, generic or "
                        "messages for SFT")

    def _kinds_of(self, row: dict, baseline_share: float) -> tuple[StudentExample, ...]:
        if baseline_share >= 1.0 or in_share(row["question"], baseline_share):
            return self.student_examples
        return tuple(kind for kind in self.student_examples if kind != "baseline")

    def _scripted_examples(self, batch: dict[str, list]) -> list[tuple[list[int], list[int]]]:
        """One example per episode row: the scripted policy's episode, rendered as the multi-turn rollout renders it."""
        from rcl.rl.multiturn import ConversationIds, scripted_example
        from rcl.tasks.envs.base import scripted_policy

        env, render = self._scripted_env(), ConversationIds(self.tokenizer, self.templates)
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return [scripted_example(env, render, row, scripted_policy(self.scripted_epsilon, seed=int(row["seed"])))[:2]
                for row in rows]

    def _examples(
        self, batch: dict[str, list], indices: list[int], baseline_share: float
    ) -> list[tuple[list[int], list[int]]]:
        if self.dataset == ENVIRONMENT:
            return self._scripted_examples(batch)
        pairs = self._pairs(batch, indices, baseline_share)
        return [tokenize_pair(self.tokenizer, prompt, completion) for prompt, completion in pairs]

    def _tokenize_batch(self, batch: dict[str, list], indices: list[int], baseline_share: float) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "overlong": []}
        for input_ids, labels in self._examples(batch, indices, baseline_share):
            fitted = fit_length(input_ids, labels, self.max_length, self.overlong)
            out["overlong"].append(fitted is None or len(fitted[0]) < len(input_ids))
            input_ids, labels = fitted if fitted is not None else ([], [])
            out["input_ids"].append(input_ids)
            out["labels"].append(labels)
        return out

    def _check_student_columns(self, rows: datasets.Dataset) -> None:
        needs = {"with_teaching": "teaching", "probe": "approach"}
        for kind in self.student_examples:
            column = needs.get(kind)
            if column and column not in rows.column_names:
                raise DataError(
                    f"student_examples {kind!r} needs a {column!r} column; columns present: {', '.join(rows.column_names)}"
                )

    def tokenize(self, rows: datasets.Dataset, name: str) -> datasets.Dataset:
        """SFT examples of `rows` (input_ids, labels); overlong ones truncated or dropped, target-less ones removed."""
        if self.schema == "generic" and self.dataset != ENVIRONMENT:
            self._check_student_columns(rows)
        if len(rows) == 0:
            return datasets.Dataset.from_dict({"input_ids": [], "labels": []})
        share = self.baseline_share if name == "train" else 1.0
        examples = rows.map(self._tokenize_batch, batched=True, with_indices=True, fn_kwargs={"baseline_share": share},
                            remove_columns=rows.column_names, desc=f"tokenize {name}")
        overlong = sum(examples["overlong"])
        if overlong:
            action = "dropped" if self.overlong == "drop" else "truncated"
            rank_zero_info(f"rcl data: {overlong} of {len(examples)} {name} examples over {self.max_length} tokens {action}")
        before = len(examples)
        examples = examples.filter(lambda e: any(t != IGNORE_INDEX for t in e["labels"]), desc=f"filter {name}")
        if len(examples) < before:
            rank_zero_info(f"rcl data: {before - len(examples)} of {before} {name} examples dropped: no target token "
                           f"left within max_length {self.max_length} (the prompt alone fills it)")
        if len(examples) == 0 and len(rows) > 0:
            raise DataError(
                f"no {name} example has a target token left (max_length {self.max_length}, overlong {self.overlong});"
                " raise max_length"
            )
        return examples.remove_columns("overlong")

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        from rcl.tiny_models import resolve_model

        if self.tokenizer_name_or_path is None:
            raise DataError("SFT needs data.init_args.tokenizer_name_or_path (the SFT CLI sets it from the model)")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_name_or_path))
        if tokenizer.eos_token is None:
            raise DataError(f"tokenizer {self.tokenizer_name_or_path!r} has no eos token; completions must end in one")
        return tokenizer

    def prepare_data(self) -> None:
        # Runs on one process first, so a hub download or a tokenizer build happens once.
        self.canonical_rows()
        if self.tokenizer_name_or_path is not None:
            self.load_tokenizer()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.tokenizer = self.load_tokenizer()
        train_rows, val_rows = self.split_rows()
        self.train_set = self.tokenize(train_rows, "train")
        self.val_set = self.tokenize(val_rows, "validation")
        rank_zero_info(f"rcl data: {len(self.train_set)} train / {len(self.val_set)} validation examples")

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _loader(self, data: datasets.Dataset, shuffle: bool) -> DataLoader:
        # Stateful (torchdata): Lightning saves its position and sampler state in the checkpoint, so a run resumed
        # mid-epoch continues with the next batch instead of replaying the epoch's first ones.
        return StatefulDataLoader(
            data.with_format(columns=["input_ids", "labels"]),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(collate_right_padded, pad_id=self.pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if len(self.val_set) else []


def last_user_turn(messages: list[dict]) -> str:
    """The prompt of an RL chat row: its last user turn (other turns are left to the prompt templates)."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    raise DataError("a messages row has no user turn to use as the prompt")
