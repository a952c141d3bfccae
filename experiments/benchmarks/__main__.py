"""`python -m experiments.benchmarks {grpo,rollout,engine,all}`: rcl's performance figures on this machine.

    python -m experiments.benchmarks grpo --preset tiny-1m --reps 3      # rcl GRPO vs TRL GRPOTrainer
    python -m experiments.benchmarks grpo --preset tiny-10m --reps 3
    python -m experiments.benchmarks rollout                             # adaptive-teaching rollout cost
    python -m experiments.benchmarks engine                              # HFEngine vs generate; weight sync
    python -m experiments.benchmarks grpo-settings --sft-model runs/quickstart_student_sft/hf_model --threads 1
    python -m experiments.benchmarks async --steps 40                   # sync vs max_off_policy_steps 1, 2
    python -m experiments.benchmarks contention                          # thread oversubscription, reproduced
    python -m experiments.benchmarks serving                             # concurrent chat requests, batched
    python -m experiments.benchmarks all                                 # everything, one combined summary

Each command prints its table last and writes `runs/benchmarks/<name>.json` with the machine's facts (CPU, cores,
torch threads, versions, date, load average). Timings on a shared machine move with its load: repetitions alternate
so both sides see the same conditions, and the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os

from experiments.benchmarks import engine as engine_bench
from experiments.benchmarks import async_throughput, contention, grpo_vs_trl, rollout_cost, serving
from experiments.benchmarks.common import RESULTS_DIR, load_note, machine_info, write_results


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def machine_line() -> str:
    m = machine_info()
    return (f"{m['date']} | {m['cpu']} | {m['cores']} cores, torch threads {m['torch_threads']} | torch {m['torch']}, "
            f"transformers {m['transformers']}, TRL {m['trl']} | {load_note()}")


def grpo_command(args: argparse.Namespace, presets: list[str]) -> str:
    texts = []
    for preset in presets:
        cfg = grpo_vs_trl.config_from(args)
        cfg.preset = preset
        result = grpo_vs_trl.run_benchmark(cfg, args.reps)
        path = write_results(f"grpo_{preset}" + (f"_{args.name}" if args.name else ""), result)
        texts.append(f"{grpo_vs_trl.describe(cfg, args.reps)}\n"
                     f"{grpo_vs_trl.table(preset, result['summary'])}\n(written to {path})")
    return "\n\n".join(texts)


def rollout_command(args: argparse.Namespace) -> str:
    cfg = rollout_cost.RolloutBenchConfig(preset=args.preset)
    result = rollout_cost.run_rollout_benchmark(cfg, with_server=not args.no_server)
    path = write_results("rollout" + (f"_{args.name}" if args.name else ""), result)
    return f"{rollout_cost.tables(result)}\n(written to {path})"


def engine_command(args: argparse.Namespace) -> str:
    result = engine_bench.run_engine_benchmarks(["tiny-1m", "tiny-10m"], args.reps)
    path = write_results("engine" + (f"_{args.name}" if args.name else ""), result)
    return f"{engine_bench.tables(result)}\n(written to {path})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("grpo", "rcl GRPO step vs TRL GRPOTrainer"), ("rollout", "adaptive-teaching cost"),
                            ("engine", "HFEngine vs model.generate; weight sync"), ("all", "every benchmark")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--reps", type=int, default=3, help="alternating repetitions per side")
        p.add_argument("--name", default="", help="suffix of the JSON file names under runs/benchmarks/")
        if name in ("grpo", "all"):
            grpo_vs_trl.add_config_arguments(p)
        else:
            p.add_argument("--preset", default="tiny-1m")
            p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
        if name in ("rollout", "all"):
            p.add_argument("--no-server", action="store_true", help="skip the run with the policy on an hf server")
    p = sub.add_parser("grpo-settings", help="the three rcl/TRL settings: tiny-1m and tiny-10m with the dense reward, "
                                             "an SFT'd model with the correctness reward (mixed groups)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--name", default="")
    p.add_argument("--sft-model", required=True, help="an SFT'd HF folder, e.g. runs/quickstart_student_sft/hf_model")
    grpo_vs_trl.add_config_arguments(p)
    p = sub.add_parser("async", help="sync vs asynchronous GRPO with a pinned server: samples/s, reward curves")
    p.add_argument("--name", default="")
    async_throughput.add_arguments(p)
    p = sub.add_parser("contention", help="per-step time of a training process alone and beside a busy neighbour")
    p.add_argument("--name", default="")
    contention.add_arguments(p)
    p = sub.add_parser("serving", help="concurrent chat requests against the server: one at a time vs all at once")
    p.add_argument("--name", default="")
    serving.add_arguments(p)
    return parser


def grpo_settings_command(args: argparse.Namespace) -> str:
    """The settings the 0.5x target is stated for, one table each, then the three ratios together."""
    import dataclasses

    base = grpo_vs_trl.config_from(args)
    settings = [("tiny-1m, dense digits", dataclasses.replace(base, preset="tiny-1m", reward="digits")),
                ("tiny-10m, dense digits", dataclasses.replace(base, preset="tiny-10m", reward="digits")),
                ("SFT'd model, correctness", dataclasses.replace(base, preset=args.sft_model, reward="correctness"))]
    texts, ratios = [], []
    for label, cfg in settings:
        result = grpo_vs_trl.run_benchmark(cfg, args.reps)
        slug = label.split(",")[0].replace("'", "").replace(" ", "_")
        write_results(f"grpo_setting_{slug}" + (f"_{args.name}" if args.name else ""), result)
        texts.append(f"{label}\n{grpo_vs_trl.table(cfg.preset, result['summary'])}")
        ratios.append([label, result["summary"]["ratio"]["step_s"], result["summary"]["rcl"]["zero_std_groups"]])
    from experiments.benchmarks.common import format_table

    return "\n\n".join(texts) + "\n\n" + format_table(["setting", "rcl / TRL step", "rcl all-equal groups"], ratios)


def async_command(args: argparse.Namespace) -> str:
    cfg = async_throughput.AsyncBenchConfig(preset=args.preset, recipe=args.recipe, student=args.student,
                                            steps=args.steps, settings=args.settings,
                                            server_core=args.server_core, trainer_core=args.trainer_core,
                                            max_completion_length=args.max_completion_length, engine=args.engine,
                                            accelerator=args.accelerator, dtype=args.dtype,
                                            peak_tflops=args.peak_tflops)
    result = async_throughput.run_benchmark(cfg)
    name = "async" + (f"_{args.name}" if args.name else "")
    path = write_results(name, result)
    figure = async_throughput.plot(result["results"], RESULTS_DIR / f"{name}.png",
                                   "digits" if cfg.recipe == "direct" else "adaptive recipe")
    return f"{async_throughput.table(result['results'])}\n(written to {path}; reward curves in {figure})"


def contention_command(args: argparse.Namespace) -> str:
    result = contention.run_benchmark(contention.config_from(args))
    path = write_results("contention" + (f"_{args.name}" if args.name else ""), result)
    return f"{contention.table(result)}\n(written to {path})"


def serving_command(args: argparse.Namespace) -> str:
    result = serving.run_benchmark(serving.config_from(args))
    path = write_results("serving" + (f"_{args.name}" if args.name else ""), result)
    return f"{serving.table(result)}\n(written to {path})"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _set_threads(getattr(args, "threads", 0))
    if args.command == "grpo":
        text = grpo_command(args, [args.preset])
    elif args.command == "rollout":
        text = rollout_command(args)
    elif args.command == "engine":
        text = engine_command(args)
    elif args.command == "grpo-settings":
        text = grpo_settings_command(args)
    elif args.command == "async":
        text = async_command(args)
    elif args.command == "contention":
        text = contention_command(args)
    elif args.command == "serving":
        text = serving_command(args)
    else:
        parts = [grpo_command(args, ["tiny-1m", "tiny-10m"]), rollout_command(args), engine_command(args)]
        text = "\n\n".join(parts)
    print(f"\n===== rcl benchmarks: {args.command} =====\n{machine_line()}\n\n{text}", flush=True)
    print(f"\nJSON results in {RESULTS_DIR}")


if __name__ == "__main__":
    main()
