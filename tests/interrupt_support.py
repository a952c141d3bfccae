"""Start a real training subprocess, SIGINT it once it is stepping, and read back the one line it prints."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def interrupt_once_stepping(argv: list[str], env: dict, started: Callable[[], bool], log_dir: Path,
                            deadline_s: float = 240.0) -> tuple[int, str]:
    """Run `python -m rcl fit <argv>`, send SIGINT as soon as `started()` holds (polled, with a deadline), and return
    the exit status and stderr."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = (log_dir / "stdout.txt").open("w"), (log_dir / "stderr.txt").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "rcl", "fit", *argv], cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        end = time.monotonic() + deadline_s
        while not started():
            if proc.poll() is not None:
                stderr = (log_dir / "stderr.txt").read_text()
                raise AssertionError(f"the run ended before it was interrupted:\n{stderr}")
            if time.monotonic() > end:
                raise AssertionError("the run did not start stepping in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=deadline_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    return code, (log_dir / "stderr.txt").read_text()


def resume_argv(stderr: str) -> tuple[str, list[str]]:
    """The one `rcl: stopped by ...; resume with: python -m rcl fit ...` line, and the arguments after `fit`."""
    lines = [line for line in stderr.splitlines() if "resume with:" in line]
    assert len(lines) == 1, stderr[-3000:]
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:4] == ["python", "-m", "rcl", "fit"], lines[0]
    return lines[0], command[4:]
