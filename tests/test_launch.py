"""`python -m rcl launch`: plan validation, and a real CPU run with hf servers and a fake trainer."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from serving_support import ROOT, free_port, listening

from rcl.launch import LaunchError, _cuda_env, build_parser, build_plan, cli_main, parse_gpus


def recipe(tmp_path, **over):
    content = yaml.safe_load((ROOT / "lightning_configs" / "quickstart_rcl.yaml").read_text())
    base = {
        "trainer": {"seed": 5, "devices": 1, "out_dir": str(tmp_path / "out")},
        "teacher": {"model_name_or_path": "tiny-1m"},
        "student": {"model_name_or_path": "tiny-1m"},
        "grpo": {"num_generations": 4, "prompts_per_step": 2},
    }
    for group, values in [*base.items(), *over.items()]:
        content.setdefault(group, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def plan_for(argv, gpus=tuple(str(i) for i in range(8))):
    args, overrides = build_parser().parse_known_args(argv)
    return build_plan(args, overrides, available_gpus=list(gpus))


def test_parse_gpus():
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus("4-7") == ["4", "5", "6", "7"]
    assert parse_gpus("0,2-3") == ["0", "2", "3"]
    assert parse_gpus("none") == [None] and parse_gpus("cpu:2") == [None, None]
    assert parse_gpus(None) == []
    for bad in ("a", "3-1", "0,0", "cpu:0"):
        with pytest.raises(LaunchError):
            parse_gpus(bad)


def test_gpu_plan_commands(tmp_path):
    cfg = recipe(tmp_path)
    plan = plan_for(["--config", cfg, "--teacher-gpus", "0,1", "--student-gpus", "2", "--train-gpus", "4-7",
                     "--base-port", "9000", "--grpo.prompts_per_step", "8", "--run-dir", str(tmp_path / "run")])
    assert [(s.role, s.gpus, s.port) for s in plan.servers] == [("teacher", ["0"], 9000), ("teacher", ["1"], 9001),
                                                                 ("student", ["2"], 9002)]
    assert [s.cmd[s.cmd.index("--seed") + 1] for s in plan.servers] == ["5", "6", "7"]
    assert all(s.cmd[s.cmd.index("--engine") + 1] == "vllm" for s in plan.servers)
    train = plan.train_cmd
    assert train[:4] == [sys.executable, "-m", "rcl", "fit"]
    assert train[train.index("--engines.teacher.urls") + 1] == '["http://127.0.0.1:9000", "http://127.0.0.1:9001"]'
    assert train[train.index("--engines.student.urls") + 1] == '["http://127.0.0.1:9002"]'
    assert train[train.index("--trainer.devices") + 1] == "4"
    assert "--grpo.prompts_per_step" in train and plan.train_gpus == ["4", "5", "6", "7"]
    assert Path(plan.servers[2].log) == tmp_path / "run" / "servers" / "student-0.log"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--teacher-gpus", "0,1", "--train-gpus", "1-2"], "GPU 1 is in both the teacher and the train GPU sets"),
        (["--teacher-gpus", "0", "--train-gpus", "1-8"], "GPU(s) 8 requested but only 8 visible"),
        (["--teacher-gpus", "0", "--train-gpus", "1-3"], "grpo.prompts_per_step=2 must be divisible by the 3 training"),
        (["--teacher-gpus", "0", "--train-gpus", "1", "--grpo.num_generationz", "4"], "the recipe does not parse"),
        (["--teacher-gpus", "0", "--train-gpus", "1", "--teacher.model_name_or_path", ""],
         "teacher.model_name_or_path: no model given"),
        (["--teacher-gpus", "0", "--train-gpus", "1", "--teacher.model_name_or_path", "/no/such"],
         "teacher.model_name_or_path: model folder not found: /no/such"),
        (["--teacher-gpus", "cpu", "--train-gpus", "none"], "CPU servers need --engine hf, or vLLM's CPU build"),
        (["--teacher-gpus", "0", "--train-gpus", "1", "--trainer.num_nodes", "2"], "launch starts one node"),
        (["--teacher-gpus", "0", "--train-gpus", "0"], "give each its own, or pass --share-gpus"),
        (["--teacher-gpus", "0", "--train-gpus", "0", "--share-gpus", "--engines.sync_transport", "nccl"],
         "GPU 0 is shared by training and a teacher server, and NCCL cannot link two processes on one GPU"),
        (["--teacher-gpus", "0", "--train-gpus", "0", "--share-gpus"],
         "would claim 0.90 of its memory (--gpu-memory-utilization 0.9 each), leaving too little for training: "
         "use --gpu-memory-utilization 0.50 or less"),
        (["--teacher-gpus", "0", "--student-gpus", "0", "--train-gpus", "1", "--share-gpus",
          "--gpu-memory-utilization", "0.5"], "2 vLLM server(s) would claim 1.00 of its memory"),
    ],
)
def test_validation_messages(tmp_path, argv, message, monkeypatch):
    monkeypatch.setattr("rcl.launch._has_vllm_cpu_build", lambda python: False)
    with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_for(["--config", recipe(tmp_path)] + argv)


def test_tensor_parallel_servers_take_their_gpus_in_groups(tmp_path, capsys):
    plan = plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0-3", "--student-gpus", "4,5", "--train-gpus",
                     "6,7", "--gpus-per-server", "2", "--base-port", "9000"])
    assert [(s.role, s.index, s.gpus, s.port) for s in plan.servers] == [
        ("teacher", 0, ["0", "1"], 9000), ("teacher", 1, ["2", "3"], 9001), ("student", 0, ["4", "5"], 9002)]
    assert all(s.cmd[s.cmd.index("--tensor-parallel-size") + 1] == "2" for s in plan.servers)
    train = plan.train_cmd
    assert train[train.index("--engines.teacher.urls") + 1] == '["http://127.0.0.1:9000", "http://127.0.0.1:9001"]'
    with pytest.raises(LaunchError, match="3 teacher GPU.s. do not split into servers of --gpus-per-server 2"):
        plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0-2", "--train-gpus", "3", "--gpus-per-server", "2"])
    with pytest.raises(LaunchError, match="the hf engine serves on one device"):
        plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0,1", "--train-gpus", "3", "--gpus-per-server",
                  "2", "--engine", "hf"])


def test_server_gpus_are_mapped_through_the_launchers_own_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert _cuda_env(["1", "2"]) == "5,6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _cuda_env(["1", "2"]) == "1,2" and _cuda_env([]) == ""


def test_one_gpu_shared_by_a_server_and_training(tmp_path):
    plan = plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--student-gpus", "0", "--train-gpus", "0",
                     "--share-gpus", "--gpu-memory-utilization", "0.25"], gpus=["0"])
    assert [(s.role, s.gpus) for s in plan.servers] == [("teacher", ["0"]), ("student", ["0"])]
    assert plan.train_gpus == ["0"]
    assert all(s.cmd[s.cmd.index("--gpu-memory-utilization") + 1] == "0.25" for s in plan.servers)
    hf = plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--train-gpus", "0", "--share-gpus",
                   "--engine", "hf"], gpus=["0"])
    assert hf.servers[0].gpus == ["0"] and hf.train_gpus == ["0"]


def test_a_role_without_servers_runs_in_process_whatever_the_recipe_says(tmp_path):
    cfg = recipe(tmp_path, engines={"student": {"backend": "server", "urls": ["http://127.0.0.1:8766"]}})
    plan = plan_for(["--config", cfg, "--teacher-gpus", "0,1", "--train-gpus", "2", "--base-port", "8765"])
    assert [s.url for s in plan.servers] == ["http://127.0.0.1:8765", "http://127.0.0.1:8766"]
    train = plan.train_cmd
    assert train[train.index("--engines.student.backend") + 1] == "in_process"


def test_nccl_is_allowed_when_only_a_student_server_shares_trainings_gpu(tmp_path):
    plan = plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--student-gpus", "1", "--train-gpus", "1",
                     "--share-gpus", "--engine", "hf", "--engines.sync_transport", "nccl"], gpus=["0", "1"])
    assert [(s.role, s.gpus) for s in plan.servers] == [("teacher", ["0"]), ("student", ["1"])]


def test_an_api_key_that_differs_from_the_recipes_is_refused(tmp_path):
    cfg = recipe(tmp_path, engines={"teacher": {"api_key": "from-recipe"}})
    with pytest.raises(LaunchError, match="--api-key differs from the recipe's engines.*api_key"):
        plan_for(["--config", cfg, "--teacher-gpus", "0", "--train-gpus", "1", "--api-key", "other"])
    plan = plan_for(["--config", cfg, "--teacher-gpus", "0", "--train-gpus", "1", "--api-key", "from-recipe"])
    assert plan.recipe_api_key == "from-recipe"


def test_servers_can_run_on_another_interpreter(tmp_path):
    plan = plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--train-gpus", "1",
                     "--server-python", sys.executable])
    assert plan.servers[0].cmd[0] == sys.executable
    with pytest.raises(LaunchError, match="--server-python /no/such/python: .*No such file"):
        plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--train-gpus", "1",
                  "--server-python", "/no/such/python"])
    with pytest.raises(LaunchError, match="--server-python : "):
        plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--train-gpus", "1", "--server-python", ""])
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named rcl' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(LaunchError, match="cannot import rcl's server .*No module named rcl.*-m pip install -e"):
        plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--train-gpus", "1",
                  "--server-python", str(broken)])


def test_missing_config_and_no_gpus_exit_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="config file not found: nope.yaml"):
        cli_main(["--config", "nope.yaml", "--teacher-gpus", "0", "--train-gpus", "1"])
    with pytest.raises(LaunchError, match="no GPU is visible; use none/cpu"):
        plan_for(["--config", recipe(tmp_path), "--teacher-gpus", "0", "--train-gpus", "1"], gpus=())


def test_dry_run_prints_plan(tmp_path, capsys):
    cli_main(["--config", recipe(tmp_path), "--teacher-gpus", "cpu", "--train-gpus", "none", "--engine", "hf",
              "--dry-run", "--base-port", "9100"])
    out = capsys.readouterr().out
    assert "teacher-0: CUDA_VISIBLE_DEVICES= " in out and "--port 9100" in out
    assert "train: CUDA_VISIBLE_DEVICES= " in out and "--trainer.accelerator cpu" in out


def launch_cpu(tmp_path, tiny_model_dir, repo_env, extra=(), mode=""):
    base = free_port(2)
    out = tmp_path / "trainer.json"
    train_cmd = f"{sys.executable} {ROOT / 'tests' / 'fake_trainer.py'} {out} {tiny_model_dir}"
    argv = [sys.executable, "-m", "rcl", "launch", "--config", recipe(tmp_path, teacher={"model_name_or_path":
            tiny_model_dir}, student={"model_name_or_path": tiny_model_dir}), "--teacher-gpus", "cpu",
            "--train-gpus", "none", "--engine", "hf", "--base-port", str(base), "--run-dir", str(tmp_path / "run"),
            "--train-cmd", train_cmd, "--health-timeout", "120", *extra]
    env = dict(repo_env, FAKE_TRAINER_MODE=mode, PYTHONPATH=f"{ROOT}")
    env.pop("RCL_API_KEY", None)
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, base, out


def test_cpu_launch_end_to_end(tmp_path, tiny_model_dir, repo_env):
    proc, base, out = launch_cpu(tmp_path, tiny_model_dir, repo_env, extra=["--student-gpus", "cpu"])
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
    record = json.loads(out.read_text())
    assert record["teacher"]["urls"] == [f"http://127.0.0.1:{base}"]
    assert record["student"]["urls"] == [f"http://127.0.0.1:{base + 1}"]
    assert [len(g) for g in record["teacher"]["completions"]] == [2]
    assert record["cuda_visible_devices"] == "" and "--trainer.accelerator" in record["argv"]
    assert (tmp_path / "run" / "servers" / "teacher-0.log").stat().st_size > 0
    assert (tmp_path / "run" / "servers" / "student-0.log").exists()
    plan = json.loads((tmp_path / "run" / "launch_plan.json").read_text())
    assert plan["recipe_api_key"] is None and len(plan["servers"]) == 2
    assert not listening(base) and not listening(base + 1), "servers must be stopped when training ends"


def test_sigterm_stops_training_and_servers(tmp_path, tiny_model_dir, repo_env):
    proc, base, out = launch_cpu(tmp_path, tiny_model_dir, repo_env, mode="--sleep")
    deadline = time.monotonic() + 180
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert out.exists(), proc.stdout.read() if proc.poll() is not None else "fake trainer never ran"
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, log
    assert "interrupted; training gets up to 600 s to save a checkpoint" in log and "--ckpt_path" in log
    # training was stopped first and could still use its servers while it finished its step
    assert json.loads(Path(str(out) + ".stopped").read_text()) == {"generated_after_sigterm": 1}
    assert not listening(base)


VLLM_ON_CPU = pytest.param(
    "vllm", "gloo", None, marks=[pytest.mark.vllm_cpu, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                                    reason="needs vLLM: run .ci/vllm_cpu")]
)
# vLLM's CPU backend reserves --gpu-memory-utilization of the machine's RAM for its KV cache
VLLM_CPU_SERVER_ARGS = ["--gpu-memory-utilization", "0.1",
                        "--server-args=--dtype float32 --max-model-len 256 --enforce-eager"]


VLLM_PYTHON = os.environ.get("RCL_VLLM_PYTHON")
VLLM_IN_ANOTHER_VENV = pytest.param(
    "vllm", "gloo", VLLM_PYTHON, id="vllm-server-python",
    marks=[pytest.mark.skipif(not VLLM_PYTHON, reason="set RCL_VLLM_PYTHON to the python of .ci/vllm_cpu's venv")],
)


@pytest.mark.slow
@pytest.mark.parametrize("engine, transport, server_python", [
    ("hf", "http", None), ("hf", "gloo", None), VLLM_ON_CPU, VLLM_IN_ANOTHER_VENV,
])
def test_real_rl_run_through_launcher(tmp_path, tiny_model_dir, repo_env, engine, transport, server_python):
    """The real RL loop against CPU servers: the teacher server gets one weight update per step, the student none.
    With `server_python`, the servers run in another virtualenv (vLLM's) than training."""
    base, group_port = free_port(2), free_port()
    run, out = tmp_path / "run", tmp_path / "train"
    argv = [sys.executable, "-m", "rcl", "launch", "--config", str(ROOT / "lightning_configs" / "quickstart_rcl.yaml"),
            "--teacher-gpus", "cpu", "--student-gpus", "cpu", "--train-gpus", "none", "--engine", engine,
            *(VLLM_CPU_SERVER_ARGS if engine == "vllm" else []),
            *(["--server-python", server_python] if server_python else []),
            "--base-port", str(base), "--run-dir", str(run), "--teacher.model_name_or_path", tiny_model_dir,
            "--student.model_name_or_path", tiny_model_dir, "--trainer.max_steps", "2", "--eval.at_start", "false",
            "--eval.every_n_steps", "0", "--grpo.prompts_per_step", "2", "--grpo.num_generations", "2",
            "--grpo.baseline_samples", "1", "--grpo.student_samples", "1", "--generation.max_completion_length", "16",
            "--data.init_args.synthetic_size", "100", "--data.init_args.val_size", "0.1", "--eval.num_prompts", "2",
            "--trainer.out_dir", str(out), "--trainer.loggers", "[csv]", "--trainer.export_hf", "false",
            "--engines.sync_transport", transport, "--engines.sync_group_port", str(group_port)]
    env = dict(repo_env)
    env.pop("RCL_API_KEY", None)
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    teacher_log = (run / "servers" / "teacher-0.log").read_text()
    assert "weights_version=1" in teacher_log and "weights_version=2" in teacher_log
    assert ("over the weight group" in teacher_log) == (transport != "http")
    assert "weights updated" not in (run / "servers" / "student-0.log").read_text()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    synced = [h for h in history if "sync/bytes" in h]
    assert [h["step"] for h in synced] == [1, 2] and all(h["sync/bytes"] > 0 for h in synced)
    assert not listening(base) and not listening(base + 1)
