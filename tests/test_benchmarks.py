"""The benchmark harness (experiments/benchmarks): it runs, counts right and prints the promised tables.
No timing is asserted: speed figures live in the benchmark's output, never in tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks.common import format_table
from experiments.benchmarks.grpo_vs_trl import TABLE_HEADERS, per_step_summary
from experiments.benchmarks.rollout_cost import RolloutBenchConfig, count_generations, formula

ROOT = Path(__file__).resolve().parents[1]


def test_step_summary_drops_the_warm_up_step_and_splits_the_time():
    ends = [10.0, 12.0, 13.0, 14.5]  # step ends: the first interval starts after the warm-up step
    steps = [{"generation_s": 9.0, "reward_s": 1.0, "tokens": 999}] + [
        {"generation_s": 0.5, "reward_s": 0.1, "tokens": 40}
    ] * 3
    s = per_step_summary(ends, steps, batch_size=8)
    assert s["step_intervals"] == [2.0, 1.0, 1.5]
    assert s["step_s"] == pytest.approx(1.5)
    assert s["generation_s"] == pytest.approx(0.5) and s["reward_s"] == pytest.approx(0.1)
    assert s["train_other_s"] == pytest.approx(0.9)
    assert s["mean_length"] == pytest.approx(5.0)
    assert s["completions_per_s"] == pytest.approx(8 / 1.5)
    assert s["generated_tokens_per_s"] == pytest.approx(80.0)
    assert s["trained_tokens_per_s"] == pytest.approx(40 / 0.9)


def test_format_table_aligns_columns_as_markdown():
    text = format_table(("name", "value"), [["a", 1.5], ["bbb", 1234.0]])
    lines = text.splitlines()
    assert lines[0] == "| name | value |"
    assert lines[1] == "|:-----|------:|"
    assert lines[2] == "| a    |  1.50 |"
    assert lines[3] == "| bbb  | 1,234 |"


def test_rollout_counts_match_the_formulas_for_both_designs(models_dir):
    cfg = RolloutBenchConfig(prompts=2, num_generations=3, baseline_samples=2, student_samples=2,
                             policy_tokens=3, student_tokens=3, probe_tokens=2)
    counted = count_generations(cfg)
    expected = formula(cfg)
    assert expected == {"rcl": {"student": 1 + 2 + 3 * 2, "teacher": 3}, "original": {"student": 9, "teacher": 3}}
    for design in ("rcl", "original"):
        assert counted[design]["student_generations"] == expected[design]["student"]
        assert counted[design]["teacher_generations"] == expected[design]["teacher"]
        assert counted[design]["student_calls"] == 3, "baseline, probe and solution stages"
        assert 0 < counted[design]["teacher_tokens"] <= 3 * 3


def test_engine_benchmark_generates_equal_token_counts(models_dir):
    from experiments.benchmarks.engine import generation_benchmark

    from experiments.benchmarks.engine import NEVER_STOPS

    for stop in ((), NEVER_STOPS):
        rows = generation_benchmark("tiny-1m", reps=1, prompts=2, n=3, new_tokens=12, stop=stop)
        assert set(rows) == {"rcl HFEngine", "plain model.generate"}
        assert {r["tokens"] for r in rows.values()} == {2 * 3 * 12}, "eos is off and no stop string matches: full rows"


@pytest.mark.slow
def test_grpo_benchmark_runs_one_tiny_repetition_and_prints_the_table(models_dir, tmp_path, repo_env):
    repo_env["RCL_MODELS_DIR"] = str(models_dir)
    repo_env["RCL_BENCHMARKS_DIR"] = str(tmp_path)
    cmd = [sys.executable, "-m", "experiments.benchmarks", "grpo", "--preset", "tiny-1m", "--reps", "1",
           "--steps", "2", "--batch-size", "4", "--num-generations", "2", "--max-completion-length", "3",
           "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=repo_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tail = proc.stdout[proc.stdout.index("===== rcl benchmarks: grpo"):]
    header = next(line for line in tail.splitlines() if line.startswith("| framework"))
    assert [h.strip() for h in header.strip("|").split("|")] == list(TABLE_HEADERS)
    assert "| rcl (tiny-1m) |" in tail and "| TRL (tiny-1m) |" in tail and "rcl/TRL step-time ratio (tiny-1m)" in tail
    result = json.loads((tmp_path / "grpo_tiny-1m.json").read_text())
    assert {"cpu", "cores", "torch_threads", "torch", "trl", "date"} <= set(result["machine"])
    for fw in ("rcl", "trl"):
        (run,) = result["runs"][fw]
        assert run["step_s"] > 0 and run["peak_rss_mb"] > 0
        assert 0 < run["mean_length"] <= 3
        assert run["tokens_per_step"] == pytest.approx(4 * run["mean_length"])
    assert result["summary"]["ratio"]["step_s"] > 0


def test_async_benchmark_trains_the_recipe_it_claims(tmp_path):
    from experiments.benchmarks.async_throughput import AsyncBenchConfig, trainer_command
    from rcl.rl.loop import parse_recipe

    cfg = AsyncBenchConfig(steps=7)
    cmd = trainer_command(cfg, {"teacher": "http://127.0.0.1:9"}, 2, tmp_path / "run")
    assert cmd[1:4] == ["-m", "experiments.benchmarks.async_throughput", "--trainer"]
    recipe = parse_recipe("fit", cmd[4:], exit_on_error=False)
    assert recipe["grpo"].max_off_policy_steps == 2 and recipe["trainer"].max_steps == 7
    assert recipe["engines"].teacher.urls == ["http://127.0.0.1:9"] and recipe["reward"].functions == {
        "bench_digits": 1.0}
    assert recipe["grpo"].protocol == "direct"


def test_async_benchmark_adaptive_puts_teacher_and_student_on_their_servers(tmp_path):
    from experiments.benchmarks.async_throughput import AsyncBenchConfig, trainer_command
    from rcl.rl.loop import parse_recipe

    cfg = AsyncBenchConfig(steps=5, recipe="adaptive", preset="tiny-1m", student="tiny-10m")
    urls = {"teacher": "http://127.0.0.1:9", "student": "http://127.0.0.1:10"}
    recipe = parse_recipe("fit", trainer_command(cfg, urls, 1, tmp_path / "run")[4:], exit_on_error=False)
    assert recipe["grpo"].protocol == "adaptive_teaching" and recipe["grpo"].max_off_policy_steps == 1
    assert recipe["engines"].teacher.urls == [urls["teacher"]] and recipe["engines"].student.urls == [urls["student"]]
    assert recipe["engines"].student.backend == "server" and recipe["student"].model_name_or_path == "tiny-10m"
    assert "adaptive_teaching" in recipe["reward"].functions, "the adaptive recipe keeps its own reward"
    with pytest.raises(SystemExit, match="--recipe"):
        trainer_command(AsyncBenchConfig(recipe="bogus"), urls, 1, tmp_path / "run")


def test_async_and_contention_tables_and_the_reward_plot(tmp_path):
    from experiments.benchmarks import async_throughput, contention

    results = [{"max_off_policy_steps": n, "samples_per_s": 10.0 * (1 + n), "step_s": 1.0, "trainer_wait_s": 0.1,
                "server_wait_s": 0.2, "staleness_mean": float(n), "rewards": [0.1, 0.2], "samples": [64, 128]}
               for n in (0, 1)]
    text = async_throughput.table(results)
    assert "| 1 " in text and "2.00" in text, text  # x sync of the second row
    assert async_throughput.plot(results, tmp_path / "curves.png").stat().st_size > 1000
    table = contention.table({"cores": 2, "results": [
        {"victim_threads": 2, "neighbour_threads": 0, "median_step_s": 1.0, "max_step_s": 1.1},
        {"victim_threads": 2, "neighbour_threads": 2, "median_step_s": 20.0, "max_step_s": 30.0}]})
    assert "20.0" in table and "none" in table


def test_contention_workload_runs_a_step(models_dir):
    from experiments.benchmarks.contention import workload_steps

    times = workload_steps("tiny-1m", threads=1, steps=1)
    assert len(times) == 1 and times[0] > 0


def test_serving_benchmark_counts_the_engine_calls_of_both_modes(models_dir):
    from experiments.benchmarks import serving

    result = serving.run_benchmark(serving.ServingBenchConfig(requests=4, max_tokens=3, reps=1))
    alone, together = result["runs"]["one at a time"][0], result["runs"]["all at once"][0]
    assert alone["engine_calls"] == 4
    # how many merge depends on timing (tests/test_serving_batching.py holds the engine to check the merging itself)
    assert 1 <= together["engine_calls"] <= 4
    assert 4 <= together["tokens"] <= 12 and 4 <= alone["tokens"] <= 12
    assert "x one at a time" in serving.table(result)
