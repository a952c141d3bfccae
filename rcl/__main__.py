"""`python -m rcl <command>`: routes to the SFT LightningCLI, the RL Fabric loop, scoring, evaluation, the server
or the launcher."""

from __future__ import annotations

import sys

USAGE = """usage: python -m rcl <command> [options]

Training (LightningCLI-style YAML; several --config files merge in order, dotted flags override):
  fit        train: SFT recipes run the Lightning SFT module, recipes with a `grpo:` section run the RL loop
  validate   evaluate a recipe's model on its validation data
  test       test (SFT recipes)
  predict    predict (SFT recipes)

Scoring:
  score      score saved completions with a task: --task math --input completions.jsonl --output scored.jsonl

Evaluation:
  evaluate   models x tasks x protocols with intervals, pass@k and teaching effects: --config <eval recipe>
             (`evaluate compare results_a.json results_b.json ...`: deltas, Pareto dominance and frontiers)

Generation and orchestration:
  serve      start a generation server (TRL vllm-serve compatible): --model PATH --engine hf|vllm
  launch     start teacher/student servers on their GPUs, train, and stop only what it started

Run `python -m rcl <command> --help` for the options of a command, e.g.
  python -m rcl fit --config lightning_configs/quickstart_sft.yaml
  python -m rcl fit --config lightning_configs/quickstart_rcl.yaml --trainer.max_steps 10
  python -m rcl evaluate --config lightning_configs/eval_quickstart.yaml
"""

TRAINING = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command in TRAINING:
        from rcl.cli import run_training

        run_training(command, rest)
    elif command == "evaluate":
        from rcl.eval.cli import cli_main

        cli_main(rest)
    elif command == "score":
        from rcl.tasks.scoring import cli_main

        cli_main(rest)
    elif command == "serve":
        from rcl.serving.server import cli_main

        cli_main(rest)
    elif command == "launch":
        from rcl.launch import cli_main

        cli_main(rest)
    else:
        print(f"rcl: unknown command {command!r}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
