"""Tiny tokenizer and causal LMs that rcl builds itself, so the whole pipeline runs with no model hub.

`resolve_model("tiny-1m")` builds (once) and returns an ordinary HF folder that `AutoModelForCausalLM` and
`AutoTokenizer` load; anything else (a hub id or a local folder) is returned unchanged, so one code path loads both.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_modules.synthetic import generate_problems, to_sft_rows
from rcl.prompts import (
    PromptTemplates,
    render_prompt,
    student_messages,
    teacher_messages,
    teacher_target,
)

PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyPreset:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int


PRESETS: dict[str, TinyPreset] = {
    "tiny-1m": TinyPreset(128, 4, 512, 4, 2),
    "tiny-10m": TinyPreset(256, 8, 1280, 8, 4),
}
TOKENIZER_VOCAB = 1024
MAX_POSITIONS = 1024


def models_dir() -> Path:
    """Where built presets live: $RCL_MODELS_DIR, else ./models."""
    return Path(os.environ.get("RCL_MODELS_DIR", "models")).resolve()


def _corpus(seed: int) -> list[str]:
    """Text in the exact shapes the pipeline renders, so BPE merges cover the templates and tags."""
    from types import SimpleNamespace

    plain = SimpleNamespace(apply_chat_template=_render_chatml)
    templates = PromptTemplates()
    problems = generate_problems(3000, seed=seed)
    lines = []
    for p, row in zip(problems, to_sft_rows(problems, seed=seed)):
        q = p["question"]
        lines.append(render_prompt(plain, teacher_messages(templates, q, row["student_approach"])))
        lines.append(teacher_target(row["teacher_diagnosis"], row["teacher_teaching"]) + EOS)
        for kind in ("baseline", "probe"):
            lines.append(render_prompt(plain, student_messages(templates, kind, q)))
        lines.append(render_prompt(plain, student_messages(templates, "with_teaching", q, p["teaching"])))
        lines.append(f"<solution>{p['answer']}</solution>{EOS}")
    return lines


def _render_chatml(messages, tokenize=False, add_generation_prompt=True):
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{EOS}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def build_tokenizer(out_dir: str | Path, vocab_size: int = TOKENIZER_VOCAB, seed: int = 0):
    """Train a byte-level BPE (digits split one by one) on the synthetic corpus and save it as an HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        padding_side="left",
        model_max_length=MAX_POSITIONS,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(out_dir))
    return hf


def build_model(name: str, out_dir: str | Path, seed: int = 0, tokenizer_dir: str | Path | None = None) -> Path:
    """Build preset `name` (random init, deterministic in `seed`) with its tokenizer into `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if name not in PRESETS:
        raise ValueError(f"unknown tiny preset {name!r}; choose one of {sorted(PRESETS)}")
    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer = build_tokenizer(out_dir, seed=seed)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tokenizer.save_pretrained(str(out_dir))
    p = PRESETS[name]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=p.hidden_size,
        num_hidden_layers=p.num_hidden_layers,
        intermediate_size=p.intermediate_size,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    return out_dir


class ModelNotFound(FileNotFoundError):
    """A model that neither resolves to a folder nor loads from the hub; the message says what was looked for."""


def check_model(name_or_path: str) -> str:
    """Resolve a model and read its config (cheap: no weights), so a bad path fails before a run starts; returns the
    resolved path. Raises ModelNotFound with a one-line message."""
    from transformers import AutoConfig

    if not name_or_path:
        raise ModelNotFound(f"no model given: name a tiny preset ({', '.join(sorted(PRESETS))}), a local HF folder or "
                            "a hub id")
    path = resolve_model(name_or_path)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():  # a LoRA adapter export: its base must load
        check_model(json.loads(adapter.read_text())["base_model_name_or_path"])
        return path
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:  # transformers' messages run over several lines; the first says it
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelNotFound(f"{name_or_path} does not load: {first.strip()}") from None
    return path


def resolve_model(name_or_path: str, seed: int = 0) -> str:
    """A tiny preset name becomes the path of its built folder (built on first use); anything else is returned as is."""
    if name_or_path not in PRESETS:
        looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") >= 2
        local = Path(name_or_path).expanduser()
        if looks_local and not local.exists():
            unfinished = "the export of a run that has not run yet (run its recipe first), or "
            export = unfinished if local.name == "hf_model" else ""
            raise ModelNotFound(
                f"model folder not found: {name_or_path} (is it {export}a typo? a tiny preset is one of "
                f"{sorted(PRESETS)}; a hub id looks like org/name or name)"
            )
        return str(local) if looks_local or local.exists() else name_or_path
    target = models_dir() / (name_or_path if seed == 0 else f"{name_or_path}-seed{seed}")
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Ranks of one run may ask at the same moment: one builds under the lock, the others wait and reuse it.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:
                build_model(name_or_path, tmp, seed=seed)
                shutil.rmtree(target, ignore_errors=True)  # a folder left half-written by a killed build
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
