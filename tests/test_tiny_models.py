import hashlib
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcl.tiny_models import PRESETS, build_model, resolve_model


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_preset_is_a_loadable_hf_folder_with_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.padding_side == "left"
    assert tok.tokenize("123") == ["1", "2", "3"], "digits must be split one by one"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    params = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < params < 1.3e6, params
    assert model.config.vocab_size == len(tok)


def test_resolve_model_builds_once_and_is_deterministic(models_dir, tmp_path):
    first = Path(resolve_model("tiny-1m"))
    stamp = (first / "config.json").stat().st_mtime_ns
    assert Path(resolve_model("tiny-1m")) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp, "a built preset must be reused, not rebuilt"
    again = build_model("tiny-1m", tmp_path / "again", seed=0)
    assert _digest(again) == _digest(first)
    other = build_model("tiny-1m", tmp_path / "other", seed=1)
    assert _digest(other) != _digest(first)


def test_resolve_model_passes_hub_ids_and_existing_folders_through(tmp_path):
    assert resolve_model("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert resolve_model("gpt2") == "gpt2"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_resolve_model_names_a_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found: .*missing"):
        resolve_model(str(tmp_path / "missing"))


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny preset 'tiny-3m'; choose one of \\['tiny-10m', 'tiny-1m'\\]"):
        build_model("tiny-3m", tmp_path)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_the_shape_it_declares(name, models_dir):
    from transformers import AutoConfig

    preset = PRESETS[name]
    config = AutoConfig.from_pretrained(resolve_model(name))
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads) == tuple(vars(preset).values())


def test_a_home_relative_model_path_is_expanded(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("HOME", str(Path(tiny_model_dir).parent))
    assert resolve_model(f"~/{Path(tiny_model_dir).name}") == tiny_model_dir
    assert resolve_model("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"  # a hub id is left as it is
