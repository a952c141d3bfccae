"""Helpers for tests that run real `python -m rcl serve` subprocesses (imported by tests/test_serving_*.py etc.)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def server_env() -> dict:
    """Environment for a server subprocess: this checkout on the path, no API key inherited."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RCL_API_KEY", None)
    return env


def free_port(count: int = 1) -> int:
    """A port p such that p .. p+count-1 are free now, below the ephemeral range that outgoing connections use."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port (unlike a failed bind, TIME_WAIT sockets do not count)."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_server(model_dir: str, env: dict, *extra: str, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "rcl", "serve", "--model", model_dir, "--engine", "hf", "--port", str(port),
           "--seed", "0", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if requests.get(f"{url}/health/", timeout=2).status_code in (200, 401):
                return proc, url
        except requests.RequestException:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("server did not become healthy")


def stop_server(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def trl_style_push(url: str, named, port: int) -> requests.Response:
    """Push weights the way TRL's client does: init_communicator, then per tensor update_named_param plus a broadcast
    from the client rank, then reset_prefix_cache (which completes the update, and whose answer is returned) and
    close_communicator."""
    from concurrent.futures import ThreadPoolExecutor

    from rcl.serving.collective import GlooGroup

    world_size = requests.get(f"{url}/get_world_size/").json()["world_size"] + 1
    r = requests.post(f"{url}/init_communicator/", json={"host": "127.0.0.1", "port": port, "world_size": world_size,
                                                         "group_kind": "gloo"})
    assert r.status_code == 200, r.text
    group = GlooGroup("127.0.0.1", port, rank=world_size - 1, world_size=world_size)
    for name, tensor in named:
        r = requests.post(f"{url}/update_named_param/",
                          json={"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)})
        assert r.status_code == 200, r.text
        group.broadcast(tensor.contiguous(), src=world_size - 1)
    reset = requests.post(f"{url}/reset_prefix_cache/")
    with ThreadPoolExecutor(1) as pool:
        closing = pool.submit(requests.post, f"{url}/close_communicator/")
        group.close()
        closed = closing.result()
        assert closed.status_code == 200, closed.text
    return reset
