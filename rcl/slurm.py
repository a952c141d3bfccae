"""`rcl launch --slurm`: servers on some nodes, trainers on others, inside a SLURM heterogeneous job.

Component 0 of the job holds the generation servers, component 1 the trainers (see the README's sbatch script). The
launcher runs in the batch script (on the job's first node) and reads the allocation from SLURM's environment
(`SLURM_JOB_NODELIST_HET_GROUP_0/1`): on every server node it starts one server per teacher/student GPU slot (the
`--teacher-gpus`/`--student-gpus` lists are per node), each with `srun --het-group=0 --nodelist=<host>`, on ports
from `--base-port`; training runs as one `srun --het-group=1` over every trainer node, `--train-gpus` per node, with
the servers' URLs (`http://<server host>:<port>`) as overrides. Fabric reads the ranks from SLURM's environment.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Mapping

from rcl.launch import ROLES, LaunchError, LaunchPlan, ServerPlan, _check_model, _parse_recipe, parse_gpus

SERVERS, TRAINERS = 0, 1


def expand_hostlist(spec: str) -> list[str]:
    """SLURM's compressed host list (`gpu[01-03,07],login1`) as host names, in order, zero padding kept."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", spec):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise LaunchError(f"cannot read SLURM host list {spec!r}")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}{suffix}")
    return hosts


@dataclass
class Allocation:
    server_hosts: list[str]
    trainer_hosts: list[str]
    job_id: str


def allocation_from_env(env: Mapping[str, str]) -> Allocation:
    """The two components of a heterogeneous job, from the batch script's environment."""
    missing = [f"SLURM_JOB_NODELIST_HET_GROUP_{k}" for k in (SERVERS, TRAINERS)
               if f"SLURM_JOB_NODELIST_HET_GROUP_{k}" not in env]
    if missing:
        raise LaunchError(f"--slurm needs a heterogeneous job (component 0: servers, component 1: trainers), but "
                          f"{', '.join(missing)} is not set: submit the README's sbatch script, whose `#SBATCH hetjob` "
                          "line separates the two")
    return Allocation(expand_hostlist(env[f"SLURM_JOB_NODELIST_HET_GROUP_{SERVERS}"]),
                      expand_hostlist(env[f"SLURM_JOB_NODELIST_HET_GROUP_{TRAINERS}"]),
                      env.get("SLURM_JOB_ID", "?"))


def _gpus_per_node(env: Mapping[str, str], group: int) -> int | None:
    """`--gpus-per-node` of a component (`8` or `h100:8`), when the job gave one."""
    value = env.get(f"SLURM_GPUS_PER_NODE_HET_GROUP_{group}")
    if not value:
        return None
    count = value.rsplit(":", 1)[-1]
    return int(count) if count.isdigit() else None


def _check_fits(gpus: list[str], env: Mapping[str, str], group: int, what: str) -> None:
    have = _gpus_per_node(env, group)
    if have is not None and gpus and max(int(g) for g in gpus) >= have:
        raise LaunchError(f"{what} name GPU {max(int(g) for g in gpus)}, but component {group} of the job has "
                          f"{have} GPUs per node")


