"""`python -m rcl fit|validate|test|predict --config <sft recipe>`: the LightningCLI of the SFT phase.

Run layout under `trainer.default_root_dir` (e.g. `runs/quickstart_sft/`): `config.yaml` (the resolved config),
`checkpoints/` (`last.ckpt`, and `best-<step>.ckpt`: the lowest `val/loss`, when validation runs), `csv/metrics.csv`, `tensorboard/`, `hf_model/` (the exported
model). The default loggers are CSV + TensorBoard; add W&B with `--config lightning_configs/loggers/wandb.yaml`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from data_modules import DataError, TeacherStudentDataModule
from rcl import interrupt
from rcl.cli import explain_parse_error, help_defaults, show_class_keys_in_help
from rcl.progress import sft_progress_bar
from rcl.run_dir import SFT_OUTPUTS, RunFolderInUse, log_version, refuse_to_replace, remove_outputs
from rcl.sft import SFTModule
from rcl.tiny_models import ModelNotFound, check_model

DEFAULT_ROOT_DIR = "runs/sft"


class SaveConfigToRunDir(SaveConfigCallback):
    """Writes the resolved config to `<default_root_dir>/config.yaml`, next to checkpoints and logs (a resumed fit or
    another command writes `config-<log version>.yaml`, as its logs go to a version folder of their own). The file
    says `overwrite: false`, so a rerun from it does not replace this run unasked."""

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True, multifile=False):
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        config = self.config.clone()
        if "overwrite" in config:
            config.overwrite = False
        version = trainer.logger.version if trainer.logger is not None else ""
        name = f"config-{version}.yaml" if isinstance(version, str) and version else self.config_filename
        self.parser.save(config, str(root / name), skip_none=False, overwrite=True)


def run_layout(config: dict[str, Any], callbacks: list[Callback], version: str = "") -> None:
    """Lay the run out under `default_root_dir`: CSV and TensorBoard loggers are always added (unless `logger: false`
    or the recipe already has one of that kind), so `trainer.logger` entries such as W&B come on top of them; a
    ModelCheckpoint writes to `checkpoints/` unless the recipe configures its own; a signal saves `last.ckpt` and stops
    (`rcl.interrupt`); progress is a bar on a terminal and lines in a log (`rcl.progress`). `version` is the loggers'
    version folder (`rcl.run_dir.log_version`)."""
    root = Path(config.get("default_root_dir") or DEFAULT_ROOT_DIR)
    config["default_root_dir"] = str(root)
    logger = config.get("logger")
    if logger is not False:
        loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, list) else [logger]
        defaults = [
            (TensorBoardLogger, lambda: TensorBoardLogger(str(root), "tensorboard", version, default_hp_metric=False)),
            (CSVLogger, lambda: CSVLogger(str(root), name="csv", version=version)),
        ]
        for kind, make in defaults:
            if not any(isinstance(existing, kind) for existing in loggers):
                loggers.insert(0, make())
        config["logger"] = loggers
    listed = config.get("callbacks") or []
    configured = (listed if isinstance(listed, list) else [listed]) + callbacks
    if config.get("enable_checkpointing", True) is not False and not any(
        isinstance(c, ModelCheckpoint) for c in configured
    ):
        callbacks.append(ModelCheckpoint(dirpath=str(root / "checkpoints"), filename="best-{step}", monitor="val/loss",
                                         mode="min", save_top_k=1, save_last=True, auto_insert_metric_name=False))
    callbacks.append(interrupt.lightning_callback())  # Ctrl-C / SIGTERM: save last.ckpt, print how to resume
    if config.get("enable_progress_bar", True) is not False and not any(
        isinstance(c, ProgressBar) for c in configured
    ):
        callbacks.append(sft_progress_bar(config.get("log_every_n_steps") or 50))


class RCLLightningCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        self._argv = [str(a) for a in given] if isinstance(given, list) else sys.argv[1:]  # for --help
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One tokenizer for data and model; one clipping setting for every strategy (DeepSpeed reads the Trainer's).
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.link_arguments("model.init_args.optimizer.max_grad_norm", "trainer.gradient_clip_val")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="Replace an earlier run's outputs in trainer.default_root_dir. Without it, a fresh "
                                 "fit into a folder that holds a run is refused (resume it with --ckpt_path instead).")

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subparser in self._subcommand_parsers.items():
            subparser.prog = f"python -m rcl {name}"
            show_class_keys_in_help(subparser, self._argv, {"model": SFTModule, "data": TeacherStudentDataModule})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
            options = [flag for p in parsers for action in p._actions for flag in action.option_strings]
            raise argparse.ArgumentError(None, explain_parse_error(str(err), options)) from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        command = self.subcommand or "fit"
        ckpt_path = self.config[command].get("ckpt_path") if self.subcommand else None
        if self.subcommand:
            self._preflight(Path(config.get("default_root_dir") or DEFAULT_ROOT_DIR), command, ckpt_path)
        run_layout(config, callbacks, log_version(command, ckpt_path))
        return super()._instantiate_trainer(config, callbacks)

    def _preflight(self, root: Path, command: str, ckpt_path: str | None) -> None:
        """Before the Trainer makes any folder: the model loads, the data splits, and a fresh fit does not land on an
        earlier run (replaced only with --overwrite true)."""
        name = getattr(self.model, "hparams", {}).get("model_name_or_path")
        if name is not None:
            try:
                check_model(name)
            except ModelNotFound as exc:
                raise ModelNotFound(f"model.init_args.model_name_or_path: {exc}") from None
        if isinstance(self.datamodule, TeacherStudentDataModule):
            self.datamodule.split_rows()
        if ckpt_path and not Path(ckpt_path).exists():
            raise ModelNotFound(f"ckpt_path {ckpt_path} does not exist")
        if command == "fit" and not ckpt_path and rank_zero_only.rank == 0:
            if self.config[command].get("overwrite"):
                remove_outputs(root, SFT_OUTPUTS)
            else:
                refuse_to_replace(root, SFT_OUTPUTS, "trainer.default_root_dir")


def build_cli(command: str, argv: list[str], run: bool = True, args_from_sys_argv: bool = False) -> RCLLightningCLI:
    """`args_from_sys_argv`: the command line is `sys.argv` itself (LightningCLI then reads it, rather than being
    handed the same arguments again as if from Python)."""
    # Flags must be spelled in full; errors come back as exceptions, for one line that names the fix. Subcommand
    # parsers inherit both settings from the main parser.
    main = {"prog": "python -m rcl", "description": "rcl SFT phase (LightningCLI)", "allow_abbrev": False,
            "exit_on_error": False}
    return RCLLightningCLI(
        SFTModule,
        TeacherStudentDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToRunDir,
        args=None if args_from_sys_argv else [command, *argv] if run else argv,
        run=run,
        parser_kwargs={**main, command: help_defaults(argv)} if run else {**main, **help_defaults(argv)},
    )


def cli_main(command: str, argv: list[str]) -> None:
    try:
        build_cli(command, argv, args_from_sys_argv=sys.argv[1:] == [command, *argv])
    except argparse.ArgumentError as e:
        print(f"rcl: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except interrupt.TrainingInterrupted as err:
        interrupt.report(err, command, argv)
    except (DataError, ModelNotFound, RunFolderInUse) as e:
        print(f"rcl: {e}", file=sys.stderr)
        raise SystemExit(2) from None
