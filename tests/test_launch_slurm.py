"""`rcl launch --slurm --dry-run` from a fake heterogeneous-job environment: hosts, GPUs, ports and URLs."""

import json
import shlex

import pytest
from test_launch import recipe

from rcl.launch import LaunchError, build_parser, cli_main
from rcl.slurm import build_slurm_plan, expand_hostlist

HETJOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_HET_SIZE": "2",
    "SLURM_JOB_NODELIST_HET_GROUP_0": "gpu[07-08]",
    "SLURM_JOB_NODELIST_HET_GROUP_1": "gpu[10,12],big1",
    "SLURM_GPUS_PER_NODE_HET_GROUP_0": "h100:8",
    "SLURM_GPUS_PER_NODE_HET_GROUP_1": "8",
}
ARGV = ["--slurm", "--teacher-gpus", "0-5", "--student-gpus", "6,7", "--train-gpus", "0-3", "--base-port", "9100",
        "--grpo.prompts_per_step", "12"]


def test_expand_hostlist():
    assert expand_hostlist("gpu[07-09,12],login1") == ["gpu07", "gpu08", "gpu09", "gpu12", "login1"]
    assert expand_hostlist("node1") == ["node1"]
    assert expand_hostlist("a[1-2]-ib,b[001-002]") == ["a1-ib", "a2-ib", "b001", "b002"]
    with pytest.raises(LaunchError, match="cannot read"):
        expand_hostlist("gpu[x-2]")


def plan(tmp_path, argv, env=HETJOB):
    args, overrides = build_parser().parse_known_args(["--config", recipe(tmp_path), *argv])
    return build_slurm_plan(args, overrides, env)


def test_servers_on_component_0_and_trainers_over_component_1(tmp_path):
    launch, desc = plan(tmp_path, [*ARGV, "--gpus-per-server", "2"])
    servers = [(s["role"], s["host"], s["gpus"], s["port"]) for s in desc["servers"]]
    assert servers == [
        ("teacher", "gpu07", ["0", "1"], 9100), ("teacher", "gpu07", ["2", "3"], 9101),
        ("teacher", "gpu07", ["4", "5"], 9102), ("student", "gpu07", ["6", "7"], 9103),
        ("teacher", "gpu08", ["0", "1"], 9100), ("teacher", "gpu08", ["2", "3"], 9101),
        ("teacher", "gpu08", ["4", "5"], 9102), ("student", "gpu08", ["6", "7"], 9103),
    ]
    teacher_urls = [f"http://gpu0{n}:{p}" for n in (7, 8) for p in (9100, 9101, 9102)]
    assert [t["host"] for t in desc["trainers"]] == ["gpu10", "gpu12", "big1"] and desc["world_size"] == 12
    assert all(t["urls"] == {"teacher": teacher_urls, "student": ["http://gpu07:9103", "http://gpu08:9103"]}
               for t in desc["trainers"])
    first = launch.servers[0].cmd
    assert first[:6] == ["srun", "--het-group=0", "--nodelist=gpu07", "--nodes=1", "--ntasks=1", "--overlap"]
    assert "--export=ALL,CUDA_VISIBLE_DEVICES=0,1" in first and first[first.index("--tensor-parallel-size") + 1] == "2"
    assert first[first.index("--host") + 1] == "0.0.0.0"
    train = launch.train_cmd
    assert train[:5] == ["srun", "--het-group=1", "--nodes=3", "--ntasks-per-node=4",
                         "--export=ALL,CUDA_VISIBLE_DEVICES=0,1,2,3"]
    assert json.loads(train[train.index("--engines.teacher.urls") + 1]) == teacher_urls
    assert train[train.index("--trainer.num_nodes") + 1] == "3" and train[train.index("--trainer.devices") + 1] == "4"


def test_dry_run_prints_the_plan(tmp_path, capsys, monkeypatch):
    for k, v in HETJOB.items():
        monkeypatch.setenv(k, v)
    cli_main(["--config", recipe(tmp_path), *ARGV, "--dry-run"])
    out = capsys.readouterr().out
    assert "SLURM job 4242: 16 server(s) on component 0, 3 trainer node(s) x 4 GPU(s)" in out
    assert "teacher-0: host gpu07 GPUs 0 port 9100 -> http://gpu07:9100" in out
    assert "trainer node 2: host big1 GPUs 0,1,2,3 (rank-0 host gpu10) uses teacher http://gpu07:9100" in out
    train_line = next(line for line in out.splitlines() if line.startswith("train: "))
    assert shlex.split(train_line[len("train: "):])[:2] == ["srun", "--het-group=1"]


@pytest.mark.parametrize("env, argv, message", [
    ({"SLURM_JOB_NODELIST": "gpu01"}, ARGV, "needs a heterogeneous job"),
    (HETJOB, ["--slurm", "--teacher-gpus", "0-8", "--train-gpus", "0-3", "--grpo.prompts_per_step", "12"],
     "component 0 of the job has 8 GPUs per node"),
    (HETJOB, ["--slurm", "--teacher-gpus", "0", "--train-gpus", "none"], "give GPU ids per node"),
    (HETJOB, ["--slurm", "--teacher-gpus", "0-1", "--student-gpus", "1", "--train-gpus", "0"], "both --teacher-gpus"),
    (HETJOB, ["--slurm", "--teacher-gpus", "0", "--train-gpus", "0-3"], "must be divisible by the 12 training"),
])
def test_refusals(tmp_path, env, argv, message):
    with pytest.raises(LaunchError, match=message):
        plan(tmp_path, argv, env)
