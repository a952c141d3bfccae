"""SFTModule: supervised fine-tuning of a causal LM on completion-only labels (the teacher's warm-up, or a student).

The HF model is built in `configure_model`, so DeepSpeed ZeRO-3 and FSDP can shard it as it is created; on fit end the
full weights are gathered through the strategy and exported as an ordinary HF folder (`save_pretrained`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric

from data_modules.sft_examples import IGNORE_INDEX
from rcl.engines import HFEngine, SamplingParams
from rcl.lora import LoraArgs, check_quantization, describe_trainable, export_model, find_peft, load_for_training
from rcl.optim import OptimizerArgs, build_optimizer, build_scheduler
from rcl.tiny_models import resolve_model

DType = Literal["float32", "bfloat16", "float16", "auto"]


def token_accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) next-token predictions over labelled positions: logits[t] predicts labels[t + 1]."""
    predictions = logits[:, :-1].argmax(-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return (predictions.eq(targets) & mask).sum(), mask.sum()


def split_prompt_and_target(input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[list[int], list[int]]:
    """Recover one right-padded example's prompt ids (before the first label) and target ids (the labelled ids)."""
    labelled = (labels != IGNORE_INDEX).nonzero().flatten()
    start = int(labelled[0]) if len(labelled) else len(labels)
    return input_ids[:start].tolist(), input_ids[labelled].tolist()


def is_sharded(strategy: Strategy) -> bool:
    """Whether parameters are split across ranks (a plain forward/generate on one rank would not see them whole)."""
    if isinstance(strategy, DeepSpeedStrategy):
        return strategy.zero_stage_3
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def decoder_layer_policy(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: one FSDP unit per transformer block (any HF `*DecoderLayer`)."""
    return True if recurse else type(module).__name__.endswith("DecoderLayer")


def full_state_dict(strategy: Strategy) -> dict[str, torch.Tensor]:
    """The LightningModule's full (unsharded) state dict on global rank 0. A collective: every rank must call it."""
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        # Gathers one module at a time onto rank 0 (the other ranks get an empty dict), as HF's Trainer does.
        return strategy.deepspeed_engine._zero3_consolidated_16bit_state_dict() or {}
    return strategy.lightning_module_state_dict()


class SFTModule(LightningModule):
    def __init__(
        self,
        model_name_or_path: str,
        dtype: DType = "float32",
        attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa",
        gradient_checkpointing: bool = False,
        optimizer: OptimizerArgs = OptimizerArgs(),
        export_dir: str | None = None,
        val_generation_samples: int = 0,
        val_max_new_tokens: int = 256,
        lora: LoraArgs = LoraArgs(),
    ):
        """
        Args:
            model_name_or_path: Hub id, local HF folder, or a tiny preset (tiny-1m, tiny-10m) built locally.
            dtype: Weight dtype to load (use float32 with `trainer.precision: bf16-mixed` for mixed precision).
            attn_implementation: Attention kernel of the HF model.
            gradient_checkpointing: Recompute activations in backward (non-reentrant) to save memory.
            optimizer: AdamW and learning-rate schedule; the SFT CLI sets `trainer.gradient_clip_val` from
                `optimizer.max_grad_norm`.
            export_dir: Where the trained HF folder goes on fit end (default: `<trainer.default_root_dir>/hf_model`).
            val_generation_samples: Validation examples per rank whose completion is generated greedily and compared
                exactly with the reference (`val/exact_match`); 0 disables. Skipped under sharded strategies.
            val_max_new_tokens: Most tokens generated per such example.
            lora: LoRA adapters (peft) instead of full fine-tuning; `lora.export` picks a merged or adapter export.
        """
        super().__init__()
        # Plain types only: LightningCLI reads these back from checkpoints with `torch.load(weights_only=True)`.
        self.save_hyperparameters(ignore=["optimizer", "lora"])
        self.hparams["optimizer"] = asdict(optimizer)
        self.hparams["lora"] = asdict(lora)
        self.lora_args = lora
        check_quantization(lora, "auto")
        self.optimizer_args = optimizer
        self.model: Any = None
        self.tokenizer: Any = None
        self.val_loss = MeanMetric()
        self.val_token_accuracy = MeanMetric()
        self.val_exact_match = MeanMetric()
        self._generated = 0
        self._last_batch_time: float | None = None
        self._tokens_seen = {"tokens": 0, "loss_tokens": 0}
        """Since the start of training, over all processes: non-padding tokens of the training batches (forward and
        backward), and the labelled ones among them (the loss's). Checkpointed, so a resumed run keeps counting."""
        self._hf_deepspeed_config: Any = None

    # ----- model -----

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoTokenizer

        path = resolve_model(self.hparams.model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
            from transformers.integrations import HfDeepSpeedConfig

            # While this object lives, from_pretrained loads straight into ZeRO-3 partitions (no full copy per rank).
            self._hf_deepspeed_config = HfDeepSpeedConfig(strategy.config)
        dtype = self.hparams.dtype if self.hparams.dtype == "auto" else getattr(torch, self.hparams.dtype)
        self.model = load_for_training(path, self.lora_args, dtype=dtype,
                                       attn_implementation=self.hparams.attn_implementation)
        if find_peft(self.model) is not None:
            rank_zero_info(f"rcl sft: LoRA {describe_trainable(self.model)}")
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps submodules' modes as found
        if self.hparams.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning's FSDP precision refuses to clip by norm; the FSDP root clips its sharded gradients by the global
        # norm itself.
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(self.parameters(), self.optimizer_args)
        scheduler = build_scheduler(optimizer, int(self.trainer.estimated_stepping_batches), self.optimizer_args)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])

    # ----- training -----

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        correct, total = token_accuracy_counts(out.logits, batch["labels"])
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/token_accuracy", correct.float() / total.clamp(min=1))
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        now = time.perf_counter()
        tokens = batch["attention_mask"].sum()
        if self._last_batch_time is not None:
            self.log("train/tokens_per_sec", tokens.item() / max(now - self._last_batch_time, 1e-9))
        self._last_batch_time = now
        self._count_tokens(tokens, total)
        return out.loss

    def _count_tokens(self, tokens: torch.Tensor, loss_tokens: torch.Tensor) -> None:
        """Add this micro-batch's counts, summed over processes, and log the running totals (`train/tokens_seen`,
        `train/loss_tokens_seen`): the last logged row holds what the run processed."""
        both = self.trainer.strategy.reduce(torch.stack([tokens, loss_tokens]), reduce_op="sum")
        for key, value in zip(("tokens", "loss_tokens"), both.tolist()):
            self._tokens_seen[key] += int(value)
            self.log(f"train/{key}_seen", torch.tensor(float(self._tokens_seen[key]), dtype=torch.float64))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rcl_tokens_seen"] = dict(self._tokens_seen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._tokens_seen.update(checkpoint.get("rcl_tokens_seen", {}))

    # ----- validation -----

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        correct, total = token_accuracy_counts(out.logits, batch["labels"])
        self.val_loss.update(out.loss, weight=total)
        self.val_token_accuracy.update(correct.float() / total.clamp(min=1), weight=total)
        wanted = self.hparams.val_generation_samples - self._generated
        if wanted > 0 and not is_sharded(self.trainer.strategy):
            for match in self._exact_matches(batch, wanted):
                self.val_exact_match.update(float(match))
                self._generated += 1

    def _exact_matches(self, batch: dict[str, torch.Tensor], limit: int) -> list[bool]:
        rows = [split_prompt_and_target(i, l) for i, l in zip(batch["input_ids"][:limit], batch["labels"][:limit])]
        rows = [(p, t) for p, t in rows if p and t]
        if not rows:
            return []
        params = SamplingParams(
            max_tokens=min(max(len(t) for _, t in rows), self.hparams.val_max_new_tokens), temperature=0.0
        )
        completions = HFEngine(self.model, self.tokenizer).generate([p for p, _ in rows], params)
        targets = self.tokenizer.batch_decode([t for _, t in rows], skip_special_tokens=True)
        return [c[0].text.strip() == target.strip() for c, target in zip(completions, targets)]

    def on_validation_epoch_start(self) -> None:
        self._generated = 0
        if self.hparams.val_generation_samples and is_sharded(self.trainer.strategy):
            rank_zero_warn("val/exact_match is skipped under sharded strategies (ZeRO-3, FSDP)")

    def on_validation_epoch_end(self) -> None:
        values = {"val/loss": self.val_loss.compute(), "val/token_accuracy": self.val_token_accuracy.compute()}
        if self.val_exact_match.update_called:
            values["val/exact_match"] = self.val_exact_match.compute()
        for metric in (self.val_loss, self.val_token_accuracy, self.val_exact_match):
            metric.reset()
        self.log_dict(values, sync_dist=True)  # already synced by torchmetrics; silences the epoch-level warning
        when = "before training" if self.trainer.sanity_checking else f"step {self.global_step}"
        rank_zero_info(f"rcl sft {when}: " + "  ".join(f"{k} {float(v):.4f}" for k, v in values.items()))

    # ----- export -----

    def export_path(self) -> Path:
        if self.hparams.export_dir:
            return Path(self.hparams.export_dir)
        return Path(self.trainer.default_root_dir) / "hf_model"

    def on_train_end(self) -> None:
        state = full_state_dict(self.trainer.strategy)
        if self.trainer.is_global_zero:
            weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            out = self.export_path()
            if find_peft(self.model) is not None:
                export_model(self.model, self.tokenizer, out, self.lora_args.export, state=weights)
            else:
                self.model.save_pretrained(str(out), state_dict=weights)
                self.tokenizer.save_pretrained(str(out))
            rank_zero_info(f"rcl sft: exported the trained model to {out}")
        self.trainer.strategy.barrier("rcl_sft_export")