def build_slurm_plan(args: argparse.Namespace, overrides: list[str], env: Mapping[str, str]) -> tuple[LaunchPlan, dict]:
    """The multi-node plan and its description (hosts, GPUs, ports, URLs per trainer node)."""
    alloc = allocation_from_env(env)
    configs = [a for path in args.config for a in ("--config", path)]
    role_gpus = {"teacher": parse_gpus(args.teacher_gpus), "student": parse_gpus(args.student_gpus)}
    train_gpus = parse_gpus(args.train_gpus)
    if not role_gpus["teacher"] or None in role_gpus["teacher"] + role_gpus["student"] + train_gpus or not train_gpus:
        raise LaunchError("--slurm places servers and training on GPUs: give GPU ids per node for --teacher-gpus, "
                          "--train-gpus (and --student-gpus to serve the student)")
    clash = set(role_gpus["teacher"]) & set(role_gpus["student"])
    if clash:
        raise LaunchError(f"GPU(s) {', '.join(sorted(clash))} are in both --teacher-gpus and --student-gpus")
    _check_fits(role_gpus["teacher"] + role_gpus["student"], env, SERVERS, "--teacher-gpus/--student-gpus")
    _check_fits(train_gpus, env, TRAINERS, "--train-gpus")
    per_server = args.gpus_per_server
    slots: list[tuple[str, list[str]]] = []  # (role, GPUs of one server) on each server node
    for role in ROLES:
        gpus = role_gpus[role]
        if len(gpus) % per_server:
            raise LaunchError(f"{len(gpus)} {role} GPU(s) per node do not split into servers of --gpus-per-server "
                              f"{per_server}")
        slots += [(role, [str(g) for g in gpus[i:i + per_server]]) for i in range(0, len(gpus), per_server)]

    placed = []  # (role, index in role, host, gpus, port)
    counts = dict.fromkeys(ROLES, 0)
    for host in alloc.server_hosts:
        for k, (role, gpus) in enumerate(slots):
            placed.append((role, counts[role], host, gpus, args.base_port + k))
            counts[role] += 1
    urls = {role: [f"http://{h}:{p}" for r, _, h, _, p in placed if r == role] for role in ROLES}
    train_args = configs + overrides
    for role in ROLES:
        train_args += ([f"--engines.{role}.backend", "server", f"--engines.{role}.urls", json.dumps(urls[role])]
                       if urls[role] else [f"--engines.{role}.backend", "in_process"])
    train_args += ["--trainer.accelerator", "cuda", "--trainer.devices", str(len(train_gpus)),
                   "--trainer.num_nodes", str(len(alloc.trainer_hosts))]
    recipe = _parse_recipe(train_args)
    trainer = recipe["trainer"]
    run_dir = args.run_dir or f"{trainer.out_dir}/launch-slurm-{alloc.job_id}"
    python = sys.executable if args.server_python is None else args.server_python
    servers = []
    for role, index, host, gpus, port in placed:
        model = _check_model(recipe[role].model_name_or_path, role)
        serve = [python, "-m", "rcl", "serve", "--model", model, "--engine", args.engine, "--host", "0.0.0.0",
                 "--port", str(port), "--seed", str(trainer.seed + len(servers))]
        if args.engine == "vllm":
            serve += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        if per_server > 1:
            serve += ["--tensor-parallel-size", str(per_server)]
        serve += shlex.split(args.server_args or "")
        cmd = ["srun", f"--het-group={SERVERS}", f"--nodelist={host}", "--nodes=1", "--ntasks=1", "--overlap",
               f"--export=ALL,CUDA_VISIBLE_DEVICES={','.join(gpus)}", *serve]
        servers.append(ServerPlan(role, index, gpus, port, f"http://{host}:{port}", cmd,
                                  f"{run_dir}/servers/{role}-{index}-{host}.log"))
    fit = shlex.split(args.train_cmd) if args.train_cmd else [sys.executable, "-m", "rcl", "fit"]
    train_cmd = ["srun", f"--het-group={TRAINERS}", f"--nodes={len(alloc.trainer_hosts)}",
                 f"--ntasks-per-node={len(train_gpus)}", f"--export=ALL,CUDA_VISIBLE_DEVICES={','.join(train_gpus)}",
                 *fit, *train_args]
    # every server is started from the batch node with its own srun: the launcher sets no CUDA_VISIBLE_DEVICES itself
    plan = LaunchPlan(run_dir, servers, train_cmd, None, None)
    description = {
        "job": alloc.job_id,
        "servers": [{"role": s.role, "index": s.index, "host": h, "gpus": s.gpus, "port": s.port, "url": s.url}
                    for s, (_, _, h, _, _) in zip(servers, placed)],
        "trainers": [{"node_rank": r, "host": host, "gpus": train_gpus,
                      "master": f"{alloc.trainer_hosts[0]}", "urls": urls}
                     for r, host in enumerate(alloc.trainer_hosts)],
        "world_size": len(train_gpus) * len(alloc.trainer_hosts),
    }
    return plan, description


def describe(description: dict) -> str:
    lines = [f"SLURM job {description['job']}: {len(description['servers'])} server(s) on component 0, "
             f"{len(description['trainers'])} trainer node(s) x {len(description['trainers'][0]['gpus'])} GPU(s) on "
             f"component 1 (world size {description['world_size']})"]
    for s in description["servers"]:
        lines.append(f"  {s['role']}-{s['index']}: host {s['host']} GPUs {','.join(s['gpus'])} port {s['port']} "
                     f"-> {s['url']}")
    for t in description["trainers"]:
        urls = "; ".join(f"{role} {' '.join(u)}" for role, u in t["urls"].items() if u) or "no servers"
        lines.append(f"  trainer node {t['node_rank']}: host {t['host']} GPUs {','.join(t['gpus'])} "
                     f"(rank-0 host {t['master']}) uses {urls}")
    return "\n".join(lines)
