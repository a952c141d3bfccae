"""Host-side isolation pieces: the bubblewrap command line, per-run users, and killing every process of a run."""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import time
from pathlib import Path

SANDBOX_ROOT = "/tmp/rcl"
"""Where a run's folders appear inside bubblewrap (under its private /tmp): code/ (read-only), lib/ (the in-sandbox
helpers, read-only) and work/ (the writable, size-capped working folder)."""
RUN_TAG = "RCL_SANDBOX_RUN"
"""Environment variable holding the run's random tag, used to find its processes when it has no user of its own."""


def is_root() -> bool:
    return os.geteuid() == 0


class UserSlot:
    """An unprivileged uid held for one run (as root). Held with a lock file, so runs in other processes on the host
    (another training job) never share it: killing "every process of this uid" then kills only this run's."""

    def __init__(self, uid_base: int, count: int = 4096):
        lock_dir = Path(tempfile.gettempdir()) / "rcl-uid-locks"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        for uid in range(uid_base, uid_base + count):
            handle = open(lock_dir / f"{uid}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self.uid = uid
            self._handle = handle
            return
        raise RuntimeError(f"no free sandbox uid in [{uid_base}, {uid_base + count})")

    def release(self) -> None:
        self._handle.close()


def _live_pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            yield int(entry)


def _status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real or effective uid is `uid`. Reads /proc/PID/status, which a process
    cannot hide by making itself non-dumpable."""
    found = []
    for pid in _live_pids():
        try:
            fields = _status(pid)
        except OSError:
            continue
        uids = fields.get("Uid", "").split()
        if fields.get("State", "").startswith(("Z", "X")) or len(uids) < 2:
            continue
        if str(uid) in uids[:2]:
            found.append(pid)
    return found


def processes_with_tag(tag: str) -> list[int]:
    """Live processes whose initial environment carries the run's tag (readable for our own user's processes)."""
    marker = f"{RUN_TAG}={tag}".encode()
    found = []
    for pid in _live_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if marker in handle.read().split(b"\0"):
                    if not _status(pid).get("State", "").startswith(("Z", "X")):
                        found.append(pid)
        except OSError:
            continue
    return found


def kill_all(find, attempts: int = 200) -> bool:
    """SIGKILL what `find()` returns until it returns nothing (a forking program may add processes while we kill).
    Returns False if processes were still there after `attempts` rounds."""
    for _ in range(attempts):
        pids = find()
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)
    return not find()


def visible_binds(paths: list[str], hidden: list[str]) -> list[str]:
    """bwrap arguments that bind `paths` back (read-only, at the same place) where they lie under a hidden folder,
    creating each missing parent folder with mode 0755 so the run's unprivileged user can reach them."""
    args: list[str] = []
    made: set[str] = set()
    for path in sorted(set(paths)):
        under = [h for h in hidden if path == h or path.startswith(h.rstrip("/") + "/")]
        if not under or not os.path.exists(path):
            continue
        top = max(under, key=len).rstrip("/")
        parent = os.path.dirname(path)
        parents = []
        while parent.startswith(top + "/"):
            parents.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(parents):
            if folder not in made:
                args += ["--perms", "0755", "--dir", folder]
                made.add(folder)
        args += ["--ro-bind", path, path]
    return args


def bwrap_command(
    bwrap: str,
    *,
    host_dir: Path,
    writable_code: bool,
    work_bytes: int,
    hidden: list[str],
    extra_paths: list[str],
    env: dict[str, str],
    as_root: bool,
) -> list[str]:
    """The bubblewrap prefix for one run. As root, bwrap needs no user namespace, and the launcher inside drops to the
    run's uid (it keeps only CAP_SETUID/CAP_SETGID for that, and no_new_privs stops any regain through exec). As a
    normal user, bwrap makes a user namespace and the program keeps that user."""
    command = [bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net"]
    command += ["--unshare-uts", "--unshare-cgroup-try"]
    if as_root:
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user"]
    command += ["--ro-bind", "/", "/"]
    hidden = sorted({*hidden, "/tmp"})
    for path in hidden:
        if os.path.isdir(path):
            command += ["--tmpfs", path]
    command += ["--dev", "/dev", "--proc", "/proc"]
    command += visible_binds(extra_paths, hidden)
    command += ["--perms", "0755", "--dir", SANDBOX_ROOT]
    command += ["--ro-bind", str(host_dir / "lib"), f"{SANDBOX_ROOT}/lib"]
    command += ["--bind" if writable_code else "--ro-bind", str(host_dir / "code"), f"{SANDBOX_ROOT}/code"]
    command += ["--size", str(work_bytes), "--perms", "01777", "--tmpfs", f"{SANDBOX_ROOT}/work"]
    command += ["--chdir", f"{SANDBOX_ROOT}/work", "--clearenv"]
    for key, value in env.items():
        command += ["--setenv", key, value]
    return command + ["--"]
